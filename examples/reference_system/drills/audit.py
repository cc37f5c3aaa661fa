"""Drills 15-16: the Audit scenarios of the failure-mode analysis.

Audit consumes every service's topic. In these two drills a stand-in producer
publishes Identity's, Organization's, Billing's and Workflow's events on the bus, with
the contract's types, keys and payloads (`Producer`), and the stand-in stays on
purpose: both scenarios are about *volume* — a bulk import at ten times the normal rate
for 5 s (drill 15), enough history to fill the audit volume's quota (drill 16) — and
need that exact rate and count. Through the real services each event costs an HTTP
request through Workflow's membership and entitlement checks, which would put hundreds
of requests a second on the workload and take the drills far over their time budget
while measuring nothing about Audit. The real services feed Audit in the baseline (drill
0), which checks that Audit holds every event they publish. Every event published is
noted with its instant: that list, the rows in the audit database and the archive files
— read by the drill itself — are what the drills are judged on.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from reference_system.audit import TOPICS, Audit, Entry, Volume, archived_ids, stored_ids
from reference_system.core.drill import DrillResult, drill
from reference_system.core.records import RequestLog
from reference_system.core.system import System
from reference_system.drills.identity import percentile
from resilience_kit.messaging import BatchWriter, Event

HOST = "audit-0"


@dataclass
class Producer:
    """The stand-in producers: contract events on every topic, each one noted."""

    system: System
    rand: random.Random
    published: dict[str, float] = field(default_factory=dict)  # event id -> instant
    redelivered: int = 0
    _users: int = 0

    def event(self) -> tuple[str, Event]:
        rand = self.rand
        payload: dict[str, Any]
        topic = rand.choice(TOPICS)
        org = f"o{rand.randint(1, 400)}"
        self._users += 1
        user = f"u{self._users}"
        if topic == "identity":
            payload = {"user_id": user, "email": f"{user}@example.com"}
            return topic, Event(type="identity.user_signed_up", key=f"user:{user}", payload=payload)
        if topic == "organization":
            payload = {"org_id": org, "user_id": user, "role": rand.choice(["admin", "member"])}
            return topic, Event(type="organization.member_added", key=f"org:{org}", payload=payload)
        if topic == "billing":
            plan = rand.choice(["free", "team", "enterprise"])
            payload = {
                "org_id": org,
                "plan": plan,
                "limits": {"resources": {"free": 3, "team": 50, "enterprise": 1000}[plan]},
                "version": rand.randint(1, 50),
            }
            return topic, Event(
                type="billing.entitlements_changed", key=f"org:{org}", payload=payload
            )
        payload = {
            "org_id": org,
            "resource_id": f"r{self._users}",
            "created_by": user,
            "over_limit": False,
        }
        return topic, Event(type="workflow.resource_created", key=f"org:{org}", payload=payload)

    async def publish(self) -> None:
        topic, event = self.event()
        self.published[str(event.id)] = self.system.now()
        await self.system.bus.publish(topic, event)
        if self.rand.random() < 0.02:  # at least once: the broker delivers it again
            self.redelivered += 1
            await self.system.bus.publish(topic, event)

    async def steady(self, rate: float, until: float) -> None:
        """Events at ``rate`` per second (Poisson) until ``until``."""
        while True:
            await self.system.sleep(self.rand.expovariate(rate))
            if self.system.now() >= until:
                return
            await self.publish()


def deploy(system: System, **options: object) -> Audit:
    [audit] = system.add(
        "audit",
        lambda ctx: Audit(ctx, archive_dir=system.workdir / "audit-archive", **options),  # type: ignore[arg-type]
    )
    return audit


def written_at(system: System) -> dict[str, float]:
    """When each event's row was committed, from the side-effect record (first time)."""
    times: dict[str, float] = {}
    for effect in system.sink.of("row"):
        if effect.service == "audit":
            times.setdefault(effect.key.removeprefix("audit:"), effect.at)
    return times


