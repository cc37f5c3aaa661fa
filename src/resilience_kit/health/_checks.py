"""Ready-made checks: breakers, stores, outbox backlog, consumer lag, batch writers, any number.

Each factory returns a `HealthCheck`. The objects they watch are duck-typed (small
Protocols below), so that importing `resilience_kit.health` never imports messaging,
the stores or a driver.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from resilience_kit.errors import ConfigurationError
from resilience_kit.health._check import (
    CheckResult,
    HealthCheck,
    HealthStatus,
    Observed,
    check_name,
)

if TYPE_CHECKING:
    from resilience_kit.messaging._batch import WriterStats
    from resilience_kit.messaging._records import OutboxStatus

__all__ = (
    "batch_writer_check",
    "breaker_check",
    "lag_check",
    "outbox_check",
    "store_check",
    "threshold_check",
)

Number = int | float
Reading = Callable[[], Number | Awaitable[Number]]


class _Breaker(Protocol):
    """What `breaker_check` reads: a `CircuitBreaker`'s name and state."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> object: ...


class _Pingable(Protocol):
    """What `store_check` calls: a store's ``ping``."""

    async def ping(self) -> None: ...


class _OutboxStatusSource(Protocol):
    """What `outbox_check` reads: an `OutboxStore` (``store.outbox``)."""

    async def status(self) -> OutboxStatus: ...


class _WriterStatsSource(Protocol):
    """What `batch_writer_check` reads: a `BatchWriter`'s ``stats``."""

    @property
    def stats(self) -> WriterStats: ...


# -- pure grading ------------------------------------------------------------------------


def grade(
    value: float, *, degraded_above: float | None, unhealthy_above: float | None
) -> HealthStatus:
    """The status of ``value`` against two thresholds (strictly above is worse)."""
    if math.isnan(value):
        return HealthStatus.UNHEALTHY
    if unhealthy_above is not None and value > unhealthy_above:
        return HealthStatus.UNHEALTHY
    if degraded_above is not None and value > degraded_above:
        return HealthStatus.DEGRADED
    return HealthStatus.HEALTHY


def _thresholds(
    degraded: float | None,
    unhealthy: float | None,
    *,
    names: tuple[str, str] = ("degraded_above", "unhealthy_above"),
    required: bool = True,
) -> tuple[float | None, float | None]:
    for parameter, value in zip(names, (degraded, unhealthy), strict=True):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigurationError(parameter, f"must be a number or None, got {value!r}")
        if not math.isfinite(value):
            raise ConfigurationError(parameter, f"must be finite, got {value!r}")
    if required and degraded is None and unhealthy is None:
        raise ConfigurationError(names[0], f"give {names[0]}, {names[1]} or both")
    if degraded is not None and unhealthy is not None and unhealthy < degraded:
        raise ConfigurationError(names[1], f"must be >= {names[0]} ({degraded}), got {unhealthy}")
    return (
        None if degraded is None else float(degraded),
        None if unhealthy is None else float(unhealthy),
    )


def _measure(
    what: str,
    value: float,
    *,
    degraded_above: float | None,
    unhealthy_above: float | None,
    unit: str,
) -> tuple[HealthStatus, str | None]:
    status = grade(value, degraded_above=degraded_above, unhealthy_above=unhealthy_above)
    if status is HealthStatus.HEALTHY:
        return status, None
    if math.isnan(value):
        return status, f"{what} is not a number"
    limit = unhealthy_above if status is HealthStatus.UNHEALTHY else degraded_above
    return status, f"{what} is {value:g}{unit}, above {limit:g}{unit}"


async def _read(read: Reading) -> float:
    value = read()
    if inspect.isawaitable(value):
        value = await value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"the reading returned {type(value).__name__}, not a number")
    return float(value)


def _check_reading(read: object) -> None:
    if not callable(read):
        raise ConfigurationError("read", f"must be callable, got {read!r}")


