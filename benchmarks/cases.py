"""The benchmark cases: what is wrapped, by what, and what a call is expected to do.

Every case builds its callable lazily (a pyperf worker process builds only the case it
measures). The wrapped target always takes one argument and returns it, so the cost of
passing ``*args`` through a wrapper is part of what is measured.

Scenarios:
- ``success``: the target returns at once; the policy lets it through.
- ``rejected``: the breaker is open; each call is turned away with the library's
  "circuit open" exception, which the timing loop catches.
- ``retry``: the target fails with a fresh ``ConnectionError`` twice, then succeeds;
  every retry library is configured for three attempts and zero delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Literal

import aiobreaker
import anyio
import backoff
import circuitbreaker
import pybreaker
import stamina
import tenacity
from purgatory import AsyncCircuitBreakerFactory, SyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from resilience_kit import Backoff, CircuitBreaker, CircuitOpenError, Pipeline, RetryPolicy, Timeout

SUCCESS = "success"
REJECTED = "rejected"
RETRY = "retry"
SCENARIOS = (SUCCESS, REJECTED, RETRY)
SCENARIO_TITLES = {
    SUCCESS: "Success path",
    REJECTED: "Rejected by an open breaker",
    RETRY: "Retry path (fail, fail, succeed; zero delay)",
}

OPEN_FOR = 3600.0  # an open breaker must stay open for the whole run
TRIP_FAILURES = 5  # every breaker below opens after this many consecutive failures
FAR_TIMEOUT = 10.0  # a timeout that never fires during the benchmark


@dataclass(frozen=True)
class Case:
    """One row of the table in one mode (sync or async)."""

    scenario: str
    label: str
    mode: str  # "sync" or "async"
    make: Callable[[], Any]  # returns the callable (async cases: an awaitable of it)
    catch: tuple[type[BaseException], ...] = ()  # the rejection a call must raise
    targets: int = 1  # calls of the wrapped target per outer call (3 on the retry path)

    @property
    def name(self) -> str:
        """The pyperf benchmark name, unique per case."""
        return f"{self.mode}/{self.scenario}/{self.label}"


# -- targets --------------------------------------------------------------------------------


def target(x: int) -> int:
    return x


async def atarget(x: int) -> int:
    return x


def failing(x: int) -> int:
    raise ConnectionError("down")


async def afailing(x: int) -> int:
    raise ConnectionError("down")


def flaky_twice() -> Callable[[int], int]:
    """A target that fails twice, then succeeds, over and over; a fresh exception each time."""
    count = 0

    def flaky(x: int) -> int:
        nonlocal count
        count += 1
        if count % 3:
            raise ConnectionError("transient")
        return x

    return flaky


def aflaky_twice() -> Callable[[int], Awaitable[int]]:
    count = 0

    async def flaky(x: int) -> int:
        nonlocal count
        count += 1
        if count % 3:
            raise ConnectionError("transient")
        return x

    return flaky


# -- references -----------------------------------------------------------------------------


def passthrough(f: Callable[..., Any]) -> Callable[..., Any]:
    def w(*a: Any, **k: Any) -> Any:
        return f(*a, **k)

    return w


def apassthrough(f: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def w(*a: Any, **k: Any) -> Any:
        return await f(*a, **k)

    return w


def hand_rolled_retry(f: Callable[[int], int], attempts: int = 3) -> Callable[[int], int]:
    def retrying(x: int) -> int:
        for attempt in range(1, attempts + 1):
            try:
                return f(x)
            except ConnectionError:  # noqa: PERF203  (the loop is the point)
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    return retrying


def ahand_rolled_retry(
    f: Callable[[int], Awaitable[int]], attempts: int = 3
) -> Callable[[int], Awaitable[int]]:
    async def retrying(x: int) -> int:
        for attempt in range(1, attempts + 1):
            try:
                return await f(x)
            except ConnectionError:  # noqa: PERF203  (the loop is the point)
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    return retrying


def afail_after(f: Callable[[int], Awaitable[int]]) -> Callable[[int], Awaitable[int]]:
    async def timed(x: int) -> int:
        with anyio.fail_after(FAR_TIMEOUT):
            return await f(x)

    return timed


def amove_on_after(f: Callable[[int], Awaitable[int]]) -> Callable[[int], Awaitable[int]]:
    async def timed(x: int) -> int:
        with anyio.move_on_after(FAR_TIMEOUT):
            return await f(x)
        raise TimeoutError

    return timed


def raise_and_catch(x: int) -> int:
    raise RuntimeError("reference")


async def araise_and_catch(x: int) -> int:
    raise RuntimeError("reference")


# -- configured policies (zero delays everywhere) ---------------------------------------------


def tenacity_retry() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_none(),
        retry=tenacity.retry_if_exception_type(ConnectionError),
        reraise=True,
    )


def stamina_retry() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return stamina.retry(
        on=ConnectionError,
        attempts=3,
        timeout=None,
        wait_initial=0.0,
        wait_max=0.0,
        wait_jitter=0.0,
    )


def backoff_retry() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return backoff.on_exception(
        backoff.constant, ConnectionError, max_tries=3, interval=0, jitter=None
    )


def our_retry() -> RetryPolicy:
    return RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none())


def our_breaker(name: str, *, trippable: bool = False) -> CircuitBreaker:
    if trippable:
        return CircuitBreaker(
            name, window=TRIP_FAILURES, minimum_calls=TRIP_FAILURES, open_for=OPEN_FOR
        )
    return CircuitBreaker(name)  # the defaults: count window of 100, 20 minimum calls


# Larger than the calls a pyperf worker makes (under a million): the window never fills.
FILLING = 1 << 24


def our_filling_breaker(name: str, window_type: Literal["count", "time"]) -> CircuitBreaker:
    # A window that is still filling records every success (a full, clean count window
    # takes the shortcut instead). A time window records every outcome in any state.
    if window_type == "count":
        return CircuitBreaker(name, window=FILLING)
    return CircuitBreaker(name, window_type="time", window=60)


def our_breaker_holding_a_failure(
    name: str, window_type: Literal["count", "time"]
) -> CircuitBreaker:
    # One failure in the window, under the threshold: every success is recorded and the
    # failure rate judged. The failure stays in for the whole run (a count window that
    # never fills; a time window of an hour).
    if window_type == "count":
        breaker = CircuitBreaker(name, window=FILLING)
    else:
        breaker = CircuitBreaker(name, window_type="time", window=3600)
    with contextlib.suppress(ConnectionError):
        breaker.call(failing, 1)
    if breaker.metrics().failed_calls != 1:
        raise AssertionError(f"{name}: the window does not hold the failure")
    return breaker


def our_recording_breaker(name: str) -> CircuitBreaker:
    # With a result predicate every success is recorded under the lock, as when the
    # window holds a recent failure: the count window's slow path.
    return CircuitBreaker(name, record_result=lambda result: False)


def pybreaker_breaker() -> pybreaker.CircuitBreaker:
    return pybreaker.CircuitBreaker(fail_max=TRIP_FAILURES, reset_timeout=OPEN_FOR)


def circuitbreaker_breaker() -> circuitbreaker.CircuitBreaker:
    return circuitbreaker.CircuitBreaker(
        failure_threshold=TRIP_FAILURES, recovery_timeout=OPEN_FOR, name=None
    )


def aiobreaker_breaker() -> aiobreaker.CircuitBreaker:
    return aiobreaker.CircuitBreaker(
        fail_max=TRIP_FAILURES, timeout_duration=dt.timedelta(seconds=OPEN_FOR)
    )


def purgatory_sync() -> SyncCircuitBreakerFactory:
    return SyncCircuitBreakerFactory(default_threshold=TRIP_FAILURES, default_ttl=OPEN_FOR)


def purgatory_async() -> AsyncCircuitBreakerFactory:
    return AsyncCircuitBreakerFactory(default_threshold=TRIP_FAILURES, default_ttl=OPEN_FOR)


# -- tripping breakers ------------------------------------------------------------------------


def trip(fn: Callable[[int], Any]) -> Callable[[int], Any]:
    """Call a guarded always-failing ``fn`` until its breaker opens; return ``fn``."""
    for _ in range(TRIP_FAILURES):
        with contextlib.suppress(ConnectionError):
            fn(1)
    return fn


async def atrip(fn: Callable[[int], Awaitable[Any]]) -> Callable[[int], Awaitable[Any]]:
    for _ in range(TRIP_FAILURES):
        with contextlib.suppress(ConnectionError):
            await fn(1)
    return fn


def _async(make: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    """Turn a plain factory into the coroutine factory async cases use."""

    async def build() -> Any:
        return make()

    return build


async def _aiobreaker_open() -> Callable[[int], Awaitable[int]]:
    breaker = aiobreaker_breaker()
    guarded = breaker(afailing)
    breaker.open()
    return guarded


# -- the cases --------------------------------------------------------------------------------

# The closed breaker in the window states where a success must be recorded (issue 10).
WINDOW_STATES: tuple[
    tuple[str, Callable[[str, Literal["count", "time"]], CircuitBreaker], Literal["count", "time"]],
    ...,
] = (
    ("ours: CircuitBreaker, count window filling", our_filling_breaker, "count"),
    (
        "ours: CircuitBreaker, count window holding a failure",
        our_breaker_holding_a_failure,
        "count",
    ),
    ("ours: CircuitBreaker, time window filling", our_filling_breaker, "time"),
    ("ours: CircuitBreaker, time window holding a failure", our_breaker_holding_a_failure, "time"),
)


def _window_state_case(
    mode: str,
    label: str,
    make: Callable[[str, Literal["count", "time"]], CircuitBreaker],
    kind: Literal["count", "time"],
) -> Case:
    if mode == "sync":
        return Case(SUCCESS, label, mode, lambda: make("bench", kind)(target))
    return Case(SUCCESS, label, mode, _async(lambda: make("bench", kind)(atarget)))


def _sync_cases() -> list[Case]:
    s = "sync"
    return [
        # success path
        Case(SUCCESS, "bare call", s, lambda: target),
        Case(SUCCESS, "pass-through decorator", s, lambda: passthrough(target)),
        Case(SUCCESS, "tenacity", s, lambda: tenacity_retry()(target)),
        Case(SUCCESS, "stamina", s, lambda: stamina_retry()(target)),
        Case(SUCCESS, "backoff", s, lambda: backoff_retry()(target)),
        Case(SUCCESS, "pybreaker", s, lambda: pybreaker_breaker()(target)),
        Case(SUCCESS, "circuitbreaker", s, lambda: circuitbreaker_breaker()(target)),
        Case(SUCCESS, "purgatory", s, lambda: purgatory_sync()("bench")(target)),
        Case(SUCCESS, "ours: RetryPolicy", s, lambda: our_retry()(target)),
        Case(SUCCESS, "ours: CircuitBreaker", s, lambda: our_breaker("bench")(target)),
        Case(
            SUCCESS,
            "ours: CircuitBreaker, every call recorded",
            s,
            lambda: our_recording_breaker("bench")(target),
        ),
        *(_window_state_case(s, *state) for state in WINDOW_STATES),
        Case(
            SUCCESS,
            "ours: Pipeline(RetryPolicy, CircuitBreaker)",
            s,
            lambda: Pipeline(our_retry(), our_breaker("bench"))(target),
        ),
        # rejected by an open breaker
        Case(
            REJECTED, "raise + catch (reference)", s, lambda: raise_and_catch, catch=(RuntimeError,)
        ),
        Case(
            REJECTED,
            "pybreaker",
            s,
            _pybreaker_open,
            catch=(pybreaker.CircuitBreakerError,),
        ),
        Case(
            REJECTED,
            "circuitbreaker",
            s,
            lambda: trip(circuitbreaker_breaker()(failing)),
            catch=(circuitbreaker.CircuitBreakerError,),
        ),
        Case(
            REJECTED,
            "purgatory",
            s,
            lambda: trip(purgatory_sync()("bench")(failing)),
            catch=(OpenedState,),
        ),
        Case(
            REJECTED,
            "ours: CircuitBreaker",
            s,
            lambda: trip(our_breaker("bench", trippable=True)(failing)),
            catch=(CircuitOpenError,),
        ),
        # retry path
        Case(
            RETRY,
            "hand-rolled retry loop",
            s,
            lambda: hand_rolled_retry(flaky_twice()),
            targets=3,
        ),
        Case(RETRY, "tenacity", s, lambda: tenacity_retry()(flaky_twice()), targets=3),
        Case(RETRY, "stamina", s, lambda: stamina_retry()(flaky_twice()), targets=3),
        Case(RETRY, "backoff", s, lambda: backoff_retry()(flaky_twice()), targets=3),
        Case(RETRY, "ours: RetryPolicy", s, lambda: our_retry()(flaky_twice()), targets=3),
    ]


def _pybreaker_open() -> Callable[[int], int]:
    breaker = pybreaker_breaker()
    guarded: Callable[[int], int] = breaker(failing)
    breaker.open()
    return guarded


def _async_cases() -> list[Case]:
    a = "async"
    return [
        # success path
        Case(SUCCESS, "bare call", a, _async(lambda: atarget)),
        Case(SUCCESS, "pass-through decorator", a, _async(lambda: apassthrough(atarget))),
        Case(SUCCESS, "tenacity", a, _async(lambda: tenacity_retry()(atarget))),
        Case(SUCCESS, "stamina", a, _async(lambda: stamina_retry()(atarget))),
        Case(SUCCESS, "backoff", a, _async(lambda: backoff_retry()(atarget))),
        Case(SUCCESS, "circuitbreaker", a, _async(lambda: circuitbreaker_breaker()(atarget))),
        Case(SUCCESS, "aiobreaker", a, _async(lambda: aiobreaker_breaker()(atarget))),
        Case(SUCCESS, "purgatory", a, _async(lambda: purgatory_async()("bench")(atarget))),
        Case(SUCCESS, "ours: RetryPolicy", a, _async(lambda: our_retry()(atarget))),
        Case(SUCCESS, "ours: CircuitBreaker", a, _async(lambda: our_breaker("bench")(atarget))),
        Case(
            SUCCESS,
            "ours: CircuitBreaker, every call recorded",
            a,
            _async(lambda: our_recording_breaker("bench")(atarget)),
        ),
        *(_window_state_case(a, *state) for state in WINDOW_STATES),
        Case(
            SUCCESS,
            "ours: Pipeline(RetryPolicy, CircuitBreaker)",
            a,
            _async(lambda: Pipeline(our_retry(), our_breaker("bench"))(atarget)),
        ),
        Case(SUCCESS, "hand-written anyio.fail_after", a, _async(lambda: afail_after(atarget))),
        Case(
            SUCCESS,
            "hand-written anyio.move_on_after",
            a,
            _async(lambda: amove_on_after(atarget)),
        ),
        Case(SUCCESS, "ours: Timeout", a, _async(lambda: Timeout(FAR_TIMEOUT)(atarget))),
        Case(
            SUCCESS,
            "ours: Pipeline(Timeout, RetryPolicy, CircuitBreaker)",
            a,
            _async(
                lambda: Pipeline(Timeout(FAR_TIMEOUT), our_retry(), our_breaker("bench"))(atarget)
            ),
        ),
        # rejected by an open breaker
        Case(
            REJECTED,
            "raise + catch (reference)",
            a,
            _async(lambda: araise_and_catch),
            catch=(RuntimeError,),
        ),
        Case(
            REJECTED,
            "circuitbreaker",
            a,
            lambda: atrip(circuitbreaker_breaker()(afailing)),
            catch=(circuitbreaker.CircuitBreakerError,),
        ),
        Case(
            REJECTED,
            "aiobreaker",
            a,
            _aiobreaker_open,
            catch=(aiobreaker.CircuitBreakerError,),
        ),
        Case(
            REJECTED,
            "purgatory",
            a,
            lambda: atrip(purgatory_async()("bench")(afailing)),
            catch=(OpenedState,),
        ),
        Case(
            REJECTED,
            "ours: CircuitBreaker",
            a,
            lambda: atrip(our_breaker("bench", trippable=True)(afailing)),
            catch=(CircuitOpenError,),
        ),
        # retry path
        Case(
            RETRY,
            "hand-rolled retry loop",
            a,
            _async(lambda: ahand_rolled_retry(aflaky_twice())),
            targets=3,
        ),
        Case(RETRY, "tenacity", a, _async(lambda: tenacity_retry()(aflaky_twice())), targets=3),
        Case(RETRY, "stamina", a, _async(lambda: stamina_retry()(aflaky_twice())), targets=3),
        Case(RETRY, "backoff", a, _async(lambda: backoff_retry()(aflaky_twice())), targets=3),
        Case(RETRY, "ours: RetryPolicy", a, _async(lambda: our_retry()(aflaky_twice())), targets=3),
    ]


CASES: list[Case] = _sync_cases() + _async_cases()

# -- timing loops (pyperf's time_func protocol: take a loop count, return seconds) -------------

_built: dict[str, Any] = {}
_loop: asyncio.AbstractEventLoop | None = None


def event_loop() -> asyncio.AbstractEventLoop:
    """One asyncio loop per process, so objects built on it live across pyperf's runs."""
    global _loop  # noqa: PLW0603
    if _loop is None:
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop


def build(case: Case) -> Any:
    fn = _built.get(case.name)
    if fn is None:
        made = case.make()
        fn = event_loop().run_until_complete(made) if case.mode == "async" else made
        _built[case.name] = fn
    return fn


def time_case(loops: int, case: Case) -> float:
    fn = build(case)
    it = range(loops)
    if case.mode == "sync":
        if case.catch:
            catch = case.catch
            t0 = perf_counter()
            for _ in it:
                try:  # noqa: SIM105  (suppress() would add its own cost to every call)
                    fn(1)
                except catch:  # noqa: PERF203
                    pass
            return perf_counter() - t0
        t0 = perf_counter()
        for _ in it:
            fn(1)
        return perf_counter() - t0

    async def main() -> float:
        if case.catch:
            catch = case.catch
            t0 = perf_counter()
            for _ in it:
                try:  # noqa: SIM105
                    await fn(1)
                except catch:  # noqa: PERF203
                    pass
            return perf_counter() - t0
        t0 = perf_counter()
        for _ in it:
            await fn(1)
        return perf_counter() - t0

    return event_loop().run_until_complete(main())
