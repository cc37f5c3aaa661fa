from __future__ import annotations

from collections.abc import Callable

import pytest

from resilience_kit import CircuitBreaker, ConfigurationError
from resilience_kit.health import (
    HealthCheck,
    HealthChecks,
    HealthStatus,
    breaker_check,
    lag_check,
    outbox_check,
    store_check,
    threshold_check,
)
from resilience_kit.messaging import Event, Outbox, OutboxStatus
from resilience_kit.stores.memory import MemoryStore
from resilience_kit.testing import VirtualClock
from resilience_kit.transports import MemoryBus

pytestmark = pytest.mark.anyio

HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
OLDEST = "the oldest unpublished row is"


async def verdict(check: HealthCheck) -> tuple[HealthStatus, str | None, HealthStatus]:
    """The check's own status and detail, and the whole's status."""
    report = await HealthChecks([check], clock=VirtualClock()).run()
    return report[check.name].status, report[check.name].detail, report.status


# -- threshold --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status"),
    [(0, HEALTHY), (10, HEALTHY), (10.5, DEGRADED), (100, DEGRADED), (101, UNHEALTHY)],
)
async def test_a_threshold_grades_strictly_above_each_limit(
    value: float, status: HealthStatus
) -> None:
    check = threshold_check("depth", lambda: value, degraded_above=10, unhealthy_above=100)
    assert (await verdict(check))[0] is status


async def test_a_threshold_reports_the_value_and_limits_and_says_which_was_crossed() -> None:
    check = threshold_check(
        "disk", lambda: 0.97, degraded_above=0.8, unhealthy_above=0.95, unit=" full"
    )
    report = await HealthChecks([check]).run()
    assert report["disk"].detail == "disk is 0.97 full, above 0.95 full"
    assert report["disk"].observed == {
        "value": 0.97,
        "degraded_above": 0.8,
        "unhealthy_above": 0.95,
    }


async def test_a_threshold_may_have_only_one_limit_and_an_async_reading() -> None:
    async def read() -> int:
        return 5

    only_unhealthy = threshold_check("a", read, unhealthy_above=4)
    only_degraded = threshold_check("b", lambda: 5, degraded_above=4)
    assert (await verdict(only_unhealthy))[0] is UNHEALTHY
    assert (await verdict(only_degraded))[0] is DEGRADED


@pytest.mark.parametrize(
    ("reading", "detail"),
    [
        (lambda: float("nan"), "x is not a number"),
        (lambda: "12", "TypeError: the reading returned str, not a number"),
        (lambda: True, "TypeError: the reading returned bool, not a number"),
    ],
)
async def test_a_reading_that_is_not_a_number_is_unhealthy(
    reading: Callable[[], object], detail: str
) -> None:
    check = threshold_check("x", reading, degraded_above=1)  # type: ignore[arg-type]
    status, said, _ = await verdict(check)
    assert status is UNHEALTHY
    assert said == detail


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({}, "degraded_above"),
        ({"degraded_above": "1"}, "degraded_above"),
        ({"degraded_above": True}, "degraded_above"),
        ({"unhealthy_above": float("inf")}, "unhealthy_above"),
        ({"degraded_above": 10, "unhealthy_above": 5}, "unhealthy_above"),
        ({"degraded_above": 1, "unit": 3}, "unit"),
        ({"degraded_above": 1, "name": ""}, "name"),
        ({"degraded_above": 1, "read": 3}, "read"),
        ({"degraded_above": 1, "timeout": -1}, "timeout"),
    ],
)
def test_a_misconfigured_threshold_fails_at_construction_naming_the_parameter(
    kwargs: dict[str, object], parameter: str
) -> None:
    arguments: dict[str, object] = {"name": "x", "read": lambda: 1, **kwargs}
    with pytest.raises(ConfigurationError) as caught:
        threshold_check(**arguments)  # type: ignore[arg-type]
    assert caught.value.parameter == parameter


# -- consumer lag -----------------------------------------------------------------------------


