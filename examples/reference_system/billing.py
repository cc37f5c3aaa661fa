"""Billing: subscriptions, the entitlements they grant, usage, and cancellation with grace.

Its own SQLite database holds ``subscriptions`` (one plan per org, a version counted up
at every change) and ``usage`` (one row per resource an org created). Every change of
entitlements commits with its ``billing.entitlements_changed {org_id, plan, limits,
version, grace_until}`` event in the outbox (key ``org:<org_id>``: one org's changes
arrive in order), so an event is never lost between the commit and the bus.

- **Entitlements** per plan (`PLANS`): ``GET /orgs/{id}/entitlements`` answers
  ``{plan, limits: {resources}, version, grace_until}``; an org without a subscription
  is on the free plan, version 0.
- **Cancellation with a grace period** (drill 8): ``POST /orgs/{id}/cancel`` keeps the
  plan until ``grace_until`` but its limits become the free plan's as *soft* limits
  (``grace_until`` set: Workflow lets a creation over them through with a warning);
  when the grace period ends the org is moved to the free plan and the limits are hard.
  ``billing.subscription_cancelled {org_id, grace_until}`` is published too.
  Cancelling twice changes nothing (Organization's purge saga retries it).
- **Usage tracking continues** whatever happens: Workflow reports each resource as a
  ``workflow.resource_created`` event through its own outbox, consumed here by a
  `ResilientConsumer` with an `Inbox` (redelivered with backoff while Billing's
  database is failing) and recorded idempotently (``INSERT OR IGNORE`` by resource):
  no usage record is lost while Billing is down or degraded. ``POST /orgs/{id}/usage``
  records the same way, for callers without a bus.
- **Periodic entitlement sync** (drill 7): every ``sync_interval`` seconds the current
  entitlements of every org are re-published (header ``sync``), so a consumer that
  missed a change converges within that bound; ``POST /admin/sync`` (operators only)
  does it at once — the manual refresh. Events that exhausted the relay's attempts sit
  in Billing's dead letters; ``resilience-kit dead-letters replay --to outbox`` replays
  them (see drill 6).
- ``organization.org_purged`` deletes the org's subscription and usage.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from resilience_kit import Backoff, RetryPolicy
from resilience_kit.health import HealthCheck, lag_check
from resilience_kit.messaging import Event, Inbox, Outbox, ResilientConsumer
from resilience_kit.testing import ChaosFault

from .core.service import Service, ServiceContext

T = TypeVar("T")

TOPIC = "billing"
PLANS: dict[str, dict[str, int]] = {
    "free": {"resources": 5},
    "pro": {"resources": 25},
    "team": {"resources": 100},
}
"""The limits each plan grants."""
CONSUMED = ("workflow", "organization")

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    org_id TEXT PRIMARY KEY,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,            -- active | cancelled (in its grace period)
    grace_until REAL,
    version INTEGER NOT NULL,
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    org_id TEXT NOT NULL, resource_id TEXT NOT NULL, created_by TEXT,
    over_limit INTEGER NOT NULL DEFAULT 0, recorded_at REAL NOT NULL,
    PRIMARY KEY (org_id, resource_id)
);
"""


def entitlements_of(org_id: str, row: tuple[Any, ...] | None) -> dict[str, Any]:
    """The entitlements a subscription row grants (``None``: no subscription, free)."""
    if row is None:
        return {"org_id": org_id, "plan": "free", "limits": dict(PLANS["free"]), "version": 0,
                "grace_until": None}  # fmt: skip
    plan, status, grace_until, version = row
    # In the grace period the plan is kept but its limits are the free plan's, soft.
    limits = PLANS["free"] if status == "cancelled" else PLANS[plan]
    return {
        "org_id": org_id,
        "plan": plan,
        "limits": dict(limits),
        "version": int(version),
        "grace_until": grace_until if status == "cancelled" else None,
    }