async def wait_until_written(system: System, producer: Producer, deadline: float) -> None:
    while system.now() < deadline:
        if producer.published.keys() <= written_at(system).keys():
            return
        await system.sleep(1.0)


def fill_counts(result: DrillResult, system: System) -> None:
    counts = RequestLog.tally(system.log.records)
    result.served, result.degraded = counts["served"], counts["degraded"]
    result.rejected, result.failed = counts["rejected"], counts["failed"]


# -- 15. write burst ------------------------------------------------------------------------

NORMAL_RATE = 6.0  # events per second
BULKS = 5  # bulk imports, one a second: 10x the normal volume for 5 s
BULK_SIZE = 60
CALIBRATION_EVENTS = 64


async def calibrate(
    system: System, max_batch: int, commit_seconds: float, row_seconds: float
) -> tuple[float, float]:
    """Events/s writing to a scratch database on the audit volume's cost model, with
    batches of ``max_batch``: (virtual events/s, real events/s of the SQLite work)."""
    path = system.workdir / f"calibration-{max_batch}.db"
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, event_id TEXT, body TEXT)")
    volume = Volume(connection, commit_seconds=commit_seconds, row_seconds=row_seconds)
    real = 0.0

    def insert(batch: list[Entry]) -> float:
        started = time.perf_counter()
        with connection:
            connection.executemany(
                "INSERT INTO log (event_id, body) VALUES (?, ?)",
                [(str(e.event.id), e.event.to_json().decode()) for e in batch],
            )
        return time.perf_counter() - started

    async def write(batch: list[Entry]) -> None:
        nonlocal real
        await system.clock.asleep(volume.cost(len(batch)))
        real += await anyio.to_thread.run_sync(insert, batch)

    producer = Producer(system, random.Random(system.seed))
    entries = [Entry(*producer.event()) for _ in range(CALIBRATION_EVENTS)]
    started = system.now()
    async with BatchWriter(
        write,
        name=f"calibration.{max_batch}",
        capacity=CALIBRATION_EVENTS,
        max_batch=max_batch,
        max_delay=0,
        clock=system.clock,
    ) as writer:
        for entry in entries:
            await writer.put(entry)
    connection.close()
    return CALIBRATION_EVENTS / (system.now() - started), CALIBRATION_EVENTS / max(real, 1e-9)


