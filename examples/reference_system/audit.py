"""Audit: every event of every service, stored append-only, in batches, kept and archived.

Ingestion: one `ResilientConsumer` per topic ("identity", "organization", "billing",
"workflow"), 16 lanes each (per-key order kept), whose handler hands the event to a
`BatchWriter` and waits until it is durable (``writer.write``): the delivery is
acknowledged only once its row is committed, and the lanes waiting together share one
transaction (a group commit). The writer holds at most ``capacity`` events; when it is
full, handlers wait and the consumers stop pulling — the backlog stays in the broker,
never in this process's memory. A batch that fails (the disk is full) is held and
retried with backoff; nothing is dropped.

Each batch is one SQLite transaction of ``INSERT OR IGNORE``: the log is keyed by event
id, so it is its own inbox — a redelivery adds nothing, and the de-duplication record
is archived and deleted with the row (an `Inbox` beside it would be a second table
growing on the same full disk, with no way to age it out with the rows).

The audit volume is modelled: its size is a real quota (``PRAGMA max_page_count`` on the
writer's connection: a write past it fails with SQLite's own "database or disk is
full"), and each commit costs ``commit_seconds`` on the virtual clock (an fsync on a
network disk).

Retention: every ``retention_interval``, rows older than ``hot_for`` are archived to
cold storage (`ColdStorage`: gzip JSON lines, one manifest with the count and sha256 of
every file), the archive is re-read and compared, and only then are the rows deleted.
SQLite reuses the freed pages, so no ``VACUUM`` is needed (it would need free space the
size of the database, which a full disk does not have). An operator tightens ``hot_for``
with ``POST /admin/retention`` — the runbook of the storage-full alert.

Alerts (``/health/ready``): the writer's check (DEGRADED when 75% full, UNHEALTHY
while writes fail, e.g. storage full) and the consumers' lag.

Routes: ``GET /events?key=...``, ``GET /admin/storage``, ``POST /admin/retention``
``{"hot_for": seconds}``, ``GET /admin/archives/verify``, and the health routes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from resilience_kit import Backoff, RetryPolicy
from resilience_kit.health import HealthCheck, HealthStatus, batch_writer_check, lag_check
from resilience_kit.messaging import BatchWriter, Event, ResilientConsumer

from .core.service import Service, ServiceContext

TOPICS = ("identity", "organization", "billing", "workflow")
GROUP = "audit"
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    body TEXT NOT NULL
);
"""
COLUMNS = ("seq", "event_id", "topic", "type", "key", "recorded_at", "body")


@dataclass(frozen=True)
class Entry:
    """One event on its way to the audit log."""

    topic: str
    event: Event


