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
from typing import Any

import anyio

from reference_system.core.drill import DrillResult, drill
from reference_system.core.records import RequestLog, RequestRecord
from reference_system.core.replica import ReadReplica
from reference_system.core.system import System
from reference_system.drills.identity import PASSWORD, Deployment, deploy, login, percentile
from reference_system.drills.notification import DOMAIN
from reference_system.drills.notification import delivered as delivered_to
from reference_system.gateway import MEMBERSHIP_TTL
from reference_system.mail import install
from reference_system.notification import Notification
from reference_system.organization import Organization
from resilience_kit import Backoff
from resilience_kit.messaging import Event
from resilience_kit.testing import ChaosFault, ChaosPublisher


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

    def __post_init__(self) -> None:
        # Subscribed now, so the group holds every event from here on, even those the
        # services' groups acknowledge before `run` starts.
        self._subscriptions = [
            self.system.bus.subscribe(topic, group="drill.observer") for topic in self.topics
        ]

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            for subscription in self._subscriptions:
                group.start_soon(self._consume, subscription)

    async def _consume(self, subscription: Any) -> None:
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


# -- 19. the bus (Kafka) unavailable --------------------------------------------------------

BUS_OUTAGE = 90.0
RESUME_WITHIN = 30.0
# 1 s, doubling to 10 s, "equal" jitter: a relay tries a held event about a dozen times
# in a 90 s outage; 40 attempts is far from giving up (no event goes to dead letters).
BUS_RELAY = {
    "poll_interval": 2.0,
    "max_attempts": 40,
    "backoff": Backoff.exponential(initial=1.0, maximum=10.0, jitter="equal"),
}


@drill(
    name="cross-bus-down",
    number=19,
    service="Cross-service",
    scenario="Kafka (the bus) unavailable",
    fault="every publish to the bus refused for 90 s (Identity's and Organization's relays)",
    mitigations=("outbox", "sync-fallback"),
    criterion=(
        "0 events lost (outbox); delivery resumes by itself after recovery; the critical "
        "path (a revoked session) degrades to a direct call, idempotently: the later event "
        "adds nothing twice"
    ),
    page="cross-bus-down.md",
)
async def bus_down(system: System) -> DrillResult:
    rand = system.rand
    outage = ChaosFault(ConnectionError("bus down"), enabled=False, name="bus.outage")
    bus = ChaosPublisher(system.bus, outage, clock=system.clock)
    for service in ("identity", "organization"):
        system.relay_for(service, publisher=bus, **BUS_RELAY)
    observer = Observer(system, ("identity", "organization"))
    deployment = deploy(system, gateways=2)
    install(system)
    system.add("notification", Notification)
    system.add("organization", lambda ctx: Organization(ctx, publisher=bus))
    workload = deployment.workload
    users = await sign_up_with_email(deployment, [f"user-{n}" for n in range(10)])
    tokens = {user: await login(deployment, user) for user in users}
    orgs = [f"org-{n}" for n in range(3)]
    owners = dict(zip(orgs, rand.sample(users, len(orgs)), strict=True))
    for o in orgs:
        await workload.request(
            "admin",
            "create-org",
            "POST",
            "http://organization/orgs",
            json={"org_id": o, "owner_id": owners[o], "name": o.title()},
        )
    start = system.now()
    outage_at = start + rand.uniform(30.0, 50.0)
    outage_end = outage_at + BUS_OUTAGE
    finish = outage_end + 60.0
    leaving = rand.sample(users, 4)
    gateways = [f"http://{host}" for host in system.network.hosts("gateway")]

    async def session(user: str) -> None:
        logout_at = rand.uniform(outage_at + 5.0, outage_end - 20.0) if user in leaving else None
        while system.now() < finish:
            await system.sleep(rand.uniform(4.0, 10.0))
            if logout_at is not None and system.now() >= logout_at:
                record = await workload.request(
                    user, "logout", "POST", "http://gateway/api/logout", token=tokens[user]
                )
                if record.status == 200:
                    await thief(user, record.finished)
                return
            await workload.request(
                user, "use", "GET", "http://gateway/api/whoami", token=tokens[user]
            )

    async def thief(user: str, revoked_at: float) -> None:
        """Someone who copied the session keeps using it, at every gateway."""
        turn = 0
        while system.now() < finish:
            await system.sleep(rand.uniform(2.0, 5.0))
            turn += 1
            await workload.request(
                "thief",
                "stolen",
                "GET",
                f"{gateways[turn % len(gateways)]}/api/whoami",
                token=tokens[user],
                tags={"revoked_at": revoked_at},
            )

    async def newcomers() -> None:
        for n in range(4):
            await system.sleep_until(outage_at + 10.0 + n * 15.0)
            await sign_up_with_email(deployment, [f"newcomer-{n}"])

    async def admin() -> None:
        for user in users:
            await system.sleep(rand.uniform(8.0, 16.0))
            o = rand.choice([o for o in orgs if owners[o] != user])  # a new member
            await workload.request(
                "admin",
                "add-member",
                "POST",
                f"http://organization/orgs/{o}/members",
                json={"user_id": user, "role": rand.choice(("admin", "member"))},
                tags={"org": o, "user": user},
            )

    async def chaos() -> None:
        await system.sleep_until(outage_at)
        outage.enabled = True
        await system.sleep_until(outage_end)
        outage.enabled = False

    async with anyio.create_task_group() as outer:
        outer.start_soon(observer.run)
        async with anyio.create_task_group() as group:
            group.start_soon(chaos)
            group.start_soon(newcomers)
            group.start_soon(admin)
            for user in users:
                group.start_soon(session, user)
        outer.cancel_scope.cancel()
    return judge_bus(system, bus, observer, start, outage_at, outage_end, len(gateways))


