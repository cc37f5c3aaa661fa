"""Workflow: resources of an org, created only by its members and within its entitlements.

``POST /orgs/{org_id}/resources {resource_id, user_id}`` answers 201 (maybe with
warnings), 403 (not a member, or the limit is reached) or 503 with Retry-After (the
membership cannot be checked). Two `PolicyCache`s decide, with opposite policies:

- **Memberships fail closed** (``(org, user) -> role``, 15-minute ttl): a miss while
  Organization cannot answer is refused (503), never allowed. An
  ``organization.member_removed`` event invalidates the membership *at once* (and
  ``org_deleted`` every membership): the cache's epochs make sure a lookup that was
  already loading the old answer cannot put it back.
- **Entitlements fail open** (``org -> {plan, limits, version, grace_until}``, 1-hour
  ttl): while Billing is down the last known good entitlements are enforced and the
  response carries a warning (``x-degraded``); for an org never loaded, the creation is
  allowed *unverified* with a warning, and checked afterwards. Every
  ``billing.entitlements_changed`` event with a newer version is put in the cache at
  once (Billing's periodic sync re-publishes them, which bounds how long a lost event
  leaves the cache stale).
- **Post-creation validation**: every ``validate_interval`` seconds, the orgs with new
  resources are re-checked against *fresh* entitlements (asked from Billing, not the
  cache): every resource beyond the limit is flagged (``flagged`` in the database, and
  an ``overage_flagged`` effect), so an overage let through by stale entitlements is
  never silent.
- **Soft limits in a grace period**: while a cancelled subscription's ``grace_until``
  is ahead, a creation over the limits is allowed with a warning (and flagged); after
  it, the limit is hard (403), even before Billing's next event arrives.
- **Usage**: each resource commits with its ``workflow.resource_created {org_id,
  resource_id, created_by, over_limit}`` event in the outbox; Billing records usage
  from it, so no usage is lost while Billing is down.

Creations of one org are serialised (a lock per org), so two concurrent requests cannot
both take the last unit of a limit. ``organization.org_purged`` deletes the org's rows.

Calls to Organization and Billing each go through ``Pipeline(Timeout, RetryPolicy,
CircuitBreaker)``: the Timeout bounds what a creation waits for an answer, the retry
absorbs a blip (these are reads: repeating one is harmless), the breaker stops a down
service from costing every request its attempts — and spares the service while it
recovers (the cache's policy then decides, without any call).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from resilience_kit import Backoff, CircuitBreaker, Pipeline, RetryPolicy, Timeout
from resilience_kit.caching import (
    CacheLoadError,
    CachePolicy,
    FailClosed,
    FailOpen,
    FallbackEvent,
    PolicyCache,
    Served,
)
from resilience_kit.health import HealthCheck, lag_check, threshold_check
from resilience_kit.messaging import Event, Inbox, Outbox, ResilientConsumer

from .core.service import Service, ServiceContext

T = TypeVar("T")

TOPIC = "workflow"
MEMBERSHIP_TTL = 15 * 60.0
ENTITLEMENTS_TTL = 3600.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    org_id TEXT NOT NULL, resource_id TEXT NOT NULL, created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    over_limit INTEGER NOT NULL,        -- known over the limit when created
    flagged INTEGER NOT NULL DEFAULT 0, -- over the limit: flagged for the org's admins
    validated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, resource_id)
);
CREATE INDEX IF NOT EXISTS resources_pending ON resources (validated, org_id);
"""


class Unavailable(Exception):
    """The dependency answered 5xx: as good as down, for a retry and a breaker."""


