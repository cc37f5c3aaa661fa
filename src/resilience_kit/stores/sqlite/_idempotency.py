"""SQLiteIdempotencyStore: idempotency records in the ``rk_idempotency`` table."""

from __future__ import annotations

import sqlite3
from typing import Any

from resilience_kit.messaging._integrity import read_idempotency_record
from resilience_kit.messaging._records import IdempotencyRecord
from resilience_kit.stores.sqlite._database import Database, now

__all__ = ("SQLiteIdempotencyStore",)

# One arbitrated statement: insert, or take over a record only once it has expired.
# It runs under BEGIN IMMEDIATE (the database's single write lock), so of any number
# of concurrent claims, from threads or processes, exactly one inserts or takes over.
_CLAIM = """
INSERT INTO rk_idempotency (key, fingerprint, status, token, result, expires_at)
VALUES (?1, ?2, 'in_progress', ?3, NULL, ?4)
ON CONFLICT (key) DO UPDATE SET
    fingerprint = excluded.fingerprint,
    status = 'in_progress',
    token = excluded.token,
    result = NULL,
    expires_at = excluded.expires_at
WHERE rk_idempotency.expires_at <= ?5
"""
_SELECT = (
    "SELECT key, fingerprint, status, token, result, expires_at FROM rk_idempotency WHERE key = ?"
)


def _decode(row: tuple[Any, ...], moment: float, label: str) -> IdempotencyRecord:
    key, fingerprint, status, token, result, expires_at = row
    if isinstance(result, str):  # written by hand as TEXT: the same bytes
        result = result.encode()
    numeric = isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool)
    return read_idempotency_record(
        store=label,
        key=str(key),
        fields={
            "fingerprint": fingerprint,
            "status": status,
            "token": token,
            "result": result,
            "expires_in": expires_at - moment if numeric else expires_at,
        },
    )


class SQLiteIdempotencyStore:
    """An `IdempotencyStore` in SQLite (``SQLiteStore(...).idempotency``).

    Expiry is measured by the database's clock; a record with ``expires_in <= 0`` is
    treated as absent by every method.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"{self._db.label}.idempotency"

    async def claim(
        self, key: str, fingerprint: str, *, token: str, lock_for: float
    ) -> IdempotencyRecord:
        """Atomically claim ``key`` for a new call, or return the live record holding it.

        Raises:
            CorruptRecordError: the record holding the key cannot be read back.
        """

        def claim(connection: sqlite3.Connection) -> tuple[tuple[Any, ...], float]:
            moment = now(connection)
            connection.execute(_CLAIM, (key, fingerprint, token, moment + lock_for, moment))
            return connection.execute(_SELECT, (key,)).fetchone(), moment

        row, moment = await self._db.call(claim, write=True)
        return _decode(row, moment, self._db.label)

    async def complete(self, key: str, *, token: str, result: bytes, ttl: float) -> bool:
        """Store ``result`` for the live in-progress call ``token`` owns, for ``ttl`` seconds.

        False (and no change) when ``token`` no longer owns a live claim on ``key``.
        """

        def complete(connection: sqlite3.Connection) -> bool:
            moment = now(connection)
            return (
                connection.execute(
                    "UPDATE rk_idempotency SET status = 'completed', result = ?,"
                    " expires_at = ? WHERE key = ? AND token = ? AND status = 'in_progress'"
                    " AND expires_at > ?",
                    (bytes(result), moment + ttl, key, token, moment),
                ).rowcount
                == 1
            )

        return await self._db.call(complete, write=True)

    async def release(self, key: str, *, token: str) -> bool:
        """Delete the live in-progress record ``token`` owns; False when not owned."""

        def release(connection: sqlite3.Connection) -> bool:
            return (
                connection.execute(
                    "DELETE FROM rk_idempotency WHERE key = ? AND token = ?"
                    " AND status = 'in_progress' AND expires_at > ?",
                    (key, token, now(connection)),
                ).rowcount
                == 1
            )

        return await self._db.call(release, write=True)

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``, or ``None``.

        Raises:
            CorruptRecordError: the stored record cannot be read back.
        """

        def get(connection: sqlite3.Connection) -> tuple[tuple[Any, ...] | None, float]:
            moment = now(connection)
            # A value that is not a number sorts above every number: a corrupted expiry
            # is returned (and reported) rather than silently treated as expired.
            row = connection.execute(f"{_SELECT} AND expires_at > ?", (key, moment)).fetchone()
            return row, moment

        row, moment = await self._db.call(get, write=False)
        return None if row is None else _decode(row, moment, self._db.label)

    async def purge_expired(self) -> int:
        """Delete expired records; return how many."""
        return await self._db.call(
            lambda connection: (
                connection.execute(
                    "DELETE FROM rk_idempotency WHERE expires_at <= ?", (now(connection),)
                ).rowcount
            ),
            write=True,
        )
