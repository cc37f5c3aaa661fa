"""The small protocols messaging is built on: four stores and two transport roles.

Every backend (`resilience_kit.stores`) implements the store protocols it can, and one
contract test suite runs against each; every transport (`resilience_kit.transports`)
implements `Publisher` and gives `Subscriber` objects.

Times inside a store (lease expiry, retry-at, TTLs) are measured by the store's own
clock: the database's for SQL backends (so relays on machines with skewed clocks agree),
the server's for Redis, the injected `Clock` for the in-memory store. Durations given to
a store are seconds, as floats.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from resilience_kit.messaging._event import Event
from resilience_kit.messaging._records import (
    BlockedRow,
    DeadLetter,
    DeadLetterFilter,
    IdempotencyRecord,
    OutboxMessage,
    OutboxStatus,
)

__all__ = (
    "DeadLetterStore",
    "Delivery",
    "IdempotencyStore",
    "InboxStore",
    "OutboxEntry",
    "OutboxStore",
    "Publisher",
    "Subscriber",
)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One event to write to an outbox: its topic, ordering key, id, type and JSON.

    `Outbox.add` builds these (encoding each event once); stores only write them.

    Examples:
        >>> event = Event(type="org.created", key="org:1", payload={})
        >>> entry = OutboxEntry.of("orgs", event)
        >>> entry.key, entry.event_id == event.id
        ('org:1', True)
    """

    topic: str
    key: str
    event_id: UUID
    event_type: str
    data: bytes

    @classmethod
    def of(cls, topic: str, event: Event, *, max_bytes: int | None = None) -> OutboxEntry:
        """Encode ``event`` for ``topic`` (raising `EventTooLargeError` past ``max_bytes``)."""
        data = event.to_json() if max_bytes is None else event.to_json(max_bytes=max_bytes)
        return cls(topic, event.key, event.id, event.type, data)


@runtime_checkable
class OutboxStore(Protocol):
    """Where outbox rows live between the caller's commit and their publication.

    Rows have one of four states: *pending* (waiting, possibly not before a retry
    time), *leased* (claimed by a relay until its lease expires), *blocked* (out of
    attempts under the block policy) and *published*. Order per key: a row is only
    claimable when every earlier row of its key (by position) is published.
    """

    def add(self, connection: Any, entries: Sequence[OutboxEntry]) -> None:
        """Insert ``entries`` as pending rows using the caller's open ``connection``.

        Runs inside the caller's transaction and never commits or rolls back: the rows
        become visible exactly when the caller's transaction commits. The connection's
        type is the backend's (a `sqlite3.Connection`, a `psycopg.Connection`);
        stores without connections (in memory) accept ``None``.
        """
        ...

    async def aadd(self, connection: Any, entries: Sequence[OutboxEntry]) -> None:
        """`add` for async connections (a `psycopg.AsyncConnection`, asyncio only).

        With ``connection=None`` the store writes and commits in a transaction of its
        own (how dead letters are replayed into the outbox, and how a service without
        a shared database adds events).
        """
        ...

    async def claim(self, *, limit: int, lease_for: float) -> list[OutboxMessage]:
        """Lease up to ``limit`` claimable rows for ``lease_for`` seconds and return them.

        A row is claimable when it is pending and due, or leased with an expired lease,
        and every earlier row of its key is published. Rows of one key come back in
        position order and form a prefix of the key's unpublished rows; a key is never
        leased to two claims at once. Each claimed row gets a new lease token and its
        ``attempts`` goes up by one. Concurrent claims (other relays, other processes)
        never return the same row while its lease holds.
        """
        ...

    async def mark_published(self, messages: Sequence[OutboxMessage]) -> int:
        """Mark rows published; return how many still held the given leases.

        Rows whose lease is no longer the one given change nothing.
        """
        ...

    async def retry_later(self, message: OutboxMessage, *, error: str, delay: float) -> bool:
        """Release a failed row: pending again, due ``delay`` seconds from now.

        ``error`` is kept as its last error, and the time of its first failure is kept
        (set now if unset). False (and no change) when the lease is no longer held.
        """
        ...

    async def release(self, messages: Sequence[OutboxMessage]) -> int:
        """Give leases back untouched; return how many leases were still held.

        The rows were not attempted: pending, due now, their attempt given back.
        """
        ...

    async def block(self, message: OutboxMessage, *, error: str) -> bool:
        """Mark the row blocked (its key waits until it is requeued); fenced by lease."""
        ...

    async def dead_letter(self, message: OutboxMessage, letter: DeadLetter) -> bool:
        """Move the row to the same backend's dead letters as ``letter``, atomically.

        Fenced by the lease: when it is no longer held, neither happens (False).
        """
        ...

    async def requeue(self, *, positions: Sequence[int] | None = None, blocked: bool = True) -> int:
        """Make rows pending and due now, attempts reset; return how many changed.

        Without ``positions``: every blocked row (when ``blocked``). With them: those
        rows if blocked or published (a replay from the outbox); others are left alone.
        """
        ...

    async def blocked(self, *, limit: int = 100, after: int | None = None) -> list[BlockedRow]:
        """Blocked rows in position order, after the ``after`` position, at most ``limit``.

        Read-only. Page with the last position returned as the next ``after``; no rows
        for ``limit <= 0``. A row whose stored event id cannot be read is still listed
        (its ``event_id`` is ``None``).
        """
        ...

    async def purge_published(self, *, older_than: float) -> int:
        """Delete rows published more than ``older_than`` seconds ago; return how many."""
        ...

    async def status(self) -> OutboxStatus:
        """Counts by state and the lag, measured now."""
        ...

    async def wait_for_rows(self, timeout: float) -> None:
        """Return when rows may have been added, or after ``timeout`` seconds.

        Only a hint (PostgreSQL: LISTEN/NOTIFY); the relay polls regardless. A store
        without notifications sleeps on its clock.
        """
        ...


