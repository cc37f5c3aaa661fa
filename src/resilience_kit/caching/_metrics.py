"""Cache metrics: a snapshot type, and OpenTelemetry counters observed from the snapshots.

Counting a hit is one integer increment on the cache; OpenTelemetry reads the totals
through observable counters when it collects, so a fresh hit never calls into
OpenTelemetry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

from resilience_kit import _telemetry

if TYPE_CHECKING:
    pass

__all__ = ("METRIC_NAMES", "CacheStats")


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a `PolicyCache`'s counters, all since the cache was created.

    ``hits + misses`` is the number of gets; every miss ended in a load's value, a stale
    serve, a fail-open serve, a denial, or an exception the policy does not handle.

    Each counter but ``loads_in_progress`` is also an OpenTelemetry counter on the meter
    ``resilience_kit``, named ``resilience.cache.<field>`` (``resilience.cache.hits``,
    ``resilience.cache.fail_open_serves``, ...), with attributes ``cache`` (the name)
    and ``policy`` (``fail_closed``, ``fail_open``, ``serve_stale``).

    Attributes:
        hits: gets answered from a fresh record.
        misses: gets that found no fresh record.
        loads: loader calls started, background refreshes included.
        load_failures: loader calls that raised an exception the policy handles.
        stale_serves: expired records served by `ServeStale`.
        fail_open_serves: last known good values and defaults served by `FailOpen`.
        denials: gets that raised `CacheLoadError`.
        invalidations: calls of ``invalidate``, ``invalidate_all`` and ``put``.
        loads_in_progress: loads running now.

    Examples:
        >>> CacheStats(hits=3, misses=1).hit_ratio
        0.75
    """

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_failures: int = 0
    stale_serves: int = 0
    fail_open_serves: int = 0
    denials: int = 0
    invalidations: int = 0
    loads_in_progress: int = 0

    @property
    def hit_ratio(self) -> float | None:
        """``hits / (hits + misses)``, or ``None`` before the first get."""
        gets = self.hits + self.misses
        return self.hits / gets if gets else None


#: The counted fields and their OpenTelemetry names (meter ``resilience_kit``).
METRIC_NAMES: dict[str, str] = {
    "hits": "resilience.cache.hits",
    "misses": "resilience.cache.misses",
    "loads": "resilience.cache.loads",
    "load_failures": "resilience.cache.load_failures",
    "stale_serves": "resilience.cache.stale_serves",
    "fail_open_serves": "resilience.cache.fail_open_serves",
    "denials": "resilience.cache.denials",
    "invalidations": "resilience.cache.invalidations",
}
assert set(METRIC_NAMES) | {"loads_in_progress"} == {f.name for f in fields(CacheStats)}  # noqa: S101

_DESCRIPTIONS = {
    "hits": "Cache gets answered from a fresh record",
    "misses": "Cache gets that found no fresh record",
    "loads": "Cache loader calls started, background refreshes included",
    "load_failures": "Cache loader calls that failed",
    "stale_serves": "Expired records served within ServeStale's windows",
    "fail_open_serves": "Last known good values and defaults served by FailOpen",
    "denials": "Cache gets denied with CacheLoadError",
    "invalidations": "Cache invalidations (invalidate, invalidate_all, put)",
}


def _reader(field: str) -> Callable[[_Observed], list[tuple[int, dict[str, str]]]]:
    def read(cache: _Observed) -> list[tuple[int, dict[str, str]]]:
        return [(getattr(cache.stats(), field), {"cache": cache.name, "policy": cache.policy_name})]

    return read


class _Observed(Protocol):
    name: str

    def stats(self) -> CacheStats: ...

    @property
    def policy_name(self) -> str: ...


def track(cache: _Observed) -> None:
    """Report ``cache``'s counters through observable counters (see `telemetry.configure`)."""
    for field, name in METRIC_NAMES.items():
        _telemetry.observe(name, cache, _reader(field), _DESCRIPTIONS[field])
