"""The outbox in PostgreSQL: the ``rk_outbox`` table of a `PostgresStore`.

How a claim keeps order per key and never leases a key to two relays
----------------------------------------------------------------------
A key's *head* is its unpublished row with the lowest position. Only heads are ever
claimed on their own merits; the rows after a head (its *followers*) are leased only
together with it, in the same statement, as a contiguous prefix. So:

- Relay B can never take row 2 of a key while relay A holds row 1: row 2 is not a head
  while row 1 is unpublished, whatever B's snapshot says about row 1's lease, and
  ``FOR UPDATE SKIP LOCKED`` on row 1 only lets B skip it, not look past it. (Locking
  rows alone would not be enough: B would skip the locked row 1 and lease row 2.)
- A head is claimable only if no row of its key carries a live lease, so a relay that
  gave a head back (``retry_later``) but kept its followers still holds the key.
- Two claims racing for one head: the first locks it (``SKIP LOCKED`` makes the other
  skip it); once the first commits, the row's lease is live and the other's re-check
  of the updated row (PostgreSQL re-evaluates the conditions on the new version)
  drops it.

Finding heads without scanning the backlog: the claim walks the keys that have
unpublished rows, one index probe per key ("loose index scan" over
``(key, position) WHERE state <> 2``), so a key with a million queued rows costs one
probe, not a million, and a key whose head cannot be claimed (leased, waiting for a
retry, blocked) costs one probe however long its queue. The walk resumes where this
store's previous claim stopped and wraps around, so every key gets its turn, and it
looks at a bounded number of keys per claim (``_WALK``), so a multitude of stuck keys
never pins the database either. A claim takes one row of every head it found before a
second row of any (breadth first), so the keys it walked past are all served. Across
keys rows are not published in global position order (nothing promises that). A
probe also steps over the index entries of the key's published rows until VACUUM
removes them (the table asks autovacuum to run often); a long-running transaction
anywhere on the server holds that cleanup back, as for any PostgreSQL queue.

Leases: ``available_at`` is the due time of a pending row (NULL: due since it was
added) and the lease expiry of a leased one, so "claimable" is one comparison with the
database clock (``now()``).
Every write about a claimed row names its lease token and changes nothing if the row
has another (an expired lease that was claimed again).

Positions come from an identity column, taken when the row is inserted, while commit
order decides visibility. Two transactions that add events for one key concurrently
(without locking anything in common) may commit in the other order; order per key is
then the order of positions among rows that were visible together. Services that need
a strict order per key write it under a lock on the key's own row, as usual.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import timezone
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from resilience_kit import _telemetry
from resilience_kit.errors import ConfigurationError, CorruptRecordError
from resilience_kit.messaging._integrity import read_outbox_message
from resilience_kit.messaging._protocols import OutboxEntry
from resilience_kit.messaging._records import (
    BlockedRow,
    DeadLetter,
    OutboxMessage,
    OutboxStatus,
)
from resilience_kit.stores.postgres._db import require_asyncio, seconds
from resilience_kit.stores.postgres._dead_letters import COLUMNS, letter_row

if TYPE_CHECKING:
    import psycopg

    from resilience_kit.stores.postgres._db import Database
    from resilience_kit.stores.postgres._notify import Listener

__all__ = ("PostgresOutboxStore",)

_WALK = 2_000
"""Keys a claim looks at, at most (and at least ``4 * limit``)."""

_INSERT_COLUMNS = "topic, key, event_id, event_type, data"

# One row: the common case, one statement. With notify, pg_notify is called in the FROM
# clause of the same statement: no extra round trip, and PostgreSQL folds the
# identical notifications of one transaction into one, sent at commit.
_INSERT_ONE = f"INSERT INTO {{schema}}.rk_outbox ({_INSERT_COLUMNS}) VALUES (%s, %s, %s, %s, %s)"  # noqa: S608 - constants only
_INSERT_ONE_NOTIFY = (
    f"INSERT INTO {{schema}}.rk_outbox ({_INSERT_COLUMNS})"  # noqa: S608 - constants only
    " SELECT %s, %s, %s, %s, %s FROM pg_notify({channel}, '')"
)
# Many rows: arrays, one statement; positions follow the list's order.
_INSERT_MANY = (
    f"INSERT INTO {{schema}}.rk_outbox ({_INSERT_COLUMNS})"  # noqa: S608 - constants only
    f" SELECT {_INSERT_COLUMNS}"
    " FROM unnest(%s::text[], %s::text[], %s::uuid[], %s::text[], %s::bytea[])"
    " WITH ORDINALITY AS u(topic, key, event_id, event_type, data, n)"
    "{notify} ORDER BY n"
)

_LIVE_LEASE = """
    EXISTS (SELECT FROM {schema}.rk_outbox AS l
            WHERE l.key = {alias}.key AND l.state = 0 AND l.lease IS NOT NULL
              AND l.available_at > now())
