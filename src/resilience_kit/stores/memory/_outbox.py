"""An outbox in memory: the reference implementation of `OutboxStore`."""

from __future__ import annotations

import bisect
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import anyio

from resilience_kit import _telemetry
from resilience_kit.clock import Clock
from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging._integrity import read_outbox_message
from resilience_kit.messaging._protocols import OutboxEntry
from resilience_kit.messaging._records import (
    BlockedRow,
    DeadLetter,
    OutboxMessage,
    OutboxStatus,
)
from resilience_kit.stores.memory._dead_letters import MemoryDeadLetterStore
from resilience_kit.stores.memory._transaction import MemoryTransaction

__all__ = ("MemoryOutboxStore",)

PENDING, LEASED, BLOCKED, PUBLISHED = "pending", "leased", "blocked", "published"


def _moment(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)


def _seconds(value: object) -> datetime:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not Unix seconds")
    return datetime.fromtimestamp(value, timezone.utc)


@dataclass(slots=True)
class _Row:
    position: int
    topic: str
    key: str
    data: bytes
    created_at: float
    event_id: uuid.UUID
    event_type: str
    state: str = PENDING
    attempts: int = 0
    lease: str | None = None
    lease_until: float = 0.0
    available_at: float = 0.0
    last_error: str | None = None
    first_failed_at: float | None = None
    published_at: float = 0.0