async def test_lag_on_the_memory_bus_is_the_groups_unacknowledged_backlog() -> None:
    bus = MemoryBus()
    subscription = bus.subscribe("orgs", group="mailer")
    check = lag_check(lambda: bus.backlog("orgs", "mailer"), degraded_above=1, unhealthy_above=2)
    assert (await verdict(check))[0] is HEALTHY
    for n in range(3):
        await bus.publish("orgs", Event(type="org.created", key=f"org:{n}", payload={}))
    status, detail, whole = await verdict(check)
    assert (status, whole) == (UNHEALTHY, DEGRADED)  # not critical by default
    assert detail == "consumer_lag is 3 messages, above 2 messages"
    async for delivery in subscription:
        await subscription.ack(delivery)
        if bus.backlog("orgs", "mailer") == 0:
            break
    assert (await verdict(check))[0] is HEALTHY
    await bus.aclose()


async def test_lag_may_be_measured_in_seconds() -> None:
    check = lag_check(lambda: 90.0, name="analytics_lag", degraded_above=60, unit="s")
    assert (await verdict(check))[1] == "analytics_lag is 90s, above 60s"


# -- breakers ---------------------------------------------------------------------------------


async def test_a_closed_breaker_is_healthy_and_reports_its_state() -> None:
    check = breaker_check(CircuitBreaker("billing"))
    report = await HealthChecks([check]).run()
    assert report["breaker:billing"].status is HEALTHY
    assert report["breaker:billing"].observed == {"state": "closed"}


@pytest.mark.parametrize(
    ("operate", "open_status", "status"),
    [
        (CircuitBreaker.force_open, UNHEALTHY, UNHEALTHY),
        (CircuitBreaker.force_open, DEGRADED, DEGRADED),
        (CircuitBreaker.disable, UNHEALTHY, HEALTHY),
        (CircuitBreaker.metrics_only, UNHEALTHY, HEALTHY),
    ],
)
async def test_an_open_breaker_is_as_bad_as_configured_and_a_disabled_one_healthy(
    operate: Callable[[CircuitBreaker], None], open_status: HealthStatus, status: HealthStatus
) -> None:
    breaker = CircuitBreaker("billing")
    operate(breaker)
    assert (await verdict(breaker_check(breaker, open_status=open_status)))[0] is status


async def test_a_breaker_opened_by_failures_then_probing_is_unhealthy_then_degraded() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker(
        "billing", window=2, minimum_calls=2, open_for=30.0, half_open_calls=1, clock=clock
    )

    def fail() -> None:
        raise ConnectionError

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    check = breaker_check(breaker, name="billing", critical=True)
    status, detail, whole = await verdict(check)
    assert (status, whole) == (UNHEALTHY, UNHEALTHY)
    assert detail == "circuit 'billing' is open"
    clock.advance(30.0)
    breaker.call(lambda: None)  # the probe succeeds: closed again
    assert (await verdict(check))[0] is HEALTHY


async def test_a_half_open_breaker_degrades() -> None:
    class Probing:
        name = "billing"
        state = "half_open"

    assert (await verdict(breaker_check(Probing())))[:2] == (
        DEGRADED,
        "circuit 'billing' is half_open",
    )


def test_a_breaker_check_needs_a_breaker_and_an_unhealthy_or_degraded_open_status() -> None:
    with pytest.raises(ConfigurationError) as caught:
        breaker_check(object())  # type: ignore[arg-type]
    assert caught.value.parameter == "breaker"
    with pytest.raises(ConfigurationError) as caught:
        breaker_check(CircuitBreaker("x"), open_status=HEALTHY)
    assert caught.value.parameter == "open_status"


# -- stores -----------------------------------------------------------------------------------


async def test_a_store_that_answers_its_ping_is_healthy() -> None:
    assert (await verdict(store_check(MemoryStore())))[0] is HEALTHY


async def test_a_store_whose_ping_fails_or_hangs_makes_the_service_unhealthy() -> None:
    clock = VirtualClock()

    class Down:
        async def ping(self) -> None:
            raise ConnectionRefusedError("connection refused")

    class Hanging:
        async def ping(self) -> None:
            await clock.asleep(60)

    health = HealthChecks(
        [store_check(Down(), name="db"), store_check(Hanging(), name="cache", timeout=0.5)],
        clock=clock,
    )
    report = await health.run()
    assert report.status is UNHEALTHY
    assert report["db"].detail == "ConnectionRefusedError: connection refused"
    assert report["cache"].detail == "no answer within 0.5s"


