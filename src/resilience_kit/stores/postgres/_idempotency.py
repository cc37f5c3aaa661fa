"""Idempotency records in PostgreSQL (``rk_idempotency``), expiring by the database clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from resilience_kit.errors import StoreError
from resilience_kit.messaging._integrity import read_idempotency_record
from resilience_kit.messaging._records import IdempotencyRecord
from resilience_kit.stores.postgres._db import seconds

if TYPE_CHECKING:
    import psycopg

    from resilience_kit.stores.postgres._db import Database

__all__ = ("PostgresIdempotencyStore",)

_RECORD = (
    "key, fingerprint, status, token, result,"
    " extract(epoch FROM expires_at - now())::float8 AS expires_in"
)

# The arbiter is the primary key: of any number of concurrent inserts of one key
# exactly one inserts, and the others find its row (waiting for it to commit). The
# others take the row over only if it has expired; either way ON CONFLICT DO UPDATE
# leaves the row locked by this transaction, so the read that follows a lost claim sees
# the winner's record as it is, not a later one.
_CLAIM = f"""
INSERT INTO {{schema}}.rk_idempotency AS r (key, fingerprint, status, token, result, expires_at)
VALUES (%(key)s, %(fingerprint)s, 'in_progress', %(token)s, NULL,
        now() + %(lock_for)s * interval '1 second')
ON CONFLICT (key) DO UPDATE
SET fingerprint = excluded.fingerprint, status = 'in_progress', token = excluded.token,
    result = NULL, expires_at = excluded.expires_at
WHERE r.expires_at <= now()
RETURNING {_RECORD}
"""  # noqa: S608 - constants only


def _record(row: Sequence[Any], store: str) -> IdempotencyRecord:
    key, fingerprint, status, token, result, expires_in = row
    return read_idempotency_record(
        store=store,
        key=str(key),
        fields={
            "fingerprint": fingerprint,
            "status": status,
            "token": token,
            "result": result,
            "expires_in": expires_in,
        },
    )


class PostgresIdempotencyStore:
    """An `IdempotencyStore` in PostgreSQL (``store.idempotency`` of a `PostgresStore`)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._claim = db.query(_CLAIM)
        self._current = db.query(
            f"SELECT {_RECORD} FROM {{schema}}.rk_idempotency WHERE key = %s"  # noqa: S608 - constants only
        )
        self._get = db.query(
            f"SELECT {_RECORD} FROM {{schema}}.rk_idempotency"  # noqa: S608 - constants only
            " WHERE key = %s AND expires_at > now()"
        )
        self._complete = db.query(
            "UPDATE {schema}.rk_idempotency SET status = 'completed', result = %s,"
            " expires_at = now() + %s * interval '1 second'"
            " WHERE key = %s AND token = %s AND status = 'in_progress' AND expires_at > now()"
        )
        self._release = db.query(
            "DELETE FROM {schema}.rk_idempotency"
            " WHERE key = %s AND token = %s AND status = 'in_progress' AND expires_at > now()"
        )
        self._purge = db.query("DELETE FROM {schema}.rk_idempotency WHERE expires_at <= now()")

    def __repr__(self) -> str:
        return f"{self._db.name}.idempotency"

    async def claim(
        self, key: str, fingerprint: str, *, token: str, lock_for: float
    ) -> IdempotencyRecord:
        """Claim ``key`` for ``token`` unless a live record holds it; return the record."""
        params = {
            "key": key,
            "fingerprint": fingerprint,
            "token": token,
            "lock_for": seconds(lock_for, "lock_for"),
        }

        def work(connection: psycopg.Connection[Any]) -> Any:
            row = connection.execute(self._claim, params).fetchone()
            if row is None:  # lost: the live record is locked by us, so it is still there
                row = connection.execute(self._current, (key,)).fetchone()
            return row

        for _ in range(3):  # a lost claim always finds the record: no second try in practice
            row = await self._db.run(work, atomic=True)
            if row is not None:
                return _record(row, self._db.name)
        raise StoreError(f"claiming idempotency key {key!r} found no record", store=self._db.name)

    async def complete(self, key: str, *, token: str, result: bytes, ttl: float) -> bool:
        """Store ``result`` for the live claim ``token`` owns, for ``ttl`` seconds.

        A claim past its expiry is absent: a call that outlived its ``lock_for`` must
        not store a result that a retry may not have waited for.
        """
        params = (bytes(result), seconds(ttl, "ttl"), key, token)
        return await self._db.run(
            lambda connection: connection.execute(self._complete, params).rowcount == 1
        )

    async def release(self, key: str, *, token: str) -> bool:
        """Delete the live in-progress record ``token`` owns; False when not owned."""
        return await self._db.run(
            lambda connection: connection.execute(self._release, (key, token)).rowcount == 1
        )

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``, or ``None``; `CorruptRecordError` if unreadable."""

        def work(connection: psycopg.Connection[Any]) -> Any:
            return connection.execute(self._get, (key,)).fetchone()

        row = await self._db.run(work)
        return None if row is None else _record(row, self._db.name)

    async def purge_expired(self) -> int:
        """Delete expired records; return how many."""
        return await self._db.run(lambda connection: connection.execute(self._purge).rowcount)