class MemoryOutboxStore:
    """Outbox rows in memory, on an injected clock; rows appear when a transaction commits.

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import Event
        >>> from resilience_kit.messaging._protocols import OutboxEntry
        >>> from resilience_kit.stores.memory._dead_letters import MemoryDeadLetterStore
        >>> from resilience_kit.testing import VirtualClock
        >>> outbox = MemoryOutboxStore(VirtualClock(), MemoryDeadLetterStore())
        >>> event = Event(type="org.created", key="o1", payload={})
        >>> outbox.add(None, [OutboxEntry.of("orgs", event)])
        >>> [message.key for message in anyio.run(lambda: outbox.claim(limit=10, lease_for=30))]
        ['o1']
    """

    def __init__(self, clock: Clock, dead_letters: MemoryDeadLetterStore) -> None:
        self._clock = clock
        self._dead_letters = dead_letters
        self._rows: dict[int, _Row] = {}
        self._unpublished: dict[str, list[int]] = {}  # key -> positions, in order
        self._positions = itertools.count(1)
        self._wake: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"MemoryOutboxStore({len(self._rows)} rows)"

    # -- writes in the caller's transaction ----------------------------------------

    def _insert(self, entries: Sequence[OutboxEntry]) -> None:
        now = self._clock.time()
        for entry in entries:
            position = next(self._positions)
            self._rows[position] = _Row(
                position,
                entry.topic,
                entry.key,
                entry.data,
                now,
                entry.event_id,
                entry.event_type,
                available_at=now,
            )
            self._unpublished.setdefault(entry.key, []).append(position)
        if self._wake is not None:
            self._wake.set()

    def add(self, connection: Any, entries: Sequence[OutboxEntry]) -> None:
        """Add rows when ``connection`` (a `MemoryTransaction`) commits; at once for ``None``."""
        if connection is None:
            self._insert(entries)
        elif isinstance(connection, MemoryTransaction):
            batch = list(entries)
            connection.on_commit(lambda: self._insert(batch))
        else:
            raise TypeError(
                "the in-memory outbox takes a MemoryStore.transaction() or None, "
                f"got {type(connection).__name__}"
            )

    async def aadd(self, connection: Any, entries: Sequence[OutboxEntry]) -> None:
        """`add`, awaited."""
        self.add(connection, entries)

    # -- the relay's side ------------------------------------------------------------

    def _claimable(self, row: _Row, now: float) -> bool:
        if row.state == PENDING:
            return row.available_at <= now
        return row.state == LEASED and row.lease_until <= now

    async def claim(self, *, limit: int, lease_for: float) -> list[OutboxMessage]:
        """Lease up to ``limit`` rows: per key, a prefix of its unpublished rows."""
        now = self._clock.time()
        lease = uuid.uuid4().hex
        claimed: list[OutboxMessage] = []
        heads = sorted((positions[0], key) for key, positions in self._unpublished.items())
        for _, key in heads:
            positions = self._unpublished[key]
            if any(
                self._rows[p].state == LEASED and self._rows[p].lease_until > now for p in positions
            ):
                continue  # a live claim holds part of this key
            for position in positions:
                if len(claimed) >= limit:
                    return claimed
                row = self._rows[position]
                if not self._claimable(row, now):
                    break
                try:
                    message = self._message(row, lease, row.attempts + 1)
                except CorruptRecordError as error:
                    # The rule of every backend: blocked (never deleted), and its key
                    # waits behind it until an operator repairs and requeues it.
                    _telemetry.logger.warning(
                        "%s; blocking the row until it is repaired and requeued", error
                    )
                    row.state, row.lease, row.last_error = BLOCKED, None, f"corrupted row: {error}"
                    break
                row.state, row.lease, row.lease_until = LEASED, lease, now + lease_for
                row.attempts += 1
                claimed.append(message)
        return claimed

    def _message(self, row: _Row, lease: str, attempts: int) -> OutboxMessage:
        return read_outbox_message(
            store=repr(self),
            position=row.position,
            lease=lease,
            fields={
                "topic": row.topic,
                "key": row.key,
                "data": row.data,
                "attempts": attempts,
                "created_at": row.created_at,
                "last_error": row.last_error,
                "first_failed_at": row.first_failed_at,
            },
            time=_seconds,
        )

    def _held(self, message: OutboxMessage) -> _Row | None:
        row = self._rows.get(message.position)
        if row is None or row.state != LEASED or row.lease != message.lease:
            return None
        return row

    def _unlist(self, row: _Row) -> None:
        positions = self._unpublished[row.key]
        positions.remove(row.position)
        if not positions:
            del self._unpublished[row.key]

    async def mark_published(self, messages: Sequence[OutboxMessage]) -> int:
        """Mark rows published where the lease still holds; return how many."""
        now = self._clock.time()
        done = 0
        for message in messages:
            row = self._held(message)
            if row is not None:
                row.state, row.lease, row.published_at = PUBLISHED, None, now
                self._unlist(row)
                done += 1
        return done

    async def retry_later(self, message: OutboxMessage, *, error: str, delay: float) -> bool:
        """Make the row pending again, due in ``delay`` seconds."""
        row = self._held(message)
        if row is None:
            return False
        now = self._clock.time()
        row.state, row.lease, row.last_error = PENDING, None, error
        row.available_at = now + delay
        if row.first_failed_at is None:
            row.first_failed_at = now
        return True

    async def release(self, messages: Sequence[OutboxMessage]) -> int:
        """Give leases back untouched, returning the attempt."""
        now = self._clock.time()
        done = 0
        for message in messages:
            row = self._held(message)
            if row is not None:
                row.state, row.lease, row.available_at = PENDING, None, now
                row.attempts -= 1
                done += 1
        return done

    async def block(self, message: OutboxMessage, *, error: str) -> bool:
        """Block the row (and so its key) until it is requeued."""
        row = self._held(message)
        if row is None:
            return False
        row.state, row.lease, row.last_error = BLOCKED, None, error
        if row.first_failed_at is None:
            row.first_failed_at = self._clock.time()
        return True

    async def dead_letter(self, message: OutboxMessage, letter: DeadLetter) -> bool:
        """Move the row to dead letters, atomically."""
        row = self._held(message)
        if row is None:
            return False
        del self._rows[row.position]
        self._unlist(row)
        self._dead_letters.put_now(letter)
        return True

    # -- operations --------------------------------------------------------------------

    async def requeue(self, *, positions: Sequence[int] | None = None, blocked: bool = True) -> int:
        """Make blocked (or named published) rows pending again, attempts reset."""
        now = self._clock.time()
        if positions is None:
            rows = [row for row in self._rows.values() if blocked and row.state == BLOCKED]
        else:
            rows = [self._rows[p] for p in dict.fromkeys(positions) if p in self._rows]
            rows = [row for row in rows if row.state in (BLOCKED, PUBLISHED)]
        for row in rows:
            if row.state == PUBLISHED:
                bisect.insort(self._unpublished.setdefault(row.key, []), row.position)
            row.state, row.attempts, row.available_at, row.last_error = PENDING, 0, now, None
            row.first_failed_at = None
        if rows and self._wake is not None:
            self._wake.set()
        return len(rows)

    async def blocked(self, *, limit: int = 100, after: int | None = None) -> list[BlockedRow]:
        """Blocked rows in position order, after ``after``, at most ``limit``."""
        start = -1 if after is None else after
        found: list[BlockedRow] = []
        if limit <= 0:
            return found
        for row in self._rows.values():  # inserted, so kept, in position order
            if row.state == BLOCKED and row.position > start:
                found.append(
                    BlockedRow(
                        position=row.position,
                        topic=row.topic,
                        key=row.key,
                        event_id=row.event_id,
                        event_type=row.event_type,
                        attempts=row.attempts,
                        last_error=row.last_error,
                        created_at=datetime.fromtimestamp(row.created_at, timezone.utc),
                        first_failed_at=_moment(row.first_failed_at),
                    )
                )
                if len(found) == limit:
                    break
        return found

    async def purge_published(self, *, older_than: float) -> int:
        """Delete rows published more than ``older_than`` seconds ago."""
        cutoff = self._clock.time() - older_than
        old = [
            row.position
            for row in self._rows.values()
            if row.state == PUBLISHED and row.published_at <= cutoff
        ]
        for position in old:
            del self._rows[position]
        return len(old)

    async def status(self) -> OutboxStatus:
        """Counts by state and the age of the oldest unpublished row."""
        now = self._clock.time()
        counts = {PENDING: 0, LEASED: 0, BLOCKED: 0, PUBLISHED: 0}
        oldest = now
        for row in self._rows.values():
            state = row.state
            if state == LEASED and row.lease_until <= now:
                state = PENDING  # an expired lease is waiting to be reclaimed
            counts[state] += 1
            if state != PUBLISHED:
                oldest = min(oldest, row.created_at)
        return OutboxStatus(
            pending=counts[PENDING],
            leased=counts[LEASED],
            blocked=counts[BLOCKED],
            published=counts[PUBLISHED],
            oldest_pending_age=max(0.0, now - oldest),
        )

    async def wait_for_rows(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound
        """Return when rows are added, or after ``timeout`` seconds on the clock."""
        wake = self._wake = anyio.Event()
        async with anyio.create_task_group() as group:

            async def wake_up() -> None:
                await wake.wait()
                group.cancel_scope.cancel()

            group.start_soon(wake_up)
            await self._clock.asleep(timeout)
            group.cancel_scope.cancel()
