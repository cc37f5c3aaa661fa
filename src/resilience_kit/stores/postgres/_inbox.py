"""The inbox in PostgreSQL: which events each consumer processed (``rk_inbox``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio.to_thread

from resilience_kit.stores.postgres._db import require_asyncio, seconds

if TYPE_CHECKING:
    import psycopg

    from resilience_kit.stores.postgres._db import Database

__all__ = ("PostgresInboxStore",)


class PostgresInboxStore:
    """An `InboxStore` in PostgreSQL (``store.inbox`` of a `PostgresStore`).

    `mark` inserts with the caller's connection, inside its transaction, so the
    consumer's own writes and the de-duplication record commit or roll back together.
    A concurrent duplicate waits on the first one's row: it gets False once the first
    commits, and True if the first rolls back.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._mark = db.query(
            "INSERT INTO {schema}.rk_inbox (consumer, event_id) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING"
        )
        self._contains = db.query(
            "SELECT EXISTS (SELECT FROM {schema}.rk_inbox WHERE consumer = %s AND event_id = %s)"
        )
        self._forget = db.query(
            "DELETE FROM {schema}.rk_inbox WHERE consumer = %s AND event_id = %s"
        )
        self._purge = db.query(
            "DELETE FROM {schema}.rk_inbox WHERE processed_at <= now() - %s * interval '1 second'"
        )

    def __repr__(self) -> str:
        return f"{self._db.name}.inbox"

    def _insert(self, connection: psycopg.Connection[Any], consumer: str, event_id: UUID) -> bool:
        return connection.execute(self._mark, (consumer, event_id)).rowcount == 1

    def mark(self, connection: Any, consumer: str, event_id: UUID) -> bool:
        """Record the event in the caller's transaction; True the first time. Never commits.

        Raises:
            TypeError: ``connection`` is not a `psycopg.Connection`.
        """
        psycopg = self._db.psycopg
        if not isinstance(connection, psycopg.Connection):
            kind = type(connection).__name__
            hint = " (use amark)" if isinstance(connection, psycopg.AsyncConnection) else ""
            raise TypeError(f"{self!r}.mark needs a psycopg.Connection, got {kind}{hint}")
        self._db.ensure_schema()
        return self._insert(connection, consumer, event_id)

    async def amark(self, connection: Any, consumer: str, event_id: UUID) -> bool:
        """`mark` with a `psycopg.AsyncConnection` (asyncio only); ``None`` means `record`."""
        psycopg = self._db.psycopg
        if connection is None:
            return await self.record(consumer, event_id)
        if isinstance(connection, psycopg.AsyncConnection):
            require_asyncio(f"{self!r}.amark")
            await self._db.aensure_schema()
            cursor = await connection.execute(self._mark, (consumer, event_id))
            return bool(cursor.rowcount == 1)
        return await anyio.to_thread.run_sync(self.mark, connection, consumer, event_id)

    async def record(self, consumer: str, event_id: UUID) -> bool:
        """Record the event in a transaction of the store's own; True the first time."""
        return await self._db.run(lambda connection: self._insert(connection, consumer, event_id))

    async def contains(self, consumer: str, event_id: UUID) -> bool:
        """Whether the event was recorded for ``consumer``."""

        def work(connection: psycopg.Connection[Any]) -> bool:
            row = connection.execute(self._contains, (consumer, event_id)).fetchone()
            return bool(row and row[0])

        return await self._db.run(work)

    async def forget(self, consumer: str, event_id: UUID) -> bool:
        """Remove the record so a replay is processed again; True if it existed."""
        return await self._db.run(
            lambda connection: connection.execute(self._forget, (consumer, event_id)).rowcount == 1
        )

    async def purge(self, *, older_than: float) -> int:
        """Remove records ``older_than`` seconds old or older; return how many."""
        age = seconds(older_than, "older_than")
        return await self._db.run(
            lambda connection: connection.execute(self._purge, (age,)).rowcount
        )