@drill(
    name="audit-write-burst",
    number=15,
    service="Audit",
    scenario="High write volume: a burst of 10x the normal event rate",
    fault=(
        f"{BULKS} bulk imports of {BULK_SIZE} events, one a second, over {NORMAL_RATE:g} events/s"
    ),
    mitigations=("batching", "backpressure"),
    criterion=(
        "0 audit events lost; bounded memory (max queue depth <= its bound); the burst "
        "absorbed (p99 publish-to-durable <= 2 s); batching's throughput gain reported"
    ),
    page="audit-write-burst.md",
)
async def write_burst(system: System) -> DrillResult:
    rand = system.rand
    audit = deploy(system)
    producer = Producer(system, rand)
    start = system.now()
    burst_at = start + 10.0 + rand.uniform(0.0, 5.0)
    burst_end = burst_at + BULKS
    finish = burst_end + 5.0
    bulks: list[tuple[float, list[str]]] = []
    depths: list[int] = []

    async def bulk_imports() -> None:
        for number in range(BULKS):
            await system.sleep_until(burst_at + number)
            before = set(producer.published)
            for _ in range(BULK_SIZE):
                await producer.publish()
            bulks.append((system.now(), [i for i in producer.published if i not in before]))

    async def sample_depth() -> None:
        # An outside observer of the queue (as a memory profiler would be): finely
        # during the burst, where peaks happen.
        while system.now() < finish + 5.0:
            depths.append(audit.writer.depth)
            fine = burst_at <= system.now() <= burst_end + 2.0
            await system.sleep(0.02 if fine else 0.25)

    async with anyio.create_task_group() as group:
        group.start_soon(producer.steady, NORMAL_RATE, finish)
        group.start_soon(bulk_imports)
        group.start_soon(sample_depth)
    await wait_until_written(system, producer, finish + 120.0)

    batching = system.mitigations.on("batching")
    one_virtual, one_real = await calibrate(
        system, 1, audit.volume.commit_seconds, audit.volume.row_seconds
    )
    many_virtual, many_real = await calibrate(
        system, 32, audit.volume.commit_seconds, audit.volume.row_seconds
    )

    result = DrillResult()
    fill_counts(result, system)
    stored = stored_ids(Path(system.stores["audit"].path))
    times = written_at(system)
    lost = [event_id for event_id in producer.published if event_id not in set(stored)]
    result.events_lost = len(lost)
    result.duplicate_effects = (len(stored) - len(set(stored))) + system.sink.duplicates("row")
    latencies = [times[i] - at for i, at in producer.published.items() if i in times]
    p99 = percentile(latencies, 0.99)
    # Throughput under saturation: how fast each bulk became durable.
    rates = []
    for published_at, ids in bulks:
        last = max((times[i] for i in ids if i in times), default=None)
        if last is not None and last > published_at:
            rates.append(len(ids) / (last - published_at))
    burst_rate = sum(rates) / len(rates) if rates else 0.0
    gain = burst_rate / one_virtual if one_virtual else 0.0
    burst_ids = [i for _, ids in bulks for i in ids]
    drained = max((times[i] for i in burst_ids if i in times), default=None)
    last_bulk = bulks[-1][0] if bulks else burst_end
    result.time_to_recover = None if drained is None else max(0.0, drained - last_bulk)
    max_depth = max(depths, default=0)
    result.check(
        "0 audit events lost",
        not lost and result.duplicate_effects == 0,
        f"{len(lost)} of {len(producer.published)} events missing from the audit log, "
        f"{result.duplicate_effects} duplicate rows ({producer.redelivered} redeliveries)",
    )
    result.check(
        "bounded memory: the queue never exceeds its bound",
        max_depth <= audit.bound,
        f"max queue depth {max_depth} (bound {audit.bound}; the writer's own count "
        f"{audit.writer.stats.max_depth})",
    )
    result.check(
        "the burst is absorbed (p99 publish-to-durable <= 2 s)",
        p99 <= 2.0,
        f"p99 {p99:.2f}s; the last bulk durable {result.time_to_recover or 0:.2f}s after "
        "it was published",
    )
    result.check(
        "batching's throughput gain (>= 3x one write per event)",
        gain >= 3.0,
        f"bulks written at {burst_rate:.0f} events/s vs {one_virtual:.0f} events/s one "
        f"write per event: x{gain:.1f} (virtual time; commits modelled at "
        f"{audit.volume.commit_seconds * 1000:g} ms)",
    )
    result.notes.append(
        f"calibration in virtual time: {one_virtual:.0f} events/s one per transaction, "
        f"{many_virtual:.0f} events/s in batches of 32 (x{many_virtual / one_virtual:.1f})"
    )
    result.notes.append(
        f"calibration in real time (the SQLite work alone, this machine): {one_real:.0f} "
        f"events/s one per transaction, {many_real:.0f} events/s in batches of 32 "
        f"(x{many_real / one_real:.1f})"
    )
    result.notes.append(f"batching {'on' if batching else 'off'}; {len(producer.published)} events")
    return result


# -- 16. storage full -----------------------------------------------------------------------

QUOTA_PAGES = 40  # the audit volume: room for ~300 events beyond the empty schema
RUNBOOK_HOT_FOR = 60.0


