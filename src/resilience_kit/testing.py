"""Test your resilient code without real sleeps: a virtual clock, switches and chaos.

- `VirtualClock`: time that moves only when something sleeps or a test advances it.
- `use_clock` and `no_wait`: process-wide switches that apply at once and also work as
  context managers that restore the previous setting.
- `ChaosFault`, `ChaosLatency`, `ChaosResult`: policies that inject an exception,
  latency or a substitute result, at a rate or on a schedule, switchable at run time.
- `ChaosPublisher`: any transport's publishes through such a policy, for some or all
  topics and keys (a broker outage, one partition refusing its messages).
- pytest fixtures ``virtual_clock`` and ``no_wait`` (registered automatically through
  the ``pytest11`` entry point; they work with anyio's plugin and pytest-asyncio alike).

Examples:
    >>> from resilience_kit import Backoff, RetryPolicy
    >>> from resilience_kit.testing import VirtualClock
    >>> clock = VirtualClock()
    >>> retry = RetryPolicy(
    ...     attempts=3, backoff=Backoff.constant(10.0), on=KeyError, clock=clock
    ... )
    >>> try:
    ...     retry.call(lambda: {}["missing"])
    ... except KeyError:
    ...     pass
    >>> clock.monotonic(), clock.sleeps
    (20.0, [10.0, 10.0])
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

import anyio
import anyio.lowlevel
import anyio.to_thread

from resilience_kit import _config, _telemetry
from resilience_kit._checks import check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError, InjectedFaultError
from resilience_kit.policies import Policy

if TYPE_CHECKING:  # messaging sits above testing: only its types are needed here
    from resilience_kit.messaging import Event, Publisher

__all__ = (
    "ChaosFault",
    "ChaosLatency",
    "ChaosPublisher",
    "ChaosResult",
    "ClockHold",
    "PublishAttempt",
    "Switch",
    "VirtualClock",
    "no_wait",
    "use_clock",
)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# How long autojump waits, in real time, before looking again at a busy worker thread:
# short, since a database call takes well under a millisecond.
_THREAD_POLL = 0.0001
# How long autojump lets asyncio's wait_all_tasks_blocked look, in real time, before it
# looks again itself.
_BLOCKED_POLL = 0.001
# Checkpoints autojump yields before asking whether every task is blocked (see there).
_CHAIN_CHECKPOINTS = 32


class _Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """A clock for tests: time moves only by sleeping on it or by `advance`.

    With ``auto_advance=True`` (the default) every sleep returns at once, having moved
    the clock forward by its duration — right for sequential code. Timers set with
    `call_at` (which `Timeout` and `Bulkhead` use) fire as time passes their deadline,
    so a sleep that outlasts a timeout is cancelled at the timeout's instant.

    With ``auto_advance=False`` sleepers wait until a test calls `advance` past their
    wake-up time — right for several concurrent tasks. Time never goes backwards.

    Attributes:
        sleeps: every sleep requested, in order (for assertions).

    Examples:
        >>> clock = VirtualClock(start=100.0)
        >>> clock.sleep(5)
        >>> clock.monotonic()
        105.0
        >>> clock.advance(1.5)
        >>> clock.monotonic(), clock.sleeps
        (106.5, [5])
    """

    def __init__(
        self, start: float = 0.0, *, wall: float = 1_767_225_600.0, auto_advance: bool = True
    ) -> None:
        check_positive("start", start, allow_zero=True)
        check_positive("wall", wall, allow_zero=True)
        self._now = float(start)
        self._wall_offset = float(wall) - float(start)
        self.auto_advance = auto_advance
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, _Timer]] = []
        self._sequence = itertools.count()
        self._lock = threading.RLock()
        self._holds = 0
        self._moved = threading.Condition(self._lock)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now})"

    def monotonic(self) -> float:
        """The virtual time."""
        return self._now

    def time(self) -> float:
        """Virtual wall time: ``wall`` at ``start``, moving with `monotonic`."""
        return self._now + self._wall_offset

    def call_at(self, deadline: float, callback: Callable[[], object]) -> _Timer:
        """Run ``callback()`` when time reaches ``deadline``; return a cancellable handle."""
        timer = _Timer(deadline, callback)
        with self._lock:
            heapq.heappush(self._timers, (deadline, next(self._sequence), timer))
        if deadline <= self._now:
            while self._fire_due(self._now):
                pass
        return timer

    def _fire_due(self, limit: float) -> bool:
        """Fire the earliest timer due by ``limit``, moving time to it; tell if one fired."""
        with self._lock:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if not self._timers or self._timers[0][0] > limit:
                return False
            deadline, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, deadline)
        timer.cancelled = True
        timer.callback()
        return True

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due timers and waking due sleepers."""
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"time cannot go backwards (advance by {seconds})")
        target = self._now + seconds
        while self._fire_due(target):
            pass
        with self._lock:
            self._now = max(self._now, target)
            self._moved.notify_all()

    def _check(self, seconds: float) -> None:
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"cannot sleep a negative time ({seconds})")
        self.sleeps.append(seconds)

    def sleep(self, seconds: float) -> None:
        """Sleep on virtual time: return at once (auto mode) or when time is advanced."""
        if self.auto_advance:
            self._check(seconds)
            self.advance(seconds)
            return
        with self._lock:
            # Recorded under the lock with the wake-up time, so that a test that sees the
            # sleep in `sleeps` and then advances cannot slip in before it is counted.
            self._check(seconds)
            wake_at = self._now + seconds
            while self._now < wake_at:
                self._moved.wait()

    async def asleep(self, seconds: float) -> None:
        """Sleep on virtual time; a timer firing meanwhile may cancel the caller."""
        self._check(seconds)
        target = self._now + seconds
        if self.auto_advance:
            while self._fire_due(target):
                await anyio.lowlevel.checkpoint()  # delivers a cancellation the timer made
            with self._lock:
                self._now = max(self._now, target)
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        timer = self.call_at(target, event.set)
        try:
            await event.wait()
        finally:
            timer.cancel()  # a cancelled sleeper leaves no timer behind

    def next_deadline(self) -> float | None:
        """The time of the earliest pending timer (a sleeper, a timeout), or ``None``."""
        with self._lock:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            return self._timers[0][0] if self._timers else None

    def hold(self) -> ClockHold:
        """Keep `autojump` from moving time until the returned hold is released.

        For work that wakes a task from another thread: a commit notifying a waiter whose
        worker thread has not returned yet leaves every task looking blocked, and a jump
        then would run the waiter late in virtual time, by however long the thread took
        in real time. Take the hold where the wake-up starts (any thread), release it
        where the woken task resumes. Thread-safe; releasing twice releases once.

        Examples:
            >>> clock = VirtualClock(auto_advance=False)
            >>> with clock.hold():
            ...     clock.held
            True
            >>> clock.held
            False
        """
        with self._lock:
            self._holds += 1
        return ClockHold(self)

    @property
    def held(self) -> bool:
        """Whether a `hold` is in force (`autojump` then waits)."""
        return self._holds > 0

    def _release(self) -> None:
        with self._lock:
            self._holds -= 1

    @asynccontextmanager
    async def autojump(self, *, idle_poll: float = 0.005) -> AsyncIterator[VirtualClock]:
        """Move time to the next timer whenever every other task is blocked.

        Inside the block a background task waits until no task can run, then advances
        the clock to the earliest pending deadline (a sleep, a `Timeout`, a breaker's
        timer), which wakes whoever waits for it. Concurrent code — servers, relays,
        consumers, a workload — then runs in virtual time, as fast as the CPU allows,
        in the order real time would give. Trio users know this as ``autojump_threshold``.

        Time never jumps while one of anyio's worker threads is busy (a database call
        offloaded with ``anyio.to_thread``): its task only looks blocked, and jumping
        would fire its timeouts spuriously. Threads started with a limiter of their own
        are not seen; time may jump while they run, unless whoever wakes them holds the
        clock (`hold`), as `SQLiteStore(clock=...)` does for a relay it wakes.

        Args:
            idle_poll: real seconds to wait before looking again when a worker thread is
                busy or no timer is pending (only something outside the event loop can
                then make progress).

        Raises:
            ConfigurationError: the clock advances by itself (``auto_advance=True``).

        Examples:
            >>> import anyio
            >>> from resilience_kit.testing import VirtualClock
            >>> clock = VirtualClock(auto_advance=False)
            >>> async def main() -> list[str]:
            ...     order: list[str] = []
            ...     async def worker(name: str, seconds: float) -> None:
            ...         await clock.asleep(seconds)
            ...         order.append(f"{name}@{clock.monotonic():g}")
            ...     async with clock.autojump(), anyio.create_task_group() as group:
            ...         group.start_soon(worker, "slow", 60.0)
            ...         group.start_soon(worker, "fast", 5.0)
            ...     return order
            >>> anyio.run(main)
            ['fast@5', 'slow@60']
        """
        if self.auto_advance:
            raise ConfigurationError(
                "auto_advance", "autojump needs a clock made with auto_advance=False"
            )
        check_positive("idle_poll", idle_poll)
        async with anyio.create_task_group() as group:
            group.start_soon(self._jump_when_idle, idle_poll)
            try:
                yield self
            finally:
                group.cancel_scope.cancel()

    async def _jump_when_idle(self, idle_poll: float) -> None:
        threads = anyio.to_thread.current_default_thread_limiter()
        while True:
            # Checkpoints first let chains of wake-ups run to their end; asyncio's
            # wait_all_tasks_blocked pays a real 0.1 s pause whenever it sees a runnable task.
            # A consumer handing a message to a worker thread takes more than a few.
            for _ in range(_CHAIN_CHECKPOINTS):
                await anyio.lowlevel.checkpoint()
            # Threads first: a task whose thread has just finished is runnable, and asking
            # wait_all_tasks_blocked then would cost its real 0.1 s pause on asyncio.
            if threads.borrowed_tokens or self._holds:
                await anyio.sleep(_THREAD_POLL)  # real time: let the worker thread finish
                continue
            # asyncio's wait_all_tasks_blocked sleeps a real 0.1 s each time it sees a
            # runnable task (a consumer handing a batch to its lanes runs long chains of
            # wake-ups); cut that short and look again instead.
            with anyio.move_on_after(_BLOCKED_POLL) as waited:
                await anyio.wait_all_tasks_blocked()
            if waited.cancelled_caught:
                continue
            deadline = self.next_deadline()
            if threads.borrowed_tokens or self._holds:
                continue
            if deadline is None:
                await anyio.sleep(idle_poll)  # real time: only the outside world can act
                continue
            self.advance(max(0.0, deadline - self._now))


