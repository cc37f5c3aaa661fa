from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilience_kit import (
    Backoff,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Fallback,
    RetryPolicy,
    Timeout,
    TimeoutExceededError,
    telemetry,
)
from resilience_kit.stores.memory import MemoryBreakerStore
from resilience_kit.testing import ChaosFault, ChaosLatency, ChaosResult, VirtualClock

Points = dict[str, list[tuple[dict[str, object], int]]]


class Metrics:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def points(self) -> Points:
        """Every counter's data points: name -> [(attributes, value)]."""
        data = self.reader.get_metrics_data()
        found: Points = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == telemetry.METER_NAME
                for metric in scope.metrics:
                    found[metric.name] = [
                        (dict(point.attributes or {}), int(point.value))
                        for point in metric.data.data_points  # type: ignore[union-attr]
                    ]
        return found


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    # Observable counters read every live breaker and cache: collect the ones earlier
    # tests left behind in reference cycles, so that they do not report here.
    gc.collect()
    recorder = Metrics()
    telemetry.configure(meter_provider=recorder.provider)
    try:
        yield recorder
    finally:
        telemetry.configure()
        recorder.provider.shutdown()


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    # Span events go to whatever span is current: no configure() needed (and calling it
    # here would reset the meter provider the `metrics` fixture installed).
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider, exporter
    finally:
        provider.shutdown()


def flaky(failures: int, error: type[Exception] = ConnectionError) -> object:
    """A function that fails ``failures`` times, then returns "ok"."""
    calls = [0]

    def call() -> str:
        calls[0] += 1
        if calls[0] <= failures:
            raise error("down")
        return "ok"

    return call


def test_metric_names() -> None:
    assert telemetry.METER_NAME == "resilience_kit"
    assert {
        telemetry.RETRY_ATTEMPTS,
        telemetry.BREAKER_TRANSITIONS,
        telemetry.BREAKER_REJECTIONS,
        telemetry.BREAKER_THRESHOLDS_EXCEEDED,
        telemetry.BULKHEAD_REJECTIONS,
        telemetry.TIMEOUT_EXPIRATIONS,
        telemetry.FALLBACK_ACTIVATIONS,
        telemetry.CHAOS_INJECTIONS,
    } == {
        "resilience.retry.attempts",
        "resilience.circuit_breaker.transitions",
        "resilience.circuit_breaker.rejections",
        "resilience.circuit_breaker.thresholds_exceeded",
        "resilience.bulkhead.rejections",
        "resilience.timeout.expirations",
        "resilience.fallback.activations",
        "resilience.chaos.injections",
    }


def test_nothing_is_recorded_on_the_happy_path(metrics: Metrics) -> None:
    clock = VirtualClock()
    retry = RetryPolicy(attempts=3, name="r", clock=clock)
    breaker = CircuitBreaker("b", clock=clock)
    bulkhead = Bulkhead(1)
    fallback = Fallback(value=0)
    chaos = ChaosFault(rate=0.0)
    for policy in (retry, breaker, bulkhead, fallback, chaos):
        assert policy.call(lambda: 42) == 42  # a first-try success, a closed breaker...

    async def timed() -> int:
        return await Timeout(5, clock=clock).acall(clock.asleep, 1) or 7

    assert anyio.run(timed) == 7
    assert metrics.points() == {}


def test_retry_and_give_up_are_counted(metrics: Metrics) -> None:
    retry = RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none(), name="db")
    assert retry.call(flaky(2)) == "ok"  # type: ignore[arg-type]
    assert metrics.points()[telemetry.RETRY_ATTEMPTS] == [
        ({"policy": "db", "outcome": "retry", "reason": "ConnectionError"}, 2)
    ]
    with pytest.raises(ConnectionError):
        retry.call(flaky(5))  # type: ignore[arg-type]
    assert sorted(metrics.points()[telemetry.RETRY_ATTEMPTS], key=repr) == sorted(
        [
            ({"policy": "db", "outcome": "retry", "reason": "ConnectionError"}, 4),
            ({"policy": "db", "outcome": "gave_up", "reason": "attempts"}, 1),
        ],
        key=repr,
    )


