"""Analytics: a read model folded from every service's events, kept honest and rebuildable.

It consumes the topics of Identity, Organization, Billing and Workflow and keeps:

- a **read model**, a `resilience_kit.messaging.Projection` on ``ctx.store.projections``:
  one row per org (members, admins, plan, resources created, over-limit ones), one per
  day (events, sign-ups, resources) and ``totals``, in versions;
- its **event log** (``keep_log=True``): every event it received, in arrival order,
  appended in the very transaction that folds the event into the model — the source a
  version is rebuilt from (the bus forgets a message once every group acknowledged it,
  so Analytics keeps its own history).

One transaction per event also makes handling idempotent: the projection records the
ids of the events each version applied, so a redelivered event changes nothing — the
job an `Inbox` does, done in the same transaction as the effect; the consumers need
no separate inbox (and spare two database round trips per event).

Its mitigations, each switchable by ``--without-mitigation``:

- **parallel-consumers**: each topic's `ResilientConsumer` runs ``LANES`` lanes, spread
  by a hash of the event key: different orgs are handled in parallel, one org's events
  stay in order (the per-key guarantee of ResilientConsumer's lanes); off, one lane;
- **lag-monitoring**: the lag — events the group has not acknowledged, and the age of
  the oldest event in hand — is an OpenTelemetry gauge and two ``lag_check``s in
  /health/ready (DEGRADED above ``LAG_DEGRADED`` events or ``AGE_DEGRADED`` s);
- **validation**: every ``validate_every`` seconds the model is checked — invariants (a
  member count is its member list's length; org resources add up to the totals; day
  counts add up to the totals) and a random sample of rows against a fold of the event
  log. A failure marks answers ``x-degraded``, /health/ready DEGRADED, and starts a
  rebuild;
- **versioned-rebuild**: the rebuild replays the log into a new version while the old
  one answers, and switches in one step; off, it clears the model and replays into it
  in place, so readers see a partial model meanwhile.

Routes: ``GET /orgs/{org_id}/stats``, ``GET /stats/totals``, ``GET /admin/read-model``
(version, rows, last validation), ``GET /admin/read-model/rows`` (the active version),
``POST /admin/validate``, ``POST /admin/rebuild``, and the health routes.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from datetime import timezone
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from opentelemetry.metrics import MeterProvider, Observation
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from resilience_kit import Backoff, RetryPolicy
from resilience_kit.health import HealthCheck, lag_check, threshold_check
from resilience_kit.messaging import (
    Event,
    Projection,
    ResilientConsumer,
    ValidationReport,
)

from .core.service import Service, ServiceContext

TOPICS = ("identity", "organization", "billing", "workflow")
LANES = 8
LAG_DEGRADED = 25  # events not yet acknowledged
AGE_DEGRADED = 30.0  # seconds: the oldest event in hand
SAMPLE = 12  # rows compared with the event log per validation
REBUILD_BATCH = 20  # events replayed between two pauses ...
REBUILD_PAUSE = 1.0  # ... so a rebuild leaves the database to the live work


# -- the read model: which rows an event touches, and what they become ---------------------


def day_of(event: Event) -> str:
    return f"day:{event.occurred_at.astimezone(timezone.utc).date().isoformat()}"


def org_of(event: Event) -> str | None:
    org_id = event.payload.get("org_id")
    return None if org_id is None else f"org:{org_id}"


def keys_of(event: Event) -> list[str]:
    org = org_of(event)
    return [*([org] if org else []), day_of(event), "totals"]


def empty_org(org_id: str) -> dict[str, Any]:
    return {
        "org_id": org_id,
        "name": None,
        "members": [],
        "admins": [],
        "member_count": 0,
        "plan": None,
        "plan_version": 0,
        "resource_limit": None,
        "resources": 0,
        "over_limit": 0,
        "deleted": False,
    }


def fold(event: Event, rows: Mapping[str, Any]) -> dict[str, Any]:
    """The new rows after ``event`` (the Projection's ``apply``)."""
    payload = event.payload
    day_key = day_of(event)
    changes: dict[str, Any] = {}
    totals = dict(rows.get("totals") or {"events": 0, "signups": 0, "orgs": 0, "resources": 0})
    day = dict(rows.get(day_key) or {"events": 0, "signups": 0, "resources": 0})
    totals["events"] += 1
    day["events"] += 1
    org_key = org_of(event)
    org = dict(rows.get(org_key) or empty_org(str(payload["org_id"]))) if org_key else None
    kind = event.type
    if kind == "identity.user_signed_up":
        totals["signups"] += 1
        day["signups"] += 1
    elif org is not None:
        members, admins = set(org["members"]), set(org["admins"])
        if kind == "organization.org_created":
            org["name"] = payload.get("name")
            members.add(str(payload["owner_id"]))
            admins.add(str(payload["owner_id"]))
            totals["orgs"] += 1
        elif kind == "organization.member_added":
            members.add(str(payload["user_id"]))
            (admins.add if payload.get("role") == "admin" else admins.discard)(
                str(payload["user_id"])
            )
        elif kind == "organization.member_removed":
            members.discard(str(payload["user_id"]))
            admins.discard(str(payload["user_id"]))
        elif kind == "organization.org_deleted":
            org["deleted"] = True
        elif kind == "billing.entitlements_changed" and payload["version"] > org["plan_version"]:
            org["plan"] = payload["plan"]
            org["plan_version"] = payload["version"]
            org["resource_limit"] = payload["limits"]["resources"]
        elif kind == "billing.subscription_cancelled":
            org["plan"] = "cancelled"
        elif kind == "workflow.resource_created":
            org["resources"] += 1
            org["over_limit"] += bool(payload.get("over_limit"))
            totals["resources"] += 1
            day["resources"] += 1
        org["members"], org["admins"] = sorted(members), sorted(admins)
        org["member_count"] = len(members)
        if kind == "organization.org_purged":
            # Its data goes; the totals keep adding up to what is left.
            totals["orgs"] -= 1
            totals["resources"] -= org["resources"]
            org = None
        changes[str(org_key)] = org
    changes[day_key], changes["totals"] = day, totals
    return changes


def invariants(rows: Mapping[str, Any]) -> Iterable[str]:
    """What must hold in any version of the model, whatever the events were."""
    orgs = {key: row for key, row in rows.items() if key.startswith("org:")}
    days = [row for key, row in rows.items() if key.startswith("day:")]
    totals = rows.get("totals") or {"events": 0, "resources": 0}
    for key, org in orgs.items():
        if org["member_count"] != len(org["members"]):
            yield f"{key}: member_count {org['member_count']} but {len(org['members'])} members"
        if not 0 <= org["over_limit"] <= org["resources"]:
            yield f"{key}: {org['over_limit']} over limit of {org['resources']} resources"
        if not set(org["admins"]) <= set(org["members"]):
            yield f"{key}: admins who are not members"
    if sum(org["resources"] for org in orgs.values()) != totals["resources"]:
        yield "org resources do not add up to the totals"
    if sum(day["events"] for day in days) != totals["events"]:
        yield "day counts do not add up to the totals"


# -- the service --------------------------------------------------------------------------


class Analytics(Service):
    """One replica of the Analytics service."""

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        work_seconds: float = 0.0,
        lanes: int | None = None,
        validate_every: float = 30.0,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__(ctx)
        on = ctx.mitigations.on
        self.work_seconds = work_seconds  # per event: the warehouse write a drill slows down
        self.lanes = lanes if lanes is not None else (LANES if on("parallel-consumers") else 1)
        self.validate_every = validate_every
        self.monitor_lag = on("lag-monitoring")
        self.validating = on("validation")
        self.versioned = on("versioned-rebuild")
        self.projection = Projection(
            "analytics",
            store=ctx.store.projections,
            keys=keys_of,
            apply=fold,
            invariants=[lambda rows: list(invariants(rows))],
            keep_log=True,
            clock=ctx.clock,
        )
        self.last_validation: ValidationReport | None = None
        self.suspect = False  # the active version failed validation: answers are degraded
        self._in_hand: dict[UUID, float] = {}  # events being handled: when they occurred
        self._tasks: anyio.abc.TaskGroup | None = None
        for topic in TOPICS:
            name = f"{ctx.service}.{topic}"
            self.consumers.append(
                ResilientConsumer(
                    ctx.bus.subscribe(topic, group=ctx.service, consumer=f"{ctx.host}.{topic}"),
                    self.handle,
                    name=name,
                    dead_letters=ctx.store.dead_letters,
                    inbox=None,  # the projection's applied ids de-duplicate (see above)
                    # A failing write (a locked database) is retried a few times before
                    # the event is dead-lettered: nothing is lost, nothing blocks.
                    retry=RetryPolicy(
                        attempts=3,
                        backoff=Backoff.exponential(initial=0.1, maximum=1.0, jitter="full"),
                        clock=ctx.clock,
                        rand=ctx.rand.random,
                        name=f"{name}.retry",
                    ),
                    concurrency=self.lanes,
                    clock=ctx.clock,
                )
            )
        if self.monitor_lag:
            meter = (
                meter_provider.get_meter("reference_system.analytics")
                if meter_provider is not None
                else self.meter
            )
            # Callbacks hold the service weakly: a meter provider outlives the service.
            this = weakref.ref(self)
            meter.create_observable_gauge(
                "analytics.consumer.lag",
                callbacks=[lambda _: _observe(this, "backlog")],
                unit="{event}",
                description="events of Analytics' topics not yet acknowledged by its group",
            )
            meter.create_observable_gauge(
                "analytics.consumer.lag_age",
                callbacks=[lambda _: _observe(this, "oldest_age")],
                unit="s",
                description="age of the oldest event Analytics has in hand",
            )

    # -- consuming ------------------------------------------------------------------------

    async def handle(self, event: Event) -> None:
        """Fold the event into the read model and its log (once, by event id)."""
        self._in_hand[event.id] = event.occurred_at.timestamp()
        try:
            if self.work_seconds:
                await self.ctx.clock.asleep(self.work_seconds)
            if not await self.projection.handle(event):
                return  # a redelivery: already folded
            self.ctx.sink.record(
                "handled",
                str(event.id),
                self.ctx.host,
                event_key=f"{event.type.split('.', 1)[0]}/{event.key}",
                seq=event.payload.get("seq"),
            )
        finally:
            self._in_hand.pop(event.id, None)

    # -- lag ------------------------------------------------------------------------------

    def backlog(self) -> int:
        """Events of our topics the group has not acknowledged (the transport's lag)."""
        return sum(self.ctx.bus.backlog(topic, self.ctx.service) for topic in TOPICS)

    def oldest_age(self) -> float:
        """Seconds since the oldest event in hand occurred (0 when idle)."""
        if not self._in_hand:
            return 0.0
        return max(0.0, self.ctx.clock.time() - min(self._in_hand.values()))

    def readiness(self) -> list[HealthCheck]:
        checks = [
            threshold_check(
                "read_model", lambda: int(self.suspect), degraded_above=0, unit=" failed"
            )
        ]
        if self.monitor_lag:
            checks += [
                lag_check(self.backlog, degraded_above=LAG_DEGRADED),
                lag_check(
                    self.oldest_age, name="consumer_lag_age", degraded_above=AGE_DEGRADED, unit="s"
                ),
            ]
        return checks

    # -- validation and rebuild -----------------------------------------------------------

    async def validate(self) -> ValidationReport:
        """Check the active version: invariants, and a sample against the event log."""
        report = await self.projection.validate(
            events=self.projection.log(), sample=SAMPLE, rand=self.ctx.rand
        )
        self.last_validation = report
        if not report.ok and not self.suspect:
            self.suspect = True
            self.ctx.observe(
                f"validation: read model v{report.version} failed ({len(report.problems)} problems)"
            )
        return report

    async def rebuild(self) -> None:
        """Fold the event log again: into a new version beside the serving one, or in place."""
        if self.projection.rebuilding:
            return
        how = "versioned" if self.versioned else "in place"
        self.ctx.observe(f"rebuild {how} from v{self.projection.version} started")
        report = await self.projection.rebuild(
            self.projection.log(),
            batch=REBUILD_BATCH,
            pause=REBUILD_PAUSE,
            in_place=not self.versioned,
        )
        if report.switched:
            self.suspect = False
            self.ctx.observe(f"rebuild switched to v{report.new_version}")

    async def _validator(self) -> None:
        while True:
            await self.ctx.clock.asleep(self.validate_every)
            if self.projection.rebuilding:
                continue
            if not (await self.validate()).ok:
                await self.rebuild()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as group:
            self._tasks = group
            await group.start(super().run)
            if self.validating:
                group.start_soon(self._validator)
            task_status.started()

    # -- routes ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/orgs/{org_id}/stats", self.org_stats),
            Route("/stats/totals", self.totals),
            Route("/admin/read-model", self.status),
            Route("/admin/read-model/rows", self.all_rows),
            Route("/admin/validate", self.validate_now, methods=["POST"]),
            Route("/admin/rebuild", self.rebuild_now, methods=["POST"]),
        ]

    def _answer(self, body: Any, status: int = 200) -> Response:
        headers = {"x-read-model-version": str(self.projection.version)}
        if self.suspect:  # served from a version known to be wrong somewhere: say so
            headers["x-degraded"] = "read-model-failed-validation"
        return JSONResponse(body, status_code=status, headers=headers)

    async def org_stats(self, request: Request) -> Response:
        row = await self.projection.get(f"org:{request.path_params['org_id']}")
        if row is None:
            return self._answer({"error": "unknown_org"}, 404)
        return self._answer({**row, "version": self.projection.version})

    async def totals(self, request: Request) -> Response:
        return self._answer(await self.projection.get("totals", {}))

    async def status(self, request: Request) -> Response:
        report = self.last_validation
        return self._answer(
            {
                "version": self.projection.version,
                "rebuilding": self.projection.rebuilding,
                "backlog": self.backlog(),
                "last_validation": None
                if report is None
                else {"version": report.version, "problems": list(report.problems)},
            }
        )

    async def all_rows(self, request: Request) -> Response:
        return self._answer(await self.projection.rows())

    async def validate_now(self, request: Request) -> Response:
        report = await self.validate()
        return self._answer({"ok": report.ok, "problems": list(report.problems)})

    async def rebuild_now(self, request: Request) -> Response:
        if self._tasks is None or self.projection.rebuilding:
            return JSONResponse({"error": "rebuild_running"}, status_code=409)
        self._tasks.start_soon(self.rebuild)
        return JSONResponse({"started": True}, status_code=202)


def _observe(service: weakref.ref[Analytics], reading: str) -> Iterable[Observation]:
    found = service()
    if found is None:
        return []
    return [Observation(getattr(found, reading)(), {"service": found.ctx.service})]
