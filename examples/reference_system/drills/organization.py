"""Drills 4-6: the Organization scenarios of the failure-mode analysis.

Billing is the real service (`billing.py`). Workflow here is a STAND-IN,
`StandInWorkflow`: drill 4 needs a dependent that authorises from a membership
projection fed by Organization's events, and drill 5 one whose creations are jobs
still in flight when the org is deleted; the real Workflow (`workflow.py`) asks
Organization through a fail-closed cache and writes at once. It follows the contracts
of the reference system (topics, event payloads, routes).

Every figure comes from the independent record: the request log, the side-effect sink,
the network's calls, an observer subscribed to the ``organization`` topic (what was
delivered, in which order), the chaos publisher's record of publish attempts, and the
dependents' tables read at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from reference_system.billing import Billing
from reference_system.core.drill import DrillResult, drill
from reference_system.core.records import RequestLog, RequestRecord
from reference_system.core.service import Service, ServiceContext
from reference_system.core.system import System
from reference_system.drills.identity import deploy, login
from reference_system.organization import TOPIC, Organization
from resilience_kit import Backoff, CircuitBreaker, CircuitOpenError, Pipeline, RetryPolicy, Timeout
from resilience_kit.cli import main as resilience_kit_cli
from resilience_kit.messaging import DeadLetterFilter, Event, Inbox, ResilientConsumer
from resilience_kit.testing import ChaosFault, ChaosPublisher, ChaosResult

T = TypeVar("T")


# -- the stand-in dependents ----------------------------------------------------------------


class _Database:
    """A service's tables on its own SQLite file, used from worker threads."""

    def __init__(self, ctx: ServiceContext, schema: str) -> None:
        self._ctx = ctx
        self._schema = schema
        self._ready = False

    async def __call__(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def job() -> T:
            connection = self._ctx.store.connect()
            try:
                if not self._ready:
                    connection.executescript(self._schema)
                    self._ready = True
                with connection:
                    return work(connection)
            finally:
                connection.close()

        return await anyio.to_thread.run_sync(job)


WORKFLOW_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (org_id TEXT, user_id TEXT, role TEXT,
                                    PRIMARY KEY (org_id, user_id));
CREATE TABLE IF NOT EXISTS gone (org_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS resources (org_id TEXT, resource_id TEXT, created_by TEXT,
                                      PRIMARY KEY (org_id, resource_id));
"""


class StandInWorkflow(Service):
    """A stand-in for Workflow: a membership projection and resources per org.

    ``authorize="projection"``: a create is allowed when the local projection (fed by
    ``organization.member_*`` events through a `ResilientConsumer` with an `Inbox`)
    says the user is a member — fail closed: unknown means 403. ``authorize="ask"``:
    Organization's ``GET /orgs/{id}/members/{user}`` decides, through
    ``Pipeline(Timeout, RetryPolicy, CircuitBreaker)`` (fail closed when it cannot
    answer: 503 with Retry-After). With ``processing=(low, high)``, a create is a job
    that writes its row ``low..high`` seconds later (the service is "still processing").
    ``organization.org_purged`` deletes every row of the org.
    """

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        authorize: str = "projection",
        processing: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(ctx)
        clock, mitigations = ctx.clock, ctx.mitigations
        self.db = _Database(ctx, WORKFLOW_SCHEMA)
        self.authorize = authorize
        self.processing = processing
        self.jobs: list[tuple[float, str, str, str]] = []  # (due, org, resource, user)
        # Handler faults a drill injects: deliveries whose first attempts fail.
        self.flaky: Callable[[Event], bool] = lambda event: False
        self.flaky_attempts = 2
        self._tries: dict[str, int] = defaultdict(int)
        idempotent = mitigations.on("idempotent-processing")
        self.idempotent = idempotent
        self.consumers.append(
            ResilientConsumer(
                ctx.bus.subscribe(TOPIC, group="workflow.organization"),
                self.on_event,
                name="workflow.organization",
                dead_letters=ctx.store.dead_letters,
                inbox=Inbox(ctx.store.inbox, consumer="workflow.organization")
                if idempotent
                else None,
                # Redelivery: a failed handler is tried again, with backoff, before its
                # event is given up (dead-lettered).
                retry=RetryPolicy(
                    attempts=5 if mitigations.on("redelivery") else 1,
                    backoff=Backoff.exponential(initial=2.0, maximum=10.0, jitter="full"),
                    clock=clock,
                    rand=ctx.rand.random,
                ),
                clock=clock,
            )
        )
        breaker = self.watch(
            CircuitBreaker(
                "workflow.organization",
                window=10,
                minimum_calls=5,
                open_for=15.0,
                record_on=(httpx.TransportError, ConnectionError, TimeoutError),
                clock=clock,
            )
        )
        # Asking Organization: 2 s deadline (a create waits for it); 2 attempts on a
        # refused connection only (a GET, but one that never arrived); a breaker so that
        # a down Organization fails creates fast instead of each waiting.
        self.organization_calls = Pipeline(
            Timeout(2.0, clock=clock, name="workflow.organization.deadline"),
            RetryPolicy(
                attempts=2, on=httpx.ConnectError, backoff=Backoff.constant(0.1), clock=clock
            ),
            breaker,
        )

    def routes(self) -> list[BaseRoute]:
        return [Route("/orgs/{org_id}/resources", self.create, methods=["POST"])]

    async def on_event(self, event: Event) -> None:
        if self.flaky(event):
            self._tries[str(event.id)] += 1
            if self._tries[str(event.id)] <= self.flaky_attempts:
                raise sqlite3.OperationalError("database is locked")
        org_id = str(event.payload["org_id"])
        if event.type == "organization.member_added":
            user, role = str(event.payload["user_id"]), str(event.payload["role"])

            def add(connection: sqlite3.Connection) -> bool:
                if self.idempotent:  # by state: a re-published membership changes nothing
                    before = connection.execute(
                        "SELECT role FROM members WHERE org_id = ? AND user_id = ?",
                        (org_id, user),
                    ).fetchone()
                    if before is not None and before[0] == role:
                        return False
                connection.execute(
                    "INSERT OR REPLACE INTO members VALUES (?, ?, ?)", (org_id, user, role)
                )
                return True

            if await self.db(add):
                self.ctx.sink.record("email", f"welcome:{org_id}:{user}", self.ctx.service)
        elif event.type == "organization.member_removed":
            user = str(event.payload["user_id"])
            await self.db(
                lambda c: c.execute(
                    "DELETE FROM members WHERE org_id = ? AND user_id = ?", (org_id, user)
                )
            )
        elif event.type == "organization.org_deleted":
            await self.db(lambda c: c.execute("INSERT OR IGNORE INTO gone VALUES (?)", (org_id,)))
        elif event.type == "organization.org_purged":

            def purge(connection: sqlite3.Connection) -> None:
                connection.execute("INSERT OR IGNORE INTO gone VALUES (?)", (org_id,))
                connection.execute("DELETE FROM resources WHERE org_id = ?", (org_id,))
                connection.execute("DELETE FROM members WHERE org_id = ?", (org_id,))

            await self.db(purge)
            self.ctx.sink.record("purge", f"workflow:{org_id}", self.ctx.service)

    async def _member(self, org_id: str, user: str) -> bool | Response:
        if self.authorize == "projection":
            row = await self.db(
                lambda c: c.execute(
                    "SELECT 1 FROM members WHERE org_id = ? AND user_id = ? "
                    "AND org_id NOT IN (SELECT org_id FROM gone)",
                    (org_id, user),
                ).fetchone()
            )
            return row is not None
        try:
            response = await self.organization_calls.acall(
                lambda: self.ctx.http.get(
                    f"{self.ctx.urls['organization']}/orgs/{org_id}/members/{user}"
                )
            )
        except (CircuitOpenError, httpx.HTTPError, TimeoutError):
            return JSONResponse(
                {"error": "organization_unavailable"}, status_code=503, headers={"retry-after": "5"}
            )
        return response.status_code == 200

    async def create(self, request: Request) -> Response:
        org_id = request.path_params["org_id"]
        body = await request.json()
        user = request.headers.get("x-user-id") or str(body["user_id"])
        resource = str(body["resource_id"])
        allowed = await self._member(org_id, user)
        if isinstance(allowed, Response):
            return allowed
        if not allowed:
            return JSONResponse({"error": "not a member"}, status_code=403)
        if self.processing is not None:
            low, high = self.processing
            due = self.ctx.clock.monotonic() + self.ctx.rand.uniform(low, high)
            self.jobs.append((due, org_id, resource, user))
            return JSONResponse({"resource_id": resource, "status": "processing"}, status_code=202)
        await self._write(org_id, resource, user)
        return JSONResponse({"resource_id": resource}, status_code=201)

    async def _write(self, org_id: str, resource: str, user: str) -> None:
        await self.db(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO resources VALUES (?, ?, ?)", (org_id, resource, user)
            )
        )
        self.ctx.sink.record("row", f"resource:{org_id}:{resource}", self.ctx.service)

    async def job_loop(self) -> None:
        """Finish the jobs that are due: the work a dependent is still doing for an org."""
        while True:
            await self.ctx.clock.asleep(1.0)
            now = self.ctx.clock.monotonic()
            due = [job for job in self.jobs if job[0] <= now]
            self.jobs = [job for job in self.jobs if job[0] > now]
            for _, org_id, resource, user in due:
                await self._write(org_id, resource, user)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as group:
            if self.processing is not None:
                group.start_soon(self.job_loop)
            await group.start(super().run)
            task_status.started()


# -- the observer: what was delivered, in which order ---------------------------------------


@dataclass
class Observer:
    """A consumer group of its own on the ``organization`` topic: every delivery, in order."""

    system: System
    deliveries: list[tuple[float, Event]] = field(default_factory=list)

    async def run(self) -> None:
        subscription = self.system.bus.subscribe(TOPIC, group="drill.observer")
        async with subscription:
            async for delivery in subscription:
                self.deliveries.append((self.system.now(), Event.from_json(delivery.data)))
                await subscription.ack(delivery)

    def of(self, org_id: str) -> list[Event]:
        return [e for _, e in self.deliveries if e.key == f"org:{org_id}"]


def fill_counts(result: DrillResult, records: list[RequestRecord]) -> None:
    counts = RequestLog.tally(records)
    result.served, result.degraded = counts["served"], counts["degraded"]
    result.rejected, result.failed = counts["rejected"], counts["failed"]


def rows(system: System, service: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read a service's own database at the end of a drill (the state left behind)."""
    connection = system.stores[service].connect()
    try:
        return list(connection.execute(query, args).fetchall())
    finally:
        connection.close()


# -- 4. membership not propagated -----------------------------------------------------------

CONVERGE_WITHIN = 60.0
# Organization's relay looks for due retries this often (the platform's default, 30 s,
# is a backstop for relays that are woken by commits).
RELAY_POLL = 5.0


@drill(
    name="organization-membership-propagation",
    number=4,
    service="Organization",
    scenario="User exists but org membership is not yet propagated",
    fault=(
        "member_added events delayed (the dependent's handler fails twice) or dropped in "
        "transit (the broker loses them); publishes duplicated (acknowledgement lost)"
    ),
    mitigations=("redelivery", "reconciliation", "idempotent-processing"),
    criterion=(
        "access converges: delayed events through redelivery within 60 s, dropped ones "
        "through the admin reconciliation (403 for non-admins); no access for non-members "
        "or removed members; duplicates add nothing twice"
    ),
    page="organization-membership-propagation.md",
)
async def membership_propagation(system: System) -> DrillResult:
    rand = system.rand
    orgs = [f"org-{n}" for n in range(4)]
    plan = [(org, f"{org}-user-{n}") for org in orgs for n in range(5)]
    dropped = set(rand.sample(plan, 3))
    delayed = set(rand.sample([m for m in plan if m not in dropped], 4))
    removed = set(rand.sample([m for m in plan if m not in dropped | delayed], 3))
    drop = ChaosResult(value=None, name="broker.lost")  # "published", never delivered

    def lost_in_transit(topic: str, event: Event) -> bool:
        member = (event.payload.get("org_id"), event.payload.get("user_id"))
        return (
            event.type == "organization.member_added"
            and "reconciliation" not in event.headers
            and member in dropped
        )

    system.relay_for(
        "organization",
        publisher=ChaosPublisher(system.bus, drop, where=lost_in_transit),
        poll_interval=RELAY_POLL,
    )
    deployment = deploy(system)
    system.add("organization", Organization)
    workflow = system.add("workflow", StandInWorkflow)[0]
    workflow.flaky = lambda event: (
        event.type == "organization.member_added"
        and (event.payload["org_id"], event.payload["user_id"]) in delayed
    )
    observer = Observer(system)
    workload = deployment.workload
    owners = [f"owner-{org}" for org in orgs]
    strangers = ["stranger-0", "stranger-1"]
    users = [user for _, user in plan]
    for name in [*owners, *users, *strangers, "ops"]:
        await workload.request(
            name,
            "signup",
            "POST",
            "http://gateway/api/signup",
            json={"username": name, "password": "correct horse battery staple"},
        )
    tokens = {name: await login(deployment, name) for name in [*users, *strangers, "ops"]}
    for org, owner in zip(orgs, owners, strict=True):
        await workload.request(
            "admin",
            "create-org",
            "POST",
            "http://organization/orgs",
            json={"org_id": org, "owner_id": owner, "name": org.title()},
        )

    start = system.now()
    added_at: dict[tuple[str, str], float] = {}
    removed_at: dict[tuple[str, str], float] = {}
    reconcile_at = start + 330.0
    finish = start + 420.0

    async def organizer(org: str) -> None:
        members = [m for m in plan if m[0] == org]
        for member in members:
            await system.sleep(rand.uniform(5.0, 30.0))
            if rand.random() < 0.3:  # an ack lost: the relay publishes the event twice
                system.bus.fail_next_publish(1, ConnectionError("ack lost"), stored=True)
            record = await workload.request(
                "admin",
                "add-member",
                "POST",
                f"http://organization/orgs/{org}/members",
                json={"user_id": member[1], "role": "member"},
            )
            if record.status == 201:
                added_at[member] = record.finished
        for member in [m for m in members if m in removed]:
            await system.sleep(rand.uniform(10.0, 40.0))
            record = await workload.request(
                "admin",
                "remove-member",
                "DELETE",
                f"http://organization/orgs/{org}/members/{member[1]}",
            )
            if record.status == 200:
                removed_at[member] = record.finished

    async def member(org: str, user: str) -> None:
        served = 0
        while system.now() < finish:
            # Slower once in: the first access is what converging is measured by.
            await system.sleep(rand.uniform(5.0, 15.0) if not served else rand.uniform(60.0, 120.0))
            if (org, user) not in added_at or system.now() >= finish:
                continue
            record = await workload.request(
                user,
                "access",
                "POST",
                f"http://gateway/api/workflow/orgs/{org}/resources",
                token=tokens[user],
                json={"resource_id": f"r-{rand.getrandbits(32):08x}", "user_id": user},
                tags={"org": org, "member": True},
            )
            served += record.outcome == "served"

    async def stranger(user: str) -> None:
        while system.now() < finish:
            await system.sleep(rand.uniform(10.0, 30.0))
            org = rand.choice(orgs)
            await workload.request(
                user,
                "access",
                "POST",
                f"http://gateway/api/workflow/orgs/{org}/resources",
                token=tokens[user],
                json={"resource_id": f"s-{rand.getrandbits(32):08x}", "user_id": user},
                tags={"org": org, "member": False},
            )

    async def operator() -> None:
        await system.sleep_until(start + 240.0)
        user = rand.choice(users)  # a member tries the admin endpoint: refused
        await workload.request(
            user,
            "reconcile",
            "POST",
            "http://gateway/api/organization/admin/reconcile",
            token=tokens[user],
            tags={"admin": False},
        )
        await system.sleep_until(reconcile_at)
        await workload.request(
            "ops",
            "reconcile",
            "POST",
            "http://gateway/api/organization/admin/reconcile",
            token=tokens["ops"],
            tags={"admin": True},
        )

    async with anyio.create_task_group() as outer:
        outer.start_soon(observer.run)
        async with anyio.create_task_group() as group:
            for org in orgs:
                group.start_soon(organizer, org)
            for org, user in plan:
                group.start_soon(member, org, user)
            for user in strangers:
                group.start_soon(stranger, user)
            group.start_soon(operator)
        outer.cancel_scope.cancel()

    dead = await system.stores["workflow"].dead_letters.count(DeadLetterFilter())
    return judge_membership(
        system, start, added_at, removed_at, dropped, delayed, reconcile_at, dead
    )


def judge_membership(
    system: System,
    start: float,
    added_at: dict[tuple[str, str], float],
    removed_at: dict[tuple[str, str], float],
    dropped: set[tuple[str, str]],
    delayed: set[tuple[str, str]],
    reconcile_at: float,
    dead_lettered: int,
) -> DrillResult:
    result = DrillResult()
    accesses = system.log.where(lambda r: r.operation == "access" and r.started >= start)
    fill_counts(result, accesses)
    first_served: dict[tuple[str, str], float] = {}
    for r in sorted(accesses, key=lambda r: r.started):
        if r.outcome == "served":
            first_served.setdefault((str(r.tags["org"]), r.client), r.started)
    staying = {m: at for m, at in added_at.items() if m not in removed_at}
    late = [
        m
        for m, at in staying.items()
        if m not in dropped and first_served.get(m, float("inf")) > at + CONVERGE_WITHIN
    ]
    never = [m for m in staying if m not in first_served]
    dropped_late = [
        m
        for m in staying
        if m in dropped and first_served.get(m, float("inf")) > reconcile_at + CONVERGE_WITHIN
    ]
    result.events_lost = len(never)
    result.wrongly_allowed = sum(
        1
        for r in accesses
        if r.outcome == "served"
        and (
            not r.tags["member"]
            or (
                (m := (str(r.tags["org"]), r.client)) in removed_at
                and r.started > removed_at[m] + 30.0
            )
        )
    )
    welcomes = system.sink.of("email")
    result.duplicate_effects = system.sink.duplicates("email")
    result.dead_lettered = dead_lettered
    result.dependency_calls = system.network.calls_to("workflow", start)
    converged = [first_served[m] - added_at[m] for m in staying if m in first_served]
    result.time_to_recover = max(converged, default=None)
    reconciles = system.log.where(lambda r: r.operation == "reconcile")
    non_admin = [r for r in reconciles if not r.tags["admin"]]
    admin = [r for r in reconciles if r.tags["admin"]]
    result.check(
        "delayed events converge through redelivery",
        not late,
        f"{len(staying) - len(late) - sum(1 for m in staying if m in dropped)} of "
        f"{sum(1 for m in staying if m not in dropped)} members (delayed: {len(delayed)}) "
        f"had access within {CONVERGE_WITHIN:.0f}s of being added",
    )
    result.check(
        "dropped events converge through the admin reconciliation",
        not dropped_late and all(r.status == 200 for r in admin),
        f"{len(dropped) - len(dropped_late)} of {len(dropped)} members whose event was lost "
        f"had access within {CONVERGE_WITHIN:.0f}s of the reconciliation",
    )
    result.check(
        "the reconciliation endpoint is admin only",
        bool(non_admin) and all(r.status == 403 for r in non_admin),
        f"non-admin answered {[r.status for r in non_admin]}",
    )
    result.check(
        "no access for non-members or removed members",
        result.wrongly_allowed == 0,
        f"{result.wrongly_allowed} wrongly allowed",
    )
    result.check(
        "duplicates add nothing twice",
        result.duplicate_effects == 0,
        f"{len(welcomes)} welcomes for {len(added_at) + 4} memberships, "
        f"{result.duplicate_effects} duplicates",
    )
    return result


# -- 5. org deleted while dependents are still processing ----------------------------------

GRACE = 120.0
BILLING_DOWN_FOR = 90.0


@drill(
    name="organization-org-deletion",
    number=5,
    service="Organization",
    scenario="Org deleted while dependent services are still processing",
    fault=(
        "3 of 5 orgs deleted while Workflow still has jobs in flight for them; Billing down "
        "when their purge starts; Workflow's purge handler fails twice"
    ),
    mitigations=("soft-delete", "compensation"),
    criterion=(
        "after the grace period 0 orphaned rows in every service; nothing created for the "
        "org after the deletion was accepted; a failing dependent step is compensated and "
        "retried; per-key order kept"
    ),
    page="organization-org-deletion.md",
)
async def org_deletion(system: System) -> DrillResult:
    rand = system.rand
    system.relay_for("organization", poll_interval=RELAY_POLL)
    system.add("organization", lambda ctx: Organization(ctx, grace_period=GRACE))
    system.add("billing", Billing)
    workflow = system.add(
        "workflow", lambda ctx: StandInWorkflow(ctx, authorize="ask", processing=(5.0, 40.0))
    )[0]
    workflow.flaky = lambda event: event.type == "organization.org_purged"
    observer = Observer(system)
    workload = system.workload()
    orgs = [f"org-{n}" for n in range(5)]
    doomed = sorted(rand.sample(orgs, 3))
    members = {org: [f"{org}-user-{n}" for n in range(3)] for org in orgs}
    for org in orgs:
        await workload.request(
            "admin",
            "create-org",
            "POST",
            "http://organization/orgs",
            json={"org_id": org, "owner_id": f"owner-{org}", "name": org.title()},
        )
        await workload.request(
            "admin",
            "subscribe",
            "POST",
            f"http://billing/orgs/{org}/subscription",
            json={"plan": "pro"},
        )
        for user in members[org]:
            await workload.request(
                "admin",
                "add-member",
                "POST",
                f"http://organization/orgs/{org}/members",
                json={"user_id": user, "role": "member"},
                tags={"org": org},
            )
    start = system.now()
    deleted_at: dict[str, float] = {}
    finish = start + 420.0
    first_purge = start + 60.0 + GRACE

    async def creator(org: str, user: str) -> None:
        while system.now() < finish:
            await system.sleep(rand.uniform(10.0, 30.0))
            if system.now() >= finish:
                return
            await workload.request(
                user,
                "create",
                "POST",
                f"http://workflow/orgs/{org}/resources",
                json={"resource_id": f"r-{rand.getrandbits(32):08x}", "user_id": user},
                tags={"org": org},
            )

    async def owner(org: str) -> None:
        await system.sleep(rand.uniform(60.0, 120.0))
        record = await workload.request(
            "admin", "delete-org", "DELETE", f"http://organization/orgs/{org}", tags={"org": org}
        )
        if record.status == 202:
            deleted_at[org] = record.finished
        await system.sleep(rand.uniform(1.0, 30.0))  # a late invitation: refused
        await workload.request(
            "admin",
            "add-member",
            "POST",
            f"http://organization/orgs/{org}/members",
            json={"user_id": f"{org}-late", "role": "member"},
            tags={"org": org},
        )

    async def chaos() -> None:
        await system.sleep_until(first_purge - 5.0)
        fault = system.network.inject("down", "billing")
        await system.sleep(BILLING_DOWN_FOR)
        system.network.clear(fault)

    async with anyio.create_task_group() as outer:
        outer.start_soon(observer.run)
        async with anyio.create_task_group() as group:
            group.start_soon(chaos)
            for org in orgs:
                for user in members[org]:
                    group.start_soon(creator, org, user)
            for org in doomed:
                group.start_soon(owner, org)
        outer.cancel_scope.cancel()
    return judge_deletion(system, start, orgs, doomed, deleted_at, first_purge - 5.0, observer)


def judge_deletion(
    system: System,
    start: float,
    orgs: list[str],
    doomed: list[str],
    deleted_at: dict[str, float],
    billing_down_at: float,
    observer: Observer,
) -> DrillResult:
    result = DrillResult()
    writes = system.log.where(
        lambda r: r.operation in ("create", "add-member") and r.started >= start
    )
    fill_counts(result, writes)
    kept = [org for org in orgs if org not in doomed]
    orphans: dict[str, int] = {}
    for service, query in (
        ("workflow", "SELECT count(*) FROM resources WHERE org_id = ?"),
        ("workflow", "SELECT count(*) FROM members WHERE org_id = ?"),
        ("billing", "SELECT count(*) FROM subscriptions WHERE org_id = ?"),
        ("organization", "SELECT count(*) FROM members WHERE org_id = ?"),
    ):
        for org in doomed:
            orphans[service] = orphans.get(service, 0) + rows(system, service, query, org)[0][0]
    kept_rows = sum(
        rows(system, "workflow", "SELECT count(*) FROM resources WHERE org_id = ?", org)[0][0]
        for org in kept
    )
    after_deletion = [
        r
        for r in writes
        if r.tags.get("org") in deleted_at
        and r.started >= deleted_at[str(r.tags["org"])]
        and r.outcome in ("served", "degraded")
    ]
    result.wrongly_allowed = len(after_deletion)
    purged_at: dict[str, float] = {
        e.payload["org_id"]: at for at, e in observer.deliveries if e.type.endswith("org_purged")
    }
    cancels = [c for c in system.network.calls if c.service == "billing" and "/cancel" in c.path]
    met_fault = {c.path.split("/")[2] for c in cancels if c.fault is not None}
    first_cancel = {}
    for call in cancels:
        if call.fault is None:
            first_cancel.setdefault(call.path.split("/")[2], call.at)
    half_purged = [org for org in purged_at if org not in first_cancel]
    out_of_order = []
    for org in doomed:
        types = [e.type.removeprefix("organization.") for e in observer.of(org)]
        deleted = types.index("org_deleted") if "org_deleted" in types else None
        if (
            deleted is None
            or "org_purged" not in types
            or types.index("org_purged") < deleted
            or types[-1] != "org_purged"
            or "member_added" in types[deleted:]
        ):
            out_of_order.append((org, types))
    result.events_lost = sum(1 for org in doomed if org not in purged_at)
    result.duplicate_effects = system.sink.duplicates("row")
    result.dependency_calls = sum(1 for c in cancels if c.at >= billing_down_at)
    last_purge = max(purged_at.values(), default=None)
    result.time_to_recover = (
        None
        if last_purge is None or len(purged_at) < len(doomed)
        else last_purge - (billing_down_at + BILLING_DOWN_FOR)
    )
    total = sum(orphans.values())
    result.check(
        "0 orphaned rows after the grace period",
        total == 0 and kept_rows > 0,
        f"{total} rows of deleted orgs left ("
        + ", ".join(f"{service} {count}" for service, count in orphans.items())
        + f"); {kept_rows} rows of kept orgs untouched",
    )
    result.check(
        "nothing created for the org after the deletion was accepted",
        not after_deletion,
        f"{len(after_deletion)} writes for deleted orgs accepted after their deletion",
    )
    result.check(
        "a failing dependent step is compensated and retried",
        bool(met_fault) and len(purged_at) == len(doomed) and not half_purged,
        f"{len(met_fault)} purges met Billing down; "
        f"{len(purged_at)} of {len(doomed)} purges completed, "
        f"{len(half_purged)} announced before Billing cancelled",
    )
    result.check(
        "per-key order kept",
        not out_of_order,
        f"{len(doomed) - len(out_of_order)} of {len(doomed)} deleted orgs: created, members, "
        "deleted, purged, in that order",
    )
    return result


# -- 6. publishing fails ---------------------------------------------------------------------

OUTAGE = 45.0
PARTITION_FOR = 480.0
MAX_ATTEMPTS = 8
# 2 s, doubling to 30 s, "equal" jitter (each delay at least half its step): the 8th
# attempt comes at least 60 s after the first, so a 45 s outage costs no event.
RELAY_BACKOFF = Backoff.exponential(initial=2.0, maximum=30.0, jitter="equal")


def replay_dead_letters(path: str) -> dict[str, Any]:
    """The operator's command: ``resilience-kit dead-letters replay --to outbox``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = resilience_kit_cli(
            ["dead-letters", "replay", "--store", f"sqlite:///{path}", "--to", "outbox", "--json"]
        )
    document: dict[str, Any] = json.loads(out.getvalue() or "{}")
    document["exit_code"] = code
    return document


@drill(
    name="organization-event-publishing",
    number=6,
    service="Organization",
    scenario="Event publishing fails (bus down)",
    fault=(
        "the bus refuses every publish for 45 s, and one org's partition refuses its "
        "events for 8 minutes"
    ),
    mitigations=("outbox", "backoff", "dead-lettering"),
    criterion=(
        "0 events lost, all delivered in per-key order after recovery with exponential "
        "backoff; events that fail N times sit in dead letters and are replayed once "
        "from the CLI"
    ),
    page="organization-event-publishing.md",
)
async def event_publishing(system: System) -> DrillResult:
    rand = system.rand
    mitigations = system.mitigations
    outage = ChaosFault(ConnectionError("bus down"), enabled=False, name="bus.outage")
    partition = ChaosFault(
        ConnectionError("partition offline"), enabled=False, name="bus.partition"
    )
    orgs = [f"org-{n}" for n in range(5)]
    poisoned = rand.choice(orgs)
    refusing = ChaosPublisher(
        system.bus, partition, where=lambda topic, event: event.key == f"org:{poisoned}"
    )
    bus = ChaosPublisher(refusing, outage, clock=system.clock)
    system.relay_for(
        "organization",
        publisher=bus,
        poll_interval=RELAY_POLL,
        max_attempts=MAX_ATTEMPTS,
        backoff=RELAY_BACKOFF if mitigations.on("backoff") else Backoff.constant(0.5),
        on_exhausted="dead_letter" if mitigations.on("dead-lettering") else "block",
    )
    system.add("organization", lambda ctx: Organization(ctx, publisher=bus))
    observer = Observer(system)
    workload = system.workload()
    for org in orgs:
        await workload.request(
            "admin",
            "create-org",
            "POST",
            "http://organization/orgs",
            json={"org_id": org, "owner_id": f"owner-{org}", "name": org.title()},
        )
    start = system.now()
    outage_at = start + rand.uniform(90.0, 150.0)
    partition_end = start + 10.0 + PARTITION_FOR
    timeline: dict[str, Any] = {}
    refused_changes = 0  # what the refused org's admin changed during the partition
    healed = anyio.Event()

    async def admin(org: str) -> None:
        users = [f"{org}-user-{n}" for n in range(8)]
        members: list[str] = []
        # The refused org's admin is done before the partition ends: nothing of it is
        # published in between (its events are in dead letters, then replayed in order).
        until = start + 60.0 if org == poisoned else outage_at + OUTAGE + 100.0
        while users and system.now() < until:
            await system.sleep(rand.uniform(8.0, 20.0) if org != poisoned else 15.0)
            if org == poisoned:
                nonlocal refused_changes
                refused_changes += 1
            if members and rand.random() < 0.3:
                user = members.pop(rand.randrange(len(members)))
                await workload.request(
                    "admin",
                    "remove-member",
                    "DELETE",
                    f"http://organization/orgs/{org}/members/{user}",
                    tags={"org": org, "user": user, "type": "member_removed"},
                )
            else:
                user = users.pop(0)
                members.append(user)
                await workload.request(
                    "admin",
                    "add-member",
                    "POST",
                    f"http://organization/orgs/{org}/members",
                    json={"user_id": user, "role": "member"},
                    tags={"org": org, "user": user, "type": "member_added"},
                )

    async def chaos() -> None:
        await system.sleep(10.0)
        partition.enabled = True
        await system.sleep_until(outage_at)
        outage.enabled = True
        await system.sleep(OUTAGE)
        outage.enabled = False
        await system.sleep_until(partition_end)
        # The partition outlasts the relay's retries for every change of the refused
        # org (jitter decides how long they take): heal it only once all of them are in
        # dead letters, else a late change would be published before the replay of the
        # earlier ones, out of order. Bounded, so a broken relay still ends the drill.
        dead = system.stores["organization"].dead_letters
        give_up_at = partition_end + PARTITION_FOR
        while system.now() < give_up_at:
            if await dead.count(DeadLetterFilter()) >= refused_changes:
                break
            await system.sleep(10.0)
        partition.enabled = False
        healed.set()

    async def operator() -> None:
        await healed.wait()
        await system.sleep(20.0)
        dead = system.stores["organization"].dead_letters
        timeline["dead_before"] = await dead.count(DeadLetterFilter())
        timeline["replay"] = await anyio.to_thread.run_sync(
            replay_dead_letters, system.stores["organization"].path
        )
        timeline["replayed_at"] = system.now()
        timeline["dead_after"] = await dead.count(DeadLetterFilter())

    async with anyio.create_task_group() as outer:
        outer.start_soon(observer.run)
        async with anyio.create_task_group() as group:
            group.start_soon(chaos)
            group.start_soon(operator)
            for org in orgs:
                group.start_soon(admin, org)
        await system.sleep(120.0)  # after the replay: time for it to be delivered
        outer.cancel_scope.cancel()
    return judge_publishing(system, start, outage_at, poisoned, bus, observer, timeline)


def judge_publishing(
    system: System,
    start: float,
    outage_at: float,
    poisoned: str,
    bus: ChaosPublisher,
    observer: Observer,
    timeline: dict[str, Any],
) -> DrillResult:
    result = DrillResult()
    writes = system.log.where(
        lambda r: r.operation in ("add-member", "remove-member") and r.started >= start
    )
    fill_counts(result, writes)
    # What had to be delivered: one event per accepted change, in the order accepted.
    expected: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in sorted(writes, key=lambda r: r.finished):
        if r.outcome == "served":
            expected[str(r.tags["org"])].append((str(r.tags["type"]), str(r.tags["user"])))
    owners = {f"owner-{org}" for org in expected}  # made with their org, before the drill
    seen: set[str] = set()
    delivered: dict[str, list[tuple[str, str]]] = defaultdict(list)
    copies: dict[str, int] = defaultdict(int)
    for at, event in observer.deliveries:
        copies[str(event.id)] += 1
        if str(event.id) in seen or at < start:
            continue
        seen.add(str(event.id))
        kind = event.type.removeprefix("organization.")
        if kind in ("member_added", "member_removed") and event.payload["user_id"] not in owners:
            org = str(event.payload["org_id"])
            delivered[org].append((kind, str(event.payload["user_id"])))
    lost = sum(
        len([change for change in changes if change not in delivered[org]])
        for org, changes in expected.items()
    )
    out_of_order = [org for org, changes in expected.items() if delivered[org] != changes]
    result.events_lost = lost
    result.duplicate_effects = sum(count - 1 for count in copies.values())
    result.dead_lettered = int(timeline.get("dead_before", 0))
    outage_end = outage_at + OUTAGE
    during = [a for a in bus.attempts if outage_at <= a.at < outage_end]
    per_event: dict[str, int] = defaultdict(int)
    for attempt in during:
        per_event[attempt.event_id] += 1
    result.dependency_calls = len(during)
    most = max(per_event.values(), default=0)
    after = [a for a in bus.attempts if a.at >= outage_end and not a.injected]
    result.time_to_recover = after[0].at - outage_end if after else None
    replay = timeline.get("replay", {})
    replayed = [str(item) for item in replay.get("replayed", [])]
    poisoned_changes = len(expected.get(poisoned, []))
    result.check(
        "0 events lost",
        lost == 0,
        f"{lost} of {sum(len(c) for c in expected.values())} accepted changes never delivered",
    )
    result.check(
        "every org's events delivered in the order of its changes",
        not out_of_order,
        f"{len(expected) - len(out_of_order)} of {len(expected)} orgs in order",
    )
    result.check(
        "retries back off exponentially while the bus is down (nothing given up)",
        most <= MAX_ATTEMPTS - 2 and not any(a for a in after if a.injected),
        f"{len(during)} publish attempts during the {OUTAGE:.0f}s outage, at most {most} "
        f"for one event (exhausted at {MAX_ATTEMPTS})",
    )
    result.check(
        "events that failed N times sit in dead letters and are replayed once from the CLI",
        timeline.get("dead_before") == poisoned_changes > 0
        and replay.get("exit_code") == 0
        and timeline.get("dead_after") == 0,
        f"{timeline.get('dead_before')} dead letters for {poisoned_changes} changes of the "
        f"refused org; `resilience-kit dead-letters replay` exited {replay.get('exit_code')}, "
        f"{len(replayed)} replayed, {timeline.get('dead_after')} left",
    )
    return result