def test_breaker_transition_and_rejection_are_counted(metrics: Metrics) -> None:
    breaker = CircuitBreaker("billing", window=2, minimum_calls=2, clock=VirtualClock())
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(flaky(1))  # type: ignore[arg-type]
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)
    points = metrics.points()
    assert points[telemetry.BREAKER_TRANSITIONS] == [
        ({"breaker": "billing", "from_state": "closed", "to_state": "open"}, 1)
    ]
    assert points[telemetry.BREAKER_REJECTIONS] == [({"breaker": "billing", "state": "open"}, 1)]


def test_a_change_of_a_shared_breaker_is_counted_once(metrics: Metrics) -> None:
    store = MemoryBreakerStore()
    clock = VirtualClock()
    fleet = [
        CircuitBreaker("billing", window=2, minimum_calls=2, store=store, clock=clock)
        for _ in range(3)
    ]
    for _ in range(2):
        with pytest.raises(ConnectionError):
            fleet[0].call(flaky(1))  # type: ignore[arg-type]
    assert {breaker.state for breaker in fleet} == {CircuitState.OPEN}
    fleet[2].reset()
    assert metrics.points()[telemetry.BREAKER_TRANSITIONS] == [
        ({"breaker": "billing", "from_state": "closed", "to_state": "open"}, 1),
        ({"breaker": "billing", "from_state": "open", "to_state": "closed"}, 1),
    ]


def test_a_threshold_reached_in_metrics_only_is_counted(metrics: Metrics) -> None:
    breaker = CircuitBreaker("billing", window=2, minimum_calls=2, clock=VirtualClock())
    breaker.metrics_only()
    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.call(flaky(1))  # type: ignore[arg-type]
    points = metrics.points()
    assert points[telemetry.BREAKER_THRESHOLDS_EXCEEDED] == [
        ({"breaker": "billing", "state": "metrics_only", "threshold": "failure_rate"}, 1)
    ]
    assert points[telemetry.BREAKER_TRANSITIONS] == [
        ({"breaker": "billing", "from_state": "closed", "to_state": "metrics_only"}, 1)
    ]


def reject_once(bulkhead: Bulkhead) -> None:
    """Make ``bulkhead`` (with one slot and no queue) reject a call."""

    @bulkhead
    def nested() -> None:
        bulkhead.call(lambda: None)  # the only slot is ours: rejected

    with pytest.raises(BulkheadFullError):
        nested()


def test_bulkhead_rejection_is_counted(metrics: Metrics) -> None:
    reject_once(Bulkhead(1, name="pool"))
    assert metrics.points()[telemetry.BULKHEAD_REJECTIONS] == [({"bulkhead": "pool"}, 1)]


@pytest.mark.anyio
async def test_timeout_expiry_is_counted(metrics: Metrics) -> None:
    clock = VirtualClock()
    with pytest.raises(TimeoutExceededError):
        await Timeout(1, name="slow-api", clock=clock).acall(clock.asleep, 5)
    assert metrics.points()[telemetry.TIMEOUT_EXPIRATIONS] == [({"timeout": "slow-api"}, 1)]


def test_fallback_is_counted(metrics: Metrics) -> None:
    fallback = Fallback(value=0, on_result=lambda r: r < 0, name="zero")
    fallback.call(flaky(1))  # type: ignore[arg-type]
    fallback.call(lambda: -1)
    assert sorted(metrics.points()[telemetry.FALLBACK_ACTIVATIONS], key=repr) == sorted(
        [
            ({"fallback": "zero", "error_type": "ConnectionError"}, 1),
            ({"fallback": "zero", "error_type": "result"}, 1),
        ],
        key=repr,
    )


def test_chaos_injection_is_counted(metrics: Metrics) -> None:
    clock = VirtualClock()
    with pytest.raises(ConnectionError):
        ChaosFault(ConnectionError, name="f").call(lambda: None)
    ChaosLatency(1, name="l", clock=clock).call(lambda: None)
    ChaosResult(value=1, name="r").call(lambda: 2)
    ChaosResult(value=1, name="r", rate=0).call(lambda: 2)  # not injected: not counted
    assert sorted(metrics.points()[telemetry.CHAOS_INJECTIONS], key=repr) == sorted(
        [
            ({"chaos": "f", "kind": "fault"}, 1),
            ({"chaos": "l", "kind": "latency"}, 1),
            ({"chaos": "r", "kind": "result"}, 1),
        ],
        key=repr,
    )