# -- the factories -----------------------------------------------------------------------


def threshold_check(
    name: str,
    read: Reading,
    *,
    degraded_above: float | None = None,
    unhealthy_above: float | None = None,
    unit: str = "",
    critical: bool = True,
    timeout: float = 5.0,
    cache_for: float = 0.0,
) -> HealthCheck:
    """A check on any number: DEGRADED above one threshold, UNHEALTHY above another.

    ``read`` (sync or async, no arguments) returns the number — a queue's depth, a
    disk's fill ratio, seconds since the last successful sync. The value is strictly
    compared: ``value > unhealthy_above`` is UNHEALTHY, else ``value >
    degraded_above`` is DEGRADED, else HEALTHY; NaN is UNHEALTHY, and so is a reading
    that raises or returns something that is not a number. The report's ``observed``
    holds ``value`` and the thresholds.

    Args:
        name: the check's name.
        read: returns the current value.
        degraded_above: values above it degrade; ``None`` for no such threshold.
        unhealthy_above: values above it are unhealthy; ``None`` for none. At least
            one threshold is required; if both, ``unhealthy_above >= degraded_above``.
        unit: appended to numbers in the detail (``"s"``, ``" rows"``).
        critical: see `HealthCheck`.
        timeout: see `HealthCheck`.
        cache_for: see `HealthCheck`.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> import anyio
        >>> from resilience_kit.health import HealthChecks
        >>> queue: list[str] = ["a"] * 120
        >>> check = threshold_check(
        ...     "queue", lambda: len(queue), degraded_above=100, unhealthy_above=1000,
        ...     unit=" jobs",
        ... )
        >>> report = anyio.run(HealthChecks([check]).run)
        >>> report["queue"].status.value, report["queue"].detail
        ('degraded', 'queue is 120 jobs, above 100 jobs')
    """
    check_name("name", name)
    _check_reading(read)
    degraded, unhealthy = _thresholds(degraded_above, unhealthy_above)
    if not isinstance(unit, str):
        raise ConfigurationError("unit", f"must be a str, got {unit!r}")

    async def probe() -> CheckResult:
        value = await _read(read)
        status, detail = _measure(
            name, value, degraded_above=degraded, unhealthy_above=unhealthy, unit=unit
        )
        return CheckResult(
            status,
            detail,
            {"value": value, "degraded_above": degraded, "unhealthy_above": unhealthy},
        )

    return HealthCheck(name, probe, timeout=timeout, critical=critical, cache_for=cache_for)


def lag_check(
    read: Reading,
    *,
    name: str = "consumer_lag",
    degraded_above: float | None = None,
    unhealthy_above: float | None = None,
    unit: str = " messages",
    critical: bool = False,
    timeout: float = 5.0,
    cache_for: float = 0.0,
) -> HealthCheck:
    """A check on a consumer's lag: how far behind the messages it has yet to handle.

    What lag is depends on the transport, so ``read`` says (see the health docs for
    recipes): with `resilience_kit.transports.MemoryBus` it is
    ``bus.backlog(topic, group)``, the messages the group has not acknowledged; with
    Redis Streams, a group's ``lag`` plus ``pending`` from ``XINFO GROUPS``; with
    Kafka, the end offsets minus the group's committed offsets, summed over the
    partitions. Lag in seconds (the age of the oldest unhandled message) works too:
    pass ``unit="s"``.

    Non-critical by default: a lagging consumer makes the service DEGRADED — taking
    the instance out of a load balancer would not help it catch up.

    Args:
        read: returns the current lag (sync or async).
        name: the check's name.
        degraded_above: lag above it degrades.
        unhealthy_above: lag above it is unhealthy.
        unit: appended to numbers in the detail.
        critical: see `HealthCheck`.
        timeout: see `HealthCheck`.
        cache_for: see `HealthCheck`.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> import anyio
        >>> from resilience_kit.health import HealthChecks
        >>> from resilience_kit.transports import MemoryBus
        >>> bus = MemoryBus()
        >>> subscription = bus.subscribe("orgs", group="mailer")
        >>> check = lag_check(lambda: bus.backlog("orgs", "mailer"), degraded_above=1000)
        >>> anyio.run(HealthChecks([check]).run).status.value
        'healthy'
    """
    return threshold_check(
        name,
        read,
        degraded_above=degraded_above,
        unhealthy_above=unhealthy_above,
        unit=unit,
        critical=critical,
        timeout=timeout,
        cache_for=cache_for,
    )


