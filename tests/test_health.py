from __future__ import annotations

import ast
import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import resilience_kit.health
from resilience_kit import ConfigurationError, telemetry
from resilience_kit.health import (
    CheckReport,
    CheckResult,
    HealthCheck,
    HealthChecks,
    HealthReport,
    HealthStatus,
)
from resilience_kit.testing import VirtualClock, use_clock

pytestmark = pytest.mark.anyio

HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


def returning(value: object) -> HealthCheck:
    return HealthCheck("probe", lambda: value)


# -- the pure aggregation ---------------------------------------------------------------------

statuses = st.sampled_from(list(HealthStatus))
verdicts = st.lists(
    st.builds(
        CheckReport,
        name=st.text(min_size=1, max_size=5),
        status=statuses,
        critical=st.booleans(),
    ),
    max_size=8,
)


@given(verdicts)
def test_the_whole_is_the_most_severe_impact_of_its_checks(checks: list[CheckReport]) -> None:
    status = HealthReport.of(checks).status
    impacts = [
        c.status if c.critical else min(c.status, DEGRADED, key=lambda s: s.severity)
        for c in checks
    ]
    assert status.severity == max((s.severity for s in impacts), default=0)


@given(verdicts)
def test_only_a_failing_critical_check_makes_the_whole_unhealthy(checks: list[CheckReport]) -> None:
    unhealthy = HealthReport.of(checks).status is UNHEALTHY
    assert unhealthy == any(c.critical and c.status is UNHEALTHY for c in checks)


@given(verdicts, statuses, st.booleans())
def test_adding_a_check_never_makes_the_whole_healthier(
    checks: list[CheckReport], status: HealthStatus, critical: bool
) -> None:
    before = HealthReport.of(checks).status
    after = HealthReport.of([*checks, CheckReport("extra", status, critical=critical)]).status
    assert after.severity >= before.severity


@pytest.mark.parametrize(
    ("status", "critical", "whole"),
    [
        (HEALTHY, True, HEALTHY),
        (HEALTHY, False, HEALTHY),
        (DEGRADED, True, DEGRADED),
        (DEGRADED, False, DEGRADED),
        (UNHEALTHY, True, UNHEALTHY),
        (UNHEALTHY, False, DEGRADED),
    ],
)
async def test_every_status_of_a_critical_or_optional_check_gives_the_whole_its_due(
    status: HealthStatus, critical: bool, whole: HealthStatus
) -> None:
    health = HealthChecks(
        [
            HealthCheck("steady", lambda: True),
            HealthCheck("probe", lambda: CheckResult(status), critical=critical),
        ]
    )
    report = await health.run()
    assert report.status is whole
    assert report["probe"].status is status
    assert report["probe"].critical is critical


def test_no_checks_is_healthy() -> None:
    assert HealthReport.of([]).status is HEALTHY
    assert HealthStatus.worst([]) is HEALTHY


def test_asking_a_report_for_an_unknown_check_raises_key_error() -> None:
    with pytest.raises(KeyError):
        HealthReport.of([])["db"]


# -- what a probe returns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (True, HEALTHY),
        (None, HEALTHY),
        (False, UNHEALTHY),
        (DEGRADED, DEGRADED),
        (CheckResult.degraded("slow", ms=900), DEGRADED),
        ("ok", UNHEALTHY),
    ],
)
async def test_a_probe_may_answer_with_a_result_a_status_or_a_bool(
    value: object, status: HealthStatus
) -> None:
    report = await HealthChecks([returning(value)]).run()
    assert report["probe"].status is status


async def test_a_probe_returning_something_else_is_unhealthy_and_says_why() -> None:
    report = await HealthChecks([returning(42)]).run()
    assert report["probe"].detail is not None
    assert "returned int" in report["probe"].detail


async def test_a_raising_probe_is_unhealthy_with_the_error_in_the_detail() -> None:
    async def broken() -> bool:
        raise ConnectionError("connection refused")

    async def silent() -> bool:
        raise RuntimeError

    report = await HealthChecks([HealthCheck("db", broken), HealthCheck("q", silent)]).run()
    assert report.status is UNHEALTHY
    assert report["db"].detail == "ConnectionError: connection refused"
    assert report["db"].observed == {"error_type": "ConnectionError"}
    assert report["q"].detail == "RuntimeError"


