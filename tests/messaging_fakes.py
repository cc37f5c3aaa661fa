"""Test doubles for the transport protocols: a recording publisher and a list subscriber."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

import anyio

from resilience_kit.messaging import Delivery, Event


class RecordingPublisher:
    """Records what it publishes; `fail` decides, per event, to raise instead."""

    def __init__(self, fail: Callable[[str, Event], BaseException | None] | None = None) -> None:
        self.published: list[tuple[str, Event]] = []
        self.attempts: list[tuple[str, Event]] = []
        self.fail = fail

    async def publish(self, topic: str, event: Event) -> None:
        self.attempts.append((topic, event))
        await anyio.lowlevel.checkpoint()
        if self.fail is not None:
            error = self.fail(topic, event)
            if error is not None:
                raise error
        self.published.append((topic, event))

    def keys(self) -> dict[str, list[int]]:
        by_key: dict[str, list[int]] = {}
        for _, event in self.published:
            by_key.setdefault(event.key, []).append(event.payload["n"])
        return by_key


class ListSubscriber:
    """Delivers a fixed list of deliveries once; records acknowledgements."""

    def __init__(self, deliveries: Iterable[Delivery]) -> None:
        self.deliveries = list(deliveries)
        self.acked: list[str] = []
        self.closed = False

    @classmethod
    def of(cls, *items: Event | bytes, topic: str = "t") -> ListSubscriber:
        deliveries = []
        for n, item in enumerate(items):
            data = item.to_json() if isinstance(item, Event) else item
            key = item.key if isinstance(item, Event) else None
            deliveries.append(Delivery(topic=topic, data=data, id=str(n), key=key))
        return cls(deliveries)

    async def _iterate(self) -> AsyncIterator[Delivery]:
        for delivery in self.deliveries:
            await anyio.lowlevel.checkpoint()
            yield delivery

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery.id)

    async def aclose(self) -> None:
        self.closed = True