class Billing(Service):
    """One replica of the Billing service.

    Args:
        ctx: the platform's context.
        grace_period: seconds a cancelled subscription keeps soft limits.
        sync_interval: seconds between two re-publications of every org's entitlements.
        operators: user ids allowed to call ``/admin/*``.
    """

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        grace_period: float = 300.0,
        sync_interval: float = 300.0,
        operators: frozenset[str] = frozenset({"ops"}),
    ) -> None:
        super().__init__(ctx)
        on = ctx.mitigations.on
        self.outbox = Outbox(ctx.store.outbox, topic=TOPIC)
        self.grace_period = grace_period if on("grace-period") else 0.0
        self.sync_interval = sync_interval if on("periodic-sync") else None
        self.operators = operators
        self._schema_ready = False
        # A drill switches this on to make the database refuse usage writes for a while
        # (Billing degraded); the consumer's redelivery carries the usage through.
        self.db_fault = ChaosFault(
            sqlite3.OperationalError("database is locked"), enabled=False, name="billing.db"
        )

        def redelivery() -> RetryPolicy:
            # Up to 8 attempts 2 s .. 60 s apart: a few minutes of database trouble
            # cost no usage record; what still fails goes to dead letters for replay.
            return RetryPolicy(
                attempts=8,
                backoff=Backoff.exponential(initial=2.0, maximum=60.0, jitter="full"),
                clock=ctx.clock,
                rand=ctx.rand.random,
            )

        handlers = {"workflow": self.on_usage, "organization": self.on_org}
        for topic in CONSUMED:
            handler = handlers[topic]
            group = f"billing.{topic}"
            self.consumers.append(
                ResilientConsumer(
                    ctx.bus.subscribe(topic, group=group),
                    handler,
                    name=group,
                    dead_letters=ctx.store.dead_letters,
                    inbox=Inbox(ctx.store.inbox, consumer=group),
                    retry=redelivery(),
                    clock=ctx.clock,
                )
            )

    # -- database -------------------------------------------------------------------------

    async def database(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one transaction on a fresh connection, in a worker thread."""

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

    @staticmethod
    def _row(connection: sqlite3.Connection, org_id: str) -> tuple[Any, ...] | None:
        row = connection.execute(
            "SELECT plan, status, grace_until, version FROM subscriptions WHERE org_id = ?",
            (org_id,),
        ).fetchone()
        return None if row is None else tuple(row)

    def _publish(
        self, connection: sqlite3.Connection, org_id: str, **headers: str
    ) -> dict[str, Any]:
        """Put the org's current entitlements in the outbox, in ``connection``'s transaction."""
        entitlements = entitlements_of(org_id, self._row(connection, org_id))
        self.outbox.add(
            connection,
            Event(
                type="billing.entitlements_changed",
                key=f"org:{org_id}",
                payload=entitlements,
                headers=headers,
            ),
        )
        return entitlements

    def _change(
        self, connection: sqlite3.Connection, org_id: str, plan: str, status: str,
        grace_until: float | None,
    ) -> dict[str, Any]:  # fmt: skip
        now = self.ctx.clock.monotonic()
        connection.execute(
            "INSERT INTO subscriptions (org_id, plan, status, grace_until, version, changed_at) "
            "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (org_id) DO UPDATE SET plan = excluded.plan, "
            "status = excluded.status, grace_until = excluded.grace_until, "
            "version = subscriptions.version + 1, changed_at = excluded.changed_at",
            (org_id, plan, status, grace_until, now),
        )
        return self._publish(connection, org_id)

    # -- routes ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/orgs/{org_id}/entitlements", self.get_entitlements, methods=["GET"]),
            Route("/orgs/{org_id}/subscription", self.subscribe, methods=["POST"]),
            Route("/orgs/{org_id}/cancel", self.cancel, methods=["POST"]),
            Route("/orgs/{org_id}/usage", self.report_usage, methods=["POST"]),
            Route("/admin/sync", self.admin_sync, methods=["POST"]),
        ]

    def readiness(self) -> list[HealthCheck]:
        # Usage events waiting to be recorded: many means Billing is behind (degraded).
        bus = self.ctx.bus
        return [
            lag_check(
                lambda: sum(bus.backlog(topic, f"billing.{topic}") for topic in CONSUMED),
                degraded_above=200,
            )
        ]

    async def get_entitlements(self, request: Request) -> Response:
        org_id = request.path_params["org_id"]
        row = await self.database(lambda c: self._row(c, org_id))
        return JSONResponse(entitlements_of(org_id, row))

    async def subscribe(self, request: Request) -> Response:
        org_id = request.path_params["org_id"]
        plan = str((await request.json()).get("plan", ""))
        if plan not in PLANS:
            return JSONResponse({"error": f"plan must be one of {sorted(PLANS)}"}, status_code=422)

        def change(connection: sqlite3.Connection) -> dict[str, Any] | None:
            row = self._row(connection, org_id)
            if row is not None and row[0] == plan and row[1] == "active":
                return None  # a retried request: no new version
            return self._change(connection, org_id, plan, "active", None)

        changed = await self.database(change)
        if changed is None:
            return JSONResponse(entitlements_of(org_id, await self._current(org_id)))
        return JSONResponse(changed, status_code=201)

    async def _current(self, org_id: str) -> tuple[Any, ...] | None:
        return await self.database(lambda c: self._row(c, org_id))

    async def cancel(self, request: Request) -> Response:
        org_id = request.path_params["org_id"]
        grace_until = self.ctx.clock.monotonic() + self.grace_period

        def cancel(connection: sqlite3.Connection) -> dict[str, Any] | None:
            row = self._row(connection, org_id)
            if row is None or row[0] == "free" or row[1] == "cancelled":
                return None  # nothing to cancel, or cancelled already: idempotent
            if self.grace_period <= 0:  # no grace: the free plan's hard limits at once
                entitlements = self._change(connection, org_id, "free", "active", None)
            else:
                entitlements = self._change(connection, org_id, row[0], "cancelled", grace_until)
            self.outbox.add(
                connection,
                Event(
                    type="billing.subscription_cancelled",
                    key=f"org:{org_id}",
                    payload={"org_id": org_id, "grace_until": grace_until},
                ),
            )
            return entitlements

        cancelled = await self.database(cancel)
        self.ctx.sink.record("cancel", f"billing:{org_id}", self.ctx.service)
        if cancelled is None:
            return JSONResponse({"org_id": org_id, "status": "cancelled", "changed": False})
        return JSONResponse(
            {**cancelled, "status": "cancelled", "changed": True,
             "grace_until": cancelled["grace_until"]}
        )  # fmt: skip

    async def record_usage(
        self, org_id: str, resource_id: str, created_by: str | None, over_limit: bool
    ) -> bool:
        """Record one resource's usage once; ``False`` if it was recorded already."""

        def insert(connection: sqlite3.Connection) -> bool:
            return bool(
                connection.execute(
                    "INSERT OR IGNORE INTO usage (org_id, resource_id, created_by, over_limit, "
                    "recorded_at) VALUES (?, ?, ?, ?, ?)",
                    (org_id, resource_id, created_by, int(over_limit), self.ctx.clock.monotonic()),
                ).rowcount
            )

        recorded: bool = await self.db_fault.acall(lambda: self.database(insert))
        return recorded

    async def report_usage(self, request: Request) -> Response:
        org_id = request.path_params["org_id"]
        body = await request.json()
        try:
            added = await self.record_usage(
                org_id,
                str(body["resource_id"]),
                body.get("created_by"),
                bool(body.get("over_limit", False)),
            )
        except sqlite3.OperationalError:
            return JSONResponse({"error": "try later"}, status_code=503)
        return JSONResponse({"recorded": added}, status_code=201 if added else 200)

    async def sync(self, org_id: str | None = None) -> int:
        """Re-publish the current entitlements of every org (or one); how many."""

        def republish(connection: sqlite3.Connection) -> int:
            orgs = [
                str(row[0])
                for row in connection.execute(
                    "SELECT org_id FROM subscriptions WHERE ? IS NULL OR org_id = ? "
                    "ORDER BY org_id",
                    (org_id, org_id),
                )
            ]
            for org in orgs:
                self._publish(connection, org, sync="1")
            return len(orgs)

        return await self.database(republish)

    async def admin_sync(self, request: Request) -> Response:
        if request.headers.get("x-user-id") not in self.operators:
            return JSONResponse({"error": "operators only"}, status_code=403)
        body = await request.json() if await request.body() else {}
        count = await self.sync(body.get("org_id"))
        self.ctx.observe("manual entitlement sync")
        return JSONResponse({"republished": count})

    # -- consumers ------------------------------------------------------------------------

    async def on_usage(self, event: Event) -> None:
        if event.type != "workflow.resource_created":
            return
        payload = event.payload
        await self.record_usage(
            str(payload["org_id"]),
            str(payload["resource_id"]),
            payload.get("created_by"),
            bool(payload.get("over_limit", False)),
        )

    async def on_org(self, event: Event) -> None:
        if event.type != "organization.org_purged":
            return
        org_id = str(event.payload["org_id"])

        def purge(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM subscriptions WHERE org_id = ?", (org_id,))
            connection.execute("DELETE FROM usage WHERE org_id = ?", (org_id,))

        await self.database(purge)

    # -- periodic jobs --------------------------------------------------------------------

    async def end_graces(self) -> int:
        """Move every org whose grace period is over to the free plan (hard limits)."""
        now = self.ctx.clock.monotonic()

        def end(connection: sqlite3.Connection) -> int:
            due = connection.execute(
                "SELECT org_id FROM subscriptions WHERE status = 'cancelled' AND grace_until <= ?",
                (now,),
            ).fetchall()
            for (org_id,) in due:
                self._change(connection, str(org_id), "free", "active", None)
            return len(due)

        ended = await self.database(end)
        if ended:
            self.ctx.observe("grace period over: free plan's limits enforced")
        return ended

    async def grace_loop(self) -> None:
        while True:
            await self.ctx.clock.asleep(10.0)
            await self.end_graces()

    async def sync_loop(self) -> None:
        assert self.sync_interval is not None
        while True:
            await self.ctx.clock.asleep(self.sync_interval)
            if await self.sync():
                self.ctx.observe("periodic entitlement sync")

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self.grace_loop)
            if self.sync_interval is not None:
                group.start_soon(self.sync_loop)
            await group.start(super().run)
            task_status.started()
