"""The baseline (number 0): the whole system under a mixed workload, with no fault.

The gateway (2 replicas), Identity, Organization, Billing, Workflow, Notification, Audit
and Analytics run together in one `System`; users sign up and log in through the
gateway, create orgs, add and remove members, change plans, create resources, and some
log out. Every figure comes from an independent record:

- the `RequestLog` of the workload (failed requests; allows the workload's own model of
  memberships, plans and sessions says were wrong);
- an observer consumer group of its own on every topic (`cross.Observer`): the events
  the bus carried, which every accepted write must have produced (an event lost between
  a commit and the bus shows here);
- the `SideEffectSink` (e-mails, rows, events Analytics handled: duplicates and losses),
  the bus (every group acknowledged every event) and every service's dead letters;
- the operator's monitor (every replica healthy at the end);
- Analytics' read model against an independent fold of the observed events, and
  Audit's table against the observed event ids.

The drills then show what changes when one thing fails; this run is what "nothing
failed" looks like, so it must pass — and it fails if anything is broken.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from reference_system.analytics import Analytics
from reference_system.audit import Audit, stored_ids
from reference_system.billing import PLANS, Billing
from reference_system.core.drill import DrillResult, count, drill
from reference_system.core.records import RequestLog, RequestRecord
from reference_system.core.system import System
from reference_system.drills.analytics import independent_fold
from reference_system.drills.cross import Observer
from reference_system.drills.identity import PASSWORD, deploy
from reference_system.drills.notification import DOMAIN
from reference_system.mail import install
from reference_system.notification import Notification
from reference_system.organization import Organization
from reference_system.workflow import Workflow
from resilience_kit.messaging import Event
from resilience_kit.typing import DeadLetterFilter

TOPICS = ("identity", "organization", "billing", "workflow")
USERS = 12
ORGS = 4
DURATION = 90.0  # virtual seconds of mixed traffic
SETTLE = 2.0  # seconds an accepted change may take to reach every cache (by event)
UPGRADES = ("pro", "team")  # plans only go up here: a stale cache can only refuse more
LEAVERS = 3  # users who log out at the end; their tokens are then tried again
DRAIN_WITHIN = 120.0  # virtual seconds for every group to catch up after the traffic


@dataclass
class Model:
    """What the workload knows it did: the truth the services are judged against."""

    owners: dict[str, str] = field(default_factory=dict)
    members: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    removed: dict[tuple[str, str], float] = field(default_factory=dict)  # when it was done
    ever: set[tuple[str, str]] = field(default_factory=set)  # members now or before
    pending: set[tuple[str, str]] = field(default_factory=set)  # a change in flight
    plans: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))

    def outsider(self, org: str, user: str, now: float) -> bool:
        """``user`` is surely not a member of ``org`` now (not one, nothing in flight,
        and a removal long enough ago to have reached every cache)."""
        if user in self.members[org] or (org, user) in self.pending:
            return False
        removed = self.removed.get((org, user))
        return removed is None or now - removed > SETTLE

    def limit(self, org: str, at: float) -> int:
        """The highest limit a plan change sent before ``at`` may have granted."""
        plans = ["free"] + [plan for sent, plan in self.plans[org] if sent <= at]
        return max(PLANS[plan]["resources"] for plan in plans)


@drill(
    name="baseline",
    number=0,
    service="All",
    scenario="mixed workload, no faults",
    fault="none: every service and the gateway together under a mixed workload",
    mitigations=(),
    criterion=(
        "0 failed requests, 0 wrong allows, every event delivered to every consumer group "
        "(0 lost, 0 dead letters), 0 duplicate effects, every replica healthy at the end, "
        "Analytics equals an independent fold of the events, Audit holds every event"
    ),
    page="index.md",
)
async def baseline(system: System) -> DrillResult:
    rand = system.rand
    observer = Observer(system, TOPICS)
    deployment = deploy(system, gateways=2)
    install(system)
    system.add("organization", Organization)
    system.add("billing", Billing)
    system.add("workflow", Workflow)
    system.add("notification", Notification)
    system.add("audit", lambda ctx: Audit(ctx, archive_dir=system.workdir / "audit-archive"))
    system.add("analytics", Analytics)
    workload = deployment.workload
    model = Model()
    users = [f"user-{n}" for n in range(USERS)]
    tokens: dict[str, str] = {}
    for user in users:
        await workload.request(
            user,
            "signup",
            "POST",
            "http://gateway/api/signup",
            json={"username": user, "password": PASSWORD, "email": f"{user}@{DOMAIN}"},
        )
        record = await workload.request(
            user, "login", "POST", "http://gateway/api/login",
            json={"username": user, "password": PASSWORD},
        )  # fmt: skip
        if record.status == 200:
            tokens[user] = str(record.body["token"])
    orgs = [f"org-{n}" for n in range(ORGS)]
    for org, owner in zip(orgs, rand.sample(users, ORGS), strict=True):
        record = await workload.request(
            owner,
            "create-org",
            "POST",
            "http://gateway/api/organization/orgs",
            token=tokens.get(owner),
            json={"org_id": org, "owner_id": owner, "name": org.title()},
            tags={"org": org},
        )
        if record.status == 201:
            model.owners[org] = owner
            model.members[org].add(owner)
            model.ever.add((org, owner))
    start = system.now()
    finish = start + DURATION
    resources = Counter[str]()

    async def creator(user: str) -> None:
        while True:
            await system.sleep(rand.uniform(4.0, 10.0))
            if system.now() >= finish:
                return
            mine = [o for o in orgs if user in model.members[o]]
            # Mostly in an org of one's own; now and then elsewhere (to be refused).
            org = rand.choice(mine) if mine and rand.random() < 0.85 else rand.choice(orgs)
            outsider = model.outsider(org, user, system.now())
            resources[org] += 1
            await workload.request(
                user,
                "create-resource",
                "POST",
                f"http://gateway/api/workflow/orgs/{org}/resources",
                token=tokens.get(user),
                json={"resource_id": f"{org}-r{resources[org]}", "user_id": user},
                tags={"org": org, "outsider": outsider},
            )

    async def admin() -> None:
        while True:
            await system.sleep(rand.uniform(3.0, 6.0))
            if system.now() >= finish:
                return
            org = rand.choice(list(model.owners))
            owner = model.owners[org]
            roll = rand.random()
            # Each user joins an org at most once: a second "you were added" e-mail with
            # the same subject would be indistinguishable from a duplicate.
            newcomers = [u for u in users if (org, u) not in model.ever]
            leavers = sorted(model.members[org] - {owner})
            if roll < 0.5 and newcomers:
                user = rand.choice(newcomers)
                model.pending.add((org, user))
                model.ever.add((org, user))
                record = await workload.request(
                    owner,
                    "add-member",
                    "POST",
                    f"http://gateway/api/organization/orgs/{org}/members",
                    token=tokens.get(owner),
                    json={"user_id": user, "role": rand.choice(("admin", "member"))},
                    tags={"org": org, "user": user},
                )
                if record.status == 201:
                    model.members[org].add(user)
                model.pending.discard((org, user))
            elif roll < 0.7 and leavers:
                user = rand.choice(leavers)
                model.pending.add((org, user))
                model.members[org].discard(user)
                record = await workload.request(
                    owner,
                    "remove-member",
                    "DELETE",
                    f"http://gateway/api/organization/orgs/{org}/members/{user}",
                    token=tokens.get(owner),
                    tags={"org": org, "user": user},
                )
                model.removed[org, user] = record.finished
                model.pending.discard((org, user))
            else:
                current = model.plans[org][-1][1] if model.plans[org] else "free"
                ahead = UPGRADES[UPGRADES.index(current) + 1 :] if current in UPGRADES else UPGRADES
                if not ahead:
                    continue
                model.plans[org].append((system.now(), ahead[0]))
                await workload.request(
                    owner,
                    "change-plan",
                    "POST",
                    f"http://gateway/api/billing/orgs/{org}/subscription",
                    token=tokens.get(owner),
                    json={"plan": ahead[0]},
                    tags={"org": org, "plan": ahead[0]},
                )

    async with anyio.create_task_group() as outer:
        outer.start_soon(observer.run)
        async with anyio.create_task_group() as group:
            group.start_soon(admin)
            for user in users:
                group.start_soon(creator, user)
        for user in rand.sample(sorted(tokens), LEAVERS):
            record = await workload.request(
                user, "logout", "POST", "http://gateway/api/logout", token=tokens[user]
            )
            await system.sleep(SETTLE)
            for gateway in system.network.hosts("gateway"):
                await workload.request(
                    "thief",
                    "revoked-token",
                    "GET",
                    f"http://{gateway}/api/whoami",
                    token=tokens[user],
                    tags={"logged_out": record.status == 200},
                )
        await drain(system)
        # Two monitor rounds with nothing happening: the end state of every replica.
        await system.sleep(31.0)
        rows = await workload.request(
            "operator", "read-model", "GET", "http://analytics/admin/read-model/rows"
        )
        outer.cancel_scope.cancel()
    return await judge(system, model, observer, rows)


async def drain(system: System) -> None:
    """Wait until every group of every topic acknowledged everything (at most a while)."""
    deadline = system.now() + DRAIN_WITHIN
    while system.now() < deadline and any(system.bus.retained(t) for t in TOPICS):
        await system.sleep(1.0)
    await system.sleep(10.0)  # e-mails are sent by a dispatcher after the event is handled


def wrong_allows(records: list[RequestRecord], model: Model) -> tuple[int, list[str]]:
    """Requests let through that the workload's model says had to be refused."""
    wrong: list[str] = []
    created: dict[str, list[float]] = defaultdict(list)
    creations = [r for r in records if r.operation == "create-resource"]
    for record in sorted(creations, key=lambda r: r.finished):
        if record.status != 201:
            continue
        org = str(record.tags["org"])
        before = sum(1 for done in created[org] if done <= record.started)
        created[org].append(record.finished)
        if record.tags["outsider"]:
            wrong.append(f"{record.client} created in {org} without being a member")
        elif before >= model.limit(org, record.finished):
            wrong.append(f"{org} went over its plan's limit")
    for record in records:
        revoked = record.operation == "revoked-token" and record.tags["logged_out"]
        if revoked and record.status == 200:
            wrong.append(f"a logged-out session was let through at {record.target}")
    return len(wrong), wrong


