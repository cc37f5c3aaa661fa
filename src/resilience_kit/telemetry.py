"""OpenTelemetry instrumentation: what resilience-kit reports, under which names.

Only ``opentelemetry-api`` is required: until an SDK is installed every instrument is a
no-op. Nothing is recorded on the happy path (a first-try success, a closed breaker
admitting a call); events happen when a policy acts.

Metrics (meter ``resilience_kit``) of the call policies, every one a counter:

| name | attributes | counts |
|---|---|---|
| ``resilience.retry.attempts`` | ``policy``, ``outcome``, ``reason`` | retries, give-ups |
| ``resilience.circuit_breaker.transitions`` | ``breaker``, ``from_state``, ``to_state`` | changes |
| ``resilience.circuit_breaker.rejections`` | ``breaker``, ``state`` | refused calls |
| ``resilience.circuit_breaker.thresholds_exceeded`` | ``breaker``, ``state``, ``threshold`` | — |
| ``resilience.bulkhead.rejections`` | ``bulkhead`` | refused calls |
| ``resilience.timeout.expirations`` | ``timeout`` | cancelled calls |
| ``resilience.fallback.activations`` | ``fallback``, ``error_type`` | substitutes served |
| ``resilience.chaos.injections`` | ``chaos``, ``kind`` | injected faults |

Messaging adds (see the messaging docs for the outcomes):

- ``resilience.outbox.events``: counter, attributes ``relay`` and ``outcome``
  (``published``, ``retried``, ``dead_lettered``, ``blocked``, ``lost_lease``);
- ``resilience.outbox.backlog``: gauge of unpublished rows as last measured, attributes
  ``relay`` and ``state`` (``pending``, ``leased``, ``blocked``);
- ``resilience.outbox.lag``: gauge, seconds since the oldest unpublished row was added;
- ``resilience.consumer.messages``: counter, attributes ``consumer`` and ``outcome``
  (``handled``, ``duplicate``, ``dead_lettered``, ``poison``, ``unacked``);
- ``resilience.idempotency.calls``: observable counter, attributes ``idempotent`` and
  ``outcome`` (``executed``, ``replayed``, ``conflict``, ``in_progress``, ``failed``,
  ``lease_lost``).
- ``resilience.batch_writer.depth`` (gauge), ``.items`` and ``.batches`` (counters,
  attribute ``outcome``: ``written``, ``failed``), ``.batch_size`` and
  ``.write_duration`` (histograms, seconds), all with the attribute ``writer``.

Health checks add gauges of the latest run's verdicts, valued 0 (healthy), 1 (degraded)
or 2 (unhealthy): ``resilience.health.status`` (attribute ``health``) and
``resilience.health.check.status`` (attributes ``health`` and ``check``); see
`resilience_kit.health`.

Caches add observable counters ``resilience.cache.hits``, ``.misses``, ``.loads``,
``.load_failures``, ``.stale_serves``, ``.fail_open_serves``, ``.denials`` and
``.invalidations`` (attributes ``cache``, ``policy``); see `resilience_kit.caching`.

``resilience.circuit_breaker.thresholds_exceeded`` counts thresholds reached by a
METRICS_ONLY breaker (where it would have opened); ``threshold`` is ``failure_rate`` or
``slow_call_rate``. ``resilience.circuit_breaker.transitions`` counts each change of a
shared breaker once, on the instance whose write made it.

``resilience.circuit_breaker.rejections`` is an observable counter: each breaker keeps
cumulative counts per state and the counter reads them at collection time, so an open
breaker rejecting a million calls a second costs no metric call per rejection.

For retries, ``outcome`` is ``retry`` (a retry was scheduled; ``reason`` is the error
type) or ``gave_up`` (``reason`` is ``attempts``, ``deadline``, ``budget`` or
``retry_after``).

The same events are added to the current span (if one is recording) as span events
named after the metric without its ``resilience.`` prefix, e.g. ``retry.attempts``.
Logs go to the ``resilience_kit`` logger.

Examples:
    >>> from opentelemetry.sdk.metrics import MeterProvider
    >>> from resilience_kit import telemetry
    >>> telemetry.configure(meter_provider=MeterProvider())
    >>> telemetry.configure()  # back to the global providers
"""

from resilience_kit._telemetry import (
    BREAKER_REJECTIONS as BREAKER_REJECTIONS,
)
from resilience_kit._telemetry import (
    BREAKER_THRESHOLDS_EXCEEDED as BREAKER_THRESHOLDS_EXCEEDED,
)
from resilience_kit._telemetry import (
    BREAKER_TRANSITIONS as BREAKER_TRANSITIONS,
)
from resilience_kit._telemetry import (
    BULKHEAD_REJECTIONS as BULKHEAD_REJECTIONS,
)
from resilience_kit._telemetry import (
    CHAOS_INJECTIONS as CHAOS_INJECTIONS,
)
from resilience_kit._telemetry import (
    FALLBACK_ACTIVATIONS as FALLBACK_ACTIVATIONS,
)
from resilience_kit._telemetry import METER_NAME as METER_NAME
from resilience_kit._telemetry import RETRY_ATTEMPTS as RETRY_ATTEMPTS
from resilience_kit._telemetry import (
    TIMEOUT_EXPIRATIONS as TIMEOUT_EXPIRATIONS,
)
from resilience_kit._telemetry import configure as configure
from resilience_kit._telemetry import logger as logger

__all__ = (
    "BREAKER_REJECTIONS",
    "BREAKER_THRESHOLDS_EXCEEDED",
    "BREAKER_TRANSITIONS",
    "BULKHEAD_REJECTIONS",
    "CHAOS_INJECTIONS",
    "FALLBACK_ACTIVATIONS",
    "METER_NAME",
    "RETRY_ATTEMPTS",
    "TIMEOUT_EXPIRATIONS",
    "configure",
    "logger",
)