_OPEN_STATES = frozenset({"open", "forced_open"})


def breaker_check(
    breaker: _Breaker,
    *,
    name: str | None = None,
    open_status: HealthStatus = HealthStatus.UNHEALTHY,
    critical: bool = False,
    timeout: float = 1.0,
) -> HealthCheck:
    """A check on a `CircuitBreaker`: open means the dependency behind it is failing.

    CLOSED, DISABLED and METRICS_ONLY are HEALTHY; HALF_OPEN (probing a recovery) is
    DEGRADED; OPEN and FORCED_OPEN are ``open_status``. The report's ``observed``
    holds ``state``.

    Non-critical by default: every instance of a service shares the dependency, so
    failing this instance's readiness would not route around it; the whole is then
    DEGRADED. Make it critical when the service is useless without the dependency.

    Args:
        breaker: the breaker to watch.
        name: the check's name (default: ``"breaker:<breaker name>"``).
        open_status: the verdict for an open breaker: UNHEALTHY or DEGRADED.
        critical: see `HealthCheck`.
        timeout: see `HealthCheck`.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> import anyio
        >>> from resilience_kit import CircuitBreaker
        >>> from resilience_kit.health import HealthChecks
        >>> breaker = CircuitBreaker("billing")
        >>> breaker.force_open()
        >>> report = anyio.run(HealthChecks([breaker_check(breaker)]).run)
        >>> report.status.value, report["breaker:billing"].detail
        ('degraded', "circuit 'billing' is forced_open")
    """
    if not hasattr(breaker, "state") or not isinstance(getattr(breaker, "name", None), str):
        raise ConfigurationError("breaker", f"must be a CircuitBreaker, got {breaker!r}")
    if open_status not in (HealthStatus.DEGRADED, HealthStatus.UNHEALTHY):
        raise ConfigurationError(
            "open_status", f"must be HealthStatus.DEGRADED or UNHEALTHY, got {open_status!r}"
        )
    label = name if name is not None else f"breaker:{breaker.name}"

    def probe() -> CheckResult:
        state = breaker.state
        value = str(getattr(state, "value", state))
        if value in _OPEN_STATES:
            status = open_status
        elif value == "half_open":
            status = HealthStatus.DEGRADED
        else:
            return CheckResult(HealthStatus.HEALTHY, None, {"state": value})
        return CheckResult(status, f"circuit {breaker.name!r} is {value}", {"state": value})

    return HealthCheck(label, probe, timeout=timeout, critical=critical)


def store_check(
    store: _Pingable,
    *,
    name: str = "store",
    critical: bool = True,
    timeout: float = 2.0,
    cache_for: float = 0.0,
) -> HealthCheck:
    """A check that a store's database answers: it calls ``await store.ping()``.

    Every backend's store has ``ping``: `SQLiteStore` and `PostgresStore` run
    ``SELECT 1``, `RedisStore` sends ``PING``, `MemoryStore` is always up. A ping that
    raises (`StoreUnavailableError` with the reason) or outlasts ``timeout`` is
    UNHEALTHY. Critical by default: a service whose own database is gone cannot serve.

    Args:
        store: a store with an async ``ping()``.
        name: the check's name.
        critical: see `HealthCheck`.
        timeout: see `HealthCheck`.
        cache_for: see `HealthCheck`; a few seconds spare the database a monitor's
            polling.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> import anyio
        >>> from resilience_kit.health import HealthChecks
        >>> from resilience_kit.stores.memory import MemoryStore
        >>> check = store_check(MemoryStore(), name="db", cache_for=5.0)
        >>> anyio.run(HealthChecks([check]).run)["db"].status.value
        'healthy'
    """
    ping = getattr(store, "ping", None)
    if not callable(ping):
        raise ConfigurationError("store", f"must have an async ping() method, got {store!r}")

    async def probe() -> None:
        await store.ping()

    return HealthCheck(name, probe, timeout=timeout, critical=critical, cache_for=cache_for)


