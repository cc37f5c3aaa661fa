"""`DeadLetterQueue`: list, show, replay and purge the messages everything else gave up on."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from resilience_kit._checks import check_int, check_positive, check_topic
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError
from resilience_kit.messaging._event import _new_id
from resilience_kit.messaging._protocols import DeadLetterStore, Publisher
from resilience_kit.messaging._records import DeadLetter, DeadLetterFilter

__all__ = ("REPLAYS_HEADER", "DeadLetterQueue", "ReplayReport")

logger = logging.getLogger("resilience_kit.dead_letters")

REPLAYS_HEADER = "rk-replays"
"""The header a replayed event carries: how many times it was replayed from dead letters."""

_PAGE = 200


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay did.

    Attributes:
        replayed: ids of dead letters published again (and removed from the queue).
        skipped: ids of poison messages, which cannot be replayed as events (they stay).
        failed: ids and errors of dead letters whose publish failed (they stay).

    Examples:
        >>> ReplayReport(replayed=(), skipped=(), failed=()).replayed
        ()
    """

    replayed: tuple[UUID, ...]
    skipped: tuple[UUID, ...]
    failed: tuple[tuple[UUID, str], ...]


def _filter(  # noqa: PLR0917 - a private bridge from keyword arguments
    where: DeadLetterFilter | None,
    topic: str | None,
    source: str | None,
    event_type: str | None,
    error_type: str | None,
    since: datetime | None,
    until: datetime | None,
) -> DeadLetterFilter:
    given = {
        "topic": topic,
        "source": source,
        "event_type": event_type,
        "error_type": error_type,
        "since": since,
        "until": until,
    }
    fields = {name: value for name, value in given.items() if value is not None}
    if where is not None and fields:
        raise ConfigurationError("where", "give a DeadLetterFilter or keyword filters, not both")
    for name in ("since", "until"):
        moment = fields.get(name)
        if isinstance(moment, datetime) and moment.utcoffset() is None:
            raise ConfigurationError(name, "must be timezone-aware")
    return where if where is not None else DeadLetterFilter(**fields)  # type: ignore[arg-type]