async def sign_up_with_email(deployment: Deployment, names: list[str]) -> list[str]:
    """Sign ``names`` up through the gateway, each with an address Notification can use."""
    for name in names:
        await deployment.workload.request(
            name,
            "signup",
            "POST",
            "http://gateway/api/signup",
            json={"username": name, "password": PASSWORD, "email": f"{name}@{DOMAIN}"},
        )
    return names


def judge_bus(
    system: System,
    bus: ChaosPublisher,
    observer: Observer,
    start: float,
    outage_at: float,
    outage_end: float,
    gateways: int,
) -> DrillResult:
    result = DrillResult()
    records = system.log.where(lambda r: r.started >= start)
    fill_counts(result, records)
    # What had to be delivered: one event per change the workload saw accepted.
    expected: dict[tuple[str, str], float] = {}  # (type, subject) -> accepted at
    for r in records:
        if r.operation == "signup" and r.status == 201:
            expected["identity.user_signed_up", r.client] = r.finished
        elif r.operation == "logout" and r.status == 200:
            expected["identity.session_revoked", str(r.body["revoked"])] = r.finished
        elif r.operation == "add-member" and r.status == 201:  # 200: already a member
            subject = f"{r.tags['org']}/{r.tags['user']}"
            expected["organization.member_added", subject] = r.finished
    delivered: dict[tuple[str, str], float] = {}
    for at, event in observer.deliveries:
        payload = event.payload
        if event.type == "identity.user_signed_up":
            subject = str(payload["user_id"])
        elif event.type == "identity.session_revoked":
            subject = str(payload["jti"])
        elif event.type == "organization.member_added":
            subject = f"{payload['org_id']}/{payload['user_id']}"
        else:
            continue
        delivered.setdefault((event.type, subject), at)
    lost = [item for item in expected if item not in delivered]
    held = [item for item, at in expected.items() if outage_at <= at < outage_end]
    held_delivered = [delivered[item] for item in held if item in delivered]
    early = [at for at in held_delivered if at < outage_end]
    last = max(held_delivered, default=None)
    result.events_lost = len(lost)
    result.time_to_recover = None if last is None else last - outage_end
    attempts = [a for a in bus.attempts if outage_at <= a.at < outage_end]
    result.dependency_calls = len(attempts)
    stolen = system.log.where(lambda r: r.operation == "stolen")
    allowed = [r for r in stolen if r.outcome in ("served", "degraded")]
    result.wrongly_allowed = len(allowed)
    revocations = system.sink.of("revocation")
    direct = [e for e in revocations if e.details.get("via") == "direct call"]
    logouts = [r for r in records if r.operation == "logout" and r.status == 200]
    event_copies = [
        at
        for at, event in observer.deliveries
        if event.type == "identity.session_revoked" and at >= outage_end
    ]
    emails = delivered_to(system, "email")
    result.duplicate_effects = system.sink.duplicates("revocation") + system.sink.duplicates(
        "email"
    )
    wanted_emails = [
        (subject.split("/")[1], "member-added")
        for kind, subject in expected
        if kind == "organization.member_added"
    ] + [(subject, "welcome") for kind, subject in expected if kind == "identity.user_signed_up"]
    unmailed = [item for item in wanted_emails if not emails.get(item)]
    result.check(
        "0 events lost (outbox)",
        not lost and not unmailed,
        f"{len(expected) - len(lost)} of {len(expected)} accepted changes delivered "
        f"({len(held)} accepted while the bus was down); {len(unmailed)} of "
        f"{len(wanted_emails)} e-mails they call for never sent",
    )
    result.check(
        "delivery resumes by itself after recovery",
        bool(held) and not early and last is not None and last - outage_end <= RESUME_WITHIN,
        f"{len(held_delivered)} of {len(held)} held events delivered, the last "
        f"{_seconds(result.time_to_recover)} after the bus came back (bound "
        f"{RESUME_WITHIN:.0f}s), no operator action; {len(attempts)} publish attempts "
        "during the outage",
    )
    result.check(
        "the critical path degrades to a direct call: revoked sessions refused at once",
        bool(logouts) and bool(stolen) and not allowed and len(direct) == gateways * len(logouts),
        f"{len(logouts)} sessions revoked while the bus was down; {len(direct)} direct "
        f"revocations at {gateways} gateways; {len(allowed)} of {len(stolen)} uses of a "
        "revoked session allowed",
    )
    result.check(
        "the later event adds nothing twice",
        len(event_copies) >= len(logouts) and result.duplicate_effects == 0,
        f"{len(event_copies)} revocation events delivered after the outage; "
        f"{result.duplicate_effects} duplicate effects (revocations applied twice, e-mails "
        "sent twice)",
    )
    return result


