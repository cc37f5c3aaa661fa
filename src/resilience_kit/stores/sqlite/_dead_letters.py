"""SQLiteDeadLetterStore: dead letters in the ``rk_dead_letters`` table."""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from resilience_kit import _telemetry
from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging._integrity import read_dead_letter
from resilience_kit.messaging._records import DeadLetter, DeadLetterFilter
from resilience_kit.stores.sqlite._database import Database, from_micros, to_micros

__all__ = ("SQLiteDeadLetterStore", "insert_letter")

_COLUMNS = (
    "id, source, topic, key, data, error_type, error_message, traceback, attempts,"
    " first_failed_at, last_failed_at, dead_lettered_at, replays"
)
_INSERT = (
    "INSERT OR IGNORE INTO rk_dead_letters (id, source, topic, key, data, error_type,"
    " error_message, traceback, attempts, first_failed_at, last_failed_at,"
    " dead_lettered_at, replays, event_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
DEAD_LETTER_FIELDS_IN_SQL = tuple(name.strip() for name in _COLUMNS.split(","))
_SELECT = f"SELECT {_COLUMNS} FROM rk_dead_letters"  # noqa: S608 - constants only
_PAGE = 200  # rows read per query while skipping corrupted ones in `list`


def insert_letter(connection: sqlite3.Connection, letter: DeadLetter) -> None:
    """Insert ``letter`` in the caller's transaction (a no-op if its id is stored)."""
    connection.execute(
        _INSERT,
        (
            str(letter.id),
            letter.source,
            letter.topic,
            letter.key,
            bytes(letter.data),
            letter.error_type,
            letter.error_message,
            letter.traceback,
            letter.attempts,
            to_micros(letter.first_failed_at),
            to_micros(letter.last_failed_at),
            to_micros(letter.dead_lettered_at),
            letter.replays,
            letter.event_type,
        ),
    )


def _where(where: DeadLetterFilter) -> tuple[str, list[Any]]:
    """SQL for the filter: the same answers as `DeadLetterFilter.matches` on valid rows."""
    clauses = ["1"]
    params: list[Any] = []
    for column, value in (
        ("topic", where.topic),
        ("source", where.source),
        ("event_type", where.event_type),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.error_type is not None:
        if "." in where.error_type:  # only the qualified name can match
            clauses.append("error_type = ?")
            params.append(where.error_type)
        else:  # or the bare class name: what follows the last dot
            clauses.append("(error_type = ? OR substr(error_type, -?) = ?)")
            params += [where.error_type, len(where.error_type) + 1, "." + where.error_type]
    if where.since is not None:
        clauses.append("dead_lettered_at >= ?")
        params.append(to_micros(where.since))
    if where.until is not None:
        clauses.append("dead_lettered_at < ?")
        params.append(to_micros(where.until))
    if where.ids is not None:
        clauses.append("id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps([str(letter_id) for letter_id in where.ids]))
    return " AND ".join(clauses), params


def _decode(row: tuple[Any, ...], label: str) -> DeadLetter:
    """A row as a `DeadLetter`, or `CorruptRecordError` naming the row."""
    fields = dict(zip(DEAD_LETTER_FIELDS_IN_SQL, row, strict=True))
    if isinstance(fields["data"], str):  # written by hand as TEXT: the same bytes
        fields["data"] = fields["data"].encode()
    return read_dead_letter(store=label, record=row[0], fields=fields, time=_micros)


def _micros(value: object) -> datetime:
    """A stored time: integer Unix microseconds (a REAL or TEXT is not one)."""
    if type(value) is not int:
        raise TypeError("not integer microseconds")
    return from_micros(value)


class SQLiteDeadLetterStore:
    """A `DeadLetterStore` in SQLite (``SQLiteStore(...).dead_letters``)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"{self._db.label}.dead_letters"

    async def put(self, letter: DeadLetter) -> None:
        """Store ``letter`` (idempotent on ``letter.id``)."""
        await self._db.call(lambda connection: insert_letter(connection, letter), write=True)

    async def get(self, letter_id: UUID) -> DeadLetter | None:
        """The dead letter with this id, or ``None``.

        Raises:
            CorruptRecordError: the stored record cannot be read back.
        """

        def get(connection: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = connection.execute(
                f"{_SELECT} WHERE id = ?", (str(letter_id),)
            ).fetchone()
            return row

        row = await self._db.call(get, write=False)
        return None if row is None else _decode(row, self._db.label)

    async def list(
        self, where: DeadLetterFilter, *, limit: int = 100, after: UUID | None = None
    ) -> builtins.list[DeadLetter]:
        """Matching dead letters in id (time) order, after the ``after`` cursor.

        A corrupted record is skipped (and logged), never raised.
        """
        clause, params = _where(where)
        sql = f"{_SELECT} WHERE {clause} AND id > ? ORDER BY id LIMIT ?"
        label = self._db.label

        def page(connection: sqlite3.Connection) -> builtins.list[DeadLetter]:
            found: builtins.list[DeadLetter] = []
            cursor = "" if after is None else str(after)
            while len(found) < limit:
                rows = connection.execute(sql, [*params, cursor, _PAGE]).fetchall()
                for row in rows:
                    cursor = row[0]
                    try:
                        letter = _decode(row, label)
                    except CorruptRecordError as error:
                        _telemetry.logger.warning("%s: skipping it in a listing", error)
                        continue
                    if where.matches(letter):
                        found.append(letter)
                        if len(found) == limit:
                            break
                if len(rows) < _PAGE:
                    break
            return found

        if limit <= 0:
            return []
        return await self._db.call(page, write=False)

    async def count(self, where: DeadLetterFilter) -> int:
        """How many dead letters match."""
        clause, params = _where(where)

        def count(connection: sqlite3.Connection) -> int:
            number: int = connection.execute(
                f"SELECT count(*) FROM rk_dead_letters WHERE {clause}",  # noqa: S608 - placeholders only
                params,
            ).fetchone()[0]
            return number

        return await self._db.call(count, write=False)

    async def delete(self, letter_ids: Sequence[UUID]) -> int:
        """Delete these dead letters; return how many existed."""

        def delete(connection: sqlite3.Connection) -> int:
            cursor = connection.executemany(
                "DELETE FROM rk_dead_letters WHERE id = ?",
                [(str(letter_id),) for letter_id in dict.fromkeys(letter_ids)],
            )
            return cursor.rowcount

        if not letter_ids:
            return 0
        return await self._db.call(delete, write=True)

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete every matching dead letter; return how many."""
        clause, params = _where(where)

        def purge(connection: sqlite3.Connection) -> int:
            return connection.execute(
                f"DELETE FROM rk_dead_letters WHERE {clause}",  # noqa: S608 - placeholders only
                params,
            ).rowcount

        return await self._db.call(purge, write=True)