async def test_a_long_error_message_is_cut_short() -> None:
    def broken() -> bool:
        raise ValueError("x" * 10_000)

    report = await HealthChecks([HealthCheck("db", broken)]).run()
    detail = report["db"].detail
    assert detail is not None
    assert len(detail) == 500
    assert detail.endswith("…")


async def test_a_sync_probe_returning_an_awaitable_is_awaited() -> None:
    async def ping() -> CheckResult:
        return CheckResult.degraded("slow")

    report = await HealthChecks([HealthCheck("db", lambda: ping())]).run()  # noqa: PLW0108
    assert report["db"].status is DEGRADED


def test_observed_values_must_be_json_scalars() -> None:
    with pytest.raises(TypeError, match="observed"):
        CheckResult.healthy(rows=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keys"):
        CheckResult(HEALTHY, None, {1: 2})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="status"):
        CheckResult("healthy")  # type: ignore[arg-type]


def test_a_results_observed_values_cannot_be_changed_behind_its_back() -> None:
    values = {"rows": 1}
    result = CheckResult(HEALTHY, None, values)
    values["rows"] = 2
    assert result.observed == {"rows": 1}
    with pytest.raises(TypeError):
        result.observed["rows"] = 3  # type: ignore[index]


# -- timeouts on the virtual clock ------------------------------------------------------------


async def test_a_probe_that_outlasts_its_timeout_is_unhealthy_at_the_timeouts_instant() -> None:
    clock = VirtualClock()

    async def hangs() -> bool:
        await clock.asleep(3600)
        return True

    health = HealthChecks([HealthCheck("db", hangs, timeout=2.0)], clock=clock)
    report = await health.run()
    assert report["db"].status is UNHEALTHY
    assert report["db"].detail == "no answer within 2s"
    assert report["db"].duration == pytest.approx(2.0)
    assert clock.monotonic() == pytest.approx(2.0)


async def test_a_probe_within_its_timeout_reports_its_duration_on_the_clock() -> None:
    clock = VirtualClock(start=10.0)

    async def slow() -> bool:
        await clock.asleep(0.25)
        return True

    report = await HealthChecks([HealthCheck("db", slow, timeout=1.0)], clock=clock).run()
    assert report["db"].status is HEALTHY
    assert report["db"].duration == pytest.approx(0.25)
    assert report["db"].checked_at == clock.time() - 0.25
    assert report.duration == pytest.approx(0.25)


async def test_the_clock_installed_by_use_clock_drives_the_timeouts() -> None:
    clock = VirtualClock()

    async def hangs() -> bool:
        await clock.asleep(60)
        return True

    health = HealthChecks([HealthCheck("db", hangs, timeout=1.0)])
    with use_clock(clock):
        report = await health.run()
    assert report["db"].detail == "no answer within 1s"


async def test_a_timeout_does_not_swallow_the_callers_own_cancellation() -> None:
    clock = VirtualClock(auto_advance=False)
    started = anyio.Event()

    async def hangs() -> bool:
        started.set()
        await clock.asleep(3600)
        return True

    health = HealthChecks([HealthCheck("a", hangs), HealthCheck("b", hangs)], clock=clock)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(health.run)
            await started.wait()
            scope.cancel()
    assert scope.cancelled_caught
    assert health.last_report is None


# -- concurrency ------------------------------------------------------------------------------


async def test_checks_run_concurrently_so_the_run_takes_as_long_as_the_slowest() -> None:
    clock = VirtualClock(auto_advance=False)
    running = 0
    most = 0

    def probe(seconds: float) -> HealthCheck:
        async def sleeps() -> bool:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await clock.asleep(seconds)
            running -= 1
            return True

        return HealthCheck(f"p{seconds}", sleeps, timeout=10.0)

    health = HealthChecks([probe(1.0), probe(2.0), probe(3.0)], clock=clock)
    async with anyio.create_task_group() as group:
        group.start_soon(health.run)
        for still_running in (3, 2, 1):
            while running != still_running or len(clock.sleeps) < 3:
                await anyio.lowlevel.checkpoint()
            clock.advance(1.0)
    report = health.last_report
    assert report is not None
    assert most == 3
    assert report.duration == pytest.approx(3.0)
    assert [c.duration for c in report.checks] == pytest.approx([1.0, 2.0, 3.0])
    assert [c.name for c in report.checks] == ["p1.0", "p2.0", "p3.0"]


