"""The application side of the crash drill, on SQLite or PostgreSQL.

The drill's "service" keeps orders and effects in the same database as the store's
outbox and inbox, and writes them in its own transactions with the backend's native
connection — exactly what `Outbox.add` and `Inbox.mark` are for.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resilience_kit.stores.postgres import PostgresStore
from resilience_kit.stores.sqlite import SQLiteStore


class App:
    """``sqlite:<path>`` or ``postgresql:<url>#<schema>``: the store and the app tables."""

    def __init__(self, spec: str) -> None:
        kind, _, rest = spec.partition(":")
        self.spec = spec
        self.kind = kind
        if kind == "sqlite":
            self.path = Path(rest)
        else:
            self.url, _, self.schema = rest.partition("#")

    def store(self) -> Any:
        if self.kind == "sqlite":
            return SQLiteStore(self.path)
        return PostgresStore(self.url, schema=self.schema, max_size=2)

    def table(self, name: str) -> str:
        return name if self.kind == "sqlite" else f"{self.schema}.{name}"

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A connection in a transaction: committed at the end, rolled back on an error."""
        if self.kind == "sqlite":
            connection = sqlite3.connect(self.path, timeout=30)
            try:
                with connection:
                    yield connection
            finally:
                connection.close()
            return
        import psycopg  # noqa: PLC0415 - the postgres extra

        with psycopg.connect(self.url) as connection, connection.transaction():
            yield connection

    def execute(self, connection: Any, statement: str, *params: Any) -> Any:
        if self.kind != "sqlite":
            statement = statement.replace("?", "%s")
        return connection.execute(statement, params)

    def create_tables(self) -> None:
        with self.transaction() as connection:
            orders = self.table("orders")
            self.execute(connection, f"CREATE TABLE {orders} (id INTEGER PRIMARY KEY)")
            self.execute(
                connection,
                f"CREATE TABLE {self.table('effects')} (event_id TEXT NOT NULL, order_id INTEGER)",
            )

    def effects(self) -> list[str]:
        with self.transaction() as connection:
            rows = self.execute(connection, f"SELECT event_id FROM {self.table('effects')}")
            return [row[0] for row in rows.fetchall()]