class Workflow(Service):
    """One replica of the Workflow service.

    Args:
        ctx: the platform's context.
        validate_interval: seconds between two post-creation validations.
    """

    def __init__(self, ctx: ServiceContext, *, validate_interval: float = 60.0) -> None:
        super().__init__(ctx)
        clock, on = ctx.clock, ctx.mitigations.on
        self.outbox = Outbox(ctx.store.outbox, topic=TOPIC)
        self.validate_interval = validate_interval if on("post-validation") else None
        self.invalidation = on("invalidation")
        self.usage_events = on("usage-outbox")
        self._schema_ready = False
        self._locks: dict[str, anyio.Lock] = defaultdict(anyio.Lock)
        self._versions: dict[str, int] = {}  # newest entitlements version seen per org

        def pipeline(service: str, breaker: CircuitBreaker) -> Pipeline:
            if not on("breaker"):
                breaker.disable()
            return Pipeline(
                Timeout(2.0, clock=clock, name=f"workflow.{service}.deadline"),
                RetryPolicy(
                    attempts=2 if on("retries") else 1,
                    on=(httpx.TransportError, Unavailable),
                    backoff=Backoff.exponential(initial=0.2, maximum=1.0, jitter="full"),
                    clock=clock,
                    rand=ctx.rand.random,
                    name=f"workflow.{service}.retry",
                ),
                breaker,
            )

        def breaker(service: str) -> CircuitBreaker:
            return self.watch(
                CircuitBreaker(
                    f"workflow.{service}",
                    window=10,
                    minimum_calls=3,
                    failure_rate_threshold=0.5,
                    open_for=30.0,
                    half_open_calls=1,
                    record_on=(httpx.TransportError, TimeoutError, Unavailable),
                    clock=clock,
                )
            )

        self.organization_breaker = breaker("organization")
        self.organization_calls = pipeline("organization", self.organization_breaker)
        self.billing_breaker = breaker("billing")
        self.billing_calls = pipeline("billing", self.billing_breaker)

        # Memberships: a security decision, so a miss that cannot be checked is refused.
        membership_policy: CachePolicy[str | None] = (
            FailClosed()
            if on("membership-fail-closed")
            else FailOpen("member", on_fallback=self._fell_back)
        )
        self.memberships: PolicyCache[tuple[str, str], str | None] = PolicyCache(
            self._load_membership,
            ttl=MEMBERSHIP_TTL,
            policy=membership_policy,
            clock=clock,
            name="workflow.memberships",
        )
        # Entitlements: availability first. Last known good after a failed refresh
        # (``max_stale=0`` drops it: the default instead); the "unverified" default for
        # an org never loaded, checked afterwards by the post-creation validation.
        entitlements_policy: CachePolicy[dict[str, Any]]
        last_known_good = None if on("last-known-good") else 0.0
        if on("fail-open"):
            entitlements_policy = FailOpen(
                default_factory=self._unverified,
                max_stale=last_known_good,
                on_fallback=self._fell_back,
            )
        elif on("last-known-good"):
            entitlements_policy = FailOpen(on_fallback=self._fell_back)
        else:
            entitlements_policy = FailClosed()
        self.entitlements: PolicyCache[str, dict[str, Any]] = PolicyCache(
            self._load_entitlements,
            ttl=ENTITLEMENTS_TTL,
            policy=entitlements_policy,
            clock=clock,
            name="workflow.entitlements",
        )

        # One consumer group per replica: every replica's caches hear every event.
        for topic, handler in (("billing", self.on_billing), ("organization", self.on_org)):
            group = f"workflow.{topic}.{ctx.host}"
            self.consumers.append(
                ResilientConsumer(
                    ctx.bus.subscribe(topic, group=group),
                    handler,
                    name=group,
                    dead_letters=ctx.store.dead_letters,
                    inbox=Inbox(ctx.store.inbox, consumer=group),
                    retry=RetryPolicy(
                        attempts=5,
                        backoff=Backoff.exponential(initial=1.0, maximum=10.0, jitter="full"),
                        clock=clock,
                        rand=ctx.rand.random,
                    ),
                    clock=clock,
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

    # -- the caches' loaders --------------------------------------------------------------

    def _fell_back(self, event: FallbackEvent) -> None:
        self.ctx.observe(f"{event.cache}: fail-open ({event.served.value})")

    @staticmethod
    def _unverified(org_id: object) -> dict[str, Any]:
        return {"org_id": org_id, "plan": None, "limits": {}, "version": -1, "grace_until": None}

    async def _get(self, calls: Pipeline, url: str) -> httpx.Response:
        async def get() -> httpx.Response:
            response = await self.ctx.http.get(url)
            if response.status_code >= 500:
                raise Unavailable(f"{url} answered {response.status_code}")
            return response

        response: httpx.Response = await calls.acall(get)
        return response

    async def _load_membership(self, key: tuple[str, str]) -> str | None:
        org_id, user_id = key
        url = f"{self.ctx.urls['organization']}/orgs/{org_id}/members/{user_id}"
        response = await self._get(self.organization_calls, url)
        if response.status_code == 404:
            return None  # not a member: answered, not cached (a negative result)
        response.raise_for_status()
        return str(response.json()["role"])

    async def fetch_entitlements(self, org_id: str) -> dict[str, Any]:
        """Billing's current entitlements for ``org_id`` (no cache)."""
        url = f"{self.ctx.urls['billing']}/orgs/{org_id}/entitlements"
        response = await self._get(self.billing_calls, url)
        response.raise_for_status()
        entitlements: dict[str, Any] = response.json()
        return entitlements

    async def _load_entitlements(self, org_id: str) -> dict[str, Any]:
        entitlements = await self.fetch_entitlements(org_id)
        version = int(entitlements["version"])
        self._versions[org_id] = max(version, self._versions.get(org_id, -1))
        return entitlements

    # -- routes ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/orgs/{org_id}/resources", self.create, methods=["POST"]),
            Route("/orgs/{org_id}/resources", self.list_resources, methods=["GET"]),
        ]

    def readiness(self) -> list[HealthCheck]:
        bus, host = self.ctx.bus, self.ctx.host

        async def unvalidated() -> float:
            count: int = await self.database(
                lambda c: c.execute(
                    "SELECT count(*) FROM resources WHERE validated = 0"
                ).fetchone()[0]
            )
            return float(count)

        return [
            lag_check(
                lambda: sum(
                    bus.backlog(topic, f"workflow.{topic}.{host}")
                    for topic in ("billing", "organization")
                ),
                degraded_above=100,
            ),
            # Resources waiting for their post-creation check (Billing down for long).
            threshold_check(
                "unvalidated", unvalidated, degraded_above=500, unit=" resources", critical=False
            ),
        ]

    async def list_resources(self, request: Request) -> Response:
        org_id = request.path_params["org_id"]
        rows = await self.database(
            lambda c: c.execute(
                "SELECT resource_id, created_by, flagged FROM resources WHERE org_id = ? "
                "ORDER BY created_at, rowid",
                (org_id,),
            ).fetchall()
        )
        return JSONResponse(
            {
                "resources": [
                    {"resource_id": r[0], "created_by": r[1], "flagged": bool(r[2])} for r in rows
                ]
            }
        )

    async def create(self, request: Request) -> Response:
        org_id = request.path_params["org_id"]
        body = await request.json()
        user = request.headers.get("x-user-id") or str(body["user_id"])
        resource = str(body["resource_id"])
        try:
            role = await self.memberships.get((org_id, user))
        except CacheLoadError:
            return JSONResponse(
                {"error": "membership cannot be checked now"},
                status_code=503,
                headers={"retry-after": "10"},
            )
        if role is None:
            return JSONResponse({"error": "not a member"}, status_code=403)
        try:
            found = await self.entitlements.lookup(org_id)
        except CacheLoadError:
            return JSONResponse(
                {"error": "entitlements cannot be checked now"},
                status_code=503,
                headers={"retry-after": "10"},
            )
        entitlements = found.value
        warnings: list[str] = []
        if found.served is Served.DEFAULT:
            warnings.append("entitlements unverified (billing unavailable): checked later")
        elif found.served is Served.FALLBACK:
            warnings.append("entitlements may be out of date (billing unavailable)")
        async with self._locks[org_id]:
            outcome = await self._insert(org_id, resource, user, entitlements)
        if outcome == "limit":
            limit = entitlements["limits"].get("resources")
            return JSONResponse({"error": "limit_reached", "limit": limit}, status_code=403)
        if outcome == "exists":
            return JSONResponse({"resource_id": resource, "created": False})
        over = outcome == "over"
        self.ctx.sink.record("row", f"resource:{org_id}:{resource}", self.ctx.service, org=org_id)
        if over:
            warnings.append(
                f"over the limit of {entitlements['limits'].get('resources')} resources; "
                f"allowed until the grace period ends at {entitlements.get('grace_until')}"
            )
            self.ctx.sink.record("overage_flagged", f"{org_id}:{resource}", self.ctx.service)
        if not self.usage_events:
            await self._report_usage_directly(org_id, resource, user, over)
        headers = {"x-warning": "; ".join(warnings)} if warnings else {}
        if found.served in (Served.DEFAULT, Served.FALLBACK):
            headers["x-degraded"] = "entitlements"
        return JSONResponse(
            {"resource_id": resource, "over_limit": over, "warnings": warnings},
            status_code=201,
            headers=headers,
        )

    async def _insert(
        self, org_id: str, resource: str, user: str, entitlements: dict[str, Any]
    ) -> str:
        now = self.ctx.clock.monotonic()
        limit = entitlements["limits"].get("resources")
        grace_until = entitlements.get("grace_until")
        soft = grace_until is not None and now < float(grace_until)

        def insert(connection: sqlite3.Connection) -> str:
            if connection.execute(
                "SELECT 1 FROM resources WHERE org_id = ? AND resource_id = ?", (org_id, resource)
            ).fetchone():
                return "exists"  # a retried request: nothing twice
            count = connection.execute(
                "SELECT count(*) FROM resources WHERE org_id = ?", (org_id,)
            ).fetchone()[0]
            over = limit is not None and count >= int(limit)
            if over and not soft:
                return "limit"
            connection.execute(
                "INSERT INTO resources (org_id, resource_id, created_by, created_at, over_limit, "
                "flagged) VALUES (?, ?, ?, ?, ?, ?)",
                (org_id, resource, user, now, int(over), int(over)),
            )
            if self.usage_events:  # usage travels with the row: committed together
                payload = {
                    "org_id": org_id,
                    "resource_id": resource,
                    "created_by": user,
                    "over_limit": over,
                }
                self.outbox.add(
                    connection,
                    Event(type="workflow.resource_created", key=f"org:{org_id}", payload=payload),
                )
            return "over" if over else "created"

        return await self.database(insert)

    async def _report_usage_directly(
        self, org_id: str, resource: str, user: str, over: bool
    ) -> None:
        """Without the outbox: one POST to Billing after the commit; lost if it fails."""
        try:
            response = await self.ctx.http.post(
                f"{self.ctx.urls['billing']}/orgs/{org_id}/usage",
                json={"resource_id": resource, "created_by": user, "over_limit": over},
            )
            lost = response.status_code >= 300
        except httpx.HTTPError:
            lost = True
        if lost:
            self.ctx.observe("usage report lost: billing could not take it")

    # -- consumers ------------------------------------------------------------------------

    async def on_billing(self, event: Event) -> None:
        if event.type != "billing.entitlements_changed":
            return
        org_id = str(event.payload["org_id"])
        version = int(event.payload["version"])
        if version < self._versions.get(org_id, -1):
            return  # older than what the cache holds (a late copy)
        self._versions[org_id] = version
        await self.entitlements.put(org_id, dict(event.payload))

    async def on_org(self, event: Event) -> None:
        org_id = str(event.payload["org_id"])
        if event.type == "organization.member_removed":
            if self.invalidation:
                await self.memberships.invalidate((org_id, str(event.payload["user_id"])))
                self.ctx.observe("membership invalidated on member_removed")
        elif event.type == "organization.org_deleted":
            if self.invalidation:
                await self.memberships.invalidate_all()
        elif event.type == "organization.org_purged":
            await self.database(
                lambda c: c.execute("DELETE FROM resources WHERE org_id = ?", (org_id,))
            )
            self.ctx.sink.record("purge", f"workflow:{org_id}", self.ctx.service)

    # -- post-creation validation ---------------------------------------------------------

    async def validate(self) -> int:
        """Flag every resource beyond its org's limit, for orgs with unvalidated resources,
        against fresh entitlements; how many were flagged."""
        orgs = await self.database(
            lambda c: [
                str(row[0])
                for row in c.execute("SELECT DISTINCT org_id FROM resources WHERE validated = 0")
            ]
        )
        flagged_total = 0
        for org_id in orgs:
            try:
                entitlements = await self.fetch_entitlements(org_id)
            except Exception:  # Billing unavailable: these stay pending, checked next round
                continue
            limit = int(entitlements["limits"]["resources"])

            def flag(
                connection: sqlite3.Connection, org_id: str = org_id, limit: int = limit
            ) -> list[str]:
                rows = connection.execute(
                    "SELECT resource_id, flagged FROM resources WHERE org_id = ? "
                    "ORDER BY created_at, rowid",
                    (org_id,),
                ).fetchall()
                flagged = [
                    str(rid) for rank, (rid, was) in enumerate(rows) if rank >= limit and not was
                ]
                connection.executemany(
                    "UPDATE resources SET flagged = 1 WHERE org_id = ? AND resource_id = ?",
                    [(org_id, rid) for rid in flagged],
                )
                connection.execute("UPDATE resources SET validated = 1 WHERE org_id = ?", (org_id,))
                return flagged

            for resource in await self.database(flag):
                self.ctx.sink.record("overage_flagged", f"{org_id}:{resource}", self.ctx.service)
                flagged_total += 1
        if flagged_total:
            self.ctx.observe("post-creation validation flagged overages")
        return flagged_total

    async def validate_loop(self) -> None:
        assert self.validate_interval is not None
        while True:
            await self.ctx.clock.asleep(self.validate_interval)
            await self.validate()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as group:
            if self.validate_interval is not None:
                group.start_soon(self.validate_loop)
            await group.start(super().run)
            task_status.started()