def outbox_check(
    outbox: _OutboxStatusSource,
    *,
    name: str = "outbox",
    backlog_degraded_above: int | None = None,
    backlog_unhealthy_above: int | None = None,
    age_degraded_above: float | None = None,
    age_unhealthy_above: float | None = None,
    blocked_degraded_above: int | None = 0,
    critical: bool = False,
    timeout: float = 2.0,
    cache_for: float = 0.0,
) -> HealthCheck:
    """A check on an outbox: how many events wait to be published, and for how long.

    It reads ``await outbox.status()`` (an `OutboxStore`, such as ``store.outbox``;
    the same figures as ``resilience-kit outbox status``) and grades the backlog
    (pending plus leased rows), the age of the oldest unpublished row in seconds, and
    the blocked rows — each holds back the later events of its key until an operator
    replays it, so by default one blocked row degrades. The verdict is the worst of
    the three. The report's ``observed`` holds ``pending``, ``leased``, ``blocked``,
    ``backlog`` and ``oldest_pending_age``.

    A growing backlog means the relay is down or the broker unreachable: events are
    late, not lost. Non-critical by default, so the service reads DEGRADED.

    Args:
        outbox: an outbox store (``store.outbox`` of a SQL or in-memory backend).
        name: the check's name.
        backlog_degraded_above: backlog above it degrades.
        backlog_unhealthy_above: backlog above it is unhealthy.
        age_degraded_above: seconds of lag above which it degrades.
        age_unhealthy_above: seconds of lag above which it is unhealthy.
        blocked_degraded_above: blocked rows above it degrade (``None``: ignore them).
        critical: see `HealthCheck`.
        timeout: see `HealthCheck`.
        cache_for: see `HealthCheck`.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> import anyio
        >>> from resilience_kit.health import HealthChecks
        >>> from resilience_kit.stores.memory import MemoryStore
        >>> check = outbox_check(MemoryStore().outbox, age_degraded_above=60.0)
        >>> anyio.run(HealthChecks([check]).run)["outbox"].observed["backlog"]
        0
    """
    if not callable(getattr(outbox, "status", None)):
        raise ConfigurationError(
            "outbox", f"must have an async status() (an OutboxStore), got {outbox!r}"
        )
    backlog = _thresholds(
        backlog_degraded_above,
        backlog_unhealthy_above,
        names=("backlog_degraded_above", "backlog_unhealthy_above"),
        required=False,
    )
    age = _thresholds(
        age_degraded_above,
        age_unhealthy_above,
        names=("age_degraded_above", "age_unhealthy_above"),
        required=False,
    )
    blocked = _thresholds(
        blocked_degraded_above,
        None,
        names=("blocked_degraded_above", "blocked_unhealthy_above"),
        required=False,
    )

    async def probe() -> CheckResult:
        status = await outbox.status()
        graded = [
            _measure(
                "the backlog",
                status.backlog,
                degraded_above=backlog[0],
                unhealthy_above=backlog[1],
                unit=" rows",
            ),
            _measure(
                "the oldest unpublished row",
                status.oldest_pending_age,
                degraded_above=age[0],
                unhealthy_above=age[1],
                unit="s old",
            ),
            _measure(
                "the count of blocked rows",
                status.blocked,
                degraded_above=blocked[0],
                unhealthy_above=None,
                unit="",
            ),
        ]
        worst = HealthStatus.worst(verdict for verdict, _ in graded)
        details = [detail for verdict, detail in graded if detail is not None]
        return CheckResult(
            worst,
            "; ".join(details) or None,
            {
                "pending": status.pending,
                "leased": status.leased,
                "blocked": status.blocked,
                "backlog": status.backlog,
                "oldest_pending_age": status.oldest_pending_age,
            },
        )

    return HealthCheck(name, probe, timeout=timeout, critical=critical, cache_for=cache_for)


