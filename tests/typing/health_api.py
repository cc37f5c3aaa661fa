"""Type checks of `resilience_kit.health`: mypy runs this file; nothing here runs."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from typing_extensions import assert_type

from resilience_kit import CircuitBreaker
from resilience_kit.health import (
    CheckReport,
    CheckResult,
    HealthCheck,
    HealthChecks,
    HealthEndpoint,
    HealthReport,
    HealthStatus,
    breaker_check,
    lag_check,
    outbox_check,
    store_check,
    threshold_check,
)
from resilience_kit.stores.memory import MemoryStore

health = HealthChecks([HealthCheck("db", lambda: True)], name="billing")


@health.check(critical=False)
async def search() -> CheckResult:
    return CheckResult.degraded("slow", latency_ms=900)


@health.check()
def queue() -> HealthStatus:
    return HealthStatus.HEALTHY


# The decorator hands the probe back unchanged.
assert_type(search, Callable[[], Coroutine[Any, Any, CheckResult]])
assert_type(queue(), HealthStatus)


async def use() -> None:
    report = await health.run()
    assert_type(report, HealthReport)
    assert_type(report.status, HealthStatus)
    assert_type(report["db"], CheckReport)
    assert_type(report.to_dict(), dict[str, Any])
    assert_type(health.last_report, HealthReport | None)


store = MemoryStore()
checks = [
    breaker_check(CircuitBreaker("billing")),
    store_check(store),
    outbox_check(store.outbox, backlog_degraded_above=100),
    lag_check(lambda: 3, degraded_above=10),
    threshold_check("disk", lambda: 0.5, unhealthy_above=0.9),
]
assert_type(checks, list[HealthCheck])
endpoint = HealthEndpoint(health, prefix="/_health")
assert_type(endpoint.shutting_down, bool)
