"""Dead letters in PostgreSQL: the ``rk_dead_letters`` table of a `PostgresStore`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging._integrity import read_dead_letter
from resilience_kit.messaging._records import DeadLetter, DeadLetterFilter, _utc

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from resilience_kit.stores.postgres._db import Database

__all__ = ("COLUMNS", "PostgresDeadLetterStore", "letter_row")

logger = logging.getLogger("resilience_kit.stores.postgres")

COLUMNS = (
    "id, source, topic, key, event_type, error_type, error_message, traceback, attempts,"
    " first_failed_at, last_failed_at, dead_lettered_at, replays, data"
)
"""The dead-letter columns, in `letter_row`'s order."""

_PLACEHOLDERS = ", ".join(["%s"] * 14)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def letter_row(letter: DeadLetter) -> tuple[Any, ...]:
    """The values to insert for ``letter``, in `COLUMNS` order."""
    return (
        letter.id,
        letter.source,
        letter.topic,
        letter.key,
        letter.event_type,
        letter.error_type,
        _encode(letter.error_message),
        _encode(letter.traceback),
        letter.attempts,
        letter.first_failed_at,
        letter.last_failed_at,
        letter.dead_lettered_at,
        letter.replays,
        letter.data,
    )


_FIELDS = tuple(name.strip() for name in COLUMNS.split(","))


def _letter(row: Sequence[Any], store: str) -> DeadLetter:
    """Read a row back, or raise `CorruptRecordError` naming it."""
    return read_dead_letter(store=store, record=row[0], fields=dict(zip(_FIELDS, row, strict=True)))


class PostgresDeadLetterStore:
    """A `DeadLetterStore` in PostgreSQL (``store.dead_letters`` of a `PostgresStore`).

    Ids are UUIDv7, so ``ORDER BY id`` is time order and the ``after`` cursor is an id.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._put = db.query(
            f"INSERT INTO {{schema}}.rk_dead_letters ({COLUMNS}) VALUES ({_PLACEHOLDERS})"  # noqa: S608 - constants only
            " ON CONFLICT (id) DO NOTHING"
        )
        self._get = db.query(
            f"SELECT {COLUMNS} FROM {{schema}}.rk_dead_letters WHERE id = %s"  # noqa: S608 - constants only
        )
        self._delete = db.query("DELETE FROM {schema}.rk_dead_letters WHERE id = ANY(%s::uuid[])")

    def __repr__(self) -> str:
        return f"{self._db.name}.dead_letters"

    def _where(self, where: DeadLetterFilter) -> tuple[sql.Composable, list[Any]]:
        """The SQL of ``where`` (`DeadLetterFilter.matches`, clause by clause) and its values."""
        q = self._db.sql
        clauses: list[sql.Composable] = [q.SQL("TRUE")]
        values: list[Any] = []
        for column in ("topic", "source", "event_type"):
            value = getattr(where, column)
            if value is not None:
                clauses.append(q.SQL("{} = %s").format(q.Identifier(column)))
                values.append(value)
        if where.error_type is not None:
            # A bare class name matches the last dotted part of the qualified name.
            clauses.append(
                q.SQL("(error_type = %s OR regexp_replace(error_type, '^.*[.]', '') = %s)")
            )
            values += [where.error_type, where.error_type]
        if where.since is not None:
            clauses.append(q.SQL("dead_lettered_at >= %s"))
            values.append(_utc(where.since))
        if where.until is not None:
            clauses.append(q.SQL("dead_lettered_at < %s"))
            values.append(_utc(where.until))
        if where.ids is not None:
            clauses.append(q.SQL("id = ANY(%s::uuid[])"))
            values.append(list(where.ids))
        return q.SQL(" AND ").join(clauses), values

    async def put(self, letter: DeadLetter) -> None:
        """Store ``letter`` (a second put of the same id changes nothing)."""
        row = letter_row(letter)

        def work(connection: psycopg.Connection[Any]) -> None:
            connection.execute(self._put, row)

        await self._db.run(work)

    async def get(self, letter_id: UUID) -> DeadLetter | None:
        """The dead letter with this id, or ``None``; `CorruptRecordError` if unreadable."""

        def work(connection: psycopg.Connection[Any]) -> Any:
            return connection.execute(self._get, (letter_id,)).fetchone()

        row = await self._db.run(work)
        return None if row is None else _letter(row, self._db.name)

    async def list(
        self, where: DeadLetterFilter, *, limit: int = 100, after: UUID | None = None
    ) -> list[DeadLetter]:
        """Matching dead letters in id order after ``after``; corrupted ones are skipped."""
        if limit <= 0:
            return []
        clause, values = self._where(where)
        select = self._db.compose(
            f"SELECT {COLUMNS} FROM {{schema}}.rk_dead_letters"  # noqa: S608 - constants only
            " WHERE {where} AND (%s::uuid IS NULL OR id > %s) ORDER BY id LIMIT %s",
            where=clause,
        )

        def work(connection: psycopg.Connection[Any]) -> list[DeadLetter]:
            found: list[DeadLetter] = []
            cursor = after
            while len(found) < limit:
                wanted = limit - len(found)
                rows = connection.execute(select, [*values, cursor, cursor, wanted]).fetchall()
                for row in rows:
                    cursor = row[0]
                    try:
                        letter = _letter(row, self._db.name)
                    except CorruptRecordError as exc:
                        logger.warning("skipping a corrupted dead letter: %s", exc)
                        continue
                    if where.matches(letter):
                        found.append(letter)
                if len(rows) < wanted:
                    break
            return found

        return await self._db.run(work)

    async def count(self, where: DeadLetterFilter) -> int:
        """How many dead letters match."""
        clause, values = self._where(where)
        select = self._db.compose(
            "SELECT count(*) FROM {schema}.rk_dead_letters WHERE {where}", where=clause
        )

        def work(connection: psycopg.Connection[Any]) -> int:
            row = connection.execute(select, values).fetchone()
            return int(row[0]) if row is not None else 0

        return await self._db.run(work)

    async def delete(self, letter_ids: Sequence[UUID]) -> int:
        """Delete these dead letters; return how many existed."""
        ids = list(letter_ids)
        if not ids:
            return 0

        def work(connection: psycopg.Connection[Any]) -> int:
            return connection.execute(self._delete, (ids,)).rowcount

        return await self._db.run(work)

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete every matching dead letter; return how many."""
        clause, values = self._where(where)
        delete = self._db.compose(
            "DELETE FROM {schema}.rk_dead_letters WHERE {where}", where=clause
        )

        def work(connection: psycopg.Connection[Any]) -> int:
            return connection.execute(delete, values).rowcount

        return await self._db.run(work)
