"""Instrumentation internals; the public names live in `resilience_kit.telemetry`."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

# OpenTelemetry is imported on first use, not with the policies: it is about as costly
# to import as the policies themselves, and many programs never record anything.
if TYPE_CHECKING:
    import logging

    from opentelemetry.context import Context
    from opentelemetry.metrics import (
        CallbackOptions,
        Counter,
        Histogram,
        MeterProvider,
        Observation,
    )
    from opentelemetry.trace import Span, TracerProvider

METER_NAME = "resilience_kit"
RETRY_ATTEMPTS = "resilience.retry.attempts"
BREAKER_TRANSITIONS = "resilience.circuit_breaker.transitions"
BREAKER_REJECTIONS = "resilience.circuit_breaker.rejections"
BREAKER_THRESHOLDS_EXCEEDED = "resilience.circuit_breaker.thresholds_exceeded"
BULKHEAD_REJECTIONS = "resilience.bulkhead.rejections"
TIMEOUT_EXPIRATIONS = "resilience.timeout.expirations"
FALLBACK_ACTIVATIONS = "resilience.fallback.activations"
CHAOS_INJECTIONS = "resilience.chaos.injections"
OUTBOX_EVENTS = "resilience.outbox.events"
OUTBOX_BACKLOG = "resilience.outbox.backlog"
OUTBOX_LAG = "resilience.outbox.lag"
CONSUMER_MESSAGES = "resilience.consumer.messages"
HEALTH_STATUS = "resilience.health.status"
HEALTH_CHECK_STATUS = "resilience.health.check.status"
BATCH_WRITER_DEPTH = "resilience.batch_writer.depth"
BATCH_WRITER_ITEMS = "resilience.batch_writer.items"
BATCH_WRITER_BATCHES = "resilience.batch_writer.batches"
BATCH_WRITER_BATCH_SIZE = "resilience.batch_writer.batch_size"
BATCH_WRITER_WRITE_DURATION = "resilience.batch_writer.write_duration"

_DESCRIPTIONS = {
    RETRY_ATTEMPTS: "Retries scheduled and retry give-ups",
    BREAKER_TRANSITIONS: "Circuit breaker state transitions",
    BREAKER_REJECTIONS: "Calls rejected by a circuit breaker",
    BREAKER_THRESHOLDS_EXCEEDED: "Thresholds reached by a METRICS_ONLY circuit breaker",
    BULKHEAD_REJECTIONS: "Calls rejected by a bulkhead",
    TIMEOUT_EXPIRATIONS: "Calls cancelled by a timeout",
    FALLBACK_ACTIVATIONS: "Fallback values served",
    CHAOS_INJECTIONS: "Faults injected by chaos policies",
    OUTBOX_EVENTS: "Outbox rows handled by relays, by outcome",
    OUTBOX_BACKLOG: "Outbox rows not yet published, by state, as last measured by a relay",
    OUTBOX_LAG: "Seconds since the oldest unpublished outbox row was added",
    CONSUMER_MESSAGES: "Messages handled by resilient consumers, by outcome",
    HEALTH_STATUS: "A service's health as last checked: 0 healthy, 1 degraded, 2 unhealthy",
    HEALTH_CHECK_STATUS: "Each health check's last verdict: 0 healthy, 1 degraded, 2 unhealthy",
    BATCH_WRITER_DEPTH: "Items a batch writer holds: queued plus the batch being written",
    BATCH_WRITER_ITEMS: "Items written by batch writers",
    BATCH_WRITER_BATCHES: "Batch writes, by outcome (written, failed)",
    BATCH_WRITER_BATCH_SIZE: "Items per batch written",
    BATCH_WRITER_WRITE_DURATION: "Seconds a successful batch write took",
}

# Instruments read by `observe` that report a current value, not a running total.
_GAUGES = {OUTBOX_BACKLOG, OUTBOX_LAG, HEALTH_STATUS, HEALTH_CHECK_STATUS, BATCH_WRITER_DEPTH}
_UNITS = {OUTBOX_LAG: "s", BATCH_WRITER_WRITE_DURATION: "s"}

if TYPE_CHECKING:
    logger: logging.Logger
else:

    def __getattr__(name: str) -> object:
        """Create `logger` on first use (PEP 562): `logging` is costly to import."""
        if name != "logger":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import logging  # noqa: PLC0415  (deferred: see the docstring)

        log = logging.getLogger("resilience_kit")
        log.addHandler(logging.NullHandler())  # a library never prints unless configured
        globals()["logger"] = log  # later lookups skip __getattr__
        return log


_meter_provider: MeterProvider | None = None
_tracer_provider: TracerProvider | None = None
_counters: dict[str, Counter] = {}
_histograms: dict[str, Histogram] = {}
_observables: dict[str, Any] = {}


Reading = Iterable[tuple[float, Mapping[str, str]]]


# For events too frequent to count one by one (breaker rejections, cache hits), their
# owners keep cumulative counts and an observable counter reads them when metrics are
# collected: name -> (the owners, weakly held; how to read one; the description).
_sources: dict[str, tuple[weakref.WeakSet[Any], Callable[[Any], Reading], str]] = {}


def configure(
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> None:
    """Send resilience-kit's telemetry to the given providers instead of the global ones.

    Args:
        meter_provider: where metrics go; ``None`` means the global provider.
        tracer_provider: reserved for span creation; span events always go to the
            current span. ``None`` means the global provider.
    """
    global _meter_provider, _tracer_provider  # noqa: PLW0603  (module-level configuration)
    _meter_provider = meter_provider
    _tracer_provider = tracer_provider
    _counters.clear()
    _histograms.clear()
    _observables.clear()
    for name, (owners, _, _) in _sources.items():
        if owners:
            _observable(name)


def _counter(name: str) -> Counter:
    counter = _counters.get(name)
    if counter is None:
        from opentelemetry import metrics  # noqa: PLC0415  (deferred: see the imports)

        provider = _meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter(METER_NAME)
        counter = meter.create_counter(name, unit="1", description=_DESCRIPTIONS[name])
        _counters[name] = counter
    return counter


def _histogram(name: str) -> Histogram:
    histogram = _histograms.get(name)
    if histogram is None:
        from opentelemetry import metrics  # noqa: PLC0415  (deferred: see the imports)

        provider = _meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter(METER_NAME)
        histogram = meter.create_histogram(
            name, unit=_UNITS.get(name, "1"), description=_DESCRIPTIONS[name]
        )
        _histograms[name] = histogram
    return histogram


def record(name: str, value: float, attributes: Mapping[str, str]) -> None:
    """Record one measurement (a batch's size, a write's duration) on the histogram ``name``."""
    (_histograms.get(name) or _histogram(name)).record(value, attributes)


def _observable(name: str) -> None:
    if name in _observables:
        return
    from opentelemetry import metrics  # noqa: PLC0415  (deferred: see the imports)

    provider = _meter_provider or metrics.get_meter_provider()
    meter = provider.get_meter(METER_NAME)
    create = meter.create_observable_gauge if name in _GAUGES else meter.create_observable_counter
    _observables[name] = create(
        name,
        callbacks=[_collector(name)],
        unit=_UNITS.get(name, "1"),
        description=_sources[name][2],
    )


def _collector(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def collect(options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation  # noqa: PLC0415  (deferred: see the imports)

        owners, read, _ = _sources[name]
        # Owners sharing attributes (two breakers with one name) add up to one point.
        totals: dict[frozenset[tuple[str, str]], float] = {}
        for owner in list(owners):
            for value, attributes in read(owner):
                labels = frozenset(attributes.items())
                totals[labels] = totals.get(labels, 0) + value
        return [Observation(value, dict(labels)) for labels, value in totals.items()]

    return collect


def observe(
    name: str, owner: object, read: Callable[[Any], Reading], description: str | None = None
) -> None:
    """Report ``read(owner)`` on the observable instrument ``name``.

    Counters read cumulative counts; gauges (backlog, lag) read current values, and
    owners sharing attributes add up.

    ``owner`` is held weakly; every owner registered under one name must be read the
    same way. The instrument follows `configure`.
    """
    entry = _sources.get(name)
    if entry is None:
        entry = (weakref.WeakSet(), read, description or _DESCRIPTIONS[name])
        _sources[name] = entry
    entry[0].add(owner)
    _observable(name)


def _load_context() -> Context:
    """Bind the two OpenTelemetry functions `span_event` calls, then act as the first."""
    global _get_current, _get_current_span
    from opentelemetry.context import get_current  # noqa: PLC0415  (deferred: see the imports)
    from opentelemetry.trace import get_current_span  # noqa: PLC0415

    _get_current, _get_current_span = get_current, get_current_span
    return get_current()


_get_current: Callable[[], Context] = _load_context
_get_current_span: Callable[[Context], Span]


def span_event(name: str, attributes: Mapping[str, str | int | float]) -> None:
    """Add an event to the current span, if one is recording; cheap when none is."""
    current = _get_current()
    if current:  # an empty context holds no span: skip the span lookup
        span = _get_current_span(current)
        if span.is_recording():
            span.add_event(name[_PREFIX:], attributes)


def emit(name: str, attributes: Mapping[str, str | int | float], amount: int = 1) -> None:
    """Count ``amount`` events on the metric ``name`` and add one span event for them.

    Callers may pass a shared, cached attributes mapping: it is never modified.
    """
    counter = _counters.get(name) or _counter(name)
    counter.add(amount, attributes)
    span_event(name, attributes)


_PREFIX = len("resilience.")