@drill(
    name="audit-storage-full",
    number=16,
    service="Audit",
    scenario="Storage full: the audit volume fills up as traffic grows",
    fault=(
        f"a {QUOTA_PAGES}-page quota (PRAGMA max_page_count): writes fail with "
        "'database or disk is full' once traffic triples"
    ),
    mitigations=("retention", "archival", "alerting"),
    criterion=(
        "0 audit events lost (held and retried); an alert raised (the monitor saw it); "
        "retention + archival free space; archived events verifiable"
    ),
    page="audit-storage-full.md",
)
async def storage_full(system: System) -> DrillResult:
    rand = system.rand
    audit = deploy(system, quota_pages=QUOTA_PAGES, hot_for=600.0, retention_interval=30.0)
    producer = Producer(system, rand)
    workload = system.workload(deadline=30.0)
    start = system.now()
    growth_at = start + 60.0
    growth_end = growth_at + 150.0
    finish = growth_end + 60.0
    runbook: list[float] = []

    async def traffic() -> None:
        await producer.steady(1.0, growth_at)
        await producer.steady(3.0, growth_end)
        await producer.steady(1.0, finish)

    async def operator() -> None:
        # On an alert, someone is paged and runs the runbook: archive all but the last
        # minute now (retention), which frees the pages the writer needs.
        while system.now() < finish:
            await system.sleep(5.0)
            if system.health_of(HOST) not in ("healthy", "unknown") and not runbook:
                await system.sleep(rand.uniform(10.0, 40.0))
                runbook.append(system.now())
                await workload.request(
                    "operator",
                    "runbook",
                    "POST",
                    f"http://{HOST}/admin/retention",
                    json={"hot_for": RUNBOOK_HOT_FOR},
                )

    async with anyio.create_task_group() as group:
        group.start_soon(traffic)
        group.start_soon(operator)
    await wait_until_written(system, producer, finish + 300.0)
    verify = await workload.request(
        "operator", "verify", "GET", f"http://{HOST}/admin/archives/verify"
    )

    result = DrillResult()
    fill_counts(result, system)
    archive = system.workdir / "audit-archive"
    stored = stored_ids(Path(system.stores["audit"].path))
    archived = list(archived_ids(archive))
    kept = set(stored) | set(archived)
    lost = [event_id for event_id in producer.published if event_id not in kept]
    result.events_lost = len(lost)
    result.duplicate_effects = (
        len(stored)
        - len(set(stored))
        + len(archived)
        - len(set(archived))
        + system.sink.duplicates("row")
    )
    full_at = next((at for at, what in system.observations if "storage full" in what), None)
    alerts = [
        (at, status)
        for at, host, status in system.health
        if host == HOST and status != "healthy" and full_at is not None and at >= full_at
    ]
    # The outage, from the record of rows written: the longest gap in commits.
    times = sorted(written_at(system).values())
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(times)]
    longest = max(gaps, default=(0.0, 0.0, 0.0))
    result.time_to_recover = longest[0] if full_at is not None else None
    written_after = sum(1 for at in times if runbook and at > runbook[0])
    result.check(
        "the storage filled up (the fault happened)",
        full_at is not None,
        "never" if full_at is None else f"first 'disk full' at {full_at - start:.0f}s",
    )
    result.check(
        "0 audit events lost (held and retried)",
        not lost and result.duplicate_effects == 0,
        f"{len(lost)} of {len(producer.published)} events in neither the log nor the "
        f"archives; {result.duplicate_effects} duplicates; writer retried "
        f"{audit.writer.stats.failures} failed batches",
    )
    result.check(
        "an alert raised (the monitor saw it)",
        bool(alerts),
        f"monitor saw {HOST} {alerts[0][1]} {alerts[0][0] - (full_at or 0):.0f}s after the "
        "disk filled"
        if alerts
        else "no alert",
    )
    result.check(
        "retention + archival free space: writes resume",
        bool(runbook) and written_after > 0 and not lost,
        f"runbook at {runbook[0] - start:.0f}s; {written_after} rows written after it"
        if runbook
        else "the runbook never ran",
    )
    body = verify.body
    result.check(
        "archived events verifiable",
        verify.status == 200
        and bool(body.get("ok"))
        and body.get("files", 0) > 0
        and body.get("events") == len(archived),
        f"verify: {body.get('files', 0)} files, {body.get('events', 0)} events, "
        f"problems {body.get('problems', [])}; {len(archived)} events read from the files",
    )
    result.notes.append(
        f"outage: longest gap in commits {longest[0]:.0f}s; {len(stored)} rows hot, "
        f"{len(archived)} archived"
    )
    return result
