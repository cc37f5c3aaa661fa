"""Health checks in action: a service's /health/live and /health/ready through an outage.

    python examples/health/service_health.py

An "organization" service with its own database (SQLite), an outbox, a breaker around
the billing service and a consumer. Its readiness is probed as a load balancer would,
through the pure-ASGI `HealthEndpoint` wrapping the service's own application, while
things go wrong: billing fails (the breaker opens: degraded, still serving), the relay
stops (the outbox backlog ages: degraded), the database is gone (unhealthy: 503), and
finally the server shuts down (readiness fails so that the instance drains).

Time is a VirtualClock: timeouts and ages pass without waiting.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio

from resilience_kit import CircuitBreaker
from resilience_kit.health import (
    HealthChecks,
    HealthEndpoint,
    breaker_check,
    lag_check,
    outbox_check,
    store_check,
)
from resilience_kit.messaging import Event, Outbox
from resilience_kit.stores.sqlite import SQLiteStore
from resilience_kit.testing import VirtualClock
from resilience_kit.transports import MemoryBus


async def orgs_app(scope: Any, receive: Any, send: Any) -> None:
    """The service's own API (a stand-in)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"orgs": []}'})


async def probe(app: Any, path: str) -> tuple[int, dict[str, Any]]:
    """One GET, as a load balancer's probe sends it."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


def show(step: str, status: int, body: dict[str, Any]) -> None:
    print(f"== {step}")
    print(f"  /health/ready -> {status} {body['status']}")
    for name, check in body.get("checks", {}).items():
        if check["status"] != "healthy":
            print(f"    {name}: {check['status']} ({check['detail']})")


async def main(directory: str) -> None:
    clock = VirtualClock()
    store = SQLiteStore(Path(directory) / "orgs.db")
    store.migrate()
    outbox = Outbox(store.outbox, topic="orgs")
    billing = CircuitBreaker(
        "billing", window=4, minimum_calls=4, open_for=30.0, half_open_calls=1, clock=clock
    )
    bus = MemoryBus()
    bus.subscribe("orgs", group="analytics")

    health = HealthChecks(
        [
            store_check(store, name="db", timeout=2.0),
            breaker_check(billing),
            # SQLite ages rows on the database's own clock, so grade the backlog here.
            outbox_check(store.outbox, backlog_degraded_above=0, age_unhealthy_above=3600),
            lag_check(lambda: bus.backlog("orgs", "analytics"), degraded_above=100),
        ],
        name="organization",
        clock=clock,
    )
    app = HealthEndpoint(health, orgs_app)

    status, body = await probe(app, "/health/live")
    print(f"== the process is up: /health/live -> {status} {body}")
    show("all is well", *await probe(app, "/health/ready"))
    status, _ = await probe(app, "/orgs")
    print(f"  (the API itself still answers: /orgs -> {status})")

    def billing_down() -> None:
        raise ConnectionError("billing unreachable")

    for _ in range(4):
        try:
            billing.call(billing_down)
        except ConnectionError:
            pass
    show(
        "billing fails: its breaker opens (not critical: still serving)",
        *await probe(app, "/health/ready"),
    )

    connection = store.connect()
    with connection:
        outbox.add(connection, Event(type="org.created", key="org:1", payload={"name": "acme"}))
    connection.close()
    # No relay runs: the event waits in the outbox.
    show("the relay is stopped: an event waits", *await probe(app, "/health/ready"))

    store.close()  # the database is gone
    show("the database is gone: take this instance out", *await probe(app, "/health/ready"))

    app.shut_down()
    status, body = await probe(app, "/health/ready")
    print(f"== shutting down: /health/ready -> {status} {body}")
    await bus.aclose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        anyio.run(main, directory)