def expected_events(records: list[RequestRecord]) -> list[tuple[str, str]]:
    """(event type, what identifies it) for every write the workload saw accepted."""
    expected: list[tuple[str, str]] = []
    for r in records:
        if r.outcome != "served":
            continue
        if r.operation == "signup":
            expected.append(("identity.user_signed_up", r.client))
        elif r.operation == "create-org":  # the owner is the org's first member, an admin
            expected.append(("organization.org_created", str(r.tags["org"])))
            expected.append(("organization.member_added", f"{r.tags['org']}/{r.client}"))
        elif r.operation == "add-member" and r.status == 201:
            expected.append(("organization.member_added", f"{r.tags['org']}/{r.tags['user']}"))
        elif r.operation == "remove-member":
            expected.append(("organization.member_removed", f"{r.tags['org']}/{r.tags['user']}"))
        elif r.operation == "change-plan" and r.status == 201:
            expected.append(("billing.entitlements_changed", f"{r.tags['org']}/{r.tags['plan']}"))
        elif r.operation == "create-resource" and r.status == 201:
            expected.append(("workflow.resource_created", str(r.body.get("resource_id"))))
        elif r.operation == "logout":
            expected.append(("identity.session_revoked", r.client))
    return expected


def identify(event: Event) -> tuple[str, str]:
    """The same identification as `expected_events`, from an observed event."""
    p = event.payload
    which = {
        "identity.user_signed_up": lambda: str(p.get("user_id")),
        "organization.org_created": lambda: str(p.get("org_id")),
        "organization.member_added": lambda: f"{p.get('org_id')}/{p.get('user_id')}",
        "organization.member_removed": lambda: f"{p.get('org_id')}/{p.get('user_id')}",
        "billing.entitlements_changed": lambda: f"{p.get('org_id')}/{p.get('plan')}",
        "workflow.resource_created": lambda: str(p.get("resource_id")),
        "identity.session_revoked": lambda: str(p.get("username", p.get("user_id"))),
    }.get(event.type, lambda: "")
    return event.type, which()


