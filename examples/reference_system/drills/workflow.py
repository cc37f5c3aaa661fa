"""Drills 9-11: the Workflow scenarios of the failure-mode analysis.

Organization, Billing and Workflow run for real. Every figure comes from the
independent record: the request log, the side-effect sink (resource rows and overage
flags in the order they happened), the network's calls, and an observer of its own on
the ``organization`` topic (when each event was delivered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import anyio

from reference_system.billing import PLANS
from reference_system.core.drill import DrillResult, drill
from reference_system.core.system import System
from reference_system.drills.billing import (
    RELAY_POLL,
    fill_counts,
    flagged,
    is_limit_refusal,
    open_orgs,
    overages,
    resource_rows,
    start_services,
)
from reference_system.organization import TOPIC as ORGANIZATION_TOPIC
from reference_system.workflow import ENTITLEMENTS_TTL
from resilience_kit import Backoff
from resilience_kit.messaging import Event
from resilience_kit.testing import ChaosFault, ChaosLatency, ChaosPublisher


@dataclass
class Observer:
    """A consumer group of its own on a topic: when each event was delivered."""

    system: System
    topic: str
    deliveries: list[tuple[float, Event]] = field(default_factory=list)

    async def run(self) -> None:
        subscription = self.system.bus.subscribe(self.topic, group="drill.observer")
        async with subscription:
            async for delivery in subscription:
                self.deliveries.append((self.system.now(), Event.from_json(delivery.data)))
                await subscription.ack(delivery)


# -- 9. stale entitlements -------------------------------------------------------------------

VALIDATE_INTERVAL = 60.0
STALE_FOR = 150.0


@drill(
    name="workflow-stale-entitlements",
    number=9,
    service="Workflow",
    scenario="Entitlement data stale",
    fault=(
        "3 of 5 orgs are downgraded from pro (25 resources) to free (5) while the bus "
        "refuses Billing's events for 150 s: Workflow enforces the old limits meanwhile"
    ),
    mitigations=("post-validation",),
    criterion=(
        "every creation over the limit during the staleness is flagged by the "
        "post-creation validation (0 unflagged overages); the new limit holds once the "
        "change arrives"
    ),
    page="workflow-stale-entitlements.md",
)
async def stale_entitlements(system: System) -> DrillResult:
    rand = system.rand
    refusing = ChaosFault(ConnectionError("broker unreachable"), enabled=False, name="bus.down")
    system.relay_for(
        "billing",
        publisher=ChaosPublisher(system.bus, refusing, clock=system.clock),
        poll_interval=RELAY_POLL,
        max_attempts=30,
        backoff=Backoff.exponential(initial=2.0, maximum=20.0, jitter="equal"),
    )
    start_services(system, validate_interval=VALIDATE_INTERVAL)
    orgs = [f"org-{n}" for n in range(5)]
    downgraded = set(rand.sample(orgs, 3))
    tenants = await open_orgs(
        system, dict.fromkeys(orgs, "pro"), members=2, prefill=dict.fromkeys(orgs, 4)
    )
    start = system.now()
    stale_at = start + rand.uniform(20.0, 40.0)
    changed_at: dict[str, float] = {}
    finish = stale_at + STALE_FOR + 2 * VALIDATE_INTERVAL + 30.0

    async def chaos() -> None:
        await system.sleep_until(stale_at)
        refusing.enabled = True
        await system.sleep(STALE_FOR)
        refusing.enabled = False

    async def billing_admin(org: str) -> None:
        await system.sleep_until(stale_at + rand.uniform(5.0, 30.0))
        record = await tenants.workload.request(
            "admin",
            "subscribe",
            "POST",
            f"http://billing/orgs/{org}/subscription",
            json={"plan": "free"},
            tags={"org": org},
        )
        changed_at[org] = record.started  # strict: the new limit counts from the request

    async def member(org: str, user: str) -> None:
        while True:
            await system.sleep(rand.uniform(10.0, 20.0))
            if system.now() >= finish:
                return
            await tenants.create(org, user)

    async with anyio.create_task_group() as group:
        group.start_soon(chaos)
        for org in orgs:
            if org in downgraded:
                group.start_soon(billing_admin, org)
            for user in tenants.members[org]:
                group.start_soon(member, org, user)
    await system.sleep(VALIDATE_INTERVAL + 5.0)  # one more validation round
    return judge_stale(system, start, orgs, changed_at, stale_at)


def judge_stale(
    system: System, start: float, orgs: list[str], changed_at: dict[str, float], stale_at: float
) -> DrillResult:
    result = DrillResult()
    creates = system.log.where(lambda r: r.operation == "create" and r.started >= start)
    fill_counts(result, creates)
    free, pro = PLANS["free"]["resources"], PLANS["pro"]["resources"]

    def limit_at(org: str, at: float) -> int:
        return free if org in changed_at and at >= changed_at[org] else pro

    over = overages(system, limit_at)
    flags = flagged(system)
    unflagged = [
        (org, resource) for org, found in over.items() for _, resource in found
        if f"{org}:{resource}" not in flags
    ]  # fmt: skip
    delays = [
        flags[f"{org}:{resource}"] - at
        for org, found in over.items()
        for at, resource in found
        if f"{org}:{resource}" in flags
    ]
    stale_end = stale_at + STALE_FOR
    late = [
        (org, at)
        for org, found in over.items()
        for at, _ in found
        if at > stale_end + 30.0  # the relay's backoff: the change arrives within 30 s
    ]
    count = sum(len(found) for found in over.values())
    result.wrongly_allowed = len(unflagged)
    result.dependency_calls = system.network.calls_to("billing", start)
    result.time_to_recover = max(delays, default=None)
    rows = resource_rows(system)
    result.notes.append(
        "resources per downgraded org at the end: "
        + ", ".join(f"{org} {len(rows[org])}" for org in sorted(changed_at))
        + f" (free plan: {free})"
    )
    result.check(
        "0 unflagged overages",
        count > 0 and not unflagged,
        f"{count} creations over the limit while Workflow's entitlements were stale, "
        f"{count - len(unflagged)} flagged (within {max(delays, default=0.0):.0f}s), "
        f"{len(unflagged)} unflagged",
    )
    result.check(
        "the new limit holds once the change arrives",
        not late,
        f"{len(late)} creations over the limit more than 30 s after the bus came back; "
        f"{sum(1 for r in creates if is_limit_refusal(r))} refused at the limit",
    )
    return result


# -- 10. member removed, cache not yet updated ----------------------------------------------

ORGANIZATION_DOWN_FOR = 120.0
SLACK = 1.0  # seconds between the event's delivery and Workflow having handled it


@drill(
    name="workflow-member-removed",
    number=10,
    service="Workflow",
    scenario="Member removed but cache not yet updated",
    fault=(
        "members removed while their memberships are cached (the member_removed event "
        "reaches the bus 10-30 s late); then Organization unreachable from Workflow for "
        "2 min while new members, removed members and strangers try"
    ),
    mitigations=("invalidation", "membership-fail-closed"),
    criterion=(
        "0 wrong allows once MemberRemoved is processed; a membership miss with "
        "Organization down is refused (403/503), never allowed"
    ),
    page="workflow-member-removed.md",
)
async def member_removed(system: System) -> DrillResult:
    rand = system.rand
    delay = rand.uniform(10.0, 30.0)
    slow = ChaosLatency(delay, clock=system.clock, name="bus.slow")
    system.relay_for(
        "organization",
        publisher=ChaosPublisher(
            system.bus,
            slow,
            where=lambda topic, event: event.type == "organization.member_removed",
        ),
        poll_interval=RELAY_POLL,
    )
    start_services(system)
    observer = Observer(system, ORGANIZATION_TOPIC)
    orgs = [f"org-{n}" for n in range(3)]
    tenants = await open_orgs(system, dict.fromkeys(orgs, "team"), members=3, prefill={})
    removed = {org: set(rand.sample(tenants.members[org], 1)) for org in orgs}
    start = system.now()
    outage_at = start + 160.0
    outage_end = outage_at + ORGANIZATION_DOWN_FOR
    finish = outage_end + 30.0
    removed_at: dict[tuple[str, str], float] = {}
    joined: dict[tuple[str, str], float] = {}

    async def admin(org: str) -> None:
        for user in sorted(removed[org]):
            await system.sleep_until(start + rand.uniform(40.0, 100.0))
            record = await tenants.workload.request(
                "admin",
                "remove-member",
                "DELETE",
                f"http://organization/orgs/{org}/members/{user}",
            )
            removed_at[(org, user)] = record.finished
        # A new member joins while Workflow cannot reach Organization: never cached.
        await system.sleep_until(outage_at + 10.0)
        user = f"{org}-newcomer"
        await tenants.workload.request(
            "admin",
            "add-member",
            "POST",
            f"http://organization/orgs/{org}/members",
            json={"user_id": user, "role": "member"},
        )
        joined[(org, user)] = system.now()
        await user_loop(org, user, kind="newcomer")

    async def user_loop(org: str, user: str, kind: str) -> None:
        while True:
            await system.sleep(rand.uniform(10.0, 25.0))
            if system.now() >= finish:
                return
            await tenants.create(org, user, kind=kind)

    async def stranger() -> None:
        while True:
            await system.sleep(rand.uniform(10.0, 25.0))
            if system.now() >= finish:
                return
            await tenants.create(rand.choice(orgs), "stranger", kind="stranger")

    async def chaos() -> None:
        await system.sleep_until(outage_at)
        fault = system.network.inject("down", "organization", sources="workflow")
        await system.sleep_until(outage_end)
        system.network.clear(fault)

    async with anyio.create_task_group() as outer:
        outer.start_soon(observer.run)
        async with anyio.create_task_group() as group:
            group.start_soon(chaos)
            for org in orgs:
                group.start_soon(admin, org)
                for user in tenants.members[org]:
                    group.start_soon(user_loop, org, user, "member")
            group.start_soon(stranger)
        outer.cancel_scope.cancel()
    return judge_member_removed(system, start, removed_at, observer, outage_at, outage_end)


def judge_member_removed(
    system: System,
    start: float,
    removed_at: dict[tuple[str, str], float],
    observer: Observer,
    outage_at: float,
    outage_end: float,
) -> DrillResult:
    result = DrillResult()
    creates = system.log.where(lambda r: r.operation == "create" and r.started >= start)
    fill_counts(result, creates)
    processed: dict[tuple[str, str], float] = {}
    for at, event in observer.deliveries:
        if event.type == "organization.member_removed":
            key = (str(event.payload["org_id"]), str(event.payload["user_id"]))
            processed.setdefault(key, at + SLACK)
    allowed = [r for r in creates if r.outcome in ("served", "degraded")]
    propagating = [
        r
        for r in allowed
        if (key := (str(r.tags["org"]), r.client)) in removed_at
        and removed_at[key] <= r.started < processed.get(key, math.inf)
    ]
    wrong = [
        r
        for r in allowed
        if r.tags.get("kind") == "stranger"
        or (
            (key := (str(r.tags["org"]), r.client)) in removed_at
            and r.started >= processed.get(key, math.inf)
        )
    ]
    result.wrongly_allowed = len(wrong)
    during = [r for r in creates if outage_at <= r.started < outage_end]
    misses = [
        r
        for r in during
        if r.tags.get("kind") in ("newcomer", "stranger")
        or (str(r.tags["org"]), r.client) in removed_at
    ]
    let_in = [r for r in misses if r.outcome in ("served", "degraded")]
    cached = [r for r in during if r.tags.get("kind") == "member" and r not in misses]
    result.dependency_calls = system.network.calls_to("organization", outage_at, outage_end)
    windows = [processed[key] - SLACK - at for key, at in removed_at.items() if key in processed]
    result.time_to_recover = max(windows, default=None)
    result.notes.append(
        f"{len(propagating)} creations by removed members while their member_removed was "
        f"in transit (up to {max(windows, default=0.0):.0f}s after the removal)"
    )
    result.check(
        "0 wrong allows once MemberRemoved is processed",
        not wrong and len(processed) == len(removed_at) > 0,
        f"{len(wrong)} creations allowed for removed members (after their event was "
        f"processed) or strangers; {len(processed)} of {len(removed_at)} removals delivered",
    )
    result.check(
        "a membership miss with Organization down is refused",
        bool(misses) and not let_in,
        f"{len(misses)} creations needing a membership lookup while Organization was "
        f"unreachable: {len(let_in)} allowed, "
        f"{sum(1 for r in misses if r.status == 503)} refused 503, "
        f"{sum(1 for r in misses if r.status == 403)} refused 403",
    )
    result.check(
        "cached members keep working while Organization is down",
        bool(cached) and all(r.outcome in ("served", "degraded") for r in cached),
        f"{sum(1 for r in cached if r.outcome in ('served', 'degraded'))} of {len(cached)} "
        "creations by members with a fresh cached membership served",
    )
    return result


# -- 11. Billing down during the refresh -----------------------------------------------------

BILLING_DOWN_FOR = 600.0
OPEN_FOR = 30.0  # Workflow's breaker on Billing (workflow.py)


@drill(
    name="workflow-billing-down",
    number=11,
    service="Workflow",
    scenario="Billing unavailable for the entitlements refresh",
    fault=(
        "Billing down (unreachable, publishing nothing) when every cached entitlement "
        "expires, for 10 min; 2 new orgs start meanwhile"
    ),
    mitigations=("breaker", "last-known-good", "fail-open"),
    criterion=(
        "0 requests failed for it (last known good enforced, new orgs allowed with a "
        "warning); calls to Billing bounded by the breaker; entitlements refreshed after"
    ),
    page="workflow-billing-down.md",
)
async def billing_down(system: System) -> DrillResult:
    rand = system.rand
    down = ChaosFault(ConnectionError("billing is down"), enabled=False, name="billing.down")
    system.relay_for(
        "billing",
        publisher=ChaosPublisher(system.bus, down, clock=system.clock),
        poll_interval=RELAY_POLL,
        max_attempts=100,
        backoff=Backoff.exponential(initial=2.0, maximum=60.0, jitter="equal"),
    )
    start_services(system)
    known = [f"org-{n}" for n in range(4)]
    # Two orgs will reach their limit during the outage (free: 5), two will not (team).
    plans = {org: "free" if n % 2 else "team" for n, org in enumerate(known)}
    tenants = await open_orgs(system, plans, members=1, prefill=dict.fromkeys(known, 2))
    newcomers = ["new-0", "new-1"]
    for org in newcomers:  # organizations exist; Billing never saw them
        await tenants.workload.request(
            "admin",
            "create-org",
            "POST",
            "http://organization/orgs",
            json={"org_id": org, "owner_id": f"{org}-owner", "name": org},
        )
        tenants.members[org] = [f"{org}-owner"]
    # Billing goes down; an hour without traffic passes in one jump of the virtual
    # clock, and every cached entitlement has expired.
    fault = system.network.inject("down", "billing")
    down.enabled = True
    outage_at = system.now()
    system.clock.advance(ENTITLEMENTS_TTL)
    start = system.now()
    recover_at = start + BILLING_DOWN_FOR
    finish = recover_at + 180.0

    async def chaos() -> None:
        await system.sleep_until(recover_at)
        system.network.clear(fault)
        down.enabled = False

    async def member(org: str, user: str) -> None:
        gap = (15.0, 35.0) if org in known else (25.0, 45.0)
        while True:
            await system.sleep(rand.uniform(*gap))
            if system.now() >= finish:
                return
            await tenants.create(org, user)

    async with anyio.create_task_group() as group:
        group.start_soon(chaos)
        for org in [*known, *newcomers]:
            for user in tenants.members[org]:
                group.start_soon(member, org, user)
    await system.sleep(90.0)  # a validation round after the recovery
    return judge_billing_down(system, start, outage_at, recover_at, plans, newcomers)


def judge_billing_down(
    system: System,
    start: float,
    outage_at: float,
    recover_at: float,
    plans: dict[str, str],
    newcomers: list[str],
) -> DrillResult:
    result = DrillResult()
    creates = system.log.where(lambda r: r.operation == "create" and r.started >= start)
    fill_counts(result, creates)
    during = [r for r in creates if r.started < recover_at]
    broken = [r for r in during if r.outcome == "failed" or r.status == 503]
    free = PLANS["free"]["resources"]
    over = overages(
        system,
        lambda org, at: PLANS[plans[org]]["resources"] if org in plans else free,
    )
    flags = flagged(system)
    over_known = [
        (org, at) for org, found in over.items() if org in plans for at, _ in found if at >= start
    ]
    over_new = [(org, resource) for org in newcomers for _, resource in over.get(org, [])]
    unflagged_new = [key for key in over_new if f"{key[0]}:{key[1]}" not in flags]
    result.wrongly_allowed = len(over_known)
    calls = system.network.calls_to("billing", outage_at, recover_at)
    bound = 2 * (3 + math.ceil(BILLING_DOWN_FOR / OPEN_FOR) + 1)
    result.dependency_calls = calls
    after = sorted(
        (r for r in creates if r.started >= recover_at and r.outcome == "served"),
        key=lambda r: r.started,
    )
    result.time_to_recover = after[0].started - recover_at if after else None
    result.check(
        "0 requests failed for Billing's outage",
        bool(during) and not broken,
        f"{len(during)} creations while Billing was down: "
        f"{sum(1 for r in during if r.outcome == 'degraded')} served with a warning, "
        f"{sum(1 for r in during if is_limit_refusal(r))} refused at their limit, "
        f"{len(broken)} failed or refused for want of Billing",
    )
    result.check(
        "limits enforced from the last known good",
        not over_known,
        f"{len(over_known)} creations over a known org's limit allowed while Billing was down",
    )
    result.check(
        "calls to Billing bounded by the breaker",
        calls <= bound,
        f"{calls} calls reached Billing in its {BILLING_DOWN_FOR:.0f}s outage "
        f"(bound: {bound}, one probe per {OPEN_FOR:.0f}s open interval)",
    )
    result.check(
        "entitlements refreshed, unverified creations checked after the recovery",
        bool(after) and not unflagged_new,
        f"first creation served without a warning {result.time_to_recover or 0:.0f}s after the "
        f"recovery; {len(over_new)} creations of new orgs over the free limit, "
        f"{len(over_new) - len(unflagged_new)} flagged",
    )
    return result
