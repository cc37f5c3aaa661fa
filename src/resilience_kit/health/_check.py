"""Health checks: named probes with timeouts, their verdicts and the whole's status.

One core, one thin driver (STYLE.md 11): what a check's outcome means (`interpret`,
`failure`, `timed_out`), what a set of verdicts adds up to (`aggregate`) and whether a
cached verdict still holds are pure functions; `HealthChecks.run` only does the I/O —
it calls the probes concurrently, each under its own deadline on the injected clock.
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, TypeVar

import anyio

from resilience_kit import _telemetry
from resilience_kit._checks import check_positive
from resilience_kit.clock import Clock, SystemClock, TimerClock, resolve_clock
from resilience_kit.errors import ConfigurationError
from resilience_kit.policies._deadline import deadline_scope

__all__ = (
    "CheckReport",
    "CheckResult",
    "HealthCheck",
    "HealthChecks",
    "HealthReport",
    "HealthStatus",
    "Observed",
)

Observed = str | int | float | bool | None
"""A value a check reports beside its verdict (a count, an age, a state name)."""

_NAME_MAX_LENGTH = 100
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_DETAIL_MAX_LENGTH = 500
_NO_OBSERVATIONS: Mapping[str, Observed] = MappingProxyType({})


class HealthStatus(str, enum.Enum):
    """How well a check, or a whole service, is doing: HEALTHY < DEGRADED < UNHEALTHY.

    - ``HEALTHY``: everything works.
    - ``DEGRADED``: it serves, but something it relies on is impaired (a breaker is
      half-open, a backlog grows, a non-critical dependency is down).
    - ``UNHEALTHY``: it cannot do its job; a readiness probe answers 503.

    Examples:
        >>> HealthStatus.DEGRADED.value
        'degraded'
        >>> HealthStatus.worst([HealthStatus.HEALTHY, HealthStatus.DEGRADED])
        <HealthStatus.DEGRADED: 'degraded'>
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    def __str__(self) -> str:
        return self.value

    @property
    def severity(self) -> int:
        """0 for HEALTHY, 1 for DEGRADED, 2 for UNHEALTHY (the value of the health gauges).

        Examples:
            >>> HealthStatus.UNHEALTHY.severity
            2
        """
        return _SEVERITY[self]

    @staticmethod
    def worst(statuses: Iterable[HealthStatus]) -> HealthStatus:
        """The most severe of ``statuses``; HEALTHY when there are none.

        Examples:
            >>> HealthStatus.worst([])
            <HealthStatus.HEALTHY: 'healthy'>
        """
        worst = HealthStatus.HEALTHY
        for status in statuses:
            if _SEVERITY[status] > _SEVERITY[worst]:
                worst = status
        return worst


def _no_observations() -> Mapping[str, Observed]:
    return _NO_OBSERVATIONS


_SEVERITY = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