class Volume:
    """The audit database's disk, as the writer's connection sees it.

    ``quota`` pages is a real limit (``PRAGMA max_page_count``); ``commit_seconds`` and
    ``row_seconds`` model the latency of a commit on the virtual clock.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        commit_seconds: float,
        row_seconds: float,
        quota: int | None = None,
    ) -> None:
        self.connection = connection
        self.commit_seconds = commit_seconds
        self.row_seconds = row_seconds
        self.quota: int | None = None
        if quota is not None:
            self.set_quota(quota)

    def pages(self) -> int:
        return int(self.connection.execute("PRAGMA page_count").fetchone()[0])

    def set_quota(self, pages: int) -> None:
        """Limit the database to ``pages`` pages (storage expansion: a larger number)."""
        self.connection.execute(f"PRAGMA max_page_count = {int(pages)}")
        self.quota = int(self.connection.execute("PRAGMA max_page_count").fetchone()[0])

    def cost(self, rows: int) -> float:
        return self.commit_seconds + self.row_seconds * rows


@dataclass
class ArchiveFile:
    """One archive file, as its manifest line describes it."""

    file: str
    count: int
    first_seq: int
    last_seq: int
    sha256: str
    created_at: float


@dataclass
class Verification:
    """What `ColdStorage.verify` found."""

    files: int = 0
    events: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class ColdStorage:
    """Archives in a directory: gzip JSON lines, and ``manifest.json`` listing each file
    with its event count, sequence range and sha256. Files are written to a temporary
    name, synced and renamed; the manifest is replaced the same way."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.manifest_path = directory / "manifest.json"

    def manifest(self) -> list[ArchiveFile]:
        if not self.manifest_path.exists():
            return []
        document = json.loads(self.manifest_path.read_text())
        return [ArchiveFile(**entry) for entry in document["files"]]

    def archived_upto(self) -> int:
        return max((entry.last_seq for entry in self.manifest()), default=0)

    def archive(self, rows: Sequence[Sequence[Any]], now: float) -> ArchiveFile:
        """Write ``rows`` (in ``COLUMNS`` order) to a new archive file; verify it."""
        first, last = int(rows[0][0]), int(rows[-1][0])
        name = f"audit-{first:09d}-{last:09d}.jsonl.gz"
        lines = b"".join(
            json.dumps(dict(zip(COLUMNS, row, strict=True)), sort_keys=True).encode() + b"\n"
            for row in rows
        )
        data = gzip.compress(lines, mtime=0)
        _write_atomically(self.directory / name, data)
        entry = ArchiveFile(
            name, len(rows), first, last, hashlib.sha256(data).hexdigest(), round(now, 3)
        )
        problems = self._check(entry, expected_ids=[str(row[1]) for row in rows])
        if problems:  # the rows are not deleted: the next pass tries again
            raise OSError(f"archive {name} does not read back: {'; '.join(problems)}")
        files = [asdict(existing) for existing in self.manifest() if existing.file != name]
        document = {"files": [*files, asdict(entry)]}
        _write_atomically(self.manifest_path, json.dumps(document, indent=1).encode())
        return entry

    def read(self, entry: ArchiveFile) -> list[dict[str, Any]]:
        data = (self.directory / entry.file).read_bytes()
        return [json.loads(line) for line in gzip.decompress(data).splitlines()]

    def _check(self, entry: ArchiveFile, expected_ids: list[str] | None = None) -> list[str]:
        path = self.directory / entry.file
        if not path.exists():
            return [f"{entry.file}: missing"]
        data = path.read_bytes()
        problems = []
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            problems.append(f"{entry.file}: sha256 differs from the manifest")
        try:
            records = [json.loads(line) for line in gzip.decompress(data).splitlines()]
        except (OSError, ValueError) as exc:
            return [*problems, f"{entry.file}: unreadable ({exc})"]
        if len(records) != entry.count:
            problems.append(f"{entry.file}: {len(records)} events, manifest says {entry.count}")
        seqs = [int(record["seq"]) for record in records]
        if seqs and (seqs[0] != entry.first_seq or seqs[-1] != entry.last_seq):
            problems.append(f"{entry.file}: sequence range differs from the manifest")
        if expected_ids is not None and [r["event_id"] for r in records] != expected_ids:
            problems.append(f"{entry.file}: events differ from the rows archived")
        return problems

    def verify(self) -> Verification:
        """Re-read every archive and compare it with the manifest."""
        result = Verification()
        for entry in self.manifest():
            result.files += 1
            result.events += entry.count
            result.problems += self._check(entry)
        return result


def _connect(path: str) -> sqlite3.Connection:
    """A connection of the audit log's own: commits on it do not wake the service's
    outbox relay, as commits on ``store.connect()`` connections do (the log has no
    outbox rows, and a relay pass per batch would cost more than the batch)."""
    connection = sqlite3.connect(path, check_same_thread=False, timeout=5.0)
    connection.execute("PRAGMA journal_mode = WAL")
    # The cost of a durable commit is modelled on the virtual clock (`Volume`); a real
    # fsync per commit would only make the drills slower on a busy machine.
    connection.execute("PRAGMA synchronous = NORMAL")
    return connection


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)


