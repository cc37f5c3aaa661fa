"""SQLiteOutboxStore: outbox rows in the ``rk_outbox`` table, leased to relays.

A claim runs under ``BEGIN IMMEDIATE``: it holds the database's write lock from its
first read to its commit, so concurrent claims (threads, relays, processes) are
serialised and never lease one row twice. Every write about a claimed row names the
row's position *and* the lease token of the claim; after a lease expired and another
claim took the row, the old token matches nothing and the write changes nothing.
"""

from __future__ import annotations

import functools
import json
import secrets
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from resilience_kit import _telemetry
from resilience_kit._integrity import corrupt_record
from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging._integrity import read_outbox_message
from resilience_kit.messaging._protocols import OutboxEntry
from resilience_kit.messaging._records import (
    BlockedRow,
    DeadLetter,
    OutboxMessage,
    OutboxStatus,
)
from resilience_kit.stores.sqlite._database import (
    Database,
    check_connection,
    from_seconds,
    in_thread,
    now,
)
from resilience_kit.stores.sqlite._dead_letters import insert_letter

__all__ = ("SQLiteOutboxStore",)

_INSERT = "INSERT INTO rk_outbox (topic, key, event_id, event_type, data) VALUES (?, ?, ?, ?, ?)"
# On a store given a clock, rows are stamped by it (their lag is then in its time too).
_INSERT_AT = (
    "INSERT INTO rk_outbox (topic, key, event_id, event_type, data, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

# Keys that a live lease holds: none of their rows may be claimed.
_LEASED_KEYS = "SELECT DISTINCT key FROM rk_outbox WHERE state = 'leased' AND available_at > ?"

# Unpublished rows in position order (the covering partial index), skipping the keys
# already known to contribute nothing, one chunk at a time.
_SCAN = """
SELECT position, key, state, available_at FROM rk_outbox INDEXED BY rk_outbox_unpublished
WHERE state != 'published' AND position > ? AND key NOT IN (SELECT value FROM json_each(?))
ORDER BY position LIMIT ?
"""
_DETAILS = """
SELECT position, topic, key, data, attempts, created_at, last_error, first_failed_at
FROM rk_outbox
WHERE position IN (SELECT value FROM json_each(?)) ORDER BY position
"""
_LEASE = (
    "UPDATE rk_outbox SET state = 'leased', lease = ?, available_at = ?,"
    " attempts = attempts + 1 WHERE position = ?"
)
# The fenced writes: the row must still be leased, under the caller's lease token.
_PUBLISHED = (
    "UPDATE rk_outbox SET state = 'published', published_at = ?, lease = NULL"
    " WHERE position = ? AND lease = ? AND state = 'leased'"
)
_RETRY = (
    "UPDATE rk_outbox SET state = 'pending', available_at = ?1 + ?2, last_error = ?3,"
    " lease = NULL, first_failed_at = coalesce(first_failed_at, ?1)"
    " WHERE position = ?4 AND lease = ?5 AND state = 'leased'"
)
_RELEASE = (
    "UPDATE rk_outbox SET state = 'pending', available_at = 0, lease = NULL,"
    " attempts = max(attempts - 1, 0) WHERE position = ? AND lease = ? AND state = 'leased'"
)
_BLOCK = (
    "UPDATE rk_outbox SET state = 'blocked', last_error = ?, lease = NULL,"
    " first_failed_at = coalesce(first_failed_at, (julianday('now') - 2440587.5) * 86400.0)"
    " WHERE position = ? AND lease = ? AND state = 'leased'"
)
_DELETE = "DELETE FROM rk_outbox WHERE position = ? AND lease = ? AND state = 'leased'"
_BLOCK_CORRUPT = (
    "UPDATE rk_outbox SET state = 'blocked', lease = NULL, last_error = ? WHERE position = ?"
)
_REQUEUE_SET = (
    "UPDATE rk_outbox SET state = 'pending', available_at = 0, attempts = 0, lease = NULL,"
    " last_error = NULL, first_failed_at = NULL, published_at = NULL "
)
_STATUS = """
SELECT
    coalesce(sum(state = 'pending' OR (state = 'leased' AND available_at <= ?1)), 0),
    coalesce(sum(state = 'leased' AND available_at > ?1), 0),
    coalesce(sum(state = 'blocked'), 0),
    min(position)
FROM rk_outbox INDEXED BY rk_outbox_unpublished WHERE state != 'published'
"""
# Blocked rows: a walk of the covering partial index of unpublished rows (the one the
# claim and `status` walk) from the cursor, then the chosen rows' columns.
_BLOCKED = """
SELECT position, topic, key, event_id, event_type, attempts, last_error, created_at,
    first_failed_at
FROM rk_outbox WHERE position IN (
    SELECT position FROM rk_outbox INDEXED BY rk_outbox_unpublished
    WHERE state != 'published' AND state = 'blocked' AND position > ?
    ORDER BY position LIMIT ?)
ORDER BY position
"""
_PURGE_CHUNK = 5_000  # rows deleted per transaction, so relays are not held up long


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: object) -> str:
    """A stored text column as text, whatever a hand-made edit left in it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _uuid(value: object) -> UUID | None:
    """The stored event id (16 bytes, or text written by hand), or ``None``."""
    if isinstance(value, bytes) and len(value) == 16:
        return UUID(bytes=value)
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            return None
    return None


def _seconds(value: object) -> datetime:
    """A stored Unix time in seconds (``REAL``; TEXT is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not Unix seconds")
    return from_seconds(value)


def _time(value: object) -> datetime | None:
    """A stored Unix time as a datetime, or ``None`` when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return from_seconds(value)
    except (ValueError, OverflowError, OSError):
        return None


def _blocked_row(columns: tuple[Any, ...]) -> BlockedRow:
    """A blocked row as stored; a corrupted column (often why it is blocked) still reads."""
    position, topic, key, event_id, event_type, attempts, last_error, created, failed = columns
    return BlockedRow(
        position=position,
        topic=_text(topic),
        key=_text(key),
        event_id=_uuid(event_id),
        event_type=_text(event_type),
        attempts=attempts if type(attempts) is int else 0,
        last_error=None if last_error is None else _text(last_error),
        created_at=_time(created) or datetime.fromtimestamp(0, timezone.utc),
        first_failed_at=_time(failed),
    )


class _Claim:
    """One claim's work inside its transaction: choose rows, check them, lease them."""

    def __init__(
        self, connection: sqlite3.Connection, limit: int, lease_for: float, label: str
    ) -> None:
        self.connection = connection
        self.label = label
        self.limit = limit
        self.now = now(connection)
        self.lease_until = self.now + lease_for
        self.token = secrets.token_hex(16)
        self.corrupt: list[tuple[int, str]] = []

    def choose(self) -> list[int]:
        """Positions to lease: for each key, a prefix of its claimable unpublished rows.

        The first unpublished row of a key seen in position order is the key's head; a
        key contributes rows while they are claimable and stops at the first that is
        not (blocked, not yet due, leased) — so later rows never overtake it.
        """
        leased = self.connection.execute(_LEASED_KEYS, (self.now,)).fetchall()
        closed = {key for (key,) in leased if isinstance(key, str)}
        chosen: list[int] = []
        after = -(2**63)
        chunk = max(2 * self.limit, 256)
        while True:
            rows = self.connection.execute(
                _SCAN, (after, json.dumps(sorted(closed)), chunk)
            ).fetchall()
            for position, key, state, available_at in rows:
                after = position
                if key in closed:
                    continue
                if not isinstance(key, str) or not _is_number(available_at):
                    self.corrupt.append(
                        (
                            position,
                            str(
                                corrupt_record(
                                    store=self.label,
                                    kind="outbox row",
                                    record=position,
                                    problem="the key or availability time is malformed",
                                )
                            ),
                        )
                    )
                    closed.add(str(key))
                    continue
                if state == "blocked" or available_at > self.now:
                    closed.add(key)
                    continue
                chosen.append(position)
                if len(chosen) == self.limit:
                    return chosen
            if len(rows) < chunk:
                return chosen

    def lease(self, positions: list[int]) -> list[OutboxMessage]:
        """Read the chosen rows, set aside corrupted ones (and their keys), lease the rest."""
        messages: list[OutboxMessage] = []
        stopped: set[str] = set()
        rows = self.connection.execute(_DETAILS, (json.dumps(positions),)).fetchall()
        for position, topic, key, stored, attempts, created_at, last_error, failed_at in rows:
            if key in stopped:
                continue
            # TEXT written by hand stands for the same bytes.
            data = stored.encode() if isinstance(stored, str) else stored
            fields = {
                "topic": topic,
                "key": key,
                "data": data,
                "attempts": attempts + 1 if type(attempts) is int else attempts,
                "created_at": created_at,
                "last_error": last_error,
                "first_failed_at": failed_at,
            }
            try:
                message = read_outbox_message(
                    store=self.label,
                    position=position,
                    lease=self.token,
                    fields=fields,
                    time=_seconds,
                )
            except CorruptRecordError as error:
                self.corrupt.append((position, str(error)))
                stopped.add(key)
                continue
            messages.append(message)
        self.connection.executemany(
            _LEASE,
            [(self.token, self.lease_until, message.position) for message in messages],
        )
        return messages

    def set_aside_corrupt(self) -> None:
        """Block corrupted rows (never delete them) so their keys wait for an operator."""
        for _, problem in self.corrupt:
            _telemetry.logger.warning(
                "%s; blocking the row until it is repaired and requeued", problem
            )
        self.connection.executemany(
            _BLOCK_CORRUPT,
            [(f"corrupted row: {problem}", position) for position, problem in self.corrupt],
        )


class SQLiteOutboxStore:
    """An `OutboxStore` in SQLite (``SQLiteStore(...).outbox``).

    `add` inserts on the caller's `sqlite3.Connection` inside its transaction; every
    other method runs a transaction of its own on a worker thread.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"{self._db.label}.outbox"

    def add(self, connection: sqlite3.Connection, entries: Sequence[OutboxEntry]) -> None:
        """Insert ``entries`` as pending rows in the caller's transaction; never commits.

        One ``INSERT`` (``executemany`` for several entries) and nothing else: the rows
        become visible when the caller commits, and vanish if it rolls back.
        """
        if not self._db.schema_ready:
            self._db.check_caller_schema(connection)
        clock = self._db.clock
        if clock is not None:
            at = clock.time()
            try:
                connection.executemany(
                    _INSERT_AT,
                    [(e.topic, e.key, e.event_id.bytes, e.event_type, e.data, at) for e in entries],
                )
            except sqlite3.Error as error:
                raise self._db.error(error) from error
            except AttributeError:
                check_connection(connection)
                raise
            return
        try:
            if len(entries) == 1:
                entry = entries[0]
                connection.execute(
                    _INSERT,
                    (entry.topic, entry.key, entry.event_id.bytes, entry.event_type, entry.data),
                )
            else:
                connection.executemany(
                    _INSERT,
                    [(e.topic, e.key, e.event_id.bytes, e.event_type, e.data) for e in entries],
                )
        except sqlite3.Error as error:
            raise self._db.error(error) from error
        except AttributeError:  # not a connection: say so (costs nothing until then)
            check_connection(connection)
            raise

    async def aadd(self, connection: Any, entries: Sequence[OutboxEntry]) -> None:
        """`add` from async code; with ``connection=None``, in a transaction of its own.

        A caller's ``connection`` is used here, in the caller's thread. Relays of this
        store object waiting in `wait_for_rows` wake up after the store's own commits.
        """
        if connection is not None:
            self.add(connection, entries)
            return
        if entries:
            await self._db.call(lambda own: self.add(own, entries), write=True)
            self._db.notify()

    async def claim(self, *, limit: int, lease_for: float) -> list[OutboxMessage]:
        """Lease up to ``limit`` claimable rows for ``lease_for`` seconds.

        Rows come back in position order; each key's rows are a prefix of its
        unpublished rows. Corrupted rows are blocked (and logged), not returned.
        """

        def claim(connection: sqlite3.Connection) -> list[OutboxMessage]:
            work = _Claim(connection, limit, lease_for, self._db.label)
            messages = work.lease(work.choose())
            work.set_aside_corrupt()
            return messages

        def idle(connection: sqlite3.Connection) -> bool:
            return not _Claim(connection, limit, lease_for, self._db.label).choose()

        nothing: list[OutboxMessage] = []
        if limit <= 0:
            return nothing
        return await in_thread(
            functools.partial(self._db.run_unless_idle, claim, idle=idle, default=nothing)
        )

    async def _fenced(self, sql: str, params: list[tuple[Any, ...]]) -> int:
        if not params:
            return 0
        return await self._db.call(
            lambda connection: connection.executemany(sql, params).rowcount, write=True
        )

    async def mark_published(self, messages: Sequence[OutboxMessage]) -> int:
        """Mark rows published; return how many still held the given leases."""

        def mark(connection: sqlite3.Connection) -> int:
            moment = now(connection)
            return connection.executemany(
                _PUBLISHED, [(moment, m.position, m.lease) for m in messages]
            ).rowcount

        if not messages:
            return 0
        return await self._db.call(mark, write=True)

    async def retry_later(self, message: OutboxMessage, *, error: str, delay: float) -> bool:
        """Make the row pending again, due ``delay`` seconds from now; fenced by lease."""

        def retry(connection: sqlite3.Connection) -> bool:
            params = (now(connection), delay, error, message.position, message.lease)
            return connection.execute(_RETRY, params).rowcount == 1

        return await self._db.call(retry, write=True)

    async def release(self, messages: Sequence[OutboxMessage]) -> int:
        """Give leases back unattempted (pending, due now, one attempt returned)."""
        return await self._fenced(_RELEASE, [(m.position, m.lease) for m in messages])

    async def block(self, message: OutboxMessage, *, error: str) -> bool:
        """Mark the row blocked (its key waits until it is requeued); fenced by lease."""
        return await self._fenced(_BLOCK, [(error, message.position, message.lease)]) == 1

    async def dead_letter(self, message: OutboxMessage, letter: DeadLetter) -> bool:
        """Move the row to dead letters in one transaction; fenced by lease."""

        def move(connection: sqlite3.Connection) -> bool:
            if connection.execute(_DELETE, (message.position, message.lease)).rowcount != 1:
                return False
            insert_letter(connection, letter)
            return True

        return await self._db.call(move, write=True)

    async def requeue(self, *, positions: Sequence[int] | None = None, blocked: bool = True) -> int:
        """Make rows pending and due now, with attempts reset; return how many changed.

        The blocked rows (all, or those at ``positions``), and the published rows at
        ``positions`` (a replay from the outbox).
        """

        def requeue(connection: sqlite3.Connection) -> int:
            if positions is None:
                return connection.execute(_REQUEUE_SET + "WHERE state = 'blocked'").rowcount
            return connection.executemany(
                _REQUEUE_SET + "WHERE position = ? AND state IN ('blocked', 'published')",
                [(position,) for position in dict.fromkeys(positions)],
            ).rowcount

        if positions is None and not blocked:
            return 0
        return await self._db.call(requeue, write=True)

    async def blocked(self, *, limit: int = 100, after: int | None = None) -> list[BlockedRow]:
        """Blocked rows in position order, after the ``after`` position, at most ``limit``.

        A read transaction that walks the partial index of unpublished rows (no write
        lock). A row with a corrupted column is listed all the same, since that is
        often why it was blocked: an unreadable event id reads as ``None``, other text
        as its ``str``, an unreadable time as ``None`` (``created_at``: the Unix epoch).
        """
        if limit <= 0:
            return []
        start = -(2**63) if after is None else max(min(after, 2**63 - 1), -(2**63))

        def blocked(connection: sqlite3.Connection) -> list[BlockedRow]:
            rows = connection.execute(_BLOCKED, (start, limit)).fetchall()
            return [_blocked_row(tuple(row)) for row in rows]

        return await self._db.call(blocked, write=False)

    async def purge_published(self, *, older_than: float) -> int:
        """Delete rows published more than ``older_than`` seconds ago; return how many.

        Deletes in chunks of a few thousand rows, one transaction each.
        """
        cutoff: list[float] = []

        def purge(connection: sqlite3.Connection) -> int:
            if not cutoff:
                cutoff.append(now(connection) - older_than)
            return connection.execute(
                "DELETE FROM rk_outbox WHERE position IN (SELECT position FROM rk_outbox"
                " WHERE state = 'published' AND published_at <= ? LIMIT ?)",
                (cutoff[0], _PURGE_CHUNK),
            ).rowcount

        total = 0
        while True:
            deleted = await self._db.call(purge, write=True)
            total += deleted
            if deleted < _PURGE_CHUNK:
                return total

    async def status(self) -> OutboxStatus:
        """Counts by state and the lag (age of the oldest unpublished row), measured now."""

        def status(connection: sqlite3.Connection) -> OutboxStatus:
            moment = now(connection)
            pending, leased, blocked, oldest = connection.execute(_STATUS, (moment,)).fetchone()
            published = connection.execute(
                "SELECT count(*) FROM rk_outbox WHERE state = 'published'"
            ).fetchone()[0]
            age = 0.0
            if oldest is not None:
                created = connection.execute(
                    "SELECT created_at FROM rk_outbox WHERE position = ?", (oldest,)
                ).fetchone()[0]
                if _is_number(created):
                    age = max(0.0, moment - created)
            return OutboxStatus(
                pending=pending,
                leased=leased,
                blocked=blocked,
                published=published,
                oldest_pending_age=age,
            )

        return await self._db.call(status, write=False)

    async def wait_for_rows(self, timeout: float) -> None:
        """Wait ``timeout`` seconds, or less when rows were committed through this store.

        SQLite has no notifications between connections: a commit through this store
        object (`aadd` without a connection, or a connection from
        `SQLiteStore.connect` that wrote something) wakes the wait at once; rows from
        anywhere else are found by the relay's next poll.
        """
        await self._db.wait_for_commit(timeout)
