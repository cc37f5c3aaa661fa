"""Drills 17-18: the Analytics scenarios of the failure-mode analysis.

Both drills feed Analytics through a stand-in producer that publishes, on the bus, the
events of Identity, Organization, Billing and Workflow with exactly the contracts of
the reference system (topics, types, keys ``org:<id>``, payloads), each numbered per
key (``seq``) so order can be checked. The stand-in stays on purpose: drill 17 needs a
burst of 120 events over 48 orgs at one instant (through the real services, hundreds of
HTTP requests, and their own pacing would spread the burst), drill 18 orgs that see no
event at all after their history, so their answers can be known during the rebuild,
and both need the per-key ``seq`` no real payload carries. The real services feed
Analytics in the baseline (drill 0), where its read model is compared with an
independent fold of the events they published. They judge Analytics against:

- the producer's own list of what it published, folded here by an independent fold
  (written out below, not Analytics' ``fold``);
- the side-effect sink, where Analytics records each event it handled, in order;
- the request log of the clients reading statistics, and the operator's monitor;
- for drill 17, the lag gauge as an OpenTelemetry reader collects it.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import anyio

from reference_system.analytics import TOPICS, Analytics
from reference_system.core.drill import DrillResult, drill
from reference_system.core.records import RequestLog
from reference_system.core.system import System
from resilience_kit.messaging import Event

GROUP = "analytics"


class Producer:
    """Publishes contract-shaped events for Analytics and remembers each one, in order."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.published: list[Event] = []
        self._seq: Counter[tuple[str, str]] = Counter()  # per topic and key
        self._users = 0

    async def emit(self, topic: str, kind: str, key: str, **payload: Any) -> Event:
        self._seq[topic, key] += 1
        event = Event(
            type=kind,
            key=key,
            payload={**payload, "seq": self._seq[topic, key]},
            occurred_at=datetime.fromtimestamp(self.system.clock.time(), timezone.utc),
        )
        await self.system.bus.publish(topic, event)
        self.published.append(event)
        return event

    async def org_created(self, org: str) -> None:
        self._users += 1
        owner = f"u{self._users}"
        await self.emit(
            "identity",
            "identity.user_signed_up",
            f"user:{owner}",
            user_id=owner,
            email=f"{owner}@example.com",
        )
        await self.emit(
            "organization",
            "organization.org_created",
            f"org:{org}",
            org_id=org,
            owner_id=owner,
            name=f"Org {org}",
        )
        await self.emit(
            "billing",
            "billing.entitlements_changed",
            f"org:{org}",
            org_id=org,
            plan="free",
            limits={"resources": 5},
            version=1,
        )

    async def activity(self, org: str) -> None:
        """One random thing happening in ``org``."""
        rand = self.system.rand
        roll = rand.random()
        user = f"m{rand.randrange(6)}"
        if roll < 0.35:
            role = rand.choice(["admin", "member", "member"])
            await self.emit(
                "organization",
                "organization.member_added",
                f"org:{org}",
                org_id=org,
                user_id=user,
                role=role,
            )
        elif roll < 0.5:
            await self.emit(
                "organization",
                "organization.member_removed",
                f"org:{org}",
                org_id=org,
                user_id=user,
            )
        elif roll < 0.55:
            version = self._seq["billing", f"org:{org}"] + 1  # increasing per org
            await self.emit(
                "billing",
                "billing.entitlements_changed",
                f"org:{org}",
                org_id=org,
                plan="pro",
                limits={"resources": 50},
                version=version,
            )
        else:
            await self.emit(
                "workflow",
                "workflow.resource_created",
                f"org:{org}",
                org_id=org,
                resource_id=f"r{len(self.published)}",
                created_by="m0",
                over_limit=rand.random() < 0.2,
            )

    async def drained(self, service: str = GROUP) -> None:
        """Wait until ``service``'s group acknowledged everything published."""
        for topic in TOPICS:
            await self.system.bus.join(topic, service)


