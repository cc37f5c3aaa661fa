"""`ResilientConsumer`: de-duplicate, retry, dead-letter, and keep consuming."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Literal

import anyio
from anyio.abc import ObjectReceiveStream, TaskStatus

from resilience_kit import _telemetry
from resilience_kit._checks import check_int, check_name
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError, InvalidEventError
from resilience_kit.messaging._dead_letter import REPLAYS_HEADER
from resilience_kit.messaging._event import DEFAULT_MAX_BYTES, Event, _check_max_bytes
from resilience_kit.messaging._inbox import Inbox
from resilience_kit.messaging._protocols import DeadLetterStore, Delivery, Subscriber
from resilience_kit.messaging._records import DeadLetter
from resilience_kit.policies._backoff import Backoff
from resilience_kit.policies._retry import RetryPolicy

__all__ = ("Outcome", "ResilientConsumer")

logger = logging.getLogger("resilience_kit.consumer")

Outcome = Literal["handled", "duplicate", "dead_lettered", "poison", "unacked"]
Handler = Callable[[Event], Awaitable[object]]

_OUTCOMES: tuple[Outcome, ...] = ("handled", "duplicate", "dead_lettered", "poison", "unacked")


def _default_retry() -> RetryPolicy:
    return RetryPolicy(
        attempts=3,
        on=Exception,
        backoff=Backoff.exponential(initial=0.5, multiplier=2.0, maximum=10.0, jitter="full"),
    )


class ResilientConsumer:
    """Runs a handler over a subscription so that no message is lost, stuck or done twice.

    For each delivery: decode it (a message that is not an event — a *poison* message —
    goes straight to dead letters, unretried); skip it if the inbox has seen its id;
    run the handler under the retry policy (default: 3 attempts with exponential
    backoff); on success record the id in the inbox; when the attempts run out, put the
    message in dead letters with its error, traceback and attempt count. Then
    acknowledge it and move on: one bad message never blocks the ones behind it.

    With ``concurrency`` above 1, messages are spread over that many lanes by a hash of
    their key: different keys are handled in parallel, one key's messages stay in order.

    A message is acknowledged only after its outcome is durable (handled, or stored in
    dead letters). If the dead-letter store itself fails, the message is left
    unacknowledged, so the transport delivers it again.

    Args:
        subscriber: the subscription to consume (from a transport's ``subscribe``).
        handler: ``async def handler(event) -> ...``; an exception means "failed".
        name: the consumer's name: its inbox's consumer name and its dead letters'
            source (``consumer:<name>``).
        dead_letters: where given-up messages go (a backend's ``.dead_letters``).
        inbox: de-duplication by event id; ``None`` handles every delivery.
        retry: the retry policy around the handler.
        concurrency: lanes handled in parallel (per-key order kept).
        max_bytes: the largest message decoded; larger ones are poison.
        clock: the clock for timestamps in dead letters (default: the system clock).

    Raises:
        ConfigurationError: a parameter is invalid (named in the message).

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import DeadLetterFilter, Event, Inbox, ResilientConsumer
        >>> from resilience_kit.stores.memory import MemoryStore
        >>> from resilience_kit.transports import MemoryBus
        >>> async def main():
        ...     store, bus = MemoryStore(), MemoryBus()
        ...     subscription = bus.subscribe("orgs", group="mailer")
        ...     seen = []
        ...     async def send_welcome(event):
        ...         seen.append(event.payload["name"])
        ...     consumer = ResilientConsumer(
        ...         subscription, send_welcome, name="mailer",
        ...         dead_letters=store.dead_letters, inbox=Inbox(store.inbox, consumer="mailer"),
        ...     )
        ...     event = Event(type="org.created", key="org:1", payload={"name": "acme"})
        ...     await bus.publish("orgs", event)
        ...     await bus.publish("orgs", event)  # a duplicate
        ...     await bus.publish_raw("orgs", b"not json")  # a poison message
        ...     async for delivery in subscription:
        ...         print(await consumer.handle(delivery))
        ...         if len(seen) and await store.dead_letters.count(DeadLetterFilter()):
        ...             break
        ...     return seen
        >>> anyio.run(main)
        handled
        duplicate
        poison
        ['acme']
    """

    def __init__(
        self,
        subscriber: Subscriber,
        handler: Handler,
        *,
        name: str,
        dead_letters: DeadLetterStore,
        inbox: Inbox | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(subscriber, Subscriber):
            raise ConfigurationError(
                "subscriber",
                f"must implement Subscriber (a transport's subscribe()), got {subscriber!r}",
            )
        if not callable(handler):
            raise ConfigurationError("handler", f"must be an async callable, got {handler!r}")
        if not isinstance(dead_letters, DeadLetterStore):
            raise ConfigurationError(
                "dead_letters", f"must implement DeadLetterStore, got {dead_letters!r}"
            )
        if inbox is not None and not isinstance(inbox, Inbox):
            raise ConfigurationError("inbox", f"must be an Inbox or None, got {inbox!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry", f"must be a RetryPolicy or None, got {retry!r}")
        check_int("concurrency", concurrency, minimum=1)
        self.name = check_name("name", name)
        self.subscriber = subscriber
        self.handler = handler
        self.dead_letters = dead_letters
        self.inbox = inbox
        self.retry = retry if retry is not None else _default_retry()
        self.concurrency = concurrency
        self.max_bytes = _check_max_bytes(max_bytes)
        self._clock = clock
        self._source = f"consumer:{self.name}"
        self._labels = {
            outcome: {"consumer": self.name, "outcome": outcome} for outcome in _OUTCOMES
        }
        self.counts: dict[Outcome, int] = dict.fromkeys(_OUTCOMES, 0)
        """Deliveries by outcome so far."""

    def __repr__(self) -> str:
        return f"ResilientConsumer({self.name!r}, subscriber={self.subscriber!r})"

    def _now(self) -> datetime:
        return datetime.fromtimestamp(resolve_clock(self._clock).time(), timezone.utc)

    def _decode(self, delivery: Delivery) -> Event | InvalidEventError:
        try:
            return Event.from_json(delivery.data, max_bytes=self.max_bytes)
        except InvalidEventError as exc:
            return exc

    async def handle(self, delivery: Delivery) -> Outcome:
        """Handle one delivery to its end — handled, duplicate or dead-lettered — and ack it.

        `run` calls this for every delivery; tests and custom loops may call it directly.
        Returns the outcome (``"unacked"`` when the dead-letter store failed).
        """
        return await self._process(delivery, self._decode(delivery))

    async def _process(self, delivery: Delivery, decoded: Event | InvalidEventError) -> Outcome:
        if isinstance(decoded, InvalidEventError):
            outcome = await self._bury(delivery, decoded, attempts=0, first=None, replays=0)
            if outcome == "dead_lettered":
                outcome = "poison"
        else:
            outcome = await self._run_handler(delivery, decoded)
        if outcome != "unacked":
            await self.subscriber.ack(delivery)
        self.counts[outcome] += 1
        _telemetry.emit(_telemetry.CONSUMER_MESSAGES, self._labels[outcome])
        return outcome

    async def _run_handler(self, delivery: Delivery, event: Event) -> Outcome:
        inbox = self.inbox
        if inbox is not None and await inbox.seen(event):
            return "duplicate"
        made = 0
        first: datetime | None = None
        try:
            async for attempt in self.retry.attempts():
                with attempt:
                    made = attempt.number
                    try:
                        await self.handler(event)
                    except Exception:
                        first = first or self._now()
                        raise
        except Exception as exc:  # noqa: BLE001 - the attempts ran out: dead-letter it
            try:
                replays = int(event.headers.get(REPLAYS_HEADER, "0"))
            except ValueError:
                replays = 0
            return await self._bury(delivery, exc, attempts=made, first=first, replays=replays)
        if inbox is not None:
            await inbox.record(event)
        return "handled"

    async def _bury(
        self,
        delivery: Delivery,
        error: Exception,
        *,
        attempts: int,
        first: datetime | None,
        replays: int,
    ) -> Outcome:
        letter = DeadLetter.create(
            source=self._source,
            topic=delivery.topic,
            data=delivery.data,
            error=error,
            attempts=attempts,
            first_failed_at=first,
            now=self._now(),
            key=delivery.key,
            replays=replays,
        )
        try:
            with anyio.CancelScope(shield=True):
                await self.dead_letters.put(letter)
        except Exception:  # left unacked: the transport redelivers it
            logger.exception(
                "consumer %r: could not store message %s in dead letters; left unacknowledged",
                self.name,
                delivery.id,
            )
            return "unacked"
        logger.error(
            "consumer %r: message %s dead-lettered after %d attempt(s): %s: %s",
            self.name,
            delivery.id,
            attempts,
            letter.error_type,
            letter.error_message,
        )
        return "dead_lettered"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consume until the subscription ends or the task is cancelled.

        Start it in a task group (``await group.start(consumer.run)``); cancel the
        group to stop. Messages in flight when it stops are not acknowledged, so the
        transport delivers them again.
        """
        if self.concurrency == 1:
            task_status.started()
            async for delivery in self.subscriber:
                await self.handle(delivery)
            return
        senders = []
        async with anyio.create_task_group() as group:
            for _ in range(self.concurrency):
                send, receive = anyio.create_memory_object_stream[
                    tuple[Delivery, Event | InvalidEventError]
                ](1)
                senders.append(send)
                group.start_soon(self._lane, receive)
            task_status.started()
            try:
                async for delivery in self.subscriber:
                    decoded = self._decode(delivery)
                    key = decoded.key if isinstance(decoded, Event) else delivery.key or ""
                    lane = zlib.crc32(key.encode("utf-8", "surrogatepass")) % self.concurrency
                    await senders[lane].send((delivery, decoded))
            finally:
                for send in senders:
                    send.close()

    async def _lane(
        self, receive: ObjectReceiveStream[tuple[Delivery, Event | InvalidEventError]]
    ) -> None:
        async with receive:
            async for delivery, decoded in receive:
                await self._process(delivery, decoded)
