"""A read replica of a service's SQLite database: a second file, shipped every few seconds.

In production the database replicates itself (PostgreSQL streaming replication, a
managed read replica); in one process, `ReadReplica` plays that part with SQLite's
online backup API: every ``interval`` seconds it copies a consistent snapshot of the
primary into the replica's file. It reaches the primary through ``link`` — the same
chaos policy the service's own database calls go through — so when a drill cuts the
database, shipping stops too, as replication does when the primary is gone.

What the replica can promise is measured here, not assumed:

- ``as_of``: the instant the last successful copy began; the replica holds every commit
  made before it;
- `staleness`: how much of the primary's history the replica may be missing. While
  shipping works, ``now - as_of`` (at most about ``interval``). Once shipping fails, the
  primary is down (it accepts no writes), so what may be missing is only what was
  committed between ``as_of`` and the first failed copy — a window that stops growing;
- ``lag``: every (instant, staleness) the replica measured, for the drill's report.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from resilience_kit.testing import VirtualClock

T = TypeVar("T")


class ReadReplica:
    """A copy of a primary SQLite database, refreshed every ``interval`` seconds."""

    def __init__(
        self,
        primary: Callable[[], sqlite3.Connection],
        path: Path,
        *,
        clock: VirtualClock,
        interval: float = 2.0,
        link: Any = None,
    ) -> None:
        self._primary = primary
        self.path = path
        self._clock = clock
        self.interval = interval
        self.link = link  # a chaos policy standing for the network to the primary
        self.as_of: float | None = None
        self.failing_since: float | None = None
        self.lag: list[tuple[float, float]] = []
        self.copies = 0
        self.failures = 0

    def staleness(self) -> float:
        """Seconds of the primary's history the replica may be missing (inf: no copy yet)."""
        if self.as_of is None:
            return float("inf")
        if self.failing_since is not None:
            return self.failing_since - self.as_of
        return self._clock.monotonic() - self.as_of

    async def ship(self) -> bool:
        """Copy the primary into the replica once; ``False`` when the primary is unreachable."""
        began = self._clock.monotonic()

        def copy() -> None:
            source = self._primary()
            try:
                target = sqlite3.connect(self.path)
                try:
                    source.backup(target)
                finally:
                    target.close()
            finally:
                source.close()

        try:
            if self.link is not None:
                self.link.call(lambda: None)
            await anyio.to_thread.run_sync(copy)
        except sqlite3.Error:
            self.failures += 1
            if self.failing_since is None:
                self.failing_since = began
            self.lag.append((began, self.staleness()))
            return False
        reached = 0.0 if self.as_of is None else began - self.as_of  # the lag just before
        self.as_of, self.failing_since = began, None
        self.copies += 1
        self.lag.append((began, reached))
        return True

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the replica, read-only, in a worker thread."""

        def job() -> T:
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                return work(connection)
            finally:
                connection.close()

        if self.as_of is None:
            raise sqlite3.OperationalError("the replica has no copy yet")
        return await anyio.to_thread.run_sync(job)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Ship every ``interval`` seconds until cancelled."""
        await self.ship()
        task_status.started()
        while True:
            await self._clock.asleep(self.interval)
            await self.ship()
