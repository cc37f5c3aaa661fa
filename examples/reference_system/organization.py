"""Organization: orgs and memberships, their events, and org deletion as a saga.

Its own SQLite database holds ``orgs`` and ``members``; every change commits with its
event in the outbox (`Outbox.add` on the same connection), on the topic
``organization`` with key ``org:<org_id>``, so consumers see one org's changes in the
order they were made — an event is never lost between the commit and the bus, because
the System's `OutboxRelay` publishes it later, retrying with exponential backoff, and
parks what it cannot publish in dead letters (drill 6).

Deleting an org (drill 5):

- **soft delete**: ``DELETE /orgs/{id}`` marks the org deleted and publishes
  ``organization.org_deleted {org_id, grace_until}``; from that instant every write for
  the org is refused (409) and membership lookups answer 404, so dependents that check
  membership create nothing more for it;
- **grace period**: dependents finish what they were already doing for the org;
- **purge saga** (`resilience_kit.messaging.Saga`), when the grace period is over:
  ``hold`` (claim the org: deleted -> purging; compensation: back to deleted, to be
  retried later), ``billing`` (stop charging: Billing's ``POST /orgs/{id}/cancel``,
  through ``Pipeline(Timeout, RetryPolicy, CircuitBreaker)``), ``purge`` (delete the
  memberships, mark the org purged and publish ``organization.org_purged`` — one
  transaction). A step that gives up compensates the ones before it, so an org is never
  left half-purged, and the purge is tried again later; dependents delete their data
  when ``org_purged`` arrives, after every earlier event of the org (same key).

``POST /admin/reconcile`` (operators only; 403 otherwise) re-publishes the current
membership state — ``member_added`` for every member, ``member_removed`` for every
former member, ``org_deleted`` for deleted orgs — so a consumer that missed an event
converges (drill 4). Consumers apply these idempotently (by state, not only by event id).

**The database** (drill 20) is reached through ``Pipeline(Timeout, RetryPolicy,
CircuitBreaker)``: the Timeout (2 s) bounds a request's time in it, retries (3 attempts,
50 ms..400 ms full jitter) absorb blips, and the breaker opens on an outage, so writes
fail fast — 503 with the breaker's Retry-After — and the database is not hammered while
it restarts; half-open probes close it by themselves. Membership lookups, which
dependents authorise with, fall back to a **read replica** (`core.replica.ReadReplica`,
a copy shipped every 2 s) while the primary is unreachable, marked ``x-degraded:
replica`` with the replica's staleness in ``x-replica-staleness``; a replica that may
miss more than ``staleness_bound`` seconds of the primary's history is not used (503).

Who is calling: the gateway authenticates users and forwards their id in ``x-user-id``
(in production the hop is authenticated too, with mTLS; a caller without it is nobody).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from resilience_kit import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    Pipeline,
    RetryPolicy,
    Timeout,
)
from resilience_kit.health import HealthCheck, HealthStatus
from resilience_kit.messaging import Event, Outbox, Publisher, Saga, SagaResult, SagaStep
from resilience_kit.testing import ChaosFault

from .core.replica import ReadReplica
from .core.service import Service, ServiceContext

T = TypeVar("T")

TOPIC = "organization"
SCHEMA = """
CREATE TABLE IF NOT EXISTS orgs (
    org_id TEXT PRIMARY KEY, owner_id TEXT NOT NULL, name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',            -- active | deleted | purging | purged
    deleted_at REAL, purge_after REAL, purge_attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS members (
    org_id TEXT NOT NULL, user_id TEXT NOT NULL, role TEXT NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0,              -- a tombstone, for reconciliation
    PRIMARY KEY (org_id, user_id)
);
"""
ROLES = ("admin", "member")


def org_event(kind: str, org_id: str, payload: dict[str, Any], **headers: str) -> Event:
    """An ``organization.<kind>`` event about ``org_id``: key ``org:<org_id>``, so one
    org's events keep their order on the way to every consumer."""
    return Event(type=f"organization.{kind}", key=f"org:{org_id}", payload=payload, headers=headers)


class OrgGone(Exception):
    """The org is deleted (or purged): writes for it are refused."""


DATABASE_TROUBLE = (CircuitOpenError, sqlite3.OperationalError, TimeoutError)
"""What a call to the database raises when the database, not the request, is the problem."""


def retry_after(exc: BaseException) -> str:
    """Seconds a client should wait: the open breaker's own estimate, else 1."""
    if isinstance(exc, CircuitOpenError) and exc.retry_after is not None:
        return str(max(1, math.ceil(exc.retry_after)))
    return "1"


class Organization(Service):
    """One replica of the Organization service.

    Args:
        ctx: the platform's context.
        grace_period: seconds between the deletion and the purge of an org.
        operators: user ids allowed to call ``/admin/*``.
        publisher: where events go when the "outbox" mitigation is off (the bus);
            with the outbox (the default), the System's relay publishes them.
        purge_interval: how often due purges are looked for.
        replica: a read replica membership lookups fall back to while the database
            is unreachable (drill 20); ``None``: no fallback (503).
        staleness_bound: the most primary history (seconds) a replica answer may miss.
    """

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        grace_period: float = 120.0,
        operators: frozenset[str] = frozenset({"ops"}),
        publisher: Publisher | None = None,
        purge_interval: float = 10.0,
        replica: ReadReplica | None = None,
        staleness_bound: float = 10.0,
    ) -> None:
        super().__init__(ctx)
        clock, mitigations = ctx.clock, ctx.mitigations
        self.replica = replica if mitigations.on("replica") else None
        self.staleness_bound = staleness_bound
        # The network between the service and its database: what drill 20 cuts
        # (``db_link.enabled = True``). ``db_calls``: the database's own access log.
        self.db_link = ChaosFault(
            sqlite3.OperationalError("database unavailable"),
            enabled=False,
            name="organization.db",
        )
        self.db_calls: list[float] = []
        self.db_breaker = self.watch(
            CircuitBreaker(
                "organization.db",
                window=20,
                minimum_calls=5,
                failure_rate_threshold=0.5,
                open_for=10.0,
                half_open_calls=1,
                record_on=(sqlite3.OperationalError, TimeoutError),
                clock=clock,
            )
        )
        if not mitigations.on("breaker"):
            self.db_breaker.disable()
        self.db_policy = Pipeline(
            Timeout(2.0, clock=clock, name="organization.db.timeout"),
            RetryPolicy(
                attempts=3 if mitigations.on("retries") else 1,
                on=sqlite3.OperationalError,
                backoff=Backoff.exponential(initial=0.05, maximum=0.4, jitter="full"),
                clock=clock,
                rand=ctx.rand.random,
                name="organization.db.retry",
            ),
            self.db_breaker,
        )
        self.outbox = Outbox(ctx.store.outbox, topic=TOPIC)
        self.use_outbox = mitigations.on("outbox")
        self.publisher: Publisher = publisher if publisher is not None else ctx.bus
        self.soft_delete = mitigations.on("soft-delete")
        self.grace_period = grace_period if self.soft_delete else 0.0
        self.operators = operators
        self.purge_interval = purge_interval
        self.retry_purge_after = 60.0
        self._schema_ready = False
        # Billing's cancel during a purge: a short deadline (the purge runs in the
        # background, but must not hold a worker forever); 3 attempts with backoff for
        # blips (cancel is idempotent, so a retry cannot cancel twice); a breaker so a
        # down Billing costs each due purge one refused call, not three timeouts.
        self.billing_breaker = self.watch(
            CircuitBreaker(
                "organization.billing",
                window=10,
                minimum_calls=3,
                failure_rate_threshold=0.5,
                open_for=30.0,
                half_open_calls=1,
                clock=clock,
            )
        )
        if not mitigations.on("breaker"):
            self.billing_breaker.disable()
        self.billing_calls = Pipeline(
            Timeout(5.0, clock=clock, name="organization.billing.deadline"),
            RetryPolicy(
                attempts=3 if mitigations.on("retries") else 1,
                on=(httpx.TransportError, ConnectionError),
                backoff=Backoff.exponential(initial=0.5, maximum=4.0, jitter="full"),
                clock=clock,
                rand=ctx.rand.random,
                name="organization.billing.retry",
            ),
            self.billing_breaker,
        )
        compensate = mitigations.on("compensation")
        self.purge_saga: Saga[str] = Saga(
            "organization.purge",
            [
                SagaStep("hold", self._hold, self._release if compensate else None),
                SagaStep("billing", self._cancel_billing),
                SagaStep("purge", self._purge),
            ],
        )
        self.sagas: list[tuple[float, str, SagaResult]] = []  # (when, org, result)

    # -- database -------------------------------------------------------------------------

    async def database(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one transaction, through the database's call policy."""
        return await self.db_policy.acall(lambda: self._transaction(work))

    async def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """One transaction on a fresh connection, in a worker thread."""
        self.db_calls.append(self.ctx.clock.monotonic())
        self.db_link.call(lambda: None)

        def job() -> T:
            connection = self.ctx.store.connect()
            try:
                if not self._schema_ready:
                    connection.executescript(SCHEMA)
                    self._schema_ready = True
                with connection:
                    return work(connection)
            finally:
                connection.close()

        return await anyio.to_thread.run_sync(job)

    def _emit(self, connection: sqlite3.Connection, pending: list[Event], event: Event) -> None:
        """Put ``event`` in the outbox (same transaction), or queue it for a direct publish."""
        if self.use_outbox:
            self.outbox.add(connection, event)
        else:
            pending.append(event)

    async def _publish_direct(self, pending: list[Event]) -> None:
        """Without the outbox: publish after the commit, and lose what fails (dual write)."""
        for event in pending:
            try:
                await self.publisher.publish(TOPIC, event)
            except Exception:  # the point of this variant: the event is lost
                self.ctx.observe("event lost: published after commit, bus refused it")

    async def _write(self, work: Callable[[sqlite3.Connection, list[Event]], T]) -> T:
        pending: list[Event] = []
        result = await self.database(lambda connection: work(connection, pending))
        if pending:
            await self._publish_direct(pending)
        return result

    # -- routes ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        guarded = self.guarded
        routes = [
            Route("/orgs", guarded(self.create_org), methods=["POST"]),
            Route("/orgs/{org_id}", guarded(self.delete_org), methods=["DELETE"]),
            Route("/orgs/{org_id}/members", guarded(self.add_member), methods=["POST"]),
            Route("/orgs/{org_id}/members/{user_id}", self.get_member, methods=["GET"]),
            Route(
                "/orgs/{org_id}/members/{user_id}",
                guarded(self.remove_member),
                methods=["DELETE"],
            ),
        ]
        if self.ctx.mitigations.on("reconciliation"):
            routes.append(Route("/admin/reconcile", guarded(self.reconcile), methods=["POST"]))
        return routes

    @staticmethod
    def unavailable(exc: BaseException) -> Response:
        """503 with Retry-After: the database cannot take this now; nothing was changed."""
        return JSONResponse(
            {"error": "database_unavailable", "detail": type(exc).__name__},
            status_code=503,
            headers={"retry-after": retry_after(exc)},
        )

    def guarded(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler``, with database trouble answered 503 + Retry-After (fail fast)."""

        async def guard(request: Request) -> Response:
            try:
                return await handler(request)
            except DATABASE_TROUBLE as exc:
                return self.unavailable(exc)

        return guard

    def readiness(self) -> list[HealthCheck]:
        async def overdue_purges() -> HealthStatus:
            now = self.ctx.clock.monotonic()
            late = await self.database(
                lambda c: c.execute(
                    "SELECT count(*) FROM orgs WHERE status IN ('deleted', 'purging') "
                    "AND purge_after < ?",
                    (now - 600.0,),
                ).fetchone()[0]
            )
            return HealthStatus.DEGRADED if late else HealthStatus.HEALTHY

        # Purges long overdue (a dependent step keeps failing): degraded, not down.
        return [HealthCheck("purges", overdue_purges, timeout=2.0, critical=False)]

    async def create_org(self, request: Request) -> Response:
        body = await request.json()
        org_id, owner, name = str(body["org_id"]), str(body["owner_id"]), str(body["name"])

        def insert(connection: sqlite3.Connection, pending: list[Event]) -> bool:
            try:
                connection.execute(
                    "INSERT INTO orgs (org_id, owner_id, name) VALUES (?, ?, ?)",
                    (org_id, owner, name),
                )
            except sqlite3.IntegrityError:
                return False
            connection.execute(
                "INSERT INTO members (org_id, user_id, role) VALUES (?, ?, 'admin')",
                (org_id, owner),
            )
            payload = {"org_id": org_id, "owner_id": owner, "name": name}
            self._emit(connection, pending, org_event("org_created", org_id, payload))
            member = {"org_id": org_id, "user_id": owner, "role": "admin"}
            self._emit(connection, pending, org_event("member_added", org_id, member))
            return True

        if not await self._write(insert):
            return JSONResponse({"error": "exists"}, status_code=409)
        self.ctx.sink.record("row", f"orgs:{org_id}", self.ctx.service)
        return JSONResponse({"org_id": org_id}, status_code=201)

    @staticmethod
    def _active(connection: sqlite3.Connection, org_id: str) -> bool | None:
        """``True`` active, ``False`` deleted or purged, ``None`` unknown."""
        row = connection.execute("SELECT status FROM orgs WHERE org_id = ?", (org_id,)).fetchone()
        return None if row is None else row[0] == "active"

    async def add_member(self, request: Request) -> Response:
        org_id = request.path_params["org_id"]
        body = await request.json()
        user_id, role = str(body["user_id"]), str(body.get("role", "member"))
        if role not in ROLES:
            return JSONResponse({"error": f"role must be one of {ROLES}"}, status_code=422)

        def upsert(connection: sqlite3.Connection, pending: list[Event]) -> str:
            active = self._active(connection, org_id)
            if active is None:
                return "unknown"
            if not active:
                return "gone"  # soft-deleted: nothing new for this org, from now on
            row = connection.execute(
                "SELECT role, removed FROM members WHERE org_id = ? AND user_id = ?",
                (org_id, user_id),
            ).fetchone()
            if row is not None and row[0] == role and not row[1]:
                return "unchanged"  # a retried request: no second event
            connection.execute(
                "INSERT INTO members (org_id, user_id, role) VALUES (?, ?, ?) "
                "ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role, removed = 0",
                (org_id, user_id, role),
            )
            payload = {"org_id": org_id, "user_id": user_id, "role": role}
            self._emit(connection, pending, org_event("member_added", org_id, payload))
            return "added"

        outcome = await self._write(upsert)
        if outcome == "unknown":
            return JSONResponse({"error": "no such org"}, status_code=404)
        if outcome == "gone":
            return JSONResponse({"error": "org_deleted"}, status_code=409)
        return JSONResponse(
            {"org_id": org_id, "user_id": user_id, "role": role},
            status_code=201 if outcome == "added" else 200,
        )

    async def remove_member(self, request: Request) -> Response:
        org_id, user_id = request.path_params["org_id"], request.path_params["user_id"]

        def remove(connection: sqlite3.Connection, pending: list[Event]) -> str:
            active = self._active(connection, org_id)
            if active is None:
                return "unknown"
            if not active:
                return "gone"
            changed = connection.execute(
                "UPDATE members SET removed = 1 WHERE org_id = ? AND user_id = ? AND removed = 0",
                (org_id, user_id),
            ).rowcount
            if not changed:
                return "unknown"
            payload = {"org_id": org_id, "user_id": user_id}
            self._emit(connection, pending, org_event("member_removed", org_id, payload))
            return "removed"

        outcome = await self._write(remove)
        if outcome == "gone":
            return JSONResponse({"error": "org_deleted"}, status_code=409)
        if outcome == "unknown":
            return JSONResponse({"error": "no such member"}, status_code=404)
        return JSONResponse({"org_id": org_id, "user_id": user_id, "removed": True})

    async def get_member(self, request: Request) -> Response:
        org_id, user_id = request.path_params["org_id"], request.path_params["user_id"]

        def read(connection: sqlite3.Connection) -> str | None:
            row = connection.execute(
                "SELECT m.role FROM members m JOIN orgs o ON o.org_id = m.org_id "
                "WHERE m.org_id = ? AND m.user_id = ? AND m.removed = 0 AND o.status = 'active'",
                (org_id, user_id),
            ).fetchone()
            return None if row is None else str(row[0])

        headers: dict[str, str] = {}
        try:
            role = await self.database(read)
        except DATABASE_TROUBLE as exc:
            # The primary cannot answer: the replica may, if it is recent enough. Its
            # answer is marked degraded, with how much history it may miss.
            staleness = self.replica.staleness() if self.replica is not None else math.inf
            if self.replica is None or staleness > self.staleness_bound:
                return self.unavailable(exc)
            try:
                role = await self.replica.read(read)
            except sqlite3.Error:
                return self.unavailable(exc)
            self.ctx.observe("read served from the replica")
            headers = {"x-degraded": "replica", "x-replica-staleness": f"{staleness:.3f}"}
        # A degraded answer says so in its body too (a 404 has no "degraded" outcome).
        marks = {"source": "replica", "staleness": round(staleness, 3)} if headers else {}
        if role is None:
            return JSONResponse(
                {"error": "not a member", **marks}, status_code=404, headers=headers
            )
        return JSONResponse({"role": role, **marks}, headers=headers)

    async def delete_org(self, request: Request) -> Response:
        org_id = request.path_params["org_id"]
        now = self.ctx.clock.monotonic()
        grace_until = now + self.grace_period

        def mark(connection: sqlite3.Connection, pending: list[Event]) -> str:
            active = self._active(connection, org_id)
            if active is None:
                return "unknown"
            if not active:
                return "already"
            connection.execute(
                "UPDATE orgs SET status = 'deleted', deleted_at = ?, purge_after = ? "
                "WHERE org_id = ?",
                (now, grace_until, org_id),
            )
            payload = {"org_id": org_id, "grace_until": grace_until}
            self._emit(connection, pending, org_event("org_deleted", org_id, payload))
            return "deleted"

        outcome = await self._write(mark)
        if outcome == "unknown":
            return JSONResponse({"error": "no such org"}, status_code=404)
        if outcome == "deleted" and not self.soft_delete:
            await self.purge(org_id)  # a hard delete: dependents get no grace period
        return JSONResponse({"org_id": org_id, "grace_until": grace_until}, status_code=202)

    async def reconcile(self, request: Request) -> Response:
        if request.headers.get("x-user-id") not in self.operators:
            return JSONResponse({"error": "operators only"}, status_code=403)
        body = await request.json() if await request.body() else {}
        only = body.get("org_id")

        def republish(connection: sqlite3.Connection, pending: list[Event]) -> int:
            orgs = connection.execute(
                "SELECT org_id, status, purge_after FROM orgs WHERE status != 'purged' "
                "AND (? IS NULL OR org_id = ?) ORDER BY org_id",
                (only, only),
            ).fetchall()
            count = 0
            for org_id, status, purge_after in orgs:
                members = connection.execute(
                    "SELECT user_id, role, removed FROM members WHERE org_id = ? ORDER BY user_id",
                    (org_id,),
                ).fetchall()
                for user_id, role, removed in members:
                    if removed:
                        kind, payload = "member_removed", {"org_id": org_id, "user_id": user_id}
                    else:
                        kind = "member_added"
                        payload = {"org_id": org_id, "user_id": user_id, "role": role}
                    self._emit(
                        connection, pending, org_event(kind, org_id, payload, reconciliation="1")
                    )
                    count += 1
                if status != "active":
                    payload = {"org_id": org_id, "grace_until": purge_after}
                    self._emit(
                        connection,
                        pending,
                        org_event("org_deleted", org_id, payload, reconciliation="1"),
                    )
                    count += 1
            return count

        count = await self._write(republish)
        self.ctx.observe("admin reconciliation re-published membership state")
        return JSONResponse({"republished": count})

    # -- the purge saga -------------------------------------------------------------------

    async def _hold(self, org_id: str) -> None:
        def claim(connection: sqlite3.Connection) -> int:
            return connection.execute(
                "UPDATE orgs SET status = 'purging', purge_attempts = purge_attempts + 1 "
                "WHERE org_id = ? AND status = 'deleted'",
                (org_id,),
            ).rowcount

        if not await self.database(claim):
            raise OrgGone(f"{org_id} is not waiting for a purge (another replica has it)")

    async def _release(self, org_id: str) -> None:
        retry_at = self.ctx.clock.monotonic() + self.retry_purge_after
        await self.database(
            lambda connection: connection.execute(
                "UPDATE orgs SET status = 'deleted', purge_after = ? "
                "WHERE org_id = ? AND status = 'purging'",
                (retry_at, org_id),
            )
        )

    async def _cancel_billing(self, org_id: str) -> None:
        async def cancel() -> None:
            response = await self.ctx.http.post(f"{self.ctx.urls['billing']}/orgs/{org_id}/cancel")
            if response.status_code >= 500:
                raise ConnectionError(f"billing answered {response.status_code}")

        await self.billing_calls.acall(cancel)

    async def _purge(self, org_id: str) -> None:
        def purge(connection: sqlite3.Connection, pending: list[Event]) -> None:
            connection.execute("DELETE FROM members WHERE org_id = ?", (org_id,))
            connection.execute("UPDATE orgs SET status = 'purged' WHERE org_id = ?", (org_id,))
            self._emit(connection, pending, org_event("org_purged", org_id, {"org_id": org_id}))

        await self._write(purge)

    async def purge(self, org_id: str) -> SagaResult:
        """Run the purge saga for one org whose grace period is over."""
        if not self.soft_delete:
            await self.database(
                lambda connection: connection.execute(
                    "UPDATE orgs SET purge_after = ? WHERE org_id = ?",
                    (self.ctx.clock.monotonic(), org_id),
                )
            )
        result = await self.purge_saga.run(org_id)
        self.sagas.append((self.ctx.clock.monotonic(), org_id, result))
        if result.succeeded:
            self.ctx.observe("purge saga completed")
        elif result.compensated:
            self.ctx.observe("purge saga compensated (retried later)")
        else:
            self.ctx.observe("purge saga failed, nothing compensated")
        return result

    async def due_purges(self) -> list[str]:
        now = self.ctx.clock.monotonic()
        rows = await self.database(
            lambda connection: connection.execute(
                "SELECT org_id FROM orgs WHERE status = 'deleted' AND purge_after <= ? "
                "ORDER BY purge_after",
                (now,),
            ).fetchall()
        )
        return [str(row[0]) for row in rows]

    async def purge_loop(self) -> None:
        """Purge every org whose grace period is over, every ``purge_interval`` seconds."""
        while True:
            await self.ctx.clock.asleep(self.purge_interval)
            try:
                due = await self.due_purges()
            except DATABASE_TROUBLE:
                continue  # the database is down: purges wait for it (nothing is lost)
            for org_id in due:
                await self.purge(org_id)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self.purge_loop)
            await group.start(super().run)
            task_status.started()