def independent_fold(events: Iterable[Event]) -> dict[str, Any]:
    """The read model the events make, computed here from the producer's own record."""
    orgs: dict[str, dict[str, Any]] = {}
    days: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for event in events:
        day = "day:" + event.occurred_at.astimezone(timezone.utc).date().isoformat()
        totals["events"] += 1
        days[day]["events"] += 1
        payload = event.payload
        if event.type == "identity.user_signed_up":
            totals["signups"] += 1
            days[day]["signups"] += 1
            continue
        if "org_id" not in payload:  # about no org (a session revoked): counted, no row
            continue
        org_id = str(payload["org_id"])
        org = orgs.setdefault(
            org_id,
            {
                "name": None,
                "members": set(),
                "admins": set(),
                "plan": None,
                "plan_version": 0,
                "resource_limit": None,
                "resources": 0,
                "over_limit": 0,
            },
        )
        if event.type == "organization.org_created":
            totals["orgs"] += 1
            org["name"] = payload["name"]
            org["members"].add(payload["owner_id"])
            org["admins"].add(payload["owner_id"])
        elif event.type == "organization.member_added":
            org["members"].add(payload["user_id"])
            if payload["role"] == "admin":
                org["admins"].add(payload["user_id"])
            else:
                org["admins"].discard(payload["user_id"])
        elif event.type == "organization.member_removed":
            org["members"].discard(payload["user_id"])
            org["admins"].discard(payload["user_id"])
        elif event.type == "billing.entitlements_changed":
            if payload["version"] > org["plan_version"]:
                org["plan"], org["plan_version"] = payload["plan"], payload["version"]
                org["resource_limit"] = payload["limits"]["resources"]
        elif event.type == "workflow.resource_created":
            org["resources"] += 1
            org["over_limit"] += int(payload["over_limit"])
            totals["resources"] += 1
            days[day]["resources"] += 1
    model: dict[str, Any] = {}
    for org_id, org in orgs.items():
        model[f"org:{org_id}"] = {
            **org,
            "org_id": org_id,
            "members": sorted(org["members"]),
            "admins": sorted(org["admins"]),
            "member_count": len(org["members"]),
            "deleted": False,
        }
    for day, counts in days.items():
        model[day] = {name: counts[name] for name in ("events", "signups", "resources")}
    if totals["events"]:
        model["totals"] = {
            name: totals[name] for name in ("events", "signups", "orgs", "resources")
        }
    return model


def order_breaks(system: System, host: str, published: list[Event]) -> tuple[int, int, int]:
    """(events handled out of their key's order, events never handled, duplicates)
    from the sink's record of what ``host`` handled, in the order it handled them.

    Order is per topic and key: what the bus and the consumers promise.
    """
    handled = [effect for effect in system.sink.of("handled") if effect.service == host]
    last: dict[str, int] = {}
    breaks = 0
    for effect in handled:
        key, seq = str(effect.details["event_key"]), int(effect.details["seq"])
        if seq < last.get(key, 0):
            breaks += 1
        last[key] = max(seq, last.get(key, 0))
    seen = Counter(effect.key for effect in handled)
    lost = sum(1 for event in published if seen[str(event.id)] == 0)
    return breaks, lost, sum(count - 1 for count in seen.values())


def fill(result: DrillResult, log: RequestLog, operation: str) -> None:
    counts = RequestLog.tally(log.where(lambda r: r.operation == operation))
    result.served, result.degraded = counts["served"], counts["degraded"]
    result.rejected, result.failed = counts["rejected"], counts["failed"]


# -- 17. processing lag --------------------------------------------------------------------

WORK = 2.0  # seconds of (slowed) warehouse write per event during the drill
BURST = 120
ORGS = 48