# -- 21. network partition ------------------------------------------------------------------

PARTITION = 120.0
SLACK = 2.0  # seconds an event may take to reach the gateway (the bus is not cut)
RECONCILE_WITHIN = 15.0


@drill(
    name="cross-network-partition",
    number=21,
    service="Cross-service",
    scenario="Network partition between the gateway and the services",
    fault="the gateway cut off from Identity and Organization for 2 min (both ways)",
    mitigations=("local-cache", "cache-invalidation", "degraded-mode"),
    criterion=(
        "degraded responses marked as such (served from local caches); 0 wrong allows; "
        "state reconciled after the heal (the gateway's answers match an independent "
        "record of the accepted writes)"
    ),
    page="cross-network-partition.md",
)
async def network_partition(system: System) -> DrillResult:
    rand = system.rand
    deployment = deploy(system, cache_memberships=True)
    system.add("organization", Organization)
    workload = deployment.workload
    orgs = [f"org-{n}" for n in range(3)]
    readers = await sign_up_with_email(deployment, [f"user-{n}" for n in range(8)])
    leaving = await sign_up_with_email(deployment, ["leaver-0", "leaver-1"])
    unseen = await sign_up_with_email(deployment, ["unseen-0", "unseen-1"])
    tokens = {user: await login(deployment, user) for user in [*readers, *leaving, *unseen]}
    initial: dict[Membership, bool] = {}
    for o in orgs:
        await workload.request(
            "admin",
            "create-org",
            "POST",
            "http://organization/orgs",
            json={"org_id": o, "owner_id": f"owner-{o}", "name": o.title()},
        )
    for user in readers:
        for o in rand.sample(orgs, 2):
            record = await workload.request(
                "admin",
                "add-member",
                "POST",
                f"http://organization/orgs/{o}/members",
                json={"user_id": user, "role": "member"},
            )
            initial[o, user] = record.status == 201
    fold = Fold(initial)
    start = system.now()
    partition_at = start + rand.uniform(40.0, 60.0)
    heal_at = partition_at + PARTITION
    finish = heal_at + 60.0

    async def reader(user: str) -> None:
        while system.now() < finish:
            await system.sleep(rand.uniform(4.0, 10.0))
            o = rand.choice(orgs)
            await workload.request(
                user,
                "membership",
                "GET",
                f"http://gateway/api/organization/orgs/{o}/members/{user}",
                token=tokens[user],
                tags={"org": o, "user": user},
            )

    async def admin() -> None:
        """Memberships change on Organization's side of the partition."""
        members = [m for m, present in initial.items() if present]
        strangers = [(o, u) for o in orgs for u in readers if not initial.get((o, u))]
        for at in sorted(rand.uniform(partition_at + 10.0, heal_at - 20.0) for _ in range(5)):
            await system.sleep_until(at)
            if rand.random() < 0.6 and members:
                o, user = members.pop(rand.randrange(len(members)))
                record = await workload.request(
                    "admin", "remove", "DELETE", f"http://organization/orgs/{o}/members/{user}"
                )
                if record.status == 200:
                    fold.accepted((o, user), record, False)
            elif strangers:
                o, user = strangers.pop(rand.randrange(len(strangers)))
                record = await workload.request(
                    "admin",
                    "add",
                    "POST",
                    f"http://organization/orgs/{o}/members",
                    json={"user_id": user, "role": "member"},
                )
                if record.status == 201:
                    fold.accepted((o, user), record, True)

    async def leaver(user: str) -> None:
        """Uses the gateway, logs out on another device (at Identity) during the
        partition; someone who copied the session keeps using it."""
        logout_at = rand.uniform(partition_at + 10.0, heal_at - 30.0)
        revoked_at: float | None = None
        while system.now() < finish:
            await system.sleep(rand.uniform(3.0, 8.0))
            if revoked_at is None and system.now() >= logout_at:
                record = await workload.request(
                    user, "logout", "POST", "http://identity/logout", token=tokens[user]
                )
                revoked_at = record.finished
                continue
            await workload.request(
                user,
                "session",
                "GET",
                "http://gateway/api/whoami",
                token=tokens[user],
                tags={"revoked_at": revoked_at},
            )

    async def newcomer(user: str) -> None:
        """A session the gateway has never seen, first used during the partition."""
        await system.sleep_until(partition_at + rand.uniform(5.0, 20.0))
        while system.now() < finish:
            await workload.request(
                user,
                "unseen",
                "GET",
                "http://gateway/api/whoami",
                token=tokens[user],
                tags={"partitioned": system.now() < heal_at},
            )
            await system.sleep(rand.uniform(8.0, 15.0))

    async def chaos() -> None:
        await system.sleep_until(partition_at)
        faults = system.network.partition(["gateway"], ["organization", "identity"])
        await system.sleep_until(heal_at)
        system.network.clear(*faults)

    async with anyio.create_task_group() as group:
        group.start_soon(chaos)
        group.start_soon(admin)
        for user in readers:
            group.start_soon(reader, user)
        for user in leaving:
            group.start_soon(leaver, user)
        for user in unseen:
            group.start_soon(newcomer, user)
    return judge_partition(system, fold, start, partition_at, heal_at)