class Audit(Service):
    """The Audit service (one replica: the writer owns the audit log)."""

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        archive_dir: Path,
        capacity: int = 32,
        max_batch: int = 32,
        max_delay: float = 0.05,
        lanes: int = 16,
        quota_pages: int | None = None,
        commit_seconds: float = 0.03,
        row_seconds: float = 0.0001,
        hot_for: float = 600.0,
        retention_interval: float = 30.0,
    ) -> None:
        super().__init__(ctx)
        on = ctx.mitigations.on
        self.batching = on("batching")
        self.backpressure = on("backpressure")
        self.retention = on("retention")
        self.archival = on("archival")
        self.alerting = on("alerting")
        self.bound = capacity
        self.hot_for = hot_for
        self.retention_interval = retention_interval
        self.cold = ColdStorage(archive_dir)
        # The writer's connection (used by one batch at a time, in worker threads) and
        # the maintenance connection (retention, queries); both on the service's database.
        # The writer's alone carries the volume's quota: deletes need no new pages.
        self.connection = _connect(ctx.store.path)
        self.connection.executescript(SCHEMA)
        self.connection.commit()
        self.maintenance = _connect(ctx.store.path)
        base = Volume(self.connection, commit_seconds=0, row_seconds=0).pages()
        self.volume = Volume(
            self.connection,
            commit_seconds=commit_seconds,
            row_seconds=row_seconds,
            quota=None if quota_pages is None else base + quota_pages,
        )
        # capacity: the most events in memory; without back-pressure the buffer is, in
        # effect, unbounded (what an "async processing" queue without a bound does).
        self.writer: BatchWriter[Entry] = BatchWriter(
            self._write_batch,
            name="audit.writer",
            capacity=capacity if self.backpressure else 1_000_000,
            max_batch=max_batch if self.batching else 1,
            max_delay=max_delay,
            # Storage trouble lasts seconds to minutes: back off up to 5 s, forever.
            backoff=Backoff.exponential(initial=0.1, maximum=5.0, jitter="full"),
            near_full=0.75,
            on_near_full=lambda _: ctx.observe("audit queue near its bound"),
            clock=ctx.clock,
            rand=ctx.rand.random,
        )
        self.full_seen = False
        for topic in TOPICS:
            self.consumers.append(
                ResilientConsumer(
                    ctx.bus.subscribe(topic, group=GROUP, consumer=ctx.host),
                    self._handler(topic),
                    name=f"audit.{topic}",
                    dead_letters=ctx.store.dead_letters,
                    # The log is keyed by event id: it de-duplicates (see _write_batch).
                    inbox=None,
                    retry=RetryPolicy(
                        attempts=3,
                        on=Exception,
                        backoff=Backoff.exponential(initial=0.5, maximum=5.0, jitter="full"),
                        clock=ctx.clock,
                        rand=ctx.rand.random,
                    ),
                    concurrency=lanes,
                    clock=ctx.clock,
                )
            )

    # -- ingestion ------------------------------------------------------------------------

    def _handler(self, topic: str) -> Any:
        async def handle(event: Event) -> None:
            if self.backpressure:
                await self.writer.write(Entry(topic, event))  # acked once durable
            else:
                await self.writer.put(Entry(topic, event))  # acked at once, buffered

        return handle

    async def _write_batch(self, batch: list[Entry]) -> None:
        await self.ctx.clock.asleep(self.volume.cost(len(batch)))
        recorded_at = self.ctx.clock.time()

        def transaction() -> list[str]:
            inserted = []
            with self.connection:
                for entry in batch:
                    event = entry.event
                    cursor = self.connection.execute(
                        "INSERT OR IGNORE INTO audit_log"
                        " (event_id, topic, type, key, recorded_at, body)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            str(event.id),
                            entry.topic,
                            event.type,
                            event.key,
                            recorded_at,
                            event.to_json().decode(),
                        ),
                    )
                    if cursor.rowcount:  # 0: a redelivery, already in the log
                        inserted.append(str(event.id))
            return inserted

        try:
            inserted = await anyio.to_thread.run_sync(transaction)
        except sqlite3.Error as exc:
            if "full" in str(exc) and not self.full_seen:
                self.full_seen = True
                self.ctx.observe("audit storage full: writes held and retried")
            raise
        for event_id in inserted:
            self.ctx.sink.record("row", f"audit:{event_id}", self.ctx.service)

    # -- retention and archival ----------------------------------------------------------

    def _retention_pass(self, hot_for: float, now: float) -> dict[str, int]:
        """Archive rows older than ``hot_for``, verify, then delete them (blocking)."""
        cutoff = now - hot_for
        connection = self.maintenance
        archived = deleted = 0
        if self.archival:
            upto = self.cold.archived_upto()
            rows = connection.execute(
                f"SELECT {', '.join(COLUMNS)} FROM audit_log"
                " WHERE seq > ? AND recorded_at < ? ORDER BY seq",
                (upto, cutoff),
            ).fetchall()
            connection.commit()
            if rows:
                self.cold.archive(rows, now)
                archived = len(rows)
            delete_upto = self.cold.archived_upto()  # only what is safely archived
        else:
            delete_upto = 2**62
        if self.retention:
            with connection:
                cursor = connection.execute(
                    "DELETE FROM audit_log WHERE seq <= ? AND recorded_at < ?",
                    (delete_upto, cutoff),
                )
                deleted = cursor.rowcount
        return {"archived": archived, "deleted": deleted}

    async def retention_pass(self) -> dict[str, int]:
        result = await anyio.to_thread.run_sync(
            self._retention_pass, self.hot_for, self.ctx.clock.time()
        )
        if result["deleted"] or result["archived"]:
            self.ctx.observe("audit retention: rows archived and deleted")
        return result

    async def _retention_loop(self) -> None:
        while True:
            await self.ctx.clock.asleep(self.retention_interval)
            await self.retention_pass()

    # -- health ---------------------------------------------------------------------------

    def lag(self) -> int:
        return sum(self.ctx.bus.backlog(topic, GROUP) for topic in TOPICS)

    def readiness(self) -> list[HealthCheck]:
        if not self.alerting:
            return []
        return [
            batch_writer_check(
                self.writer,
                name="audit_writer",
                fill_degraded_above=0.75 * self.bound / self.writer.capacity,
                failing_status=HealthStatus.UNHEALTHY,
            ),
            lag_check(self.lag, name="audit_lag", degraded_above=500),
        ]

    # -- routes ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/events", self.events, methods=["GET"]),
            Route("/admin/storage", self.storage, methods=["GET"]),
            Route("/admin/retention", self.set_retention, methods=["POST"]),
            Route("/admin/archives/verify", self.verify, methods=["GET"]),
        ]

    async def events(self, request: Request) -> Response:
        key = request.query_params.get("key", "")

        def query() -> list[dict[str, Any]]:
            rows = self.maintenance.execute(
                "SELECT seq, type, recorded_at FROM audit_log WHERE key = ? ORDER BY seq",
                (key,),
            ).fetchall()
            self.maintenance.commit()
            return [{"seq": r[0], "type": r[1], "recorded_at": r[2]} for r in rows]

        return JSONResponse({"key": key, "events": await self.db(query)})

    async def storage(self, request: Request) -> Response:
        del request

        def read() -> dict[str, Any]:
            rows = self.maintenance.execute("SELECT count(*) FROM audit_log").fetchone()[0]
            self.maintenance.commit()
            return {"rows": rows, "quota_pages": self.volume.quota}

        return JSONResponse({**await self.db(read), **asdict(self.writer.stats)})

    async def set_retention(self, request: Request) -> Response:
        """The storage-full runbook: keep ``hot_for`` seconds hot, archive the rest now."""
        body = await request.json()
        self.hot_for = float(body["hot_for"])
        result = await self.retention_pass()
        return JSONResponse({"hot_for": self.hot_for, **result})

    async def verify(self, request: Request) -> Response:
        del request
        verification = await anyio.to_thread.run_sync(self.cold.verify)
        return JSONResponse({"ok": verification.ok, **asdict(verification)})

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as group:
            await group.start(self.writer.run)
            group.start_soon(self._retention_loop)
            await group.start(super().run)
            task_status.started()

    def close(self) -> None:
        self.connection.close()
        self.maintenance.close()


def stored_ids(path: Path) -> list[str]:
    """Every event id in the audit log's hot table, read with a connection of one's own."""
    connection = sqlite3.connect(path)
    try:
        return [row[0] for row in connection.execute("SELECT event_id FROM audit_log")]
    finally:
        connection.close()


def archived_ids(directory: Path) -> Iterable[str]:
    """Every event id in the archives, read from the files themselves (not the manifest)."""
    for path in sorted(directory.glob("audit-*.jsonl.gz")):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            yield str(json.loads(line)["event_id"])
