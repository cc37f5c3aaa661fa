"""A broker in a SQLite file, for the crash test: it survives the processes that use it.

Publishing appends a row (committed before `publish` returns); a consumer group's offset
is a row of its own, moved by `ack`. Deliveries after the offset come again after a
crash, which is exactly the at-least-once behaviour the crash test needs to exercise.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from resilience_kit.messaging import Delivery, Event


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS messages ("
        "offset_ INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT, key TEXT, event_id TEXT, data BLOB)"
    )
    connection.execute(
        "CREATE TABLE IF NOT EXISTS offsets (grp TEXT PRIMARY KEY, offset_ INTEGER NOT NULL)"
    )
    return connection


class BrokerPublisher:
    def __init__(self, path: Path) -> None:
        self.connection = connect(path)

    async def publish(self, topic: str, event: Event) -> None:
        self.connection.execute(
            "INSERT INTO messages (topic, key, event_id, data) VALUES (?, ?, ?, ?)",
            (topic, event.key, str(event.id), event.to_json()),
        )


class BrokerSubscriber:
    """Reads every message after the group's offset, in order, until none is left."""

    def __init__(self, path: Path, group: str) -> None:
        self.connection = connect(path)
        self.group = group

    def offset(self) -> int:
        row = self.connection.execute(
            "SELECT offset_ FROM offsets WHERE grp = ?", (self.group,)
        ).fetchone()
        return int(row[0]) if row else 0

    def backlog(self) -> int:
        return int(
            self.connection.execute(
                "SELECT count(*) FROM messages WHERE offset_ > ?", (self.offset(),)
            ).fetchone()[0]
        )

    async def _iterate(self) -> AsyncIterator[Delivery]:
        rows = self.connection.execute(
            "SELECT offset_, topic, key, data FROM messages WHERE offset_ > ? ORDER BY offset_",
            (self.offset(),),
        ).fetchall()
        for offset, topic, key, data in rows:
            await anyio.lowlevel.checkpoint()
            yield Delivery(topic=topic, data=bytes(data), id=str(offset), key=key)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def ack(self, delivery: Delivery) -> None:
        self.connection.execute(
            "INSERT INTO offsets (grp, offset_) VALUES (?, ?) "
            "ON CONFLICT (grp) DO UPDATE SET offset_ = excluded.offset_",
            (self.group, int(delivery.id)),
        )

    async def aclose(self) -> None:
        self.connection.close()