"""

# The walk: from the first key after the cursor (or the first key), one probe per key
# for its head; a head is returned when it is ready (pending, due, and no row of its key
# leased), and the last key looked at is returned when the walk stops at its limit.
_WALK_SQL = """
WITH RECURSIVE walk (key, position, state, available_at, depth) AS (
    (SELECT o.key, o.position, o.state, o.available_at, 1
     FROM {schema}.rk_outbox AS o
     WHERE o.state <> 2 {first}
     ORDER BY o.key, o.position LIMIT 1)
  UNION ALL
    SELECT n.key, n.position, n.state, n.available_at, w.depth + 1
    FROM walk AS w CROSS JOIN LATERAL (
        SELECT o.key, o.position, o.state, o.available_at
        FROM {schema}.rk_outbox AS o
        WHERE o.state <> 2 AND o.key > w.key {upto}
        ORDER BY o.key, o.position LIMIT 1) AS n
    WHERE w.depth < %(walk)s
)
SELECT w.key, w.position, w.depth, ready
FROM walk AS w
CROSS JOIN LATERAL (
    SELECT w.state = 0 AND (w.available_at IS NULL OR w.available_at <= now())
           AND NOT {live_lease} AS ready
    OFFSET 0) AS r  -- (not flattened: the lease probe runs once per key, not twice)
WHERE ready OR w.depth = %(walk)s
LIMIT %(limit)s
"""

# Lease the heads found (re-checked under lock) and the prefix of each one's key, heads
# first: the rows are ranked within their key, and the rank-1 rows (the heads) come
# before all rank-2 rows, and so on, so what the limit cuts off is always a key's tail.
_LEASE_SQL = """
WITH heads AS (
    SELECT o.position, o.key
    FROM {schema}.rk_outbox AS o
    WHERE o.position = ANY(%(heads)s::bigint[])
      AND o.state = 0 AND (o.available_at IS NULL OR o.available_at <= now())
      AND NOT EXISTS (SELECT FROM {schema}.rk_outbox AS e
                      WHERE e.key = o.key AND e.state <> 2 AND e.position < o.position)
      AND NOT {live_lease}
    FOR UPDATE OF o SKIP LOCKED
), runs AS (
    SELECT f.position, f.rank, h.position AS head
    FROM heads AS h
    CROSS JOIN LATERAL (
        SELECT g.position,
               row_number() OVER w AS rank,
               bool_and(g.state = 0 AND (g.available_at IS NULL OR g.available_at <= now()))
                   OVER w AS ok
        FROM (SELECT g.position, g.state, g.available_at
              FROM {schema}.rk_outbox AS g
              WHERE g.key = h.key AND g.state <> 2 AND g.position >= h.position
              ORDER BY g.position LIMIT %(per_key)s) AS g
        WINDOW w AS (ORDER BY g.position ROWS UNBOUNDED PRECEDING)
    ) AS f
    WHERE f.ok
), picked AS (
    SELECT position FROM runs ORDER BY rank, head LIMIT %(limit)s
)
UPDATE {schema}.rk_outbox AS o
SET lease = %(lease)s,
    available_at = now() + %(lease_for)s * interval '1 second',
    attempts = o.attempts + 1
FROM picked
WHERE o.position = picked.position AND o.state = 0
RETURNING o.position, o.topic, o.key, o.data, o.attempts, o.created_at, o.last_error,
    o.first_failed_at