class DeadLetterQueue:
    r"""The operator's view of a dead-letter store: list, show, replay, purge.

    Each dead letter keeps the message byte for byte, its topic, the last error (type,
    message, traceback), the attempts made and when the first and last failed. Filters
    select by topic, source, event type, error type and time.

    Args:
        store: a backend's dead letters (``store.dead_letters``).

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import DeadLetter, DeadLetterQueue
        >>> from resilience_kit.stores.memory import MemoryStore
        >>> queue = DeadLetterQueue(MemoryStore().dead_letters)
        >>> letter = DeadLetter.create(
        ...     source="consumer:billing", topic="orgs", data=b"\\x00garbage",
        ...     error=ValueError("undecodable"), attempts=1,
        ... )
        >>> anyio.run(queue.put, letter)
        >>> [found.error_message for found in anyio.run(lambda: queue.list(topic="orgs"))]
        ['undecodable']
    """

    __slots__ = ("_store",)

    def __init__(self, store: DeadLetterStore) -> None:
        if not isinstance(store, DeadLetterStore):
            raise ConfigurationError(
                "store",
                f"must implement DeadLetterStore (a backend's .dead_letters), got {store!r}",
            )
        self._store = store

    def __repr__(self) -> str:
        return f"DeadLetterQueue({self._store!r})"

    @property
    def store(self) -> DeadLetterStore:
        """The dead-letter store behind the queue."""
        return self._store

    async def put(self, letter: DeadLetter) -> None:
        """Store a dead letter (consumers and relays do this; so can your code)."""
        await self._store.put(letter)

    async def show(self, letter_id: UUID) -> DeadLetter | None:
        """The dead letter with this id, or ``None``.

        Raises:
            CorruptRecordError: the stored record cannot be read back.
        """
        return await self._store.get(letter_id)

    async def list(
        self,
        where: DeadLetterFilter | None = None,
        *,
        limit: int = 100,
        after: UUID | None = None,
        topic: str | None = None,
        source: str | None = None,
        event_type: str | None = None,
        error_type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[DeadLetter]:
        """Matching dead letters, oldest first, at most ``limit``, after the ``after`` id.

        Give a `DeadLetterFilter` or the same fields as keywords.

        Raises:
            ConfigurationError: both a filter and keywords, a naive datetime, or a bad limit.
        """
        check_int("limit", limit, minimum=1)
        match = _filter(where, topic, source, event_type, error_type, since, until)
        return await self._store.list(match, limit=limit, after=after)

    async def iterate(
        self, where: DeadLetterFilter | None = None
    ) -> AsyncGenerator[DeadLetter, None]:
        """Every matching dead letter, oldest first, fetched a page at a time.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import DeadLetterQueue
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> async def count_all(queue):
            ...     return len([letter async for letter in queue.iterate()])
            >>> anyio.run(count_all, DeadLetterQueue(MemoryStore().dead_letters))
            0
        """
        match = where if where is not None else DeadLetterFilter()
        after: UUID | None = None
        while True:
            page = await self._store.list(match, limit=_PAGE, after=after)
            for letter in page:
                yield letter
            if len(page) < _PAGE:
                return
            after = page[-1].id

    async def count(self, where: DeadLetterFilter | None = None) -> int:
        """How many dead letters match (all of them without a filter)."""
        return await self._store.count(where if where is not None else DeadLetterFilter())

    async def replay(
        self,
        where: DeadLetterFilter,
        publisher: Publisher,
        *,
        topic: str | None = None,
        limit: int | None = None,
        per_second: float | None = None,
        clock: Clock | None = None,
    ) -> ReplayReport:
        """Publish matching dead letters again, then remove each one that was published.

        Each event goes out with its id unchanged (consumers de-duplicate by it) and
        the ``rk-replays`` header counting its replays, so a message that fails again
        comes back with its history. A publish that fails leaves its dead letter where
        it is. Poison messages (not events) are skipped. To put events back through an
        outbox instead of straight to a transport, pass an `Outbox` as ``publisher``.

        Args:
            where: which dead letters (`DeadLetterFilter`; ``DeadLetterFilter()`` is all).
            publisher: where to publish (a transport, or an `Outbox`).
            topic: publish here instead of each letter's original topic.
            limit: replay at most this many.
            per_second: pace the replay (a flood of replays is an outage of its own).
            clock: the clock for pacing (default: the system clock).

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import (
            ...     DeadLetter, DeadLetterFilter, DeadLetterQueue, Event,
            ... )
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> from resilience_kit.transports import MemoryBus
            >>> queue, bus = DeadLetterQueue(MemoryStore().dead_letters), MemoryBus()
            >>> event = Event(type="invoice.paid", key="inv:1", payload={})
            >>> letter = DeadLetter.create(
            ...     source="consumer:mailer", topic="billing", data=event.to_json(),
            ...     error=TimeoutError("smtp"), attempts=3,
            ... )
            >>> anyio.run(queue.put, letter)
            >>> report = anyio.run(lambda: queue.replay(DeadLetterFilter(topic="billing"), bus))
            >>> report.replayed == (letter.id,), anyio.run(queue.count)
            (True, 0)
        """
        if not isinstance(where, DeadLetterFilter):
            raise ConfigurationError("where", f"must be a DeadLetterFilter, got {where!r}")
        target = None if topic is None else check_topic(topic)
        if limit is not None:
            check_int("limit", limit, minimum=1)
        check_positive("per_second", per_second)
        pause = 0.0 if per_second is None else 1.0 / per_second
        timer = resolve_clock(clock)
        replayed: list[UUID] = []
        skipped: list[UUID] = []
        failed: list[tuple[UUID, str]] = []
        # Letters dead-lettered after the replay began (a replayed message failing again)
        # are not replayed again by it: ids are UUIDv7, so they sort after this one.
        horizon = _new_id()
        async with aclosing(self.iterate(where)) as letters:
            async for letter in letters:
                if letter.id > horizon:
                    break
                if limit is not None and len(replayed) + len(failed) >= limit:
                    break
                if letter.event is None:
                    skipped.append(letter.id)
                    continue
                if pause and (replayed or failed):
                    await timer.asleep(pause)
                event = letter.event.with_headers({REPLAYS_HEADER: str(letter.replays + 1)})
                try:
                    await publisher.publish(target or letter.topic, event)
                except Exception as exc:  # noqa: BLE001 - reported; the letter stays
                    failed.append((letter.id, f"{type(exc).__name__}: {exc}"))
                    logger.warning("replaying dead letter %s failed: %r", letter.id, exc)
                    continue
                await self._store.delete([letter.id])
                replayed.append(letter.id)
        return ReplayReport(tuple(replayed), tuple(skipped), tuple(failed))

    async def purge(self, where: DeadLetterFilter, *, everything: bool = False) -> int:
        """Delete matching dead letters for good; return how many.

        An empty filter would delete the whole queue: it is refused unless
        ``everything=True`` says that is the intent.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import DeadLetterFilter, DeadLetterQueue
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> queue = DeadLetterQueue(MemoryStore().dead_letters)
            >>> anyio.run(lambda: queue.purge(DeadLetterFilter(topic="orgs")))
            0
        """
        if not isinstance(where, DeadLetterFilter):
            raise ConfigurationError("where", f"must be a DeadLetterFilter, got {where!r}")
        if where.matches_everything and not everything:
            raise ConfigurationError(
                "where", "an empty filter purges every dead letter: pass everything=True to do that"
            )
        return await self._store.purge(where)