class ClockHold:
    """A `VirtualClock.hold`: `autojump` waits until it is released (or its ``with`` ends)."""

    __slots__ = ("_clock", "_lock", "_released")

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        """Let `autojump` move time again (once; later calls do nothing)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._clock._release()

    def __enter__(self) -> ClockHold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Switch:
    """A setting applied at once; as a context manager it restores the previous one."""

    __slots__ = ("_restore",)

    def __init__(self, restore: Callable[[], None]) -> None:
        self._restore = restore

    def __enter__(self) -> Switch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()


def no_wait(enabled: bool = True) -> Switch:
    """Make every retry skip its sleeps (process-wide) — at once, or within a ``with``.

    Retries still happen, hooks still see the planned delays; nothing waits.

    Examples:
        >>> from resilience_kit.testing import no_wait
        >>> with no_wait():
        ...     pass  # retries in here do not sleep
    """
    previous = _config.state.no_wait
    _config.state.no_wait = enabled

    def restore() -> None:
        _config.state.no_wait = previous

    return Switch(restore)


def use_clock(clock: Clock | None) -> Switch:
    """Make ``clock`` the clock of every policy built without one — at once, or in a ``with``.

    Examples:
        >>> from resilience_kit.clock import get_clock
        >>> with use_clock(VirtualClock()):
        ...     type(get_clock()).__name__
        'VirtualClock'
    """
    previous = _config.state.clock
    _config.state.clock = clock

    def restore() -> None:
        _config.state.clock = previous

    return Switch(restore)


class _Chaos(Policy):
    """Shared machinery of the chaos policies: when to inject, switchable at run time."""

    __slots__ = (
        "_calls",
        "_clock",
        "_lock",
        "_rand",
        "_schedule",
        "enabled",
        "injected",
        "name",
        "rate",
    )

    def __init__(
        self,
        *,
        rate: float,
        schedule: Iterable[bool] | Callable[[int], bool] | None,
        enabled: bool,
        rand: Callable[[], float] | None,
        clock: Clock | None,
        name: str | None,
    ) -> None:
        check_positive("rate", rate, allow_zero=True)
        if rate > 1:
            raise ConfigurationError("rate", f"must be in [0, 1], got {rate!r}")
        self.rate = float(rate)
        self._schedule: Iterator[bool] | Callable[[int], bool] | None
        if schedule is None or callable(schedule):
            self._schedule = schedule
        else:
            self._schedule = iter(schedule)
        self.enabled = enabled
        self._rand = rand or random.random
        self._clock = clock
        self.name = name or type(self).__name__
        self._calls = 0
        self.injected = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, rate={self.rate}, "
            f"enabled={self.enabled}, injected={self.injected})"
        )

    def _should_inject(self) -> bool:
        with self._lock:
            self._calls += 1
            if not self.enabled:
                return False
            schedule = self._schedule
            if schedule is None:
                inject = self.rate >= 1.0 or self._rand() < self.rate
            elif callable(schedule):
                inject = bool(schedule(self._calls))
            else:
                inject = next(schedule, False)
            if inject:
                self.injected += 1
        if inject:
            _telemetry.emit(_telemetry.CHAOS_INJECTIONS, {"chaos": self.name, "kind": self._kind})
        return inject

    _kind = "chaos"


class ChaosFault(_Chaos):
    """Raise an exception instead of calling the function, at a rate or on a schedule.

    Args:
        exception: an exception type, an instance (copied for each injection, so
            tracebacks never pile up), or a factory; default `InjectedFaultError`.
        rate: the probability of injecting, in ``[0, 1]``.
        schedule: overrides ``rate``: booleans per call in order (no injection once
            exhausted), or a function of the call number (from 1).
        enabled: start switched on; flip ``.enabled`` at run time.
        rand: a random source, for reproducible runs.
        name: a name for metrics.

    Examples:
        >>> from resilience_kit.testing import ChaosFault
        >>> chaos = ChaosFault(ConnectionError("injected"), schedule=[True, False])
        >>> @chaos
        ... def ping() -> str:
        ...     return "pong"
        >>> try:
        ...     ping()
        ... except ConnectionError as exc:
        ...     print(exc)
        injected
        >>> ping()
        'pong'
    """

    __slots__ = ("_make",)
    _kind = "fault"

    def __init__(
        self,
        exception: BaseException
        | type[BaseException]
        | Callable[[], BaseException] = InjectedFaultError,
        *,
        rate: float = 1.0,
        schedule: Iterable[bool] | Callable[[int], bool] | None = None,
        enabled: bool = True,
        rand: Callable[[], float] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            rate=rate, schedule=schedule, enabled=enabled, rand=rand, clock=None, name=name
        )
        if isinstance(exception, BaseException):
            template = exception

            def make() -> BaseException:
                fresh = copy.copy(template).with_traceback(None)
                notes = getattr(fresh, "__notes__", None)
                if notes is not None:
                    vars(fresh)["__notes__"] = list(notes)  # notes added to a copy stay on it
                return fresh

            try:
                make()
            except Exception as exc:
                raise ConfigurationError(
                    "exception",
                    f"{exception!r} cannot be copied for each injection; "
                    "pass a factory (a function returning a new exception) instead",
                ) from exc
            self._make: Callable[[], BaseException] = make
        elif isinstance(exception, type) and issubclass(exception, InjectedFaultError):

            def make_default() -> BaseException:
                return exception(f"fault injected by {self.name}")

            self._make = make_default
        elif isinstance(exception, type) and not issubclass(exception, BaseException):
            raise ConfigurationError("exception", f"expected an exception, got {exception!r}")
        elif callable(exception):
            self._make = cast("Callable[[], BaseException]", exception)
        else:
            raise ConfigurationError("exception", f"expected an exception, got {exception!r}")

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        def faulty(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._should_inject():
                raise self._make()
            return fn(*args, **kwargs)

        return faulty

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        async def faulty(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._should_inject():
                raise self._make()
            return await fn(*args, **kwargs)

        return faulty


class ChaosLatency(_Chaos):
    """Sleep ``seconds`` on the policy's clock before calling, at a rate or on a schedule.

    On the virtual clock the delay is instant, but it still trips a `Timeout` and counts
    as a slow call for a `CircuitBreaker` on the same clock.

    Examples:
        >>> from resilience_kit.testing import ChaosLatency, VirtualClock
        >>> clock = VirtualClock()
        >>> slow = ChaosLatency(2.0, clock=clock)
        >>> slow.call(lambda: "done"), clock.monotonic()
        ('done', 2.0)
    """

    __slots__ = ("seconds",)
    _kind = "latency"

    def __init__(
        self,
        seconds: float,
        *,
        rate: float = 1.0,
        schedule: Iterable[bool] | Callable[[int], bool] | None = None,
        enabled: bool = True,
        rand: Callable[[], float] | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        check_positive("seconds", seconds)
        super().__init__(
            rate=rate, schedule=schedule, enabled=enabled, rand=rand, clock=clock, name=name
        )
        self.seconds = float(seconds)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        def slow(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._should_inject():
                resolve_clock(self._clock).sleep(self.seconds)
            return fn(*args, **kwargs)

        return slow

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        async def slow(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._should_inject():
                await resolve_clock(self._clock).asleep(self.seconds)
            return await fn(*args, **kwargs)

        return slow


class ChaosResult(_Chaos, Generic[T]):
    """Return a substitute result without calling the function, at a rate or on a schedule.

    Examples:
        >>> from resilience_kit.testing import ChaosResult
        >>> stale = ChaosResult(value={"plan": "free"}, rate=1.0)
        >>> stale.call(lambda: {"plan": "pro"})
        {'plan': 'free'}
    """

    __slots__ = ("_produce",)
    _kind = "result"

    def __init__(
        self,
        value: T | None = None,
        *,
        factory: Callable[[], T] | None = None,
        rate: float = 1.0,
        schedule: Iterable[bool] | Callable[[int], bool] | None = None,
        enabled: bool = True,
        rand: Callable[[], float] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            rate=rate, schedule=schedule, enabled=enabled, rand=rand, clock=None, name=name
        )
        if factory is not None and value is not None:
            raise ConfigurationError("factory", "give value= or factory=, not both")
        if factory is not None and not callable(factory):
            raise ConfigurationError("factory", f"must be callable, got {factory!r}")
        self._produce: Callable[[], Any] = factory if factory is not None else (lambda: value)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        def replaced(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._should_inject():
                return self._produce()  # type: ignore[no-any-return]
            return fn(*args, **kwargs)

        return replaced

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        async def replaced(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._should_inject():
                return self._produce()  # type: ignore[no-any-return]
            return await fn(*args, **kwargs)

        return replaced


@dataclass(frozen=True, slots=True)
class PublishAttempt:
    """One publish a `ChaosPublisher` was asked for, and whether a fault met it.

    Attributes:
        at: when, on the publisher's clock (monotonic seconds).
        topic: the topic.
        key: the event's key.
        event_id: the event's id (the same across retries of one outbox row).
        injected: ``True`` when the real publisher was not reached (a fault was injected).
    """

    at: float
    topic: str
    key: str
    event_id: str
    injected: bool


class ChaosPublisher:
    """A `Publisher` that sends another publisher's publishes through a chaos policy.

    Wrap any transport (`MemoryBus`, Redis Streams, Kafka) to test the code that
    publishes — an `OutboxRelay`, a producer — against a broker that is down
    (``ChaosFault`` switched on for a while), slow (``ChaosLatency``), or refuses some
    messages only (``where``: one topic, one partition's keys). Every publish asked for
    is recorded in `attempts`, an independent count of how hard the broker was hit.

    Args:
        publisher: the real publisher.
        faults: the policy matching publishes run through; flip its ``enabled`` to
            start and end an outage.
        where: ``where(topic, event) -> bool``: which publishes the faults apply to
            (default: all); the others go straight through.
        clock: the clock for `PublishAttempt.at` (default: the system clock).

    Raises:
        ConfigurationError: ``faults`` is not a policy, or ``where`` not callable.

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import Event
        >>> from resilience_kit.testing import ChaosFault, ChaosPublisher
        >>> from resilience_kit.transports import MemoryBus
        >>> bus = MemoryBus()
        >>> outage = ChaosFault(ConnectionError("broker down"), enabled=False)
        >>> chaos = ChaosPublisher(bus, outage, where=lambda topic, event: event.key == "org:2")
        >>> outage.enabled = True
        >>> anyio.run(chaos.publish, "orgs", Event(type="org.created", key="org:1", payload={}))
        >>> anyio.run(chaos.publish, "orgs", Event(type="org.created", key="org:2", payload={}))
        Traceback (most recent call last):
        ...
        ConnectionError: broker down
        >>> [(a.key, a.injected) for a in chaos.attempts], bus.retained("orgs")
        ([('org:1', False), ('org:2', True)], 1)
    """

    __slots__ = ("_clock", "_faults", "_publisher", "_where", "attempts")

    def __init__(
        self,
        publisher: Publisher,
        faults: Policy,
        *,
        where: Callable[[str, Event], bool] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(faults, Policy):
            raise ConfigurationError(
                "faults", f"must be a policy such as ChaosFault, got {faults!r}"
            )
        if where is not None and not callable(where):
            raise ConfigurationError("where", f"must be callable or None, got {where!r}")
        self._publisher = publisher
        self._faults = faults
        self._where = where
        self._clock = clock
        self.attempts: list[PublishAttempt] = []
        """Every publish asked for, in order."""

    def __repr__(self) -> str:
        return f"ChaosPublisher({self._publisher!r}, {self._faults!r})"

    async def publish(self, topic: str, event: Event) -> None:
        """Publish through the chaos policy when ``where`` matches, else straight through.

        Raises:
            Exception: what the policy injects, or what the real publisher raises.
        """
        at = resolve_clock(self._clock).monotonic()
        if self._where is not None and not self._where(topic, event):
            self.attempts.append(
                PublishAttempt(at, topic, event.key, str(event.id), injected=False)
            )
            await self._publisher.publish(topic, event)
            return
        reached = False

        async def publish() -> None:
            nonlocal reached
            reached = True
            await self._publisher.publish(topic, event)

        try:
            await self._faults.acall(publish)
        finally:
            self.attempts.append(
                PublishAttempt(at, topic, event.key, str(event.id), injected=not reached)
            )