def batch_writer_check(
    writer: _WriterStatsSource,
    *,
    name: str = "batch_writer",
    fill_degraded_above: float | None = 0.8,
    fill_unhealthy_above: float | None = None,
    failing_status: HealthStatus = HealthStatus.UNHEALTHY,
    critical: bool = False,
    timeout: float = 1.0,
    cache_for: float = 0.0,
) -> HealthCheck:
    """A check on a `BatchWriter`: how full it is, and whether its writes fail.

    It grades the fill ratio (items held over capacity: above ``fill_degraded_above``
    producers are about to wait) and reports ``failing_status`` while the batch the
    writer holds keeps failing (the storage is down or full: items are held, not lost,
    but nothing is written). The verdict is the worse of the two. The report's
    ``observed`` holds ``depth``, ``capacity``, ``fill``, ``written``, ``failures``
    and, while failing, ``last_error``.

    Non-critical by default: a writer that cannot write makes the service DEGRADED;
    pass ``critical=True`` when the service is useless without it.

    Args:
        writer: a `resilience_kit.messaging.BatchWriter` (anything with its ``stats``).
        name: the check's name.
        fill_degraded_above: fill ratio (0 to 1) above which it degrades.
        fill_unhealthy_above: fill ratio above which it is unhealthy.
        failing_status: the verdict while writes fail.
        critical: see `HealthCheck`.
        timeout: see `HealthCheck`.
        cache_for: see `HealthCheck`.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> import anyio
        >>> from resilience_kit.health import HealthChecks
        >>> from resilience_kit.messaging import BatchWriter
        >>> writer = BatchWriter(print, name="audit", capacity=100)
        >>> report = anyio.run(HealthChecks([batch_writer_check(writer)]).run)
        >>> report["batch_writer"].status.value, report["batch_writer"].observed["fill"]
        ('healthy', 0.0)
    """
    if not hasattr(writer, "stats"):
        raise ConfigurationError("writer", f"must have stats (a BatchWriter), got {writer!r}")
    fill = _thresholds(
        fill_degraded_above,
        fill_unhealthy_above,
        names=("fill_degraded_above", "fill_unhealthy_above"),
        required=False,
    )
    if not isinstance(failing_status, HealthStatus):
        raise ConfigurationError(
            "failing_status", f"must be a HealthStatus, got {failing_status!r}"
        )

    def probe() -> CheckResult:
        stats = writer.stats
        ratio = stats.depth / stats.capacity if stats.capacity else 0.0
        status, detail = _measure(
            "the fill ratio", ratio, degraded_above=fill[0], unhealthy_above=fill[1], unit=""
        )
        details = [] if detail is None else [f"{detail} ({stats.depth} of {stats.capacity})"]
        observed: dict[str, Observed] = {
            "depth": stats.depth,
            "capacity": stats.capacity,
            "fill": round(ratio, 4),
            "written": stats.written,
            "failures": stats.failures,
        }
        if stats.failing_since is not None:
            status = HealthStatus.worst((status, failing_status))
            details.append(f"writes failing: {stats.last_error}")
            observed["last_error"] = stats.last_error or ""
        return CheckResult(status, "; ".join(details) or None, observed)

    return HealthCheck(name, probe, timeout=timeout, critical=critical, cache_for=cache_for)