def _observations(values: Mapping[str, Observed]) -> Mapping[str, Observed]:
    if not values:
        return _NO_OBSERVATIONS
    for key, value in values.items():
        if not isinstance(key, str):
            raise TypeError(f"observed keys must be str, got {key!r}")
        if value is not None and not isinstance(value, (str, int, float)):
            raise TypeError(
                f"observed[{key!r}] must be a str, number, bool or None, got {type(value).__name__}"
            )
    return MappingProxyType(dict(values))


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one probe says: a status, an optional detail and observed values.

    A check's callable returns one (or a bare `HealthStatus`, or ``True``/``None`` for
    healthy and ``False`` for unhealthy); raising an exception or running past the
    timeout makes the check UNHEALTHY.

    Attributes:
        status: the verdict.
        detail: a short human-readable reason, if any.
        observed: values measured on the way (JSON scalars), e.g. ``{"backlog": 12}``.

    Raises:
        TypeError: an observed value is not a JSON scalar.

    Examples:
        >>> CheckResult.degraded("3 rows waiting", backlog=3)
        CheckResult(status=<HealthStatus.DEGRADED: 'degraded'>, detail='3 rows waiting', observed=mappingproxy({'backlog': 3}))
    """  # noqa: E501  (a doctest's output is one line)

    status: HealthStatus
    detail: str | None = None
    observed: Mapping[str, Observed] = field(default_factory=_no_observations)

    def __post_init__(self) -> None:
        if not isinstance(self.status, HealthStatus):
            raise TypeError(f"status must be a HealthStatus, got {self.status!r}")
        # A read-only copy: results are cached and shared between reports.
        object.__setattr__(self, "observed", _observations(self.observed))

    @classmethod
    def healthy(cls, detail: str | None = None, **observed: Observed) -> CheckResult:
        """A HEALTHY result.

        Examples:
            >>> CheckResult.healthy(rows=0).status
            <HealthStatus.HEALTHY: 'healthy'>
        """
        return cls(HealthStatus.HEALTHY, detail, observed)

    @classmethod
    def degraded(cls, detail: str | None = None, **observed: Observed) -> CheckResult:
        """A DEGRADED result.

        Examples:
            >>> CheckResult.degraded("slow").detail
            'slow'
        """
        return cls(HealthStatus.DEGRADED, detail, observed)

    @classmethod
    def unhealthy(cls, detail: str | None = None, **observed: Observed) -> CheckResult:
        """An UNHEALTHY result.

        Examples:
            >>> CheckResult.unhealthy("down").status.value
            'unhealthy'
        """
        return cls(HealthStatus.UNHEALTHY, detail, observed)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class CheckReport:
    """One check's verdict in a `HealthReport`.

    Attributes:
        name: the check's name.
        status: the check's own verdict.
        critical: whether its failure makes the whole UNHEALTHY (else at worst DEGRADED).
        duration: seconds the probe took (0 for a cached verdict), on the clock.
        checked_at: when the probe ran: wall-clock seconds since the epoch.
        detail: the reason, if any (an exception's type and message, a timeout).
        observed: values the probe measured.
        cached: ``True`` when the verdict was reused from an earlier run (``cache_for``).

    Examples:
        >>> report = CheckReport("cache", HealthStatus.UNHEALTHY, critical=False)
        >>> report.impact
        <HealthStatus.DEGRADED: 'degraded'>
    """

    name: str
    status: HealthStatus
    critical: bool = True
    duration: float = 0.0
    checked_at: float = 0.0
    detail: str | None = None
    observed: Mapping[str, Observed] = field(default_factory=_no_observations)
    cached: bool = False

    @property
    def impact(self) -> HealthStatus:
        """What this verdict makes of the whole: a non-critical failure only degrades it.

        Examples:
            >>> CheckReport("db", HealthStatus.UNHEALTHY).impact.value
            'unhealthy'
        """
        return impact(self.status, critical=self.critical)

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready data (``checked_at`` in ISO 8601, UTC).

        Examples:
            >>> CheckReport("db", HealthStatus.HEALTHY, checked_at=0.0).to_dict()["checked_at"]
            '1970-01-01T00:00:00Z'
        """
        return {
            "status": self.status.value,
            "critical": self.critical,
            "duration": self.duration,
            "checked_at": _iso(self.checked_at),
            "detail": self.detail,
            "observed": dict(self.observed),
            "cached": self.cached,
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The verdict of every check, and what they add up to.

    Attributes:
        status: the worst of the checks' impacts (see `CheckReport.impact`); HEALTHY
            with no checks.
        checks: the checks' verdicts, in the order the checks were added.
        checked_at: when the run started: wall-clock seconds since the epoch.
        duration: seconds the whole run took, on the clock.

    Examples:
        >>> report = HealthReport.of(
        ...     [
        ...         CheckReport("db", HealthStatus.HEALTHY),
        ...         CheckReport("search", HealthStatus.UNHEALTHY, critical=False),
        ...     ]
        ... )
        >>> report.status.value, report["search"].status.value
        ('degraded', 'unhealthy')
    """

    status: HealthStatus
    checks: tuple[CheckReport, ...] = ()
    checked_at: float = 0.0
    duration: float = 0.0

    @classmethod
    def of(
        cls, checks: Iterable[CheckReport], *, checked_at: float = 0.0, duration: float = 0.0
    ) -> HealthReport:
        """A report whose status is aggregated from ``checks`` (a pure function of them).

        Examples:
            >>> HealthReport.of([]).status
            <HealthStatus.HEALTHY: 'healthy'>
        """
        checks = tuple(checks)
        return cls(aggregate(checks), checks, checked_at, duration)

    def __getitem__(self, name: str) -> CheckReport:
        """The verdict of the check named ``name``.

        Raises:
            KeyError: no check has that name.
        """
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: the body of a readiness endpoint.

        Examples:
            >>> import json
            >>> report = HealthReport.of([CheckReport("db", HealthStatus.HEALTHY)])
            >>> data = report.to_dict()
            >>> data["status"], data["checks"]["db"]["status"]
            ('healthy', 'healthy')
            >>> json.loads(json.dumps(data)) == data
            True
        """
        return {
            "status": self.status.value,
            "checked_at": _iso(self.checked_at),
            "duration": self.duration,
            "checks": {check.name: check.to_dict() for check in self.checks},
        }


# -- the pure decisions ---------------------------------------------------------------------


def impact(status: HealthStatus, *, critical: bool) -> HealthStatus:
    """What one check's status makes of the whole."""
    if critical or status is not HealthStatus.UNHEALTHY:
        return status
    return HealthStatus.DEGRADED


def aggregate(checks: Iterable[CheckReport]) -> HealthStatus:
    """The whole's status: the most severe impact of any check."""
    return HealthStatus.worst(impact(check.status, critical=check.critical) for check in checks)


def _short(text: str) -> str:
    return text if len(text) <= _DETAIL_MAX_LENGTH else text[: _DETAIL_MAX_LENGTH - 1] + "…"


def interpret(value: object) -> CheckResult:
    """What a probe's return value means."""
    if isinstance(value, CheckResult):
        return value
    if isinstance(value, HealthStatus):
        return CheckResult(value)
    if value is True or value is None:
        return CheckResult(HealthStatus.HEALTHY)
    if value is False:
        return CheckResult(HealthStatus.UNHEALTHY, "the check returned False")
    # A bug in the probe, but a health endpoint must answer anyway.
    return CheckResult(
        HealthStatus.UNHEALTHY,
        f"the check returned {type(value).__name__}, not a CheckResult, HealthStatus or bool",
    )


def failure(error: BaseException) -> CheckResult:
    """The verdict on a probe that raised ``error``."""
    message = str(error)
    name = type(error).__name__
    return CheckResult(
        HealthStatus.UNHEALTHY,
        _short(f"{name}: {message}" if message else name),
        {"error_type": name},
    )


def timed_out(seconds: float) -> CheckResult:
    """The verdict on a probe that did not answer within ``seconds``."""
    return CheckResult(
        HealthStatus.UNHEALTHY, f"no answer within {seconds:g}s", {"error_type": "TimeoutError"}
    )


def still_fresh(entry: tuple[float, CheckReport] | None, now: float) -> CheckReport | None:
    """The cached verdict if it has not expired at ``now`` (monotonic), else ``None``."""
    if entry is None or now >= entry[0]:
        return None
    return entry[1]


def check_name(parameter: str, value: object) -> str:
    """A check's name: a non-empty str of at most 100 printable characters."""
    if not isinstance(value, str):
        raise ConfigurationError(parameter, f"must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ConfigurationError(parameter, "must not be empty")
    if len(value) > _NAME_MAX_LENGTH:
        raise ConfigurationError(
            parameter, f"must be at most {_NAME_MAX_LENGTH} characters, got {len(value)}"
        )
    if _CONTROL.search(value):
        raise ConfigurationError(parameter, "must not contain control characters")
    return value


# -- a check and the driver -----------------------------------------------------------------

Probe = Callable[[], object | Awaitable[object]]
ProbeT = TypeVar("ProbeT", bound=Callable[[], Any])


class HealthCheck:
    """A named probe with its own timeout, criticality and result cache.

    The probe is a callable without arguments, sync or async, returning a `CheckResult`
    (or a `HealthStatus`; ``True`` or ``None`` mean healthy, ``False`` unhealthy). A
    probe that raises, or runs past ``timeout``, is UNHEALTHY, with the error in the
    detail: a check never crashes the endpoint. A sync probe runs on the event loop and
    cannot be interrupted, so keep it cheap (reading a counter); do blocking I/O in an
    async probe (``await anyio.to_thread.run_sync(...)``).

    Args:
        name: the check's name in reports, JSON and metrics: unique per `HealthChecks`.
        probe: the callable asked for a verdict.
        timeout: seconds the probe may take, on the `HealthChecks` clock.
        critical: a failing critical check makes the whole UNHEALTHY; a failing
            non-critical one only DEGRADED.
        cache_for: seconds a verdict is reused before the probe runs again (0: every
            run asks), so that a monitor polling every second does not hammer a
            database.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> check = HealthCheck("db", lambda: True, timeout=2.0, cache_for=5.0)
        >>> check
        HealthCheck('db', timeout=2.0, critical=True, cache_for=5.0)
    """

    __slots__ = ("cache_for", "critical", "name", "probe", "timeout")

    def __init__(
        self,
        name: str,
        probe: Probe,
        *,
        timeout: float = 5.0,
        critical: bool = True,
        cache_for: float = 0.0,
    ) -> None:
        self.name = check_name("name", name)
        if not callable(probe):
            raise ConfigurationError("probe", f"must be callable, got {probe!r}")
        if inspect.isgeneratorfunction(probe) or inspect.isasyncgenfunction(probe):
            raise ConfigurationError("probe", f"must return a verdict, not a generator: {probe!r}")
        if timeout is None:
            raise ConfigurationError("timeout", "must be a number, got None")
        check_positive("timeout", timeout)
        if not isinstance(critical, bool):
            raise ConfigurationError("critical", f"must be a bool, got {critical!r}")
        if cache_for is None:
            raise ConfigurationError("cache_for", "must be a number, got None")
        check_positive("cache_for", cache_for, allow_zero=True)
        self.probe = probe
        self.timeout = float(timeout)
        self.critical = critical
        self.cache_for = float(cache_for)

    def __repr__(self) -> str:
        return (
            f"HealthCheck({self.name!r}, timeout={self.timeout}, critical={self.critical}, "
            f"cache_for={self.cache_for})"
        )


def _check_clock(clock: Clock | None) -> Clock | None:
    if clock is not None and not isinstance(clock, (SystemClock, TimerClock)):
        raise ConfigurationError(
            "clock", "must be SystemClock or have call_at() (like testing.VirtualClock)"
        )
    return clock


class HealthChecks:
    """A service's health checks: run them all at once and add up their verdicts.

    `run` calls every probe concurrently (an anyio task group), each under its own
    deadline on ``clock`` — on `resilience_kit.testing.VirtualClock` timeouts fire
    without waiting. The result is a `HealthReport`: HEALTHY when every check is,
    UNHEALTHY when a critical check is, DEGRADED otherwise. The latest report is
    exported to OpenTelemetry as the gauges ``resilience.health.status`` and
    ``resilience.health.check.status`` (0 healthy, 1 degraded, 2 unhealthy).

    Serve the report over HTTP with `HealthEndpoint`.

    Args:
        checks: the checks; their names must differ.
        name: the service's name (the ``health`` attribute of the metrics).
        clock: the clock for timeouts, durations and caching (default: the system
            clock, or the one `resilience_kit.testing.use_clock` installed).

    Raises:
        ConfigurationError: for a bad parameter (a duplicate check name, a clock
            without timers); the message names it.

    Examples:
        >>> import anyio
        >>> from resilience_kit.health import CheckResult, HealthCheck, HealthChecks
        >>> health = HealthChecks([HealthCheck("db", lambda: True)], name="billing")
        >>> @health.check("search", critical=False)
        ... async def search() -> CheckResult:
        ...     return CheckResult.unhealthy("index offline")
        >>> report = anyio.run(health.run)
        >>> report.status.value, report["search"].detail
        ('degraded', 'index offline')
    """

    __slots__ = ("__weakref__", "_cache", "_checks", "_clock", "_last", "name")

    def __init__(
        self,
        checks: Iterable[HealthCheck] = (),
        *,
        name: str = "service",
        clock: Clock | None = None,
    ) -> None:
        self.name = check_name("name", name)
        self._clock = _check_clock(clock)
        self._checks: dict[str, HealthCheck] = {}
        self._cache: dict[str, tuple[float, CheckReport]] = {}
        self._last: HealthReport | None = None
        if isinstance(checks, HealthCheck):
            raise ConfigurationError("checks", "must be an iterable of HealthCheck, not one")
        for check in checks:
            self._add("checks", check)
        _telemetry.observe(_telemetry.HEALTH_STATUS, self, HealthChecks._observe_status)
        _telemetry.observe(_telemetry.HEALTH_CHECK_STATUS, self, HealthChecks._observe_checks)

    def __repr__(self) -> str:
        return f"HealthChecks({self.name!r}, checks={list(self._checks)!r})"

    @property
    def checks(self) -> tuple[HealthCheck, ...]:
        """The checks, in the order they were added.

        Examples:
            >>> [check.name for check in HealthChecks([HealthCheck("db", bool)]).checks]
            ['db']
        """
        return tuple(self._checks.values())

    @property
    def last_report(self) -> HealthReport | None:
        """The report of the latest `run`, or ``None`` before the first.

        Examples:
            >>> HealthChecks().last_report is None
            True
        """
        return self._last

    def _add(self, parameter: str, check: HealthCheck) -> HealthCheck:
        if not isinstance(check, HealthCheck):
            raise ConfigurationError(parameter, f"must be a HealthCheck, got {check!r}")
        if check.name in self._checks:
            raise ConfigurationError(parameter, f"two checks are named {check.name!r}")
        self._checks[check.name] = check
        return check

    def add(self, check: HealthCheck) -> HealthCheck:
        """Add ``check``; returns it.

        Raises:
            ConfigurationError: another check has its name (parameter ``check``).

        Examples:
            >>> health = HealthChecks()
            >>> health.add(HealthCheck("db", lambda: True)).name
            'db'
        """
        return self._add("check", check)

    def check(
        self,
        name: str | None = None,
        *,
        timeout: float = 5.0,
        critical: bool = True,
        cache_for: float = 0.0,
    ) -> Callable[[ProbeT], ProbeT]:
        """Decorate a probe to add it as a check (named after the function by default).

        Args:
            name: the check's name; the function's ``__name__`` if ``None``.
            timeout: see `HealthCheck`.
            critical: see `HealthCheck`.
            cache_for: see `HealthCheck`.

        Raises:
            ConfigurationError: for a bad parameter, or a name already taken.

        Examples:
            >>> health = HealthChecks()
            >>> @health.check(timeout=1.0)
            ... def queue() -> bool:
            ...     return True
            >>> health.checks[0].name
            'queue'
        """

        def add(probe: ProbeT) -> ProbeT:
            label = check_name(
                "name", name if name is not None else getattr(probe, "__name__", None)
            )
            check = HealthCheck(
                label, probe, timeout=timeout, critical=critical, cache_for=cache_for
            )
            self._add("name", check)
            return probe

        return add

    async def run(self) -> HealthReport:
        """Run every check concurrently and return the report (never raises for a check).

        Examples:
            >>> import anyio
            >>> def broken() -> bool:
            ...     raise ConnectionError("refused")
            >>> report = anyio.run(HealthChecks([HealthCheck("db", broken)]).run)
            >>> report.status.value, report["db"].detail
            ('unhealthy', 'ConnectionError: refused')
        """
        clock = resolve_clock(self._clock)
        started = clock.monotonic()
        checked_at = clock.time()
        checks = tuple(self._checks.values())
        verdicts: list[CheckReport | None] = [None] * len(checks)
        if len(checks) == 1:
            verdicts[0] = await self._run_one(checks[0], clock)
        else:
            async with anyio.create_task_group() as group:
                for index, check in enumerate(checks):
                    group.start_soon(self._fill, verdicts, index, check, clock)
        report = HealthReport.of(
            [verdict for verdict in verdicts if verdict is not None],
            checked_at=checked_at,
            duration=clock.monotonic() - started,
        )
        self._last = report
        return report

    async def _fill(
        self, verdicts: list[CheckReport | None], index: int, check: HealthCheck, clock: Clock
    ) -> None:
        verdicts[index] = await self._run_one(check, clock)

    async def _run_one(self, check: HealthCheck, clock: Clock) -> CheckReport:
        started = clock.monotonic()
        cached = still_fresh(self._cache.get(check.name), started)
        if cached is not None:
            return replace(cached, duration=0.0, cached=True)
        checked_at = clock.time()
        result: CheckResult | None = None
        with deadline_scope(clock, check.timeout):
            try:
                value = check.probe()
                if inspect.isawaitable(value):
                    value = await value
                result = interpret(value)
            except Exception as error:  # noqa: BLE001  (a failing probe is a verdict)
                result = failure(error)
        if result is None:  # the deadline cancelled the probe
            result = timed_out(check.timeout)
        finished = clock.monotonic()
        report = CheckReport(
            name=check.name,
            status=result.status,
            critical=check.critical,
            duration=max(0.0, finished - started),
            checked_at=checked_at,
            detail=result.detail,
            observed=result.observed,
        )
        if check.cache_for > 0:
            self._cache[check.name] = (finished + check.cache_for, report)
        return report

    def _observe_status(self) -> list[tuple[float, dict[str, str]]]:
        last = self._last
        if last is None:
            return []
        return [(float(last.status.severity), {"health": self.name})]

    def _observe_checks(self) -> list[tuple[float, dict[str, str]]]:
        last = self._last
        if last is None:
            return []
        return [
            (float(check.status.severity), {"health": self.name, "check": check.name})
            for check in last.checks
        ]
