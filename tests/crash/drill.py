"""The crash drill: relay + consumer processes SIGKILLed at random moments, again and again.

While a producer thread commits (and sometimes rolls back) orders with their events
through the outbox, worker processes (tests/crash/worker.py) relay the events to a
SQLite-file broker and consume them with an Inbox-guarded handler, each dying by SIGKILL
at a point chosen at random. A last worker drains everything. Then the books must
balance: every committed event published at least once, none lost, none published for a
rolled-back transaction, every effect applied exactly once.

Run it on its own to see the counts: ``python -m tests.crash.drill [KILLS]``.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from resilience_kit.messaging import Event, Outbox
from tests.crash.app import App

ROOT = Path(__file__).resolve().parents[2]
BURST = 8


class _Rollback(Exception):
    pass


class Producer(threading.Thread):
    """Adds a burst of orders each time it is told to, 1 in 5 of them rolled back."""

    def __init__(self, app: App, store: Any, seed: int) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.store = store
        self.rng = random.Random(seed)
        self.go = threading.Semaphore(0)
        self.stop = False
        self.committed: set[str] = set()
        self.rolled_back: set[str] = set()
        self.order = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        outbox = Outbox(self.store.outbox, topic="orders")
        orders = self.app.table("orders")
        try:
            while True:
                self.go.acquire()
                if self.stop:
                    return
                for _ in range(BURST):
                    self.order += 1
                    event = Event(
                        type="order.placed",
                        key=f"customer:{self.order % 7}",
                        payload={"order": self.order},
                    )
                    try:
                        with self.app.transaction() as connection:
                            self.app.execute(
                                connection, f"INSERT INTO {orders} (id) VALUES (?)", self.order
                            )
                            outbox.add(connection, event)
                            if self.rng.random() < 0.2:
                                raise _Rollback
                        self.committed.add(str(event.id))
                    except _Rollback:
                        self.rolled_back.add(str(event.id))
        except BaseException as exc:
            self.error = exc


def _worker(spec: str, broker_db: Path, seed: int, mode: str, timeout: float) -> int:
    return subprocess.run(
        [sys.executable, "-m", "tests.crash.worker", spec, str(broker_db), str(seed), mode],
        cwd=ROOT,
        timeout=timeout,
        check=False,
    ).returncode


def run_drill(
    workdir: Path, *, kills: int = 50, seed: int = 1, app: str | None = None
) -> dict[str, Any]:
    """Run the drill in ``workdir``; return the counts (the caller asserts on them).

    ``app`` names the application's database (tests/crash/app.py): by default a SQLite
    file in ``workdir``; ``postgresql:<url>#<schema>`` for PostgreSQL.
    """
    spec = app or f"sqlite:{workdir / 'app.db'}"
    broker_db = workdir / "broker.db"
    application = App(spec)
    store = application.store()
    store.migrate()
    application.create_tables()
    producer = Producer(application, store, seed)
    producer.start()
    killed = lives = 0
    exits: Counter[int] = Counter()
    while killed < kills and lives < kills * 3:
        producer.go.release()  # a burst of orders while this life runs
        code = _worker(spec, broker_db, seed * 1000 + lives, "kill", timeout=60)
        exits[code] += 1
        lives += 1
        killed += code == -signal.SIGKILL
    producer.stop = True
    producer.go.release()
    producer.join(timeout=60)
    drain_code = _worker(spec, broker_db, seed, "drain", timeout=300)
    store.close()

    broker = sqlite3.connect(broker_db)
    published = [row[0] for row in broker.execute("SELECT event_id FROM messages")]
    broker.close()
    effects = Counter(application.effects())
    published_once = set(published)
    return {
        "lives": lives,
        "killed": killed,
        "exit_codes": dict(exits),
        "drain_exit_code": drain_code,
        "producer_error": repr(producer.error) if producer.error else None,
        "committed": len(producer.committed),
        "rolled_back": len(producer.rolled_back),
        "published_messages": len(published),
        "published_events": len(published_once),
        "duplicate_publishes": len(published) - len(published_once),
        "lost": len(producer.committed - published_once),
        "published_for_rolled_back": len(published_once & producer.rolled_back),
        "published_unknown": len(published_once - producer.committed - producer.rolled_back),
        "effects": sum(effects.values()),
        "effects_missing": len(producer.committed - set(effects)),
        "effects_duplicated": sum(1 for count in effects.values() if count > 1),
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        counts = run_drill(
            Path(directory),
            kills=int(sys.argv[1]) if len(sys.argv) > 1 else 50,
            app=sys.argv[2] if len(sys.argv) > 2 else None,
        )
    for name, value in counts.items():
        print(f"{name:>26}: {value}")