@runtime_checkable
class DeadLetterStore(Protocol):
    """Where messages go when everything else gave up; nothing in it expires by itself."""

    async def put(self, letter: DeadLetter) -> None:
        """Store ``letter`` (idempotent on ``letter.id``)."""
        ...

    async def get(self, letter_id: UUID) -> DeadLetter | None:
        """The dead letter with this id, or ``None``.

        Raises:
            CorruptRecordError: the stored record cannot be read back.
        """
        ...

    async def list(
        self, where: DeadLetterFilter, *, limit: int = 100, after: UUID | None = None
    ) -> list[DeadLetter]:
        """Matching dead letters in id (time) order, after the ``after`` cursor.

        A corrupted record is skipped (and logged), never raised, so that one bad row
        does not hide the others.
        """
        ...

    async def count(self, where: DeadLetterFilter) -> int:
        """How many dead letters match."""
        ...

    async def delete(self, letter_ids: Sequence[UUID]) -> int:
        """Delete these dead letters; return how many existed."""
        ...

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete every matching dead letter; return how many."""
        ...


@runtime_checkable
class InboxStore(Protocol):
    """Which events each consumer has already processed (de-duplication by event id)."""

    def mark(self, connection: Any, consumer: str, event_id: UUID) -> bool:
        """Record the event as processed inside the caller's open transaction.

        Uses ``connection`` and never commits. True the first time, False for a
        duplicate. A store that cannot join the caller's transaction (Redis) raises
        `TypeError`: use `record` there.
        """
        ...

    async def amark(self, connection: Any, consumer: str, event_id: UUID) -> bool:
        """`mark` for async connections (a `psycopg.AsyncConnection`, asyncio only)."""
        ...

    async def record(self, consumer: str, event_id: UUID) -> bool:
        """Record the event as processed in a transaction of the store's own.

        True the first time, False for a duplicate.
        """
        ...

    async def contains(self, consumer: str, event_id: UUID) -> bool:
        """Whether the event was recorded for ``consumer``."""
        ...

    async def forget(self, consumer: str, event_id: UUID) -> bool:
        """Remove the record (so a replay is processed again); True if it existed."""
        ...

    async def purge(self, *, older_than: float) -> int:
        """Remove records older than ``older_than`` seconds; return how many."""
        ...


@runtime_checkable
class IdempotencyStore(Protocol):
    """Records of idempotent calls: one arbitrated claim per key, then the stored result.

    A record past its expiry (``expires_in <= 0``) is treated as absent by every method.
    """

    async def claim(
        self, key: str, fingerprint: str, *, token: str, lock_for: float
    ) -> IdempotencyRecord:
        """Atomically claim ``key`` for a new call, or return the record that holds it.

        When no live record exists, store an in-progress record owned by ``token``
        that expires in ``lock_for`` seconds, and return it (``record.token == token``:
        the caller won and must run the call). Otherwise return the live record as it
        is (another token: a duplicate). Exactly one of any number of concurrent
        claims wins.
        """
        ...

    async def complete(self, key: str, *, token: str, result: bytes, ttl: float) -> bool:
        """Store ``result`` for the call ``token`` owns; the record lives ``ttl`` seconds.

        Acts only on a live in-progress record that ``token`` owns: False (and no
        change) when the claim expired, another call claimed the key, or the record
        is already completed.
        """
        ...

    async def release(self, key: str, *, token: str) -> bool:
        """Delete the in-progress record ``token`` owns, so that the next call runs.

        For a call that failed when failures are not stored. Acts only on a live
        in-progress record that ``token`` owns; otherwise False and no change.
        """
        ...

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``, or ``None``.

        Raises:
            CorruptRecordError: the stored record cannot be read back.
        """
        ...

    async def purge_expired(self) -> int:
        """Delete expired records; return how many (0 where the server expires them)."""
        ...


@runtime_checkable
class Publisher(Protocol):
    """Something events can be published to: a transport, or a test double."""

    async def publish(self, topic: str, event: Event) -> None:
        """Publish ``event`` to ``topic``; return once the transport has accepted it.

        Raises whatever the transport raises when it did not accept the event; the
        caller (an outbox relay) retries. Publishing one event twice is allowed:
        delivery is at least once and consumers de-duplicate by event id.
        """
        ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as a transport delivered it: raw bytes, not yet decoded.

    Attributes:
        topic: where it came from.
        data: the message's bytes (an event's JSON, or garbage for a poison message).
        id: the transport's id for it (a stream entry id, a partition-offset pair).
        key: the ordering key, when the transport carries it beside the data.
        attempt: deliveries of this message so far, when the transport counts them.
        handle: the transport's own handle, for `Subscriber.ack`.

    Examples:
        >>> Delivery(topic="orgs", data=b"{}", id="1-0").attempt
        1
    """

    topic: str
    data: bytes
    id: str
    key: str | None = None
    attempt: int = 1
    handle: Any = None


@runtime_checkable
class Subscriber(Protocol):
    """A subscription to one topic as a member of a consumer group.

    Iterate it for deliveries; `ack` each one once it is handled (or dead-lettered).
    A delivery never acknowledged is delivered again — to this member after a
    restart, or to another member of the group once it is reclaimed.
    """

    def __aiter__(self) -> AsyncIterator[Delivery]:
        """Deliveries, in order per key, until `aclose` is called."""
        ...

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge ``delivery``: the group will not see it again."""
        ...

    async def aclose(self) -> None:
        """Stop iterating and release the transport's resources."""
        ...
