"""Drills 7-8: the Billing scenarios of the failure-mode analysis.

Organization, Billing and Workflow run for real. Every figure comes from the
independent record: the request log (what users were answered), the side-effect sink
(each resource row and each overage flag, in the order they happened), the network's
calls, what the chaos publisher dropped, and Billing's usage table read at the end.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from reference_system.billing import PLANS, Billing
from reference_system.core.drill import DrillResult, drill
from reference_system.core.records import RequestLog, RequestRecord, Workload
from reference_system.core.system import System
from reference_system.organization import Organization
from reference_system.workflow import Workflow
from resilience_kit.messaging import Event
from resilience_kit.testing import ChaosPublisher, ChaosResult

# -- shared by the Billing and Workflow drills -----------------------------------------------

RELAY_POLL = 5.0


@dataclass
class Tenants:
    """The orgs of a drill, their members, and the workload that acts for them."""

    system: System
    workload: Workload
    members: dict[str, list[str]] = field(default_factory=dict)

    def next_id(self, prefix: str = "r") -> str:
        return f"{prefix}-{self.system.rand.getrandbits(40):010x}"

    async def create(self, org: str, user: str, **tags: object) -> RequestRecord:
        """One resource creation at Workflow, as ``user``."""
        return await self.workload.request(
            user,
            "create",
            "POST",
            f"http://workflow/orgs/{org}/resources",
            json={"resource_id": self.next_id(), "user_id": user},
            tags={"org": org, **tags},
        )

    async def subscribe(self, org: str, plan: str) -> RequestRecord:
        return await self.workload.request(
            "admin",
            "subscribe",
            "POST",
            f"http://billing/orgs/{org}/subscription",
            json={"plan": plan},
            tags={"org": org, "plan": plan},
        )


def start_services(system: System, **workflow: float) -> None:
    """Organization, Billing and Workflow, one replica each."""
    system.add("organization", Organization)
    system.add("billing", Billing)
    system.add("workflow", lambda ctx: Workflow(ctx, **workflow))


async def open_orgs(
    system: System, plans: dict[str, str], members: int, prefill: dict[str, int]
) -> Tenants:
    """Create each org with ``members`` members, subscribe it, and create ``prefill``
    resources as its owner (which loads Workflow's caches)."""
    tenants = Tenants(system, system.workload())
    for org, plan in plans.items():
        owner = f"{org}-owner"
        await tenants.workload.request(
            "admin",
            "create-org",
            "POST",
            "http://organization/orgs",
            json={"org_id": org, "owner_id": owner, "name": org.title()},
        )
        tenants.members[org] = [f"{org}-user-{n}" for n in range(members)]
        for user in tenants.members[org]:
            await tenants.workload.request(
                "admin",
                "add-member",
                "POST",
                f"http://organization/orgs/{org}/members",
                json={"user_id": user, "role": "member"},
            )
        if plan != "free":
            await tenants.subscribe(org, plan)
    await system.sleep(1.0)  # the subscriptions' events reach Workflow
    for org in plans:
        for _ in range(prefill.get(org, 0)):
            await tenants.create(org, f"{org}-owner", prefill=True)
    return tenants


def fill_counts(result: DrillResult, records: list[RequestRecord]) -> None:
    counts = RequestLog.tally(records)
    result.served, result.degraded = counts["served"], counts["degraded"]
    result.rejected, result.failed = counts["rejected"], counts["failed"]


def resource_rows(system: System) -> dict[str, list[tuple[float, str]]]:
    """Per org, the resources written (time, id), in the order they were written."""
    rows: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for effect in system.sink.of("row"):
        if effect.key.startswith("resource:"):
            _, org, resource = effect.key.split(":", 2)
            rows[org].append((effect.at, resource))
    return rows


def overages(
    system: System, limit_at: Callable[[str, float], int | None]
) -> dict[str, list[tuple[float, str]]]:
    """Per org, the resources written while the org already had its true limit or more
    (``limit_at(org, t)``: the limit Billing had granted at ``t``; None: unknown)."""
    found: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for org, written in resource_rows(system).items():
        for index, (at, resource) in enumerate(written):
            limit = limit_at(org, at)
            if limit is not None and index >= limit:
                found[org].append((at, resource))
    return found


def flagged(system: System) -> dict[str, float]:
    """Each flagged resource (``org:resource``) and when it was first flagged."""
    first: dict[str, float] = {}
    for effect in system.sink.of("overage_flagged"):
        first.setdefault(effect.key, effect.at)
    return first


def is_limit_refusal(record: RequestRecord) -> bool:
    return record.status == 403 and record.body.get("error") == "limit_reached"


def read(system: System, service: str, query: str, *args: object) -> list[tuple[object, ...]]:
    """A service's own database, read at the end of a drill (what it kept)."""
    connection = system.stores[service].connect()
    try:
        return list(connection.execute(query, args).fetchall())
    except sqlite3.OperationalError:  # the table was never created
        return []
    finally:
        connection.close()


# -- 7. an entitlement event is lost ---------------------------------------------------------

SYNC_INTERVAL = 300.0
REQUEST_GAP = (10.0, 20.0)
STALENESS_BOUND = SYNC_INTERVAL + REQUEST_GAP[1] + 15.0
"""Billing re-publishes every org's entitlements every 300 s: a lost change is repaired
by the next sync, and seen by the next request after it."""


@drill(
    name="billing-entitlement-event-lost",
    number=7,
    service="Billing",
    scenario="Entitlement update event lost",
    fault=(
        "the entitlements_changed events of 2 of 4 plan changes (an upgrade, a downgrade) "
        "are lost by the broker "
        "(accepted, never delivered)"
    ),
    mitigations=("periodic-sync",),
    criterion=(
        f"Workflow converges to every change through the periodic sync (or the cache "
        f"ttl) within {STALENESS_BOUND:.0f} s; the staleness window is measured"
    ),
    page="billing-entitlement-event-lost.md",
)
async def entitlement_event_lost(system: System) -> DrillResult:
    rand = system.rand
    orgs = [f"org-{n}" for n in range(4)]
    upgraded = set(rand.sample(orgs, 2))  # free -> pro; the others pro -> free
    lost = {rand.choice(sorted(upgraded)), rand.choice(sorted(set(orgs) - upgraded))}
    armed = False
    dropped: dict[str, float] = {}

    def lost_in_transit(topic: str, event: Event) -> bool:
        org = str(event.payload.get("org_id"))
        if not armed or event.type != "billing.entitlements_changed" or "sync" in event.headers:
            return False
        if org in lost and org not in dropped:
            dropped[org] = system.now()
            return True
        return False

    # "published", never delivered: the relay is told it went out
    broker_lost: ChaosResult[None] = ChaosResult(value=None, name="broker.lost")
    system.relay_for(
        "billing",
        publisher=ChaosPublisher(system.bus, broker_lost, where=lost_in_transit),
        poll_interval=RELAY_POLL,
    )
    system.add("organization", Organization)
    system.add("billing", lambda ctx: Billing(ctx, sync_interval=SYNC_INTERVAL))
    system.add("workflow", Workflow)
    plans = {org: "free" if org in upgraded else "pro" for org in orgs}
    # Upgraded orgs start at the free plan's limit; downgraded ones above the free limit.
    prefill = {org: PLANS["free"]["resources"] + (0 if org in upgraded else 3) for org in orgs}
    tenants = await open_orgs(system, plans, members=1, prefill=prefill)
    armed = True
    start = system.now()
    changed_at: dict[str, float] = {}
    finish = start + 90.0 + STALENESS_BOUND + 30.0

    async def billing_admin(org: str) -> None:
        await system.sleep(rand.uniform(20.0, 90.0))
        record = await tenants.subscribe(org, "pro" if org in upgraded else "free")
        changed_at[org] = record.finished

    async def user(org: str) -> None:
        member = tenants.members[org][0]
        while True:
            await system.sleep(rand.uniform(*REQUEST_GAP))
            if system.now() >= finish:
                return
            await tenants.create(org, member)

    async with anyio.create_task_group() as group:
        for org in orgs:
            group.start_soon(billing_admin, org)
            group.start_soon(user, org)
    return judge_event_lost(system, start, upgraded, lost, changed_at, dropped)


def judge_event_lost(
    system: System,
    start: float,
    upgraded: set[str],
    lost: set[str],
    changed_at: dict[str, float],
    dropped: dict[str, float],
) -> DrillResult:
    result = DrillResult()
    creates = system.log.where(lambda r: r.operation == "create" and r.started >= start)
    fill_counts(result, creates)
    staleness: dict[str, float] = {}
    for org, at in changed_at.items():
        after = sorted((r for r in creates if r.tags["org"] == org and r.started >= at),
                       key=lambda r: r.started)  # fmt: skip
        # What shows the new entitlements: an upgraded org (at the free limit) gets a
        # creation through; a downgraded one (over the free limit) is refused.
        new_limit = PLANS["pro" if org in upgraded else "free"]["resources"]
        fresh = next(
            (
                r
                for r in after
                if (r.outcome == "served" if org in upgraded else is_limit_refusal(r))
                and (org in upgraded or r.body.get("limit") == new_limit)
            ),
            None,
        )
        if fresh is not None:
            staleness[org] = fresh.started - at
    never = sorted(set(changed_at) - set(staleness))
    result.events_lost = len(never)
    result.dependency_calls = system.network.calls_to("billing", start)
    lost_windows = [staleness.get(org, float("inf")) for org in lost]
    delivered_windows = [
        staleness[org] for org in changed_at if org not in lost and org in staleness
    ]
    worst = max(lost_windows + delivered_windows, default=float("inf"))
    result.time_to_recover = None if never else worst
    result.notes.append(
        "staleness window per org (change accepted -> first request served by the new "
        "entitlements): "
        + ", ".join(
            f"{org}{' (event lost)' if org in lost else ''} "
            + (f"{staleness[org]:.0f}s" if org in staleness else "never")
            for org in sorted(changed_at)
        )
    )
    result.check(
        "the changes' events were really lost",
        set(dropped) == lost,
        f"{len(dropped)} entitlements_changed events dropped by the broker (for {len(lost)} orgs)",
    )
    result.check(
        f"Workflow converges within {STALENESS_BOUND:.0f} s (periodic sync)",
        not never and worst <= STALENESS_BOUND,
        f"staleness after a lost event: worst {max(lost_windows):.0f}s; after a delivered "
        f"one: worst {max(delivered_windows, default=0.0):.0f}s; "
        f"{len(never)} orgs never converged during the drill",
    )
    return result


# -- 8. cancellation during active use -------------------------------------------------------

GRACE = 180.0
BILLING_DOWN_FOR = 60.0


@drill(
    name="billing-cancellation-grace",
    number=8,
    service="Billing",
    scenario="Subscription cancellation during active usage",
    fault=(
        "2 of 3 orgs cancel while their members keep creating resources; Billing is "
        "unreachable for 60 s and its database refuses usage writes for 90 s in the grace "
        "period"
    ),
    mitigations=("grace-period", "usage-outbox"),
    criterion=(
        "warnings (soft limits) during the grace period, the free plan's hard limit after "
        "it, 0 usage records lost"
    ),
    page="billing-cancellation-grace.md",
)
async def cancellation_grace(system: System) -> DrillResult:
    rand = system.rand
    system.relay_for("workflow", poll_interval=RELAY_POLL)
    system.add("organization", Organization)
    system.add("billing", lambda ctx: Billing(ctx, grace_period=GRACE))
    system.add("workflow", Workflow)
    billing = system.services["billing"][0]
    assert isinstance(billing, Billing)
    orgs = [f"org-{n}" for n in range(3)]
    cancelled = set(rand.sample(orgs, 2))
    tenants = await open_orgs(
        system, dict.fromkeys(orgs, "team"), members=2, prefill=dict.fromkeys(orgs, 3)
    )
    start = system.now()
    cancel_at = start + rand.uniform(30.0, 60.0)
    grace_until: dict[str, float] = {}
    outage_at = cancel_at + rand.uniform(30.0, GRACE - BILLING_DOWN_FOR - 30.0)
    finish = cancel_at + GRACE + 90.0

    async def owner(org: str) -> None:
        await system.sleep_until(cancel_at)
        record = await tenants.workload.request(
            "admin", "cancel", "POST", f"http://billing/orgs/{org}/cancel", tags={"org": org}
        )
        grace = record.body.get("grace_until")
        grace_until[org] = float(grace) if grace is not None else record.finished

    async def member(org: str, user: str) -> None:
        while True:
            await system.sleep(rand.uniform(12.0, 24.0))
            if system.now() >= finish:
                return
            await tenants.create(org, user)

    async def chaos() -> None:
        await system.sleep_until(outage_at)
        down = system.network.inject("down", "billing")
        billing.db_fault.enabled = True
        await system.sleep(BILLING_DOWN_FOR)
        system.network.clear(down)
        await system.sleep(30.0)
        billing.db_fault.enabled = False

    async with anyio.create_task_group() as group:
        group.start_soon(chaos)
        for org in orgs:
            if org in cancelled:
                group.start_soon(owner, org)
            for user in tenants.members[org]:
                group.start_soon(member, org, user)
    await system.sleep(120.0)  # usage still being redelivered lands
    return judge_cancellation(system, start, cancelled, grace_until, outage_at)


def judge_cancellation(
    system: System,
    start: float,
    cancelled: set[str],
    grace_until: dict[str, float],
    outage_at: float,
) -> DrillResult:
    result = DrillResult()
    creates = system.log.where(lambda r: r.operation == "create" and r.started >= start)
    fill_counts(result, creates)
    cancels = {r.tags["org"]: r for r in system.log.where(lambda r: r.operation == "cancel")}
    free = PLANS["free"]["resources"]
    in_grace = [
        r
        for r in creates
        if r.tags["org"] in cancelled
        and cancels[r.tags["org"]].finished <= r.started < grace_until[str(r.tags["org"])]
    ]
    warned = [
        r for r in in_grace if r.outcome in ("served", "degraded") and r.body.get("over_limit")
    ]
    refused_in_grace = [r for r in in_grace if is_limit_refusal(r)]
    after_grace = [
        r
        for r in creates
        if r.tags["org"] in cancelled and r.started >= grace_until[str(r.tags["org"])]
    ]
    rows = resource_rows(system)
    over_after = [
        r for r in after_grace if r.outcome in ("served", "degraded")
    ]  # every cancelled org is over the free limit by then
    kept_at_end = {org: len(rows[org]) for org in cancelled}
    result.wrongly_allowed = len(over_after)
    accepted = {(org, resource) for org, written in rows.items() for _, resource in written}
    usage = {
        (str(o), str(r))
        for o, r in read(system, "billing", "SELECT org_id, resource_id FROM usage")
    }
    missing = accepted - usage
    result.events_lost = len(missing)
    result.dependency_calls = system.network.calls_to(
        "billing", outage_at, outage_at + BILLING_DOWN_FOR
    )
    result.check(
        "warnings during the grace period (soft limits)",
        bool(warned) and not refused_in_grace,
        f"{len(warned)} creations over the free plan's {free} allowed with a warning in the "
        f"grace period, {len(refused_in_grace)} refused",
    )
    result.check(
        "hard limit after the grace period",
        bool(after_grace) and not over_after and all(n > free for n in kept_at_end.values()),
        f"{len(after_grace)} creations after the grace period, {len(over_after)} allowed over "
        f"the free plan's {free} (orgs hold {sorted(kept_at_end.values())} resources)",
    )
    result.check(
        "0 usage records lost",
        not missing and bool(accepted),
        f"{len(accepted) - len(missing)} of {len(accepted)} resources have a usage record at "
        f"Billing ({len(missing)} missing)",
    )
    return result