"""

# Writes fenced by the lease: a row whose lease token is not the caller's is left alone.
_FENCED = "WHERE o.position = %s AND o.lease = %s AND o.state = 0"
_FENCED_MANY = (
    "FROM unnest(%s::bigint[], %s::text[]) AS m(position, lease)"
    " WHERE o.position = m.position AND o.lease = m.lease AND o.state = 0"
)
_PUBLISHED_SQL = (
    f"UPDATE {{schema}}.rk_outbox AS o SET state = 2, published_at = now() {_FENCED_MANY}"  # noqa: S608 - constants only
)
_RELEASED_SQL = (
    "UPDATE {schema}.rk_outbox AS o SET lease = NULL, available_at = NULL,"  # noqa: S608 - constants only
    f" attempts = greatest(o.attempts - 1, 0) {_FENCED_MANY}"
)
_RETRY_SQL = (
    "UPDATE {schema}.rk_outbox AS o SET lease = NULL,"  # noqa: S608 - constants only
    f" available_at = now() + %s * interval '1 second', last_error = %s,"
    f" first_failed_at = coalesce(o.first_failed_at, now()) {_FENCED}"
)
_BLOCK_SQL = (  # constants only
    "UPDATE {schema}.rk_outbox AS o SET state = 1, lease = NULL, last_error = %s,"  # noqa: S608
    f" first_failed_at = coalesce(o.first_failed_at, now()) {_FENCED}"
)
# One statement, so one transaction: the row leaves the outbox exactly when its dead
# letter is stored, and neither happens if the lease is not held.
_DEAD_LETTER_SQL = (
    f"WITH gone AS (DELETE FROM {{schema}}.rk_outbox AS o {_FENCED} RETURNING 1),"  # noqa: S608 - constants only
    f" kept AS (INSERT INTO {{schema}}.rk_dead_letters ({COLUMNS})"
    f" SELECT {', '.join(['%s'] * 14)} FROM gone ON CONFLICT (id) DO NOTHING)"
    " SELECT count(*) FROM gone"
)


def _error_text(error: str) -> bytes:
    return error.encode("utf-8", "surrogatepass")


def _read_error(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return bytes(value).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # informational only: never let it stop a claim
        return bytes(value).decode("utf-8", "replace")


class PostgresOutboxStore:
    """An `OutboxStore` in PostgreSQL (``store.outbox`` of a `PostgresStore`).

    `add` writes with the caller's psycopg connection, inside its transaction; the
    other methods use the store's pool on worker threads. See the module docstring
    for how claims keep order per key.
    """

    def __init__(self, db: Database, *, listener: Listener | None, channel: str) -> None:
        self._db = db
        self._listener = listener
        sql = db.sql
        notify = listener is not None
        channel_literal = sql.Literal(channel)
        self._insert_one = db.query(
            _INSERT_ONE_NOTIFY if notify else _INSERT_ONE, channel=channel_literal
        )
        self._insert_many = db.query(
            _INSERT_MANY,
            notify=sql.SQL(" CROSS JOIN pg_notify({}, '')").format(channel_literal)
            if notify
            else sql.SQL(""),
        )
        live = sql.SQL(_LIVE_LEASE).format(
            schema=sql.Identifier(db.schema), alias=sql.Identifier("w")
        )
        after = sql.SQL("AND o.key > %(after)s")
        upto = sql.SQL("AND o.key <= %(upto)s")
        nothing = sql.SQL("")
        self._walk_all = db.query(_WALK_SQL, first=nothing, upto=nothing, live_lease=live)
        self._walk_after = db.query(_WALK_SQL, first=after, upto=nothing, live_lease=live)
        self._walk_upto = db.query(_WALK_SQL, first=upto, upto=upto, live_lease=live)
        self._lease = db.query(
            _LEASE_SQL,
            live_lease=sql.SQL(_LIVE_LEASE).format(
                schema=sql.Identifier(db.schema), alias=sql.Identifier("o")
            ),
        )
        self._published = db.query(_PUBLISHED_SQL)
        self._released = db.query(_RELEASED_SQL)
        self._retry = db.query(_RETRY_SQL)
        self._block = db.query(_BLOCK_SQL)
        self._dead_letter = db.query(_DEAD_LETTER_SQL)
        self._requeue = db.query(
            "UPDATE {schema}.rk_outbox SET state = 0, available_at = NULL, attempts = 0,"
            " lease = NULL, last_error = NULL, first_failed_at = NULL, published_at = NULL"
            " WHERE CASE WHEN %(named)s"
            " THEN state IN (1, 2) AND position = ANY(%(positions)s::bigint[])"
            " ELSE state = 1 AND %(blocked)s END"
        )
        # "state <> 2" lets the planner use the partial index of unpublished rows.
        self._blocked = db.query(
            "SELECT position, topic, key, event_id, event_type, attempts, last_error,"
            " created_at, first_failed_at FROM {schema}.rk_outbox"
            " WHERE state <> 2 AND state = 1 AND position > %s ORDER BY position LIMIT %s"
        )
        self._purge = db.query(
            "DELETE FROM {schema}.rk_outbox"
            " WHERE state = 2 AND published_at <= now() - %s * interval '1 second'"
        )
        self._status = db.query(
            "SELECT count(*) FILTER (WHERE state = 0 AND (lease IS NULL OR available_at <= now())),"
            " count(*) FILTER (WHERE state = 0 AND lease IS NOT NULL AND available_at > now()),"
            " count(*) FILTER (WHERE state = 1),"
            " count(*) FILTER (WHERE state = 2),"
            " greatest(0, coalesce(extract(epoch FROM now() - min(created_at)"
            " FILTER (WHERE state <> 2)), 0))::float8"
            " FROM {schema}.rk_outbox"
        )
        self._cursor: str | None = None  # where the next claim's walk starts
        self._cursor_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{self._db.name}.outbox"

    # -- adding -------------------------------------------------------------------------

    def _statement(self, entries: Sequence[OutboxEntry]) -> tuple[bytes, Sequence[Any]]:
        if len(entries) == 1:
            entry = entries[0]
            return self._insert_one, (
                entry.topic,
                entry.key,
                entry.event_id,
                entry.event_type,
                entry.data,
            )
        return self._insert_many, (
            [entry.topic for entry in entries],
            [entry.key for entry in entries],
            [entry.event_id for entry in entries],
            [entry.event_type for entry in entries],
            [entry.data for entry in entries],
        )

    def add(self, connection: Any, entries: Sequence[OutboxEntry]) -> None:
        """Insert ``entries`` with the caller's `psycopg.Connection`, in its transaction.

        Never commits: the rows (and the relays' wake-up) appear when the caller
        commits. ``None`` writes in a transaction of the store's own (blocking).

        Raises:
            TypeError: ``connection`` is not a psycopg connection.
        """
        if not entries:
            return
        psycopg = self._db.psycopg
        if connection is None:
            self._db.run_sync(lambda own: self._write(own, entries))
            return
        if not isinstance(connection, psycopg.Connection):
            kind = type(connection).__name__
            hint = " (use aadd)" if isinstance(connection, psycopg.AsyncConnection) else ""
            raise TypeError(f"{self!r}.add needs a psycopg.Connection, got {kind}{hint}")
        self._db.ensure_schema()
        self._write(connection, entries)

    def _write(self, connection: psycopg.Connection[Any], entries: Sequence[OutboxEntry]) -> None:
        query, params = self._statement(entries)
        connection.execute(query, params)

    async def aadd(self, connection: Any, entries: Sequence[OutboxEntry]) -> None:
        """`add` with a `psycopg.AsyncConnection` (asyncio only), or ``None``.

        The rows are written inside the caller's open transaction and appear when it
        commits. With ``None`` they are written and committed in a transaction of the
        store's own. A synchronous `psycopg.Connection` is used from a worker thread.

        Raises:
            RuntimeError: an async connection used on trio.
            TypeError: ``connection`` is not a psycopg connection.
        """
        if not entries:
            return
        psycopg = self._db.psycopg
        if isinstance(connection, psycopg.AsyncConnection):
            require_asyncio(f"{self!r}.aadd")
            await self._db.aensure_schema()
            query, params = self._statement(entries)
            await connection.execute(query, params)
            return
        if connection is None:
            await self._db.run(lambda own: self._write(own, entries))
            return
        await anyio.to_thread.run_sync(self.add, connection, entries)

    # -- claiming -----------------------------------------------------------------------

    async def claim(self, *, limit: int, lease_for: float) -> list[OutboxMessage]:
        """Lease up to ``limit`` claimable rows for ``lease_for`` seconds (database clock)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError("limit", f"must be an int >= 1, got {limit!r}")
        lease_for = seconds(lease_for, "lease_for")
        lease = uuid.uuid4().hex
        return await self._db.run(
            lambda connection: self._claim(connection, limit, lease_for, lease), atomic=True
        )

    def _walk(
        self, connection: psycopg.Connection[Any], query: bytes, params: dict[str, Any]
    ) -> tuple[list[int], str | None, bool]:
        """Ready heads from one walk, where it stopped, and whether it ran out of keys."""
        rows = connection.execute(query, params).fetchall()
        heads = [position for _key, position, _depth, ready in rows if ready]
        stopped = bool(rows) and (len(heads) >= params["limit"] or rows[-1][2] >= params["walk"])
        return heads, (rows[-1][0] if stopped else None), not stopped

    def _find_heads(
        self, connection: psycopg.Connection[Any], limit: int, walk: int
    ) -> tuple[list[int], bool]:
        """Up to ``limit`` ready heads from the cursor on; True if every key was seen.

        Concurrent claims of this store take turns here, so each starts where the one
        before stopped instead of both finding (and fighting over) the same heads.
        """
        with self._cursor_lock:
            start = self._cursor
            params: dict[str, Any] = {"walk": walk, "limit": limit}
            if start is None:
                heads, cursor, whole = self._walk(connection, self._walk_all, params)
            else:
                heads, cursor, whole = self._walk(
                    connection, self._walk_after, {**params, "after": start}
                )
                if whole:  # wrap around: from the first key up to where this walk began
                    more, cursor, whole = self._walk(
                        connection,
                        self._walk_upto,
                        {**params, "limit": limit - len(heads), "upto": start},
                    )
                    heads += more
            self._cursor = cursor
        return heads, whole

    def _claim(
        self, connection: psycopg.Connection[Any], limit: int, lease_for: float, lease: str
    ) -> list[OutboxMessage]:
        walk = max(_WALK, 4 * limit)
        rows: list[Any] = []
        # A second walk when heads were lost to another relay (locked, or leased since
        # the walk): relays that started together fall out of step instead of fighting
        # over the same keys claim after claim.
        for _ in range(3):
            wanted = limit - len(rows)
            heads, whole = self._find_heads(connection, wanted, walk)
            if not heads:
                break
            leased = connection.execute(
                self._lease,
                {
                    "heads": heads,
                    # Rows are taken round-robin across keys, so no key gives more
                    # than this; reading more of a key's queue would be wasted work.
                    "per_key": -(-wanted // len(heads)),
                    "limit": wanted,
                    "lease": lease,
                    "lease_for": lease_for,
                },
            ).fetchall()
            rows += leased
            lost = len(heads) - len({row[2] for row in leased})
            if whole or len(rows) >= limit or lost == 0:
                break
        rows.sort(key=lambda row: row[0])
        return self._read_claimed(connection, rows, lease)

    def _read_claimed(
        self, connection: psycopg.Connection[Any], rows: list[Any], lease: str
    ) -> list[OutboxMessage]:
        """The claimed rows as messages; a corrupted one is blocked, and its key given back.

        In the claim's transaction: the corrupted row is blocked (never deleted) so that
        an operator can repair and requeue it, and the later rows of its key that this
        claim leased are released, as if the claim had stopped at the blocked row.
        """
        messages: list[OutboxMessage] = []
        stopped: set[str] = set()
        released: list[int] = []
        for position, topic, key, data, attempts, created_at, last_error, failed_at in rows:
            if key in stopped:
                released.append(position)
                continue
            fields = {
                "topic": topic,
                "key": key,
                "data": data,
                "attempts": attempts,
                "created_at": created_at,
                "last_error": _read_error(last_error),
                "first_failed_at": failed_at,
            }
            try:
                message = read_outbox_message(
                    store=self._db.name, position=position, lease=lease, fields=fields
                )
            except CorruptRecordError as error:
                _telemetry.logger.warning(
                    "%s; blocking the row until it is repaired and requeued", error
                )
                connection.execute(
                    self._block, (_error_text(f"corrupted row: {error}"), position, lease)
                )
                stopped.add(key)
                continue
            messages.append(message)
        if released:
            connection.execute(self._released, (released, [lease] * len(released)))
        return messages

    # -- writes fenced by the lease -----------------------------------------------------

    async def _many(self, query: bytes, messages: Sequence[OutboxMessage]) -> int:
        if not messages:
            return 0
        positions = [message.position for message in messages]
        leases = [message.lease for message in messages]
        return await self._db.run(
            lambda connection: connection.execute(query, (positions, leases)).rowcount
        )

    async def mark_published(self, messages: Sequence[OutboxMessage]) -> int:
        """Mark rows published (one statement); return how many still held their lease."""
        return await self._many(self._published, messages)

    async def release(self, messages: Sequence[OutboxMessage]) -> int:
        """Give leases back untouched (due now, the attempt returned); count those held."""
        return await self._many(self._released, messages)

    async def retry_later(self, message: OutboxMessage, *, error: str, delay: float) -> bool:
        """Pending again, due in ``delay`` seconds; False (no change) if the lease is lost.

        ``error`` becomes the row's last error; the time of its first failure is kept.
        """
        params = (seconds(delay, "delay"), _error_text(error), message.position, message.lease)
        return await self._one(self._retry, params)

    async def block(self, message: OutboxMessage, *, error: str) -> bool:
        """Block the row (and so its key) until requeued; False if the lease is not held."""
        return await self._one(self._block, (_error_text(error), message.position, message.lease))

    async def dead_letter(self, message: OutboxMessage, letter: DeadLetter) -> bool:
        """Move the row to dead letters in one transaction; False (nothing done) if not held."""
        params = (message.position, message.lease, *letter_row(letter))

        def work(connection: psycopg.Connection[Any]) -> bool:
            row = connection.execute(self._dead_letter, params).fetchone()
            return row is not None and row[0] == 1

        return await self._db.run(work)

    async def _one(self, query: bytes, params: Sequence[Any]) -> bool:
        return await self._db.run(
            lambda connection: connection.execute(query, params).rowcount == 1
        )

    # -- operations ---------------------------------------------------------------------

    async def requeue(self, *, positions: Sequence[int] | None = None, blocked: bool = True) -> int:
        """Make rows pending and due now, attempts and errors reset; return how many.

        Without ``positions``: every blocked row (when ``blocked``). With them: those of
        them that are blocked or published (a replay); leased and pending rows stay.
        """
        params = {
            "blocked": bool(blocked),
            "named": positions is not None,
            "positions": list(positions) if positions is not None else [],
        }
        return await self._db.run(
            lambda connection: connection.execute(self._requeue, params).rowcount
        )

    async def blocked(self, *, limit: int = 100, after: int | None = None) -> list[BlockedRow]:
        """Blocked rows in position order, after the ``after`` position, at most ``limit``.

        One read-only statement; nothing is locked.
        """
        if limit <= 0:
            return []
        start = 0 if after is None else max(min(after, 2**63 - 1), -(2**63))

        def work(connection: psycopg.Connection[Any]) -> list[Any]:
            return connection.execute(self._blocked, (start, limit)).fetchall()

        return [
            BlockedRow(
                position=position,
                topic=topic,
                key=key,
                event_id=event_id,
                event_type=event_type,
                attempts=attempts,
                last_error=_read_error(last_error),
                created_at=created_at.astimezone(timezone.utc),
                first_failed_at=(
                    first_failed_at.astimezone(timezone.utc) if first_failed_at else None
                ),
            )
            for (
                position,
                topic,
                key,
                event_id,
                event_type,
                attempts,
                last_error,
                created_at,
                first_failed_at,
            ) in await self._db.run(work)
        ]

    async def purge_published(self, *, older_than: float) -> int:
        """Delete rows published ``older_than`` seconds ago or earlier; return how many."""
        age = seconds(older_than, "older_than")
        return await self._db.run(
            lambda connection: connection.execute(self._purge, (age,)).rowcount
        )

    async def status(self) -> OutboxStatus:
        """Counts by state and the age of the oldest unpublished row, by the database clock."""

        def work(connection: psycopg.Connection[Any]) -> Any:
            return connection.execute(self._status).fetchone()

        pending, leased, blocked, published, age = await self._db.run(work)
        return OutboxStatus(
            pending=pending,
            leased=leased,
            blocked=blocked,
            published=published,
            oldest_pending_age=float(age),
        )

    async def wait_for_rows(self, timeout: float) -> None:  # noqa: ASYNC109 - the protocol's
        """Return when a transaction that added rows commits, or after ``timeout`` seconds.

        A hint only (LISTEN/NOTIFY); without notifications it sleeps ``timeout``.
        """
        if self._listener is None:
            await anyio.sleep(max(0.0, timeout))
            return
        await self._listener.wait(timeout)