def judge_partition(
    system: System, fold: Fold, start: float, partition_at: float, heal_at: float
) -> DrillResult:
    result = DrillResult()
    records = system.log.where(
        lambda r: r.started >= start and r.operation in ("membership", "session", "unseen")
    )
    fill_counts(result, records)
    reads = [r for r in records if r.operation == "membership"]
    answered = [r for r in reads if r.status in (200, 404)]

    def truth(r: RequestRecord) -> set[bool]:
        return fold.possible(
            (str(r.tags["org"]), str(r.tags["user"])), r.started - SLACK, r.finished
        )

    # During the partition, past the cache's freshness, every answer comes from the cache.
    cut_off = [r for r in answered if partition_at + MEMBERSHIP_TTL < r.started < heal_at]
    unmarked = [r for r in cut_off if not r.body.get("degraded")]
    wrong_members = [r for r in answered if r.status == 200 and True not in truth(r)]
    sessions = system.log.where(lambda r: r.operation == "session" and r.started >= start)
    revoked = [
        r
        for r in sessions
        if r.tags.get("revoked_at") is not None
        and r.started > float(r.tags["revoked_at"]) + SLACK
        and r.status == 200
    ]
    unseen = system.log.where(lambda r: r.operation == "unseen")
    unverified = [r for r in unseen if r.tags["partitioned"] and r.status == 200]
    result.wrongly_allowed = len(wrong_members) + len(revoked) + len(unverified)
    after = [r for r in answered if r.started >= heal_at + RECONCILE_WITHIN]
    stale_after = [r for r in after if r.body.get("degraded") or (r.status == 200) not in truth(r)]
    fresh = [r.finished for r in answered if r.started >= heal_at and not r.body.get("degraded")]
    result.time_to_recover = min(fresh) - heal_at if fresh else None
    result.dependency_calls = system.network.calls_to("organization", partition_at, heal_at)
    refused = [r for r in reads if partition_at <= r.started < heal_at and r.status == 503]
    result.check(
        "degraded responses marked as such",
        bool(cut_off) and not unmarked,
        f"{len(cut_off)} membership answers while the gateway was cut off, all from its "
        f"cache; {len(unmarked)} not marked degraded; {len(refused)} refused (503) for lack "
        "of a cached answer",
    )
    result.check(
        "0 wrong allows",
        result.wrongly_allowed == 0,
        f"{len(wrong_members)} membership answers granting a membership that no longer "
        f"existed; {len(revoked)} uses of a revoked session allowed; {len(unverified)} "
        "sessions never verified let through during the partition",
    )
    result.check(
        "state reconciled after the heal",
        bool(after)
        and not stale_after
        and any(r.status == 200 for r in unseen if not r.tags["partitioned"]),
        f"{len(after) - len(stale_after)} of {len(after)} answers from {RECONCILE_WITHIN:.0f}s "
        "after the heal match the record of accepted writes, undegraded; sessions unseen "
        "during the partition verified after it",
    )
    return result
