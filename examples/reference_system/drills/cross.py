"""Drills 19-21: the cross-service scenarios of the failure-mode analysis.

- 19, the bus down: events wait in the outboxes and go out by themselves afterwards;
  the critical path (revoking a session) does not wait for the bus — Identity calls
  every gateway directly when the bus has not taken its event (`Identity`'s
  ``revocation_targets``), and the event that follows changes nothing.
- 20, a database down: Organization's membership lookups fall back to a read replica
  (`core.replica.ReadReplica`), writes fail fast behind a breaker, and recovery needs
  no operator.
- 21, a network partition: the gateway, cut off from Identity and Organization, answers
  from its caches — marked degraded — and refuses what it cannot authorise; after the
  heal, its caches converge on the truth.

They run on the services that exist now (gateway, Identity, Organization,
Notification); where Billing and Workflow join later is said in each drill's docs page.
Every figure comes from the independent record: the request log, the side-effect sink
(e-mails from the mail server, revocations applied by gateways), an observer consumer
group on the bus, the chaos publisher's record of publish attempts, the database's
access log, and a fold of the accepted writes — never from the services' counters.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import anyio

from reference_system.core.drill import DrillResult, drill
from reference_system.core.records import RequestLog, RequestRecord
from reference_system.core.replica import ReadReplica
from reference_system.core.system import System
from reference_system.drills.identity import percentile
from reference_system.organization import Organization
from resilience_kit.messaging import Event


def fill_counts(result: DrillResult, records: list[RequestRecord]) -> None:
    counts = RequestLog.tally(records)
    result.served, result.degraded = counts["served"], counts["degraded"]
    result.rejected, result.failed = counts["rejected"], counts["failed"]


@dataclass
class Observer:
    """A consumer group of its own on some topics: every event delivered, and when."""

    system: System
    topics: tuple[str, ...]
    deliveries: list[tuple[float, Event]] = field(default_factory=list)

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            for topic in self.topics:
                group.start_soon(self._consume, topic)

    async def _consume(self, topic: str) -> None:
        subscription = self.system.bus.subscribe(topic, group="drill.observer")
        async with subscription:
            async for delivery in subscription:
                self.deliveries.append((self.system.now(), Event.from_json(delivery.data)))
                await subscription.ack(delivery)


Membership = tuple[str, str]  # (org, user)


class Fold:
    """The truth about memberships, folded from the writes the workload saw accepted.

    A write counts from when it was sent (it may have committed any time before its
    answer), so around a write both the old and the new state are acceptable answers.
    """

    def __init__(self, initial: dict[Membership, bool]) -> None:
        self.initial = dict(initial)
        self.writes: dict[Membership, list[tuple[float, float, bool]]] = defaultdict(list)

    def accepted(self, member: Membership, record: RequestRecord, present: bool) -> None:
        self.writes[member].append((record.started, record.finished, present))

    def possible(self, member: Membership, since: float, until: float) -> set[bool]:
        """Every state ``member`` had at some instant of ``[since, until]``."""
        state = self.initial.get(member, False)
        states: set[bool] = set()
        for started, finished, present in sorted(self.writes[member]):
            if finished <= since:
                state = present
            elif started <= until:
                states.add(present)
        return states | {state}


# -- 20. database unavailable ---------------------------------------------------------------

DB_OUTAGE = 60.0
REPLICA_INTERVAL = 2.0
STALENESS_BOUND = 5.0
FAST = 0.05  # seconds: a refusal this quick did not wait on the database
CALLS_BOUND = 30  # database calls the breaker may let through during the outage
DB_OPEN_FOR = 10.0  # Organization's database breaker stays open this long


@drill(
    name="cross-database-down",
    number=20,
    service="Cross-service",
    scenario="Database unavailable (Organization's primary)",
    fault="Organization's database refuses every connection for 60 s",
    mitigations=("replica", "breaker"),
    criterion=(
        "membership reads served from a read replica whose staleness stays within 5 s; "
        "writes fail fast with 503 + Retry-After; the breaker stops the hammering; "
        "recovery automatic"
    ),
    page="cross-database-down.md",
)
async def database_down(system: System) -> DrillResult:
    rand = system.rand
    replica = ReadReplica(
        system.store("organization").connect,
        system.workdir / "organization-replica.db",
        clock=system.clock,
        interval=REPLICA_INTERVAL,
    )
    [org] = system.add(
        "organization",
        lambda ctx: Organization(ctx, replica=replica, staleness_bound=STALENESS_BOUND),
    )
    replica.link = org.db_link  # shipping crosses the same network as the service's calls
    workload = system.workload()
    orgs = [f"org-{n}" for n in range(3)]
    users = {o: [f"{o}-user-{n}" for n in range(6)] for o in orgs}
    initial: dict[Membership, bool] = {}
    for o in orgs:
        await workload.request(
            "admin",
            "create-org",
            "POST",
            "http://organization/orgs",
            json={"org_id": o, "owner_id": f"owner-{o}", "name": o.title()},
        )
        for user in users[o][:3]:
            await workload.request(
                "admin",
                "add-member",
                "POST",
                f"http://organization/orgs/{o}/members",
                json={"user_id": user, "role": "member"},
            )
            initial[o, user] = True
    fold = Fold(initial)
    current = dict(initial)
    start = system.now()
    outage_at = start + rand.uniform(30.0, 45.0)
    outage_end = outage_at + DB_OUTAGE
    finish = outage_end + 45.0

    async def admin(o: str) -> None:
        while system.now() < finish:
            await system.sleep(rand.uniform(3.0, 7.0))
            user = rand.choice(users[o])
            present = not current.get((o, user), False)
            if present:
                record = await workload.request(
                    "admin",
                    "write",
                    "POST",
                    f"http://organization/orgs/{o}/members",
                    json={"user_id": user, "role": "member"},
                )
            else:
                record = await workload.request(
                    "admin",
                    "write",
                    "DELETE",
                    f"http://organization/orgs/{o}/members/{user}",
                )
            if record.status in (200, 201):
                fold.accepted((o, user), record, present)
                current[o, user] = present

    async def reader(n: int) -> None:
        while system.now() < finish:
            await system.sleep(rand.uniform(1.0, 3.0))
            o = rand.choice(orgs)
            user = rand.choice(users[o])
            await workload.request(
                f"reader-{n}",
                "read",
                "GET",
                f"http://organization/orgs/{o}/members/{user}",
                tags={"org": o, "user": user},
            )

    async def chaos() -> None:
        await system.sleep_until(outage_at)
        org.db_link.enabled = True
        await system.sleep_until(outage_end)
        org.db_link.enabled = False

    async with anyio.create_task_group() as outer:
        await outer.start(replica.run)
        async with anyio.create_task_group() as group:
            group.start_soon(chaos)
            for o in orgs:
                group.start_soon(admin, o)
            for n in range(4):
                group.start_soon(reader, n)
        outer.cancel_scope.cancel()
    return judge_database(system, org, replica, fold, start, outage_at, outage_end)


def judge_database(
    system: System,
    org: Organization,
    replica: ReadReplica,
    fold: Fold,
    start: float,
    outage_at: float,
    outage_end: float,
) -> DrillResult:
    result = DrillResult()
    records = system.log.where(lambda r: r.operation in ("read", "write") and r.started >= start)
    fill_counts(result, records)
    during = [r for r in records if outage_at <= r.started < outage_end]
    reads = [r for r in during if r.operation == "read"]
    writes = [r for r in during if r.operation == "write"]
    answered = [r for r in reads if r.status in (200, 404)]
    from_replica = [r for r in answered if r.body.get("source") == "replica"]
    wrong: list[RequestRecord] = []
    for r in [r for r in records if r.operation == "read" and r.status in (200, 404)]:
        member = (str(r.tags["org"]), str(r.tags["user"]))
        # A replica answer may miss up to the bound of the primary's history before it
        # went down; any answer must be a state the membership had in that window.
        since = min(r.started, outage_at) - STALENESS_BOUND
        if (r.status == 200) not in fold.possible(member, since, r.finished):
            wrong.append(r)
    result.wrongly_allowed = sum(1 for r in wrong if r.status == 200)
    staleness = [float(r.body.get("staleness", 0.0)) for r in from_replica]
    worst = max(staleness, default=0.0)
    shipping_lag = max((lag for at, lag in replica.lag if at < outage_at), default=0.0)
    calls = [at for at in org.db_calls if outage_at <= at < outage_end]
    result.dependency_calls = len(calls)
    refused = [r for r in writes if r.outcome == "rejected" and r.status == 503]
    slow = percentile([r.latency for r in writes], 0.9)
    after = [r for r in records if r.operation == "write" and r.started >= outage_end]
    first_ok = min((r.finished for r in after if r.status in (200, 201)), default=None)
    result.time_to_recover = None if first_ok is None else first_ok - outage_end
    shipped_again = min((at for at, _ in replica.lag if at >= outage_end), default=None)
    caught_up = replica.as_of is not None and replica.as_of >= outage_end
    result.notes.append(
        f"replica shipped every {REPLICA_INTERVAL:.0f}s: lag before each copy at most "
        f"{shipping_lag:.1f}s; during the outage it may miss {worst:.1f}s of the primary's "
        f"history (bound {STALENESS_BOUND:.0f}s)"
    )
    result.check(
        "reads served from the replica within the staleness bound",
        bool(reads)
        and len(answered) == len(reads)
        and len(from_replica) > 0
        and worst <= STALENESS_BOUND
        and not wrong,
        f"{len(answered)} of {len(reads)} reads during the outage answered, "
        f"{len(from_replica)} by the replica (staleness at most {worst:.1f}s, bound "
        f"{STALENESS_BOUND:.0f}s); {len(wrong)} answers no recent state supports",
    )
    result.check(
        "writes fail fast with 503 + Retry-After",
        bool(writes)
        and len(refused) == len(writes)
        and all(r.retry_after for r in refused)
        and slow <= FAST,
        f"{len(refused)} of {len(writes)} writes during the outage refused with 503 + "
        f"Retry-After; 90th percentile {slow * 1000:.0f} ms",
    )
    result.check(
        "the breaker stops the hammering",
        len(calls) <= CALLS_BOUND,
        f"{len(calls)} database calls during the {DB_OUTAGE:.0f}s outage for "
        f"{len(during)} requests (bound {CALLS_BOUND})",
    )
    result.check(
        "recovery is automatic",
        result.time_to_recover is not None
        and result.time_to_recover <= DB_OPEN_FOR + 10.0
        and caught_up,
        f"first write accepted {_seconds(result.time_to_recover)} after the database came "
        f"back; the replica copied again {_seconds(shipped_again and shipped_again - outage_end)} "
        "after it",
    )
    return result


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}s"