# -- caching ----------------------------------------------------------------------------------


async def test_a_cached_verdict_is_reused_until_cache_for_has_passed() -> None:
    clock = VirtualClock()
    calls = 0

    def counted() -> CheckResult:
        nonlocal calls
        calls += 1
        return CheckResult.healthy(call=calls)

    health = HealthChecks([HealthCheck("db", counted, cache_for=5.0)], clock=clock)
    first = await health.run()
    clock.advance(4.9)
    second = await health.run()
    assert calls == 1
    assert not first["db"].cached
    assert second["db"].cached
    assert second["db"].duration == 0.0
    assert second["db"].checked_at == first["db"].checked_at
    clock.advance(0.1)
    third = await health.run()
    assert calls == 2
    assert not third["db"].cached
    assert third["db"].observed == {"call": 2}


async def test_failures_are_cached_too_so_a_dead_database_is_not_hammered() -> None:
    clock = VirtualClock()
    calls = 0

    def broken() -> bool:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    health = HealthChecks([HealthCheck("db", broken, cache_for=1.0)], clock=clock)
    await health.run()
    report = await health.run()
    assert calls == 1
    assert report["db"].status is UNHEALTHY
    assert report["db"].cached


async def test_without_cache_for_every_run_asks_the_probe() -> None:
    calls = 0

    def counted() -> bool:
        nonlocal calls
        calls += 1
        return True

    health = HealthChecks([HealthCheck("db", counted)], clock=VirtualClock())
    await health.run()
    await health.run()
    assert calls == 2


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"name": ""}, "name"),
        ({"name": "  "}, "name"),
        ({"name": 3}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"probe": "not callable"}, "probe"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": None}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"critical": "yes"}, "critical"),
        ({"cache_for": -0.5}, "cache_for"),
        ({"cache_for": None}, "cache_for"),
    ],
)
def test_a_misconfigured_check_fails_at_construction_naming_the_parameter(
    kwargs: dict[str, object], parameter: str
) -> None:
    arguments: dict[str, object] = {"name": "db", "probe": lambda: True, **kwargs}
    name = arguments.pop("name")
    probe = arguments.pop("probe")
    with pytest.raises(ConfigurationError) as caught:
        HealthCheck(name, probe, **arguments)  # type: ignore[arg-type]
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}:")


def test_a_generator_is_not_a_probe() -> None:
    def generator() -> Iterator[bool]:
        yield True

    with pytest.raises(ConfigurationError, match="probe"):
        HealthCheck("db", generator)


def test_two_checks_with_one_name_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="checks: two checks are named 'db'"):
        HealthChecks([HealthCheck("db", bool), HealthCheck("db", bool)])


def test_adding_a_check_whose_name_is_taken_fails() -> None:
    health = HealthChecks([HealthCheck("db", bool)])
    with pytest.raises(ConfigurationError, match="check: two checks"):
        health.add(HealthCheck("db", bool))
    with pytest.raises(ConfigurationError, match="name: two checks"):
        health.check("db")(bool)
    with pytest.raises(ConfigurationError, match="check: must be a HealthCheck"):
        health.add("db")  # type: ignore[arg-type]