def _metric_reader() -> Any:
    """An OpenTelemetry SDK reader: the lag gauge as a dashboard would collect it."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
    except ImportError:  # the SDK is a test dependency, not the reference extra's
        return None, None
    reader = InMemoryMetricReader()
    # Not shut down at exit: an atexit hook would keep it, and what it observes, alive.
    return reader, MeterProvider(metric_readers=[reader], shutdown_on_exit=False)


def _lag_points(reader: Any) -> list[float]:
    data = reader.get_metrics_data()
    return [
        float(point.value)
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "analytics.consumer.lag"
        for point in metric.data.data_points
    ]


@drill(
    name="analytics-processing-lag",
    number=17,
    service="Analytics",
    scenario="Analytics falls behind: a burst of events meets a slow consumer",
    fault=f"{BURST} events in 2 s while each event's warehouse write takes {WORK} s",
    mitigations=("parallel-consumers", "lag-monitoring"),
    criterion=(
        "lag reported (monitor and metric); catch-up faster with parallel consumers "
        "(ratio measured); per-key order kept; nothing lost"
    ),
    page="analytics-processing-lag.md",
)
async def processing_lag(system: System) -> DrillResult:
    rand = system.rand
    reader, provider = _metric_reader()
    [analytics] = system.add(
        GROUP, lambda ctx: Analytics(ctx, work_seconds=WORK, meter_provider=provider)
    )
    # The control group: the same service with one lane per topic, consuming the same
    # events in a group of its own, so both catch-up times come from one run.
    [serial] = system.add(
        "analytics-serial", lambda ctx: Analytics(ctx, work_seconds=WORK, lanes=1)
    )
    producer = Producer(system)
    orgs = [f"o{n}" for n in range(ORGS)]
    for org in orgs:
        await producer.emit(
            "organization",
            "organization.org_created",
            f"org:{org}",
            org_id=org,
            owner_id=f"owner-{org}",
            name=f"Org {org}",
        )
    await producer.drained(GROUP)
    await producer.drained("analytics-serial")
    workload = system.workload()
    lag_seen: list[tuple[float, float]] = []
    burst_at = system.now() + rand.uniform(5.0, 20.0)
    done = anyio.Event()

    async def burst() -> None:
        await system.sleep_until(burst_at)
        for _ in range(BURST):
            await producer.activity(rand.choice(orgs))
            await system.sleep(2.0 / BURST)
        await producer.drained(GROUP)
        await producer.drained("analytics-serial")
        done.set()

    async def readers() -> None:
        while not done.is_set():
            await system.sleep(rand.uniform(3.0, 7.0))
            await workload.request(
                "reader", "stats", "GET", f"http://{GROUP}/orgs/{rand.choice(orgs)}/stats"
            )

    async def dashboard() -> None:
        while not done.is_set():
            if reader is not None:
                lag_seen.extend((system.now(), value) for value in _lag_points(reader))
            await system.sleep(5.0)

    async with anyio.create_task_group() as group:
        group.start_soon(burst)
        group.start_soon(readers)
        group.start_soon(dashboard)
    await system.sleep(16.0)  # one more monitor round: it sees the lag gone
    if provider is not None:
        provider.shutdown()

    result = DrillResult()
    fill(result, system.log, "stats")
    published_burst = producer.published[-BURST:]
    ids = {str(event.id) for event in published_burst}

    def caught_up(host: str) -> float:
        times = [e.at for e in system.sink.of("handled") if e.service == host and e.key in ids]
        return max(times) - burst_at

    parallel_time = caught_up(analytics.ctx.host)
    serial_time = caught_up(serial.ctx.host)
    ratio = serial_time / parallel_time
    result.time_to_recover = round(parallel_time, 1)
    breaks, lost, duplicates = order_breaks(system, analytics.ctx.host, producer.published)
    result.events_lost, result.duplicate_effects = lost, duplicates
    monitor = [
        status
        for at, host, status in system.health
        if host == analytics.ctx.host and at >= burst_at and status != "healthy"
    ]
    peak = max((value for _, value in lag_seen), default=0.0)
    result.notes.append(
        f"catch-up {parallel_time:.1f}s with {analytics.lanes} lanes per topic, "
        f"{serial_time:.1f}s with 1 (ratio {ratio:.1f}); lag gauge peak {peak:.0f} events"
    )
    result.check(
        "lag reported by the monitor and the metric",
        bool(monitor) and peak > 0,
        f"monitor saw {sorted(set(monitor)) or 'nothing'}; gauge peak {peak:.0f} events"
        + ("" if reader is not None else " (no OpenTelemetry SDK installed)"),
    )
    result.check(
        "catch-up at least 3x faster with parallel consumers",
        ratio >= 3.0,
        f"{serial_time:.1f}s / {parallel_time:.1f}s = {ratio:.1f}x",
    )
    result.check("per-key order kept", breaks == 0, f"{breaks} events handled out of order")
    result.check(
        "nothing lost, nothing twice",
        lost == 0 and duplicates == 0,
        f"{lost} events never handled, {duplicates} handled twice",
    )
    rows = await workload.request(
        "operator", "rows", "GET", f"http://{GROUP}/admin/read-model/rows"
    )
    matches = rows.body == independent_fold(producer.published)
    result.check("the caught-up model equals a fold of the events", matches, f"equal: {matches}")
    return result


# -- 18. read model corruption ---------------------------------------------------------------

STABLE = 14  # orgs o0..o13 see no event after the history: their answers never change
ACTIVE = 12  # orgs o14.. keep changing, during the rebuild too
VALIDATE_EVERY = 30.0


def corrupt(system: System, orgs: list[str]) -> None:
    """A bad write straight into the active version's rows: resources inflated."""
    connection = sqlite3.connect(system.stores[GROUP].path)
    with connection:
        active = connection.execute(
            "SELECT version FROM rk_projection_versions WHERE name = 'analytics'"
            " AND state = 'active'"
        ).fetchone()[0]
        for org in orgs:
            (value,) = connection.execute(
                "SELECT value FROM rk_projection_rows WHERE name = 'analytics' AND version = ?"
                " AND key = ?",
                (active, f"org:{org}"),
            ).fetchone()
            row = json.loads(value)
            row["resources"] += 7
            connection.execute(
                "UPDATE rk_projection_rows SET value = ? WHERE name = 'analytics'"
                " AND version = ? AND key = ?",
                (json.dumps(row, sort_keys=True), active, f"org:{org}"),
            )
    connection.close()


