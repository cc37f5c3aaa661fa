"""SQLiteInboxStore: processed event ids per consumer, in the ``rk_inbox`` table."""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime
from typing import Any
from uuid import UUID

from resilience_kit import _telemetry
from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging._integrity import read_inbox_record
from resilience_kit.stores.sqlite._database import Database, check_connection, from_seconds, now

__all__ = ("SQLiteInboxStore",)

_MARK = "INSERT OR IGNORE INTO rk_inbox (consumer, event_id) VALUES (?, ?)"


class SQLiteInboxStore:
    """An `InboxStore` in SQLite (``SQLiteStore(...).inbox``).

    `mark` writes in the caller's transaction, so the consumer's own writes and the
    record that the event was processed commit (or roll back) together.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"{self._db.label}.inbox"

    def mark(self, connection: sqlite3.Connection, consumer: str, event_id: UUID) -> bool:
        """Record the event as processed inside the caller's transaction on ``connection``.

        True the first time, False for a duplicate. Never commits.
        """
        if not self._db.schema_ready:
            self._db.check_caller_schema(connection)
        try:
            return connection.execute(_MARK, (consumer, event_id.bytes)).rowcount == 1
        except sqlite3.Error as error:
            raise self._db.error(error) from error
        except AttributeError:  # not a connection: say so (costs nothing until then)
            check_connection(connection)
            raise

    async def amark(self, connection: Any, consumer: str, event_id: UUID) -> bool:
        """`mark` for a caller's connection from async code (runs here: it is the caller's).

        With ``connection=None`` the record is written in a transaction of its own.
        """
        if connection is None:
            return await self.record(consumer, event_id)
        return self.mark(connection, consumer, event_id)

    async def record(self, consumer: str, event_id: UUID) -> bool:
        """Record the event in a transaction of the store's own; True the first time."""
        return await self._db.call(
            lambda connection: connection.execute(_MARK, (consumer, event_id.bytes)).rowcount == 1,
            write=True,
        )

    async def contains(self, consumer: str, event_id: UUID) -> bool:
        """Whether the event was recorded for ``consumer``."""
        return await self._db.call(
            lambda connection: (
                connection.execute(
                    "SELECT 1 FROM rk_inbox WHERE consumer = ? AND event_id = ?",
                    (consumer, event_id.bytes),
                ).fetchone()
                is not None
            ),
            write=False,
        )

    async def forget(self, consumer: str, event_id: UUID) -> bool:
        """Remove the record (so a replay is processed again); True if it existed."""
        return await self._db.call(
            lambda connection: (
                connection.execute(
                    "DELETE FROM rk_inbox WHERE consumer = ? AND event_id = ?",
                    (consumer, event_id.bytes),
                ).rowcount
                == 1
            ),
            write=True,
        )

    async def purge(self, *, older_than: float) -> int:
        """Remove records older than ``older_than`` seconds (database clock).

        A record whose time is not a number cannot be dated: it is kept (it still
        counts as processed) and logged.
        """

        def purge(connection: sqlite3.Connection) -> tuple[int, list[Any]]:
            cutoff = now(connection) - older_than
            removed = connection.execute(
                "DELETE FROM rk_inbox WHERE processed_at <= ?", (cutoff,)
            ).rowcount
            # TEXT and BLOB sort above every number, infinity included (the index serves it).
            undated = connection.execute(
                "SELECT consumer, event_id, processed_at FROM rk_inbox"
                " WHERE processed_at > ? LIMIT 100",
                (math.inf,),
            ).fetchall()
            return removed, undated

        removed, undated = await self._db.call(purge, write=True)
        for row in undated:
            self._report_undated(row)
        return removed

    def _report_undated(self, row: tuple[Any, ...]) -> None:
        consumer, event_id, processed_at = row
        fields = {"consumer": consumer, "event_id": event_id, "processed_at": processed_at}
        try:
            read_inbox_record(
                store=self._db.label,
                record=f"{consumer}/{_event_id(event_id)}",
                fields=fields,
                time=_seconds,
            )
        except CorruptRecordError as error:
            _telemetry.logger.warning("%s; purge keeps it", error)


def _event_id(value: object) -> str:
    return str(UUID(bytes=value)) if isinstance(value, bytes) and len(value) == 16 else repr(value)


def _seconds(value: object) -> datetime:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not Unix seconds")
    return from_seconds(value)