def test_a_store_without_ping_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_check(object())  # type: ignore[arg-type]
    assert caught.value.parameter == "store"


# -- outbox -----------------------------------------------------------------------------------


class FixedOutbox:
    def __init__(self, status: OutboxStatus) -> None:
        self.value = status

    async def status(self) -> OutboxStatus:
        return self.value


def outbox(pending: int = 0, leased: int = 0, blocked: int = 0, age: float = 0.0) -> FixedOutbox:
    return FixedOutbox(
        OutboxStatus(
            pending=pending, leased=leased, blocked=blocked, published=7, oldest_pending_age=age
        )
    )


@pytest.mark.parametrize(
    ("source", "status", "detail"),
    [
        (outbox(), HEALTHY, None),
        (outbox(pending=50, leased=50), HEALTHY, None),
        (outbox(pending=100, leased=1), DEGRADED, "the backlog is 101 rows, above 100 rows"),
        (outbox(pending=1001), UNHEALTHY, "the backlog is 1001 rows, above 1000 rows"),
        (outbox(pending=1, age=61), DEGRADED, f"{OLDEST} 61s old, above 60s old"),
        (outbox(pending=1, age=601), UNHEALTHY, f"{OLDEST} 601s old, above 600s old"),
        (outbox(blocked=1), DEGRADED, "the count of blocked rows is 1, above 0"),
        (
            outbox(pending=1001, blocked=2),
            UNHEALTHY,
            "the backlog is 1001 rows, above 1000 rows; the count of blocked rows is 2, above 0",
        ),
    ],
)  # fmt: skip
async def test_an_outbox_is_graded_on_backlog_age_and_blocked_rows(
    source: FixedOutbox, status: HealthStatus, detail: str | None
) -> None:
    check = outbox_check(
        source,
        backlog_degraded_above=100,
        backlog_unhealthy_above=1000,
        age_degraded_above=60,
        age_unhealthy_above=600,
    )
    said_status, said, whole = await verdict(check)
    assert (said_status, said) == (status, detail)
    assert whole is (HEALTHY if status is HEALTHY else DEGRADED)  # not critical by default


async def test_an_outbox_check_reports_the_counts_and_ignores_blocked_rows_if_told() -> None:
    check = outbox_check(
        outbox(pending=2, leased=1, blocked=3, age=4.5), blocked_degraded_above=None
    )
    report = await HealthChecks([check]).run()
    assert report["outbox"].status is HEALTHY
    assert report["outbox"].observed == {
        "pending": 2,
        "leased": 1,
        "blocked": 3,
        "backlog": 3,
        "oldest_pending_age": 4.5,
    }


async def test_an_outbox_check_reads_a_real_outbox_store() -> None:
    clock = VirtualClock()
    store = MemoryStore(clock=clock)
    box = Outbox(store.outbox, topic="orgs")
    with store.transaction() as transaction:
        box.add(transaction, Event(type="org.created", key="org:1", payload={}))
    clock.advance(120)
    check = outbox_check(store.outbox, age_degraded_above=60)
    report = await HealthChecks([check], clock=clock).run()
    assert report["outbox"].status is DEGRADED
    assert report["outbox"].observed["backlog"] == 1


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"backlog_degraded_above": 10, "backlog_unhealthy_above": 1}, "backlog_unhealthy_above"),
        ({"age_degraded_above": "soon"}, "age_degraded_above"),
        ({"blocked_degraded_above": -float("inf")}, "blocked_degraded_above"),
        ({"outbox": object()}, "outbox"),
    ],
)
def test_a_misconfigured_outbox_check_fails_at_construction_naming_the_parameter(
    kwargs: dict[str, object], parameter: str
) -> None:
    arguments: dict[str, object] = {"outbox": outbox(), **kwargs}
    with pytest.raises(ConfigurationError) as caught:
        outbox_check(**arguments)  # type: ignore[arg-type]
    assert caught.value.parameter == parameter
