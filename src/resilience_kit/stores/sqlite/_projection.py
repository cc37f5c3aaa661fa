"""SQLiteProjectionStore: `Projection` versions in the ``rk_projection_*`` tables."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from resilience_kit.messaging._projection import Update
from resilience_kit.stores.sqlite._database import Database

__all__ = ("SQLiteProjectionStore",)


def _encode(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, allow_nan=False)


class SQLiteProjectionStore:
    """A `ProjectionStore` in SQLite (``SQLiteStore(...).projections``).

    Versions are rows of ``rk_projection_versions`` (``state``: building, active or
    dropped; a dropped version's number is never reused), values JSON text in
    ``rk_projection_rows``, applied event ids in ``rk_projection_applied``, the event
    log in ``rk_projection_log``. `apply` and
    `activate` are one write transaction each; `snapshot` one read transaction.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"{self._db.label}.projections"

    async def active(self, name: str) -> int | None:
        """The active version of ``name``, or None."""

        def read(connection: sqlite3.Connection) -> int | None:
            row = connection.execute(
                "SELECT version FROM rk_projection_versions WHERE name = ? AND state = 'active'",
                (name,),
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._db.call(read, write=False)

    async def versions(self, name: str) -> list[int]:
        """Every version of ``name`` that exists, in order."""

        def read(connection: sqlite3.Connection) -> list[int]:
            rows = connection.execute(
                "SELECT version FROM rk_projection_versions"
                " WHERE name = ? AND state != 'dropped' ORDER BY version",
                (name,),
            )
            return [int(row[0]) for row in rows]

        return await self._db.call(read, write=False)

    async def create(self, name: str) -> int:
        """A new, empty, inactive version, numbered after every earlier one."""

        def create(connection: sqlite3.Connection) -> int:
            last = connection.execute(
                "SELECT coalesce(max(version), 0) FROM rk_projection_versions WHERE name = ?",
                (name,),
            ).fetchone()[0]
            connection.execute(
                "INSERT INTO rk_projection_versions (name, version) VALUES (?, ?)",
                (name, last + 1),
            )
            return int(last) + 1

        return await self._db.call(create, write=True)

    async def activate(self, name: str, version: int) -> None:
        """Make ``version`` active, in one transaction (raises `LookupError` if unknown)."""

        def activate(connection: sqlite3.Connection) -> None:
            found = connection.execute(
                "SELECT 1 FROM rk_projection_versions"
                " WHERE name = ? AND version = ? AND state != 'dropped'",
                (name, version),
            ).fetchone()
            if found is None:
                raise LookupError(f"projection {name!r} has no version {version}")
            connection.execute(
                "UPDATE rk_projection_versions SET state = 'building'"
                " WHERE name = ? AND state = 'active'",
                (name,),
            )
            connection.execute(
                "UPDATE rk_projection_versions SET state = 'active' WHERE name = ? AND version = ?",
                (name, version),
            )

        await self._db.call(activate, write=True)

    @staticmethod
    def _delete_contents(connection: sqlite3.Connection, name: str, version: int) -> None:
        for table in ("rk_projection_rows", "rk_projection_applied"):
            connection.execute(
                f"DELETE FROM {table} WHERE name = ? AND version = ?",  # noqa: S608 - constant
                (name, version),
            )

    async def clear(self, name: str, version: int) -> None:
        """Delete the rows and applied event ids of ``version``."""
        await self._db.call(
            lambda connection: self._delete_contents(connection, name, version), write=True
        )

    async def drop(self, name: str, version: int) -> None:
        """Delete ``version`` with its contents (its number stays used)."""

        def drop(connection: sqlite3.Connection) -> None:
            self._delete_contents(connection, name, version)
            connection.execute(
                "UPDATE rk_projection_versions SET state = 'dropped'"
                " WHERE name = ? AND version = ?",
                (name, version),
            )

        await self._db.call(drop, write=True)

    async def apply(
        self,
        name: str,
        version: int,
        event_id: str,
        keys: Sequence[str],
        update: Update,
        *,
        record: bytes | None = None,
    ) -> bool:
        """Apply one event (and log ``record``) in one transaction; False if done before."""

        def apply(connection: sqlite3.Connection) -> bool:
            marked = connection.execute(
                "INSERT OR IGNORE INTO rk_projection_applied (name, version, event_id)"
                " VALUES (?, ?, ?)",
                (name, version, event_id),
            )
            if marked.rowcount == 0:
                return False
            current: dict[str, Any] = {}
            for key in keys:
                row = connection.execute(
                    "SELECT value FROM rk_projection_rows"
                    " WHERE name = ? AND version = ? AND key = ?",
                    (name, version, key),
                ).fetchone()
                if row is not None:
                    current[key] = json.loads(row[0])
            # A fold that raises rolls the transaction back, its applied mark included.
            for key, value in update(current).items():
                text = _encode(value)
                if text is None:
                    connection.execute(
                        "DELETE FROM rk_projection_rows WHERE name = ? AND version = ? AND key = ?",
                        (name, version, key),
                    )
                else:
                    connection.execute(
                        "INSERT INTO rk_projection_rows (name, version, key, value)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (name, version, key)"
                        " DO UPDATE SET value = excluded.value",
                        (name, version, key, text),
                    )
            if record is not None:
                connection.execute(
                    "INSERT OR IGNORE INTO rk_projection_log (name, event_id, data)"
                    " VALUES (?, ?, ?)",
                    (name, event_id, record),
                )
            return True

        return await self._db.call(apply, write=True)

    async def read_log(self, name: str, *, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` log entries of ``name`` after position ``after``, in order."""

        def read(connection: sqlite3.Connection) -> list[tuple[int, bytes]]:
            rows = connection.execute(
                "SELECT position, data FROM rk_projection_log"
                " WHERE name = ? AND position > ? ORDER BY position LIMIT ?",
                (name, after, limit),
            )
            return [(int(position), bytes(data)) for position, data in rows]

        return await self._db.call(read, write=False)

    async def get(self, name: str, version: int, key: str) -> Any | None:
        """The value of one row, or None."""

        def read(connection: sqlite3.Connection) -> Any | None:
            row = connection.execute(
                "SELECT value FROM rk_projection_rows WHERE name = ? AND version = ? AND key = ?",
                (name, version, key),
            ).fetchone()
            return None if row is None else json.loads(row[0])

        return await self._db.call(read, write=False)

    async def snapshot(self, name: str, version: int) -> tuple[dict[str, Any], frozenset[str]]:
        """Every row of ``version`` and the ids of the events applied to it, in one read."""

        def read(connection: sqlite3.Connection) -> tuple[dict[str, Any], frozenset[str]]:
            rows = {
                str(key): json.loads(value)
                for key, value in connection.execute(
                    "SELECT key, value FROM rk_projection_rows WHERE name = ? AND version = ?",
                    (name, version),
                )
            }
            applied = frozenset(
                str(row[0])
                for row in connection.execute(
                    "SELECT event_id FROM rk_projection_applied WHERE name = ? AND version = ?",
                    (name, version),
                )
            )
            return rows, applied

        return await self._db.call(read, write=False)