def expected_emails(expected: list[tuple[str, str]]) -> set[str]:
    """The mail server's key (``to|subject``) of every e-mail the accepted writes call for:
    a welcome per sign-up, a "you were added" per membership (owners' included)."""
    emails = set()
    for kind, which in expected:
        if kind == "identity.user_signed_up":
            emails.add(f"{which}@{DOMAIN}|Welcome, {which}")
        elif kind == "organization.member_added":
            org, user = which.split("/")
            emails.add(f"{user}@{DOMAIN}|You were added to {org}")
    return emails


async def judge(
    system: System, model: Model, observer: Observer, rows: RequestRecord
) -> DrillResult:
    result = DrillResult()
    records = system.log.records
    counts = RequestLog.tally(records)
    result.served, result.degraded = counts["served"], counts["degraded"]
    result.rejected, result.failed = counts["rejected"], counts["failed"]
    failures = Counter(r.operation for r in records if r.outcome == "failed")
    result.check(
        "0 failed requests",
        result.failed == 0,
        f"{count(len(records), 'request')}, {result.failed} failed"
        + (f" ({dict(failures)})" if failures else ""),
    )
    result.wrongly_allowed, wrong = wrong_allows(records, model)
    result.check(
        "0 wrong allows (outsiders, limits, logged-out sessions)",
        result.wrongly_allowed == 0,
        f"{result.wrongly_allowed} wrongly allowed" + (f": {wrong[0]}" if wrong else ""),
    )

    events = list({event.id: event for _, event in observer.deliveries}.values())
    seen = Counter(identify(event) for event in events)
    expected = expected_events(records)
    missing = Counter(expected) - seen
    audit_ids = set(stored_ids(Path(system.stores["audit"].path)))
    handled = {effect.key for effect in system.sink.of("handled")}
    sent = {effect.key for effect in system.sink.of("email")}
    not_audited = sum(1 for event in events if str(event.id) not in audit_ids)
    not_folded = sum(1 for event in events if str(event.id) not in handled)
    no_email = len(expected_emails(expected) - sent)
    backlog = sum(system.bus.retained(topic) for topic in TOPICS)
    result.dead_lettered = sum(
        [await store.dead_letters.count(DeadLetterFilter()) for store in system.stores.values()]
    )
    result.events_lost = sum(missing.values()) + not_audited + not_folded + no_email + backlog
    result.check(
        "every event delivered to every consumer group (0 lost, 0 dead letters)",
        result.events_lost == 0 and result.dead_lettered == 0,
        f"{count(len(events), 'event')}; {sum(missing.values())} accepted writes without "
        f"their event, {not_audited} not in Audit, {not_folded} not folded by Analytics, "
        f"{count(no_email, 'e-mail')} not sent, {backlog} unacknowledged, "
        f"{count(result.dead_lettered, 'dead letter')}",
    )
    kinds = ("email", "in_app", "row", "handled", "revocation")
    duplicates = {kind: system.sink.duplicates(kind) for kind in kinds}
    result.duplicate_effects = sum(duplicates.values())
    result.check(
        "0 duplicate effects (e-mails, rows, events folded)",
        result.duplicate_effects == 0,
        ", ".join(f"{n} {kind}" for kind, n in duplicates.items()) + " duplicated",
    )
    hosts = [r.ctx.host for replicas in system.services.values() for r in replicas]
    unhealthy = [f"{h}: {system.health_of(h)}" for h in hosts if system.health_of(h) != "healthy"]
    result.check(
        "every replica's /health/ready healthy at the end (the monitor's record)",
        not unhealthy,
        f"{len(hosts) - len(unhealthy)} of {len(hosts)} healthy"
        + (f"; {', '.join(unhealthy)}" if unhealthy else ""),
    )
    folded = independent_fold(events)
    differing = sorted(k for k in set(folded) | set(rows.body) if rows.body.get(k) != folded.get(k))
    result.check(
        "Analytics' read model equals an independent fold of the events",
        rows.status == 200 and not differing,
        f"{len(differing)} of {len(folded)} rows differ"
        + (f" (first: {differing[0]})" if differing else ""),
    )
    result.check(
        "Audit holds every event",
        not_audited == 0 and bool(events),
        f"{len(events) - not_audited} of {count(len(events), 'event')} in the audit log",
    )
    result.notes.append(
        f"{count(len(model.owners), 'org')}, "
        f"{sum(1 for r in records if r.operation == 'create-resource' and r.status == 201)} "
        f"resources created, {count(len(events), 'event')} on the bus"
    )
    return result