@drill(
    name="analytics-read-model-corruption",
    number=18,
    service="Analytics",
    scenario="Analytics' read model corrupted",
    fault="rows of the active read model overwritten in its database (resources inflated)",
    mitigations=("validation", "versioned-rebuild"),
    criterion=(
        "validation detects it; the rebuilt model equals an independent fold of the event "
        "log exactly; the old version serves during the rebuild"
    ),
    page="analytics-read-model-corruption.md",
)
async def read_model_corruption(system: System) -> DrillResult:
    rand = system.rand
    [analytics] = system.add(GROUP, lambda ctx: Analytics(ctx, validate_every=VALIDATE_EVERY))
    producer = Producer(system)
    orgs = [f"o{n}" for n in range(STABLE + ACTIVE)]
    stable, active = orgs[:STABLE], orgs[STABLE:]
    for org in orgs:
        await producer.org_created(org)
    for _ in range(120):
        await producer.activity(rand.choice(orgs))
        await system.sleep(0.2)
    await producer.drained()
    history = independent_fold(producer.published)
    workload = system.workload()
    start = system.now()
    corrupt_at = start + rand.uniform(10.0, 25.0)
    finish = corrupt_at + 2 * VALIDATE_EVERY + 20.0
    victims = rand.sample(stable, 3)

    async def chaos() -> None:
        await system.sleep_until(corrupt_at)
        corrupt(system, victims)

    async def live() -> None:  # the other orgs keep changing throughout
        while system.now() < finish:
            await system.sleep(rand.uniform(0.5, 1.5))
            await producer.activity(rand.choice(active))

    async def reader(number: int) -> None:
        while system.now() < finish:
            await system.sleep(rand.uniform(0.5, 1.5))
            org = rand.choice(stable)
            await workload.request(
                f"reader-{number}",
                "stats",
                "GET",
                f"http://{GROUP}/orgs/{org}/stats",
                tags={"org": org},
            )

    async with anyio.create_task_group() as group:
        group.start_soon(chaos)
        group.start_soon(live)
        group.start_soon(reader, 0)
    await producer.drained()

    result = DrillResult()
    fill(result, system.log, "stats")
    started = [
        at for at, what in system.observations if what.startswith("rebuild") and "started" in what
    ]
    switched = [at for at, what in system.observations if what.startswith("rebuild switched")]
    detected = [at for at, what in system.observations if what.startswith("validation:")]
    window_start = started[0] if started else None
    window_end = switched[0] if switched else (finish if started else None)

    def right(record: Any) -> bool:
        expected = history[f"org:{record.tags['org']}"]
        return bool(record.status == 200 and {k: record.body.get(k) for k in expected} == expected)

    stats = system.log.where(lambda r: r.operation == "stats")
    during = [
        r
        for r in stats
        if window_start is not None and window_start <= r.started < (window_end or finish)
    ]
    unanswered = sum(1 for r in during if r.outcome not in ("served", "degraded"))
    wrong_during = sum(1 for r in during if r.tags["org"] not in victims and not right(r))
    after = [r for r in stats if window_end is not None and r.started >= window_end]
    wrong_after = sum(1 for r in after if not right(r) or r.outcome != "served")
    result.wrongly_allowed = sum(
        1 for r in stats if r.started >= corrupt_at and not right(r) and r.outcome == "served"
    )
    rows = await workload.request(
        "operator", "rows", "GET", f"http://{GROUP}/admin/read-model/rows"
    )
    expected = independent_fold(producer.published)
    differing = sorted(
        key for key in set(expected) | set(rows.body) if rows.body.get(key) != expected.get(key)
    )
    breaks, lost, duplicates = order_breaks(system, analytics.ctx.host, producer.published)
    result.events_lost, result.duplicate_effects = lost, duplicates
    result.time_to_recover = None if window_end is None or not switched else window_end - corrupt_at
    result.check(
        "validation detects the corruption",
        bool(detected) and detected[0] - corrupt_at <= VALIDATE_EVERY + 1.0,
        "never" if not detected else f"{detected[0] - corrupt_at:.1f}s after the corruption",
    )
    result.check(
        "the rebuilt model equals an independent fold of the event log exactly",
        bool(switched) and not differing,
        f"{len(differing)} of {len(expected)} rows differ"
        + (f" ({', '.join(differing[:3])})" if differing else "")
        + ("" if switched else "; no rebuild switched"),
    )
    result.check(
        "the old version served during the rebuild",
        bool(during) and unanswered == 0 and wrong_during == 0,
        f"{len(during)} requests during the rebuild: {unanswered} unanswered, "
        f"{wrong_during} wrong answers for intact orgs",
    )
    result.check(
        "after the switch every answer is right",
        bool(after) and wrong_after == 0,
        f"{wrong_after} of {len(after)} answers wrong or degraded",
    )
    result.check(
        "nothing lost, nothing twice, in order",
        lost == 0 and duplicates == 0 and breaks == 0,
        f"{lost} never handled, {duplicates} twice, {breaks} out of order",
    )
    return result
