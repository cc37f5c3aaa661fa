"""The base of every service: an ASGI app with health routes, metrics and consumers.

A service subclasses `Service`, builds its policies in ``__init__`` from its
`ServiceContext` (clock, mitigations, database, bus, HTTP client, base URLs), returns
its routes from `routes`, and appends its `ResilientConsumer`s to ``self.consumers``.
The `System` creates one instance per replica and runs the consumers; the relay of the
service's outbox is run once per service by the `System`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import anyio
import httpx
from opentelemetry import metrics
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from resilience_kit import CircuitBreaker
from resilience_kit.health import (
    HealthCheck,
    HealthChecks,
    HealthEndpoint,
    HealthStatus,
    breaker_check,
    outbox_check,
    store_check,
)
from resilience_kit.messaging import ResilientConsumer
from resilience_kit.stores.sqlite import SQLiteStore
from resilience_kit.testing import VirtualClock
from resilience_kit.transports import MemoryBus
from resilience_kit.typing import StateTransition

from .mitigations import Mitigations
from .records import SideEffectSink


@dataclass
class ServiceContext:
    """What the platform hands a service replica."""

    service: str  # the service's name: "identity"
    host: str  # this replica's host name: "identity-0"
    clock: VirtualClock
    mitigations: Mitigations
    store: SQLiteStore  # the service's own database (shared by its replicas)
    bus: MemoryBus
    http: httpx.AsyncClient  # leaves from `host`; over sockets, a plain AsyncClient
    urls: Mapping[str, str]  # base URL per service name: {"identity": "http://identity"}
    sink: SideEffectSink  # the outside world (mail server, ...): records effects
    observe: Callable[[str], None]  # report a mitigation seen acting ("breaker opened")
    rand: random.Random


class Service:
    """A service replica: routes, health, metrics and consumers on one `ServiceContext`."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.consumers: list[ResilientConsumer] = []
        self.meter = metrics.get_meter(f"reference_system.{ctx.service}")
        self._requests = self.meter.create_counter(
            "reference.http.requests", description="requests served, by route and status"
        )
        # What /health/ready reports (resilience_kit.health): the database answers, the
        # outbox drains; `watch` adds every breaker. A monitor polls it (System.monitor).
        self.checks: list[HealthCheck] = [
            store_check(ctx.store, name="database", timeout=2.0),
            outbox_check(
                ctx.store.outbox,
                backlog_degraded_above=500,
                age_degraded_above=60.0,
                age_unhealthy_above=600.0,
            ),
        ]

    # -- what subclasses provide ----------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """The service's own routes (health routes are added by the base)."""
        return []

    def readiness(self) -> list[HealthCheck]:
        """Checks of the service's own, beside the database, outbox and breaker checks."""
        return []

    def close(self) -> None:
        """Release what the replica holds (connections); called when the system stops."""

    # -- helpers for subclasses -----------------------------------------------------------

    def watch(self, breaker: CircuitBreaker, *, critical: bool = False) -> CircuitBreaker:
        """Report ``breaker``'s openings and closings as mitigations seen acting, and
        its state in /health/ready: open means DEGRADED (the service answers, degraded or
        failing fast), or UNHEALTHY when ``critical`` (it cannot do its job at all)."""

        def listener(change: StateTransition) -> None:
            self.ctx.observe(f"breaker {change.breaker} {change.to_state.value}")

        breaker.add_listener(listener)
        self.checks.append(
            breaker_check(
                breaker,
                open_status=HealthStatus.UNHEALTHY if critical else HealthStatus.DEGRADED,
                critical=critical,
            )
        )
        return breaker

    async def db(self, work: Callable[[], Any]) -> Any:
        """Run blocking database ``work`` in a worker thread."""
        return await anyio.to_thread.run_sync(work)

    # -- the app --------------------------------------------------------------------------

    @cached_property
    def app(self) -> Any:
        """The ASGI application of this replica, /health/live and /health/ready included."""
        health = HealthChecks(
            [*self.checks, *self.readiness()], name=self.ctx.host, clock=self.ctx.clock
        )
        endpoint = HealthEndpoint(health, Starlette(routes=self.routes()))
        return _Metered(endpoint, self._requests, self.ctx.host)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run this replica's consumers until cancelled."""
        async with anyio.create_task_group() as group:
            for consumer in self.consumers:
                await group.start(consumer.run)
            task_status.started()


class _Metered:
    """Counts every response by route and status (OpenTelemetry), around an ASGI app."""

    def __init__(self, app: Any, counter: Any, host: str) -> None:
        self._app = app
        self._counter = counter
        self._host = host

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self._counter.add(
                    1,
                    {"host": self._host, "path": scope["path"], "status": message["status"]},
                )
            await send(message)

        await self._app(scope, receive, counting_send)


Handler = Callable[[Request], Awaitable[Response]]