def test_the_check_decorator_names_the_check_after_the_function_and_returns_it() -> None:
    health = HealthChecks()

    @health.check(timeout=1.0, critical=False, cache_for=2.0)
    async def search() -> bool:
        return True

    (check,) = health.checks
    assert (check.name, check.timeout, check.critical, check.cache_for) == (
        "search",
        1.0,
        False,
        2.0,
    )
    assert check.probe is search


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"checks": HealthCheck("db", bool)}, "checks"),
        ({"checks": ["db"]}, "checks"),
        ({"name": ""}, "name"),
        ({"clock": object()}, "clock"),
    ],
)
def test_misconfigured_health_checks_fail_at_construction_naming_the_parameter(
    kwargs: dict[str, object], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        HealthChecks(**kwargs)  # type: ignore[arg-type]
    assert caught.value.parameter == parameter


def test_reprs_say_what_is_configured() -> None:
    health = HealthChecks([HealthCheck("db", bool)], name="billing")
    assert repr(health) == "HealthChecks('billing', checks=['db'])"
    assert repr(health.checks[0]) == "HealthCheck('db', timeout=5.0, critical=True, cache_for=0.0)"
    assert str(HealthStatus.DEGRADED) == "degraded"


# -- the report as JSON -----------------------------------------------------------------------


async def test_the_report_is_json_ready_with_every_checks_verdict() -> None:
    clock = VirtualClock(wall=1_767_225_600.0)
    health = HealthChecks(
        [
            HealthCheck("db", lambda: True),
            HealthCheck("search", lambda: CheckResult.unhealthy("down", shards=0), critical=False),
        ],
        clock=clock,
    )
    data = json.loads(json.dumps((await health.run()).to_dict()))
    assert data == {
        "status": "degraded",
        "checked_at": "2026-01-01T00:00:00Z",
        "duration": 0.0,
        "checks": {
            "db": {
                "status": "healthy",
                "critical": True,
                "duration": 0.0,
                "checked_at": "2026-01-01T00:00:00Z",
                "detail": None,
                "observed": {},
                "cached": False,
            },
            "search": {
                "status": "unhealthy",
                "critical": False,
                "duration": 0.0,
                "checked_at": "2026-01-01T00:00:00Z",
                "detail": "down",
                "observed": {"shards": 0},
                "cached": False,
            },
        },
    }


def test_reports_are_frozen() -> None:
    report = HealthReport.of([CheckReport("db", HEALTHY)])
    with pytest.raises(AttributeError):
        report.status = UNHEALTHY  # type: ignore[misc]
    with pytest.raises(AttributeError):
        report.checks[0].status = UNHEALTHY  # type: ignore[misc]


# -- telemetry --------------------------------------------------------------------------------


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    gc.collect()  # HealthChecks left in reference cycles by earlier tests must not report
    recorder = InMemoryMetricReader()
    telemetry.configure(meter_provider=MeterProvider(metric_readers=[recorder]))
    yield recorder
    telemetry.configure()


def gauges(reader: InMemoryMetricReader) -> dict[str, dict[tuple[tuple[str, Any], ...], Any]]:
    found: dict[str, dict[tuple[tuple[str, Any], ...], Any]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points: Any = metric.data.data_points
                found[metric.name] = {
                    tuple(sorted((point.attributes or {}).items())): point.value for point in points
                }
    return found


async def test_the_last_verdicts_are_exported_as_gauges_per_service_and_check(
    reader: InMemoryMetricReader,
) -> None:
    health = HealthChecks(
        [
            HealthCheck("db", lambda: True),
            HealthCheck("search", lambda: False, critical=False),
        ],
        name="gauged",
        clock=VirtualClock(),
    )
    assert "resilience.health.status" not in gauges(reader)  # nothing before the first run
    await health.run()
    points = gauges(reader)
    assert points["resilience.health.status"] == {(("health", "gauged"),): 1}
    assert points["resilience.health.check.status"] == {
        (("check", "db"), ("health", "gauged")): 0,
        (("check", "search"), ("health", "gauged")): 2,
    }


# -- import weight ----------------------------------------------------------------------------


def test_the_health_modules_import_no_messaging_store_or_driver_code() -> None:
    # The top-level package may import messaging (today it does); health itself must
    # not, outside `if TYPE_CHECKING:` blocks, so that a lazy top level stays light.
    forbidden = (
        "resilience_kit.messaging",
        "resilience_kit.stores",
        "resilience_kit.transports",
        "pydantic",
        "psycopg",
        "redis",
        "aiokafka",
    )
    package = Path(resilience_kit.health.__file__).parent
    for source in sorted(package.glob("*.py")):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{source.name} imports {name}"
