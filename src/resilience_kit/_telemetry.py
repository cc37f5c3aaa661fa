"""Instrumentation internals; the public names live in `resilience_kit.telemetry`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, MeterProvider
    from opentelemetry.trace import TracerProvider

METER_NAME = "resilience_kit"
RETRY_ATTEMPTS = "resilience.retry.attempts"
BREAKER_TRANSITIONS = "resilience.circuit_breaker.transitions"
BREAKER_REJECTIONS = "resilience.circuit_breaker.rejections"
BULKHEAD_REJECTIONS = "resilience.bulkhead.rejections"
TIMEOUT_EXPIRATIONS = "resilience.timeout.expirations"
FALLBACK_ACTIVATIONS = "resilience.fallback.activations"
CHAOS_INJECTIONS = "resilience.chaos.injections"

_DESCRIPTIONS = {
    RETRY_ATTEMPTS: "Retries scheduled and retry give-ups",
    BREAKER_TRANSITIONS: "Circuit breaker state transitions",
    BREAKER_REJECTIONS: "Calls rejected by a circuit breaker",
    BULKHEAD_REJECTIONS: "Calls rejected by a bulkhead",
    TIMEOUT_EXPIRATIONS: "Calls cancelled by a timeout",
    FALLBACK_ACTIVATIONS: "Fallback values served",
    CHAOS_INJECTIONS: "Faults injected by chaos policies",
}

logger = logging.getLogger("resilience_kit")
logger.addHandler(logging.NullHandler())  # a library never prints unless configured

_meter_provider: MeterProvider | None = None
_tracer_provider: TracerProvider | None = None
_counters: dict[str, Counter] = {}


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


def _counter(name: str) -> Counter:
    counter = _counters.get(name)
    if counter is None:
        provider = _meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter(METER_NAME)
        counter = meter.create_counter(name, unit="1", description=_DESCRIPTIONS[name])
        _counters[name] = counter
    return counter


def emit(name: str, attributes: Mapping[str, str | int | float]) -> None:
    """Count one event on the metric ``name`` and add it to the current span."""
    _counter(name).add(1, dict(attributes))
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name.removeprefix("resilience."), dict(attributes))