def test_configure_without_arguments_goes_back_to_the_global_provider() -> None:
    recorder = Metrics()
    telemetry.configure(meter_provider=recorder.provider)
    telemetry.configure()
    try:
        reject_once(Bulkhead(1, name="x"))
        assert recorder.points() == {}
    finally:
        recorder.provider.shutdown()


def test_events_are_added_to_the_current_span(
    metrics: Metrics, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    clock = VirtualClock()
    retry = RetryPolicy(attempts=2, on=(ConnectionError, CircuitOpenError), name="db", clock=clock)
    breaker = CircuitBreaker("billing", window=1, minimum_calls=1, clock=clock)
    with tracer.start_as_current_span("request"):
        with pytest.raises(CircuitOpenError):
            retry.call(breaker.wrap(flaky(5)))  # type: ignore[arg-type]
        Fallback(value=0, name="zero").call(flaky(1))  # type: ignore[arg-type]
    (span,) = exporter.get_finished_spans()
    events = [(event.name, dict(event.attributes or {})) for event in span.events]
    assert events == [
        (
            "circuit_breaker.transitions",
            {"breaker": "billing", "from_state": "closed", "to_state": "open"},
        ),
        ("retry.attempts", {"policy": "db", "outcome": "retry", "reason": "ConnectionError"}),
        ("circuit_breaker.rejections", {"breaker": "billing", "state": "open"}),
        ("retry.attempts", {"policy": "db", "outcome": "gave_up", "reason": "attempts"}),
        ("fallback.activations", {"fallback": "zero", "error_type": "ConnectionError"}),
    ]
    # The same events were counted.
    points = metrics.points()
    assert sorted(points) == sorted(
        [
            telemetry.BREAKER_TRANSITIONS,
            telemetry.RETRY_ATTEMPTS,
            telemetry.BREAKER_REJECTIONS,
            telemetry.FALLBACK_ACTIVATIONS,
        ]
    )
    assert sum(value for _, value in points[telemetry.RETRY_ATTEMPTS]) == 2


@pytest.mark.anyio
async def test_async_events_reach_the_current_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    clock = VirtualClock()
    with provider.get_tracer("test").start_as_current_span("request"):
        with pytest.raises(TimeoutExceededError):
            await Timeout(1, name="t", clock=clock).acall(clock.asleep, 2)
    (span,) = exporter.get_finished_spans()
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
        ("timeout.expirations", {"timeout": "t"})
    ]


def test_no_span_no_problem(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    _, exporter = spans
    Fallback(value=0).call(flaky(1))  # type: ignore[arg-type]
    assert exporter.get_finished_spans() == ()


def test_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="resilience_kit")
    clock = VirtualClock()
    retry = RetryPolicy(
        attempts=2, on=ConnectionError, backoff=Backoff.constant(1.5), name="db", clock=clock
    )
    breaker = CircuitBreaker("billing", window=1, minimum_calls=1, clock=clock)
    with pytest.raises(ConnectionError):
        retry.call(flaky(5))  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        breaker.call(flaky(1))  # type: ignore[arg-type]
    Fallback(value=0, name="zero").call(flaky(1))  # type: ignore[arg-type]
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        (
            "resilience_kit",
            logging.INFO,
            "retry 'db': attempt 1 failed (ConnectionError); retrying in 1.500s",
        ),
        (
            "resilience_kit",
            logging.WARNING,
            "retry 'db': giving up after 2 attempt(s) (attempts): ConnectionError",
        ),
        (
            "resilience_kit",
            logging.WARNING,
            "circuit 'billing': closed -> open (failure rate 1.00 >= 0.50)",
        ),
        ("resilience_kit", logging.INFO, "fallback 'zero': serving a substitute (ConnectionError)"),
    ]
    assert telemetry.logger is logging.getLogger("resilience_kit")
