"""CircuitBreaker: windows, thresholds, states, listeners, stores, threads, configuration."""

from __future__ import annotations

import dataclasses
import gc
import inspect
import logging
import random
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from resilience_kit import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
)
from resilience_kit.stores.memory import MemoryBreakerStore
from resilience_kit.testing import VirtualClock, use_clock
from resilience_kit.typing import (
    BreakerMetrics,
    BreakerRecord,
    StateTransition,
    ThresholdExceeded,
)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED
METRICS_ONLY = CircuitState.METRICS_ONLY


class Boom(Exception):
    """The dependency failed."""


class NotOurProblem(Exception):
    """An error the breaker is told to ignore."""


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=1000.0)


def breaker_on(clock: VirtualClock, **overrides: Any) -> CircuitBreaker:
    """A small breaker for tests: opens after 4 calls at a 50% failure rate."""
    options: dict[str, Any] = {
        "window": 4,
        "minimum_calls": 4,
        "failure_rate_threshold": 0.5,
        "open_for": 10.0,
        "half_open_calls": 2,
        "clock": clock,
    }
    options.update(overrides)
    return CircuitBreaker(options.pop("name", "test"), **options)


class Caller:
    """Drives a breaker through its sync path or its async path with the same test code.

    Every call goes through the decorator (``breaker(fn)``), so the wrapper users get is
    what is tested. ``takes`` sleeps that long on the virtual clock inside the call.
    """

    def __init__(self, is_async: bool, clock: VirtualClock) -> None:
        self.is_async = is_async
        self.clock = clock
        self.ran = 0

    async def call(
        self,
        breaker: CircuitBreaker,
        *,
        result: object = "ok",
        exc: BaseException | None = None,
        takes: float = 0.0,
        inside: Callable[[], Any] | None = None,
    ) -> Any:
        """Call through ``breaker``; ``inside`` runs (awaited if async) during the call."""
        if self.is_async:

            async def target_async() -> object:
                self.ran += 1
                if takes:
                    await self.clock.asleep(takes)
                if inside is not None:
                    await inside()
                if exc is not None:
                    raise exc
                return result

            return await breaker(target_async)()

        def target() -> object:
            self.ran += 1
            if takes:
                self.clock.sleep(takes)
            if inside is not None:
                inside()
            if exc is not None:
                raise exc
            return result

        return breaker(target)()

    async def ok(self, breaker: CircuitBreaker, *, takes: float = 0.0) -> None:
        assert await self.call(breaker, result="fine", takes=takes) == "fine"

    async def fail(self, breaker: CircuitBreaker, *, takes: float = 0.0) -> None:
        with pytest.raises(Boom):
            await self.call(breaker, exc=Boom("down"), takes=takes)

    async def rejected(self, breaker: CircuitBreaker) -> CircuitOpenError:
        ran = self.ran
        with pytest.raises(CircuitOpenError) as info:
            await self.call(breaker)
        assert self.ran == ran, "a rejected call must not run"
        return info.value

    def nested(self, action: Callable[[], Any]) -> Callable[[], Any]:
        """Adapt a coroutine-returning ``action`` to run inside a call of this flavour.

        A sync call can only run sync code inside; the async flavour awaits. Nesting one
        call in another keeps a call in flight without threads or tasks.
        """
        if self.is_async:
            return action

        def run_sync() -> None:
            coro = action()
            try:
                coro.send(None)
            except StopIteration:
                return
            raise AssertionError("a sync nested action must not suspend")  # pragma: no cover

        return run_sync


class Recorder:
    """A listener that keeps every StateTransition."""

    def __init__(self) -> None:
        self.events: list[StateTransition] = []

    def __call__(self, event: StateTransition) -> None:
        self.events.append(event)

    @property
    def path(self) -> list[tuple[CircuitState, CircuitState]]:
        return [(e.from_state, e.to_state) for e in self.events]


# Tests in this class run three ways: the sync path once, the async path on each backend.
class TestBothPaths:
    @pytest.fixture(params=["sync", "asyncio", "trio"])
    def flavor(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def anyio_backend(self, flavor: str) -> str:
        return "asyncio" if flavor == "sync" else flavor

    @pytest.fixture
    def caller(self, flavor: str, clock: VirtualClock) -> Caller:
        return Caller(flavor != "sync", clock)

    async def open_it(self, caller: Caller, breaker: CircuitBreaker, failures: int = 4) -> None:
        for _ in range(failures):
            await caller.fail(breaker)
        assert breaker.state is OPEN

    # -- count window -------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_count_window_waits_for_minimum_calls(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, window=10, minimum_calls=4)
        for _ in range(3):
            await caller.fail(breaker)
        assert breaker.state is CLOSED  # 100% failures, but only 3 of the 4 calls needed
        assert breaker.metrics().failure_rate is None
        await caller.ok(breaker)
        assert breaker.state is OPEN  # 3 of 4 >= 0.5

    @pytest.mark.anyio
    async def test_count_window_slides(self, caller: Caller, clock: VirtualClock) -> None:
        recorder = Recorder()
        breaker = breaker_on(clock, failure_rate_threshold=0.75, listeners=[recorder])
        for step in (caller.fail, caller.ok, caller.fail, caller.ok, caller.fail):
            await step(breaker)
        assert breaker.state is CLOSED  # last four: ok, fail, ok, fail = 0.5
        assert breaker.metrics().failed_calls == 2
        await caller.fail(breaker)  # last four: fail, ok, fail, fail = 0.75
        assert breaker.state is OPEN
        assert recorder.events[-1].reason == "failure rate 0.75 >= 0.75"

    @pytest.mark.anyio
    async def test_below_threshold_stays_closed(self, caller: Caller, clock: VirtualClock) -> None:
        breaker = breaker_on(clock, window=5, minimum_calls=5, failure_rate_threshold=0.5)
        for step in (caller.fail, caller.fail, caller.ok, caller.ok, caller.ok):
            await step(breaker)
        assert breaker.state is CLOSED
        assert breaker.metrics().failure_rate == pytest.approx(0.4)

    @pytest.mark.anyio
    async def test_rate_equal_to_threshold_opens_exactly(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        # 55 / 100 >= 0.55, although 55 >= 0.55 * 100 is false in floating point.
        breaker = breaker_on(clock, window=100, minimum_calls=100, failure_rate_threshold=0.55)
        for _ in range(45):
            await caller.ok(breaker)
        for _ in range(54):
            await caller.fail(breaker)
        assert breaker.state is CLOSED
        await caller.fail(breaker)
        assert breaker.state is OPEN

    # -- time window --------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_time_window_opens_once_minimum_calls_are_inside(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, window_type="time", window=10, minimum_calls=3)
        await caller.fail(breaker)
        await caller.fail(breaker)
        clock.advance(10.0)  # both failures leave the window
        assert breaker.metrics().calls == 0
        await caller.fail(breaker)
        assert breaker.state is CLOSED
        assert breaker.metrics().calls == 1
        clock.advance(9.0)
        await caller.ok(breaker)
        assert breaker.state is CLOSED  # 2 calls in the window
        await caller.fail(breaker)
        assert breaker.state is OPEN  # fail, ok, fail within 10 s: 2 of 3

    @pytest.mark.anyio
    async def test_time_window_minimum_may_exceed_the_window_length(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, window_type="time", window=2, minimum_calls=5)
        for _ in range(4):
            await caller.fail(breaker)
        assert breaker.state is CLOSED
        await caller.fail(breaker)
        assert breaker.state is OPEN

    @pytest.mark.anyio
    async def test_time_window_buckets_expire_with_virtual_time(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, window_type="time", window=3, minimum_calls=10)
        await caller.fail(breaker)  # second 1000
        clock.advance(1.0)
        await caller.ok(breaker)  # second 1001
        assert breaker.metrics().calls == 2
        clock.advance(1.5)  # 1002.5
        assert (breaker.metrics().calls, breaker.metrics().failed_calls) == (2, 1)
        clock.advance(0.5)  # 1003.0: second 1000 is out
        assert (breaker.metrics().calls, breaker.metrics().failed_calls) == (1, 0)
        clock.advance(1.0)
        assert breaker.metrics().calls == 0

    # -- slow calls ---------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_slow_calls_open_the_breaker(self, caller: Caller, clock: VirtualClock) -> None:
        recorder = Recorder()
        breaker = breaker_on(
            clock,
            slow_call_duration=2.0,
            slow_call_rate_threshold=0.5,
            failure_rate_threshold=1.0,
            listeners=[recorder],
        )
        await caller.ok(breaker, takes=2.0)  # exactly the duration: slow
        await caller.ok(breaker, takes=1.99)  # not slow
        await caller.ok(breaker)
        assert breaker.metrics().slow_calls == 1
        assert breaker.state is CLOSED
        await caller.ok(breaker, takes=5.0)
        assert breaker.state is OPEN
        assert recorder.events[-1].reason == "slow-call rate 0.50 >= 0.50"
        metrics = breaker.metrics()
        assert (metrics.calls, metrics.failed_calls, metrics.slow_calls) == (4, 0, 2)
        assert metrics.slow_call_rate == 0.5

    @pytest.mark.anyio
    async def test_a_slow_failure_counts_as_both(self, caller: Caller, clock: VirtualClock) -> None:
        breaker = breaker_on(clock, slow_call_duration=1.0, minimum_calls=2, window=2)
        await caller.fail(breaker, takes=1.0)
        metrics = breaker.metrics()
        assert (metrics.calls, metrics.failed_calls, metrics.slow_calls) == (1, 1, 1)

    @pytest.mark.anyio
    async def test_slow_calls_in_a_time_window(self, caller: Caller, clock: VirtualClock) -> None:
        breaker = breaker_on(
            clock,
            window_type="time",
            window=60,
            minimum_calls=2,
            slow_call_duration=3.0,
            slow_call_rate_threshold=1.0,
        )
        await caller.ok(breaker, takes=3.0)
        assert breaker.state is CLOSED
        await caller.ok(breaker, takes=4.0)
        assert breaker.state is OPEN

    # -- open ---------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_open_rejects_with_a_fresh_error_counting_down(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, name="billing")
        await self.open_it(caller, breaker)
        first = await caller.rejected(breaker)
        assert (first.name, first.state, first.retry_after) == ("billing", "open", 10.0)
        assert "billing" in str(first)
        assert "10.000s" in str(first)
        clock.advance(3.0)
        second = await caller.rejected(breaker)
        assert second is not first
        assert second.retry_after == pytest.approx(7.0)
        clock.advance(6.5)
        assert (await caller.rejected(breaker)).retry_after == pytest.approx(0.5)
        assert breaker.metrics().rejected_calls == 3
        assert breaker.state is OPEN
        assert breaker.metrics().open_until == pytest.approx(1010.0)

    @pytest.mark.anyio
    async def test_after_open_for_half_open_admits_exactly_the_probes(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, half_open_calls=2)
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        assert breaker.state is OPEN  # it turns half-open on the next call
        seen: list[object] = []

        async def third_probe() -> None:
            assert breaker.state is HALF_OPEN
            error = await caller.rejected(breaker)
            seen.append((error.state, error.retry_after))

        async def second_probe() -> None:
            await caller.call(breaker, inside=caller.nested(third_probe))

        # Probe 1 is in flight while probe 2 runs; probe 3 finds no permit left.
        await caller.call(breaker, inside=caller.nested(second_probe))
        assert seen == [("half_open", 1.0)]
        assert breaker.state is CLOSED  # both probes succeeded

    @pytest.mark.anyio
    async def test_half_open_reopens_early_once_failures_decide(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        recorder = Recorder()
        breaker = breaker_on(clock, half_open_calls=4, listeners=[recorder])
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        await caller.fail(breaker)
        assert breaker.state is HALF_OPEN  # 1 of 4 failed: undecided
        await caller.ok(breaker)
        assert breaker.state is HALF_OPEN
        await caller.fail(breaker)  # 2 of 4 failed: 0.5 whatever the last probe does
        assert breaker.state is OPEN
        assert recorder.events[-1].reason == "2 of 4 probes failed"
        assert breaker.metrics().open_until == pytest.approx(clock.monotonic() + 10.0)

    @pytest.mark.anyio
    async def test_half_open_closes_early_once_successes_decide(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        recorder = Recorder()
        breaker = breaker_on(clock, half_open_calls=4, listeners=[recorder])
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        await caller.ok(breaker)
        await caller.ok(breaker)
        assert breaker.state is HALF_OPEN  # two failures could still make 0.5
        await caller.ok(breaker)
        assert breaker.state is CLOSED
        assert recorder.events[-1].reason == "3 of 3 probes succeeded"
        assert breaker.metrics().calls == 0  # closing starts a fresh window

    @pytest.mark.anyio
    async def test_half_open_slow_probes_reopen(self, caller: Caller, clock: VirtualClock) -> None:
        recorder = Recorder()
        breaker = breaker_on(
            clock,
            half_open_calls=2,
            slow_call_duration=1.0,
            slow_call_rate_threshold=0.5,
            listeners=[recorder],
        )
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        await caller.ok(breaker, takes=1.5)
        assert breaker.state is OPEN
        assert recorder.events[-1].reason == "1 of 2 probes were slow"

    @pytest.mark.anyio
    async def test_half_open_with_slow_tracking_waits_for_slow_verdict(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(
            clock, half_open_calls=3, slow_call_duration=1.0, slow_call_rate_threshold=0.6
        )
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        await caller.ok(breaker, takes=1.0)  # slow: 1 of 3
        await caller.ok(breaker)
        # Failures can no longer reach 0.5, but one more slow probe would make 2 of 3.
        assert breaker.state is HALF_OPEN
        await caller.ok(breaker)
        assert breaker.state is CLOSED

    @pytest.mark.anyio
    async def test_open_for_backoff_grows_and_resets_on_close(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        growing = Backoff.exponential(initial=10.0, multiplier=2.0, maximum=25.0, jitter="none")
        breaker = breaker_on(clock, half_open_calls=1, open_for=growing)
        await self.open_it(caller, breaker)
        waits = []
        for _ in range(3):
            waits.append((await caller.rejected(breaker)).retry_after)
            clock.advance(waits[-1] or 0.0)
            await caller.fail(breaker)  # the probe fails: open again, for longer
        waits.append((await caller.rejected(breaker)).retry_after)
        assert waits == [10.0, 20.0, 25.0, 25.0]
        clock.advance(25.0)
        await caller.ok(breaker)
        assert breaker.state is CLOSED
        await self.open_it(caller, breaker)
        assert (await caller.rejected(breaker)).retry_after == 10.0

    @pytest.mark.anyio
    async def test_max_half_open_duration_reopens_when_probes_never_settle(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        recorder = Recorder()
        breaker = breaker_on(
            clock, half_open_calls=1, max_half_open_duration=5.0, listeners=[recorder]
        )
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        errors: list[CircuitOpenError] = []

        async def while_the_probe_hangs() -> None:
            errors.append(await caller.rejected(breaker))  # permit taken, not timed out
            clock.advance(5.0)
            errors.append(await caller.rejected(breaker))  # timed out: open again

        await caller.call(breaker, inside=caller.nested(while_the_probe_hangs))
        assert [(e.state, e.retry_after) for e in errors] == [("half_open", 1.0), ("open", 10.0)]
        assert recorder.path[-1] == (HALF_OPEN, OPEN)
        assert recorder.events[-1].reason == "probes did not settle in time"
        # The hung probe finished after the re-open: its success is stale.
        assert breaker.state is OPEN

    # -- operator states ------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_forced_open_rejects_until_reset(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock)
        breaker.force_open()
        error = await caller.rejected(breaker)
        assert (error.state, error.retry_after) == ("forced_open", None)
        assert "next probe" not in str(error)
        clock.advance(1e6)
        await caller.rejected(breaker)
        assert breaker.state is FORCED_OPEN
        assert breaker.metrics().rejected_calls == 2
        assert breaker.metrics().open_until is None
        breaker.reset()
        await caller.ok(breaker)
        assert breaker.state is CLOSED

    @pytest.mark.anyio
    async def test_disabled_admits_everything_and_records_nothing(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock)
        await self.open_it(caller, breaker)
        breaker.disable()
        for _ in range(10):
            await caller.fail(breaker)
        assert breaker.state is DISABLED
        assert breaker.metrics().calls == 4  # only the calls from before
        breaker.reset()
        assert breaker.state is CLOSED
        assert breaker.metrics().calls == 0

    @pytest.mark.anyio
    async def test_metrics_only_records_and_never_transitions(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock)
        breaker.metrics_only()
        for _ in range(6):
            await caller.fail(breaker)
        await caller.ok(breaker)
        metrics = breaker.metrics()
        assert metrics.state is METRICS_ONLY
        assert (metrics.calls, metrics.failed_calls, metrics.failure_rate) == (4, 3, 0.75)
        breaker.metrics_only()  # already there: the window is kept
        assert breaker.metrics().calls == 4

    @pytest.mark.anyio
    async def test_reset_closes_and_forgets_window_and_consecutive_opens(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        growing = Backoff.linear(initial=10.0, step=10.0, maximum=100.0)
        breaker = breaker_on(clock, half_open_calls=1, open_for=growing)
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        await caller.fail(breaker)  # second open: 20 s
        assert (await caller.rejected(breaker)).retry_after == 20.0
        breaker.reset()
        assert breaker.state is CLOSED
        assert breaker.metrics().calls == 0
        await caller.fail(breaker)
        breaker.reset()  # resetting a closed breaker still forgets its window
        assert breaker.metrics().calls == 0
        await self.open_it(caller, breaker)
        assert (await caller.rejected(breaker)).retry_after == 10.0

    # -- what counts ----------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_record_on_types_decide_what_is_a_failure(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, record_on=Boom)
        for _ in range(4):
            with pytest.raises(KeyError):
                await caller.call(breaker, exc=KeyError("not a failure"))
        metrics = breaker.metrics()
        assert (metrics.calls, metrics.failed_calls, metrics.state) == (4, 0, CLOSED)

    @pytest.mark.anyio
    async def test_record_on_predicate(self, caller: Caller, clock: VirtualClock) -> None:
        breaker = breaker_on(clock, record_on=lambda exc: "fatal" in str(exc))
        with pytest.raises(Boom):
            await caller.call(breaker, exc=Boom("fatal"))
        with pytest.raises(Boom):
            await caller.call(breaker, exc=Boom("meh"))
        assert breaker.metrics().failed_calls == 1

    @pytest.mark.anyio
    async def test_ignored_exceptions_count_as_neither(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, ignore_on=NotOurProblem)
        error = NotOurProblem("bad request")
        for _ in range(10):
            with pytest.raises(NotOurProblem) as info:
                await caller.call(breaker, exc=error)
            assert info.value is error
        assert breaker.metrics().calls == 0
        assert breaker.state is CLOSED

    @pytest.mark.anyio
    async def test_ignored_exception_gives_back_its_probe_permit(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, half_open_calls=1, ignore_on=(NotOurProblem,))
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        with pytest.raises(NotOurProblem):
            await caller.call(breaker, exc=NotOurProblem())
        assert breaker.state is HALF_OPEN
        await caller.ok(breaker)  # admitted: the permit came back
        assert breaker.state is CLOSED

    @pytest.mark.anyio
    async def test_record_result_counts_results_as_failures(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, record_result=lambda result: result is None)
        for _ in range(2):
            assert await caller.call(breaker, result=None) is None
        for _ in range(2):
            assert await caller.call(breaker, result=0) == 0
        assert breaker.state is OPEN

    # -- stale outcomes -------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_call_admitted_while_closed_does_not_count_as_a_probe(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, half_open_calls=2)

        async def meanwhile() -> None:
            await self.open_it(caller, breaker)
            clock.advance(10.0)
            await caller.ok(breaker)  # probe 1 of 2 succeeds

        # This call was admitted while CLOSED; it fails after the breaker went half-open.
        with pytest.raises(Boom):
            await caller.call(breaker, exc=Boom("late"), inside=caller.nested(meanwhile))
        assert breaker.state is HALF_OPEN  # a counted failure would have made 1 of 2: OPEN
        await caller.ok(breaker)
        assert breaker.state is CLOSED

    @pytest.mark.anyio
    async def test_a_stale_probe_gives_back_no_permit_to_a_later_half_open(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, half_open_calls=2, ignore_on=NotOurProblem)
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        seen: list[str] = []

        async def fifth_probe() -> None:
            seen.append((await caller.rejected(breaker)).state)

        async def meanwhile() -> None:
            await caller.fail(breaker)  # probe 2 fails: 1 of 2, open again
            assert breaker.state is OPEN
            clock.advance(10.0)
            await caller.ok(breaker)  # a new half-open period: probe 3 of its 2
            assert breaker.state is HALF_OPEN

        # Probe 1 ends with an ignored error after its half-open period is over.
        with pytest.raises(NotOurProblem):
            await caller.call(breaker, exc=NotOurProblem(), inside=caller.nested(meanwhile))
        # Its permit belonged to the old period: the new one still has 1 of 2 left.
        await caller.call(breaker, inside=caller.nested(fifth_probe))
        assert seen == ["half_open"]
        assert breaker.state is CLOSED

    # -- listeners ------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_listeners_see_every_transition(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        recorder = Recorder()
        breaker = breaker_on(clock, half_open_calls=1, name="orders", listeners=[recorder])
        await self.open_it(caller, breaker)
        opened_at = clock.monotonic()
        clock.advance(10.0)
        await caller.ok(breaker)
        breaker.force_open()
        breaker.disable()
        breaker.metrics_only()
        breaker.reset()
        breaker.reset()  # already closed: no event
        assert recorder.path == [
            (CLOSED, OPEN),
            (OPEN, HALF_OPEN),
            (HALF_OPEN, CLOSED),
            (CLOSED, FORCED_OPEN),
            (FORCED_OPEN, DISABLED),
            (DISABLED, METRICS_ONLY),
            (METRICS_ONLY, CLOSED),
        ]
        assert [e.reason for e in recorder.events] == [
            "failure rate 1.00 >= 0.50",
            "open interval elapsed",
            "1 of 1 probes succeeded",
            "forced",
            "disabled",
            "metrics only",
            "reset",
        ]
        assert {e.breaker for e in recorder.events} == {"orders"}
        assert recorder.events[0].at == opened_at
        assert recorder.events[1].at == opened_at + 10.0

    # -- what mutation testing found unguarded ------------------------------------------

    @pytest.mark.anyio
    async def test_an_uncounted_probe_gives_back_exactly_one_permit(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, ignore_on=NotOurProblem)
        await self.open_it(caller, breaker)
        clock.advance(10.0)

        async def fourth_probe() -> None:
            await caller.rejected(breaker)  # two probes in flight: no third

        async def meanwhile() -> None:
            with pytest.raises(NotOurProblem):  # the second probe, uncounted
                await caller.call(breaker, exc=NotOurProblem())
            await caller.call(breaker, inside=caller.nested(fourth_probe))

        await caller.call(breaker, inside=caller.nested(meanwhile))  # the first probe
        assert breaker.state is CLOSED

    @pytest.mark.anyio
    async def test_a_slow_probe_leaves_the_verdict_open_at_a_slow_threshold_of_one(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        recorder = Recorder()
        breaker = breaker_on(
            clock,
            failure_rate_threshold=1.0,  # failures cannot decide: only the slow rate can
            slow_call_duration=1.0,
            slow_call_rate_threshold=1.0,
            listeners=[recorder],
        )
        await self.open_it(caller, breaker)
        clock.advance(10.0)
        await caller.ok(breaker, takes=1.0)
        assert breaker.state is HALF_OPEN  # a second slow probe would make it 2 of 2
        await caller.ok(breaker, takes=1.0)
        assert breaker.state is OPEN
        assert recorder.events[-1].reason == "2 of 2 probes were slow"

    @pytest.mark.anyio
    async def test_a_slow_success_in_a_full_clean_window_is_recorded(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(
            clock, window=2, minimum_calls=2, slow_call_duration=1.0, slow_call_rate_threshold=0.5
        )
        await caller.ok(breaker)
        await caller.ok(breaker)  # full and clean
        await caller.ok(breaker, takes=1.0)
        assert breaker.state is OPEN

    @pytest.mark.anyio
    async def test_a_success_in_a_full_window_with_a_failure_is_recorded(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, window=2, minimum_calls=2, failure_rate_threshold=1.0)
        await caller.fail(breaker)
        await caller.ok(breaker)  # full, one failure
        await caller.ok(breaker)  # pushes the failure out
        assert breaker.metrics().failed_calls == 0

    @pytest.mark.anyio
    async def test_successes_count_again_after_a_reset(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(clock, window=2, minimum_calls=2)
        await caller.ok(breaker)
        await caller.ok(breaker)  # full and clean
        breaker.reset()
        await caller.ok(breaker)
        assert breaker.metrics().calls == 1

    # -- METRICS_ONLY: a threshold reached is reported ------------------------------------

    @pytest.mark.anyio
    async def test_metrics_only_reports_a_failure_rate_crossing_once(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        crossings: list[ThresholdExceeded] = []
        breaker = breaker_on(clock, name="orders", threshold_listeners=[crossings.append])
        breaker.metrics_only()
        await caller.ok(breaker)
        await caller.ok(breaker)
        await caller.fail(breaker)
        assert crossings == []  # 3 calls: below minimum_calls
        await caller.fail(breaker)  # 2 of 4: the 50% threshold is reached
        at = clock.monotonic()
        await caller.fail(breaker)  # still above: not reported again
        assert crossings == [
            ThresholdExceeded(
                "orders", METRICS_ONLY, at, "failure_rate", 0.5, 4, "failure rate 0.50 >= 0.50"
            )
        ]
        assert breaker.state is METRICS_ONLY
        assert breaker.metrics().failed_calls == 3

    @pytest.mark.anyio
    async def test_metrics_only_reports_again_after_the_rates_recovered(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        crossings: list[ThresholdExceeded] = []
        breaker = breaker_on(clock, window=2, minimum_calls=2)
        remove = breaker.add_threshold_listener(crossings.append)
        breaker.metrics_only()
        await caller.fail(breaker)
        await caller.fail(breaker)  # reached
        await caller.ok(breaker)  # 1 of 2: still reached
        await caller.ok(breaker)  # 0 of 2: recovered
        await caller.fail(breaker)  # 1 of 2: reached again
        assert [event.rate for event in crossings] == [1.0, 0.5]
        remove()
        remove()  # removing twice is harmless
        await caller.ok(breaker)
        await caller.ok(breaker)
        await caller.fail(breaker)
        assert len(crossings) == 2

    @pytest.mark.anyio
    async def test_metrics_only_reports_a_slow_call_rate_crossing(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        crossings: list[ThresholdExceeded] = []
        breaker = breaker_on(
            clock,
            window=2,
            minimum_calls=2,
            slow_call_duration=1.0,
            slow_call_rate_threshold=0.5,
            threshold_listeners=[crossings.append],
        )
        breaker.metrics_only()
        await caller.ok(breaker)
        await caller.ok(breaker, takes=1.0)
        assert [(e.threshold, e.rate, e.reason) for e in crossings] == [
            ("slow_call_rate", 0.5, "slow-call rate 0.50 >= 0.50")
        ]

    @pytest.mark.anyio
    async def test_closed_and_disabled_breakers_report_no_threshold_crossing(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        crossings: list[ThresholdExceeded] = []
        breaker = breaker_on(
            clock, window=2, minimum_calls=2, threshold_listeners=[crossings.append]
        )
        await self.open_it(caller, breaker, failures=2)  # CLOSED: it opens instead
        breaker.disable()
        for _ in range(2):
            await caller.fail(breaker)
        assert crossings == []
        assert breaker.state is DISABLED

    @pytest.mark.anyio
    async def test_a_raising_threshold_listener_does_not_break_the_call(
        self, caller: Caller, clock: VirtualClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(event: ThresholdExceeded) -> None:
            raise RuntimeError("listener bug")

        seen: list[ThresholdExceeded] = []
        breaker = breaker_on(clock, window=1, minimum_calls=1, threshold_listeners=[broken])
        breaker.add_threshold_listener(seen.append)
        breaker.metrics_only()
        with caplog.at_level(logging.WARNING, logger="resilience_kit"):
            await caller.fail(breaker)
        assert len(seen) == 1
        assert "a threshold listener failed" in caplog.text
        assert "failure rate 1.00 >= 0.50 in metrics_only (would have opened)" in caplog.text

    # -- open intervals that grow with decorrelated jitter ------------------------------

    @pytest.mark.anyio
    async def test_decorrelated_open_intervals_grow_from_the_previous_one(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        recorder = Recorder()
        breaker = breaker_on(
            clock,
            window=1,
            minimum_calls=1,
            half_open_calls=1,
            open_for=Backoff.exponential(initial=1.0, maximum=1000.0, jitter="decorrelated"),
            listeners=[recorder],
        )
        state = random.getstate()
        random.seed(20261207)  # the breaker draws from the global random source
        try:
            intervals = []
            await caller.fail(breaker)
            for _ in range(30):  # every probe fails: 31 consecutive opens
                open_until = breaker.metrics().open_until
                assert open_until is not None
                intervals.append(open_until - recorder.events[-1].at)
                clock.advance(intervals[-1])
                await caller.fail(breaker)
        finally:
            random.setstate(state)
        previous = 1.0
        for interval in intervals:
            assert 1.0 <= interval <= min(1000.0, 3 * previous) + 1e-9
            previous = interval
        # Without the previous interval every draw stays in [1, 3].
        assert max(intervals) > 3.0

    @pytest.mark.anyio
    async def test_closing_starts_decorrelated_intervals_over(
        self, caller: Caller, clock: VirtualClock
    ) -> None:
        breaker = breaker_on(
            clock,
            window=1,
            minimum_calls=1,
            half_open_calls=1,
            open_for=Backoff.exponential(initial=1.0, maximum=1000.0, jitter="decorrelated"),
        )
        for _ in range(8):  # a few opens in a row, then a success closes it
            await caller.fail(breaker)
            open_until = breaker.metrics().open_until
            assert open_until is not None
            clock.advance(open_until - clock.monotonic())
        await caller.ok(breaker)
        assert breaker.state is CLOSED
        await caller.fail(breaker)
        open_until = breaker.metrics().open_until
        assert open_until is not None
        assert 1.0 <= open_until - clock.monotonic() <= 3.0  # from initial again


# -- cancellation, KeyboardInterrupt, SystemExit --------------------------------------------


@pytest.mark.anyio
async def test_cancellation_is_not_a_failure(clock: VirtualClock) -> None:
    breaker = breaker_on(clock, window=1, minimum_calls=1)
    ran = []

    async def cancelled_inside() -> None:
        ran.append(1)
        await anyio.lowlevel.checkpoint()

    for _ in range(3):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await breaker.acall(cancelled_inside)
        assert scope.cancelled_caught
    assert ran == [1, 1, 1]
    assert breaker.metrics().calls == 0
    assert breaker.state is CLOSED


@pytest.mark.anyio
async def test_cancelled_probe_gives_back_its_permit(clock: VirtualClock) -> None:
    breaker = breaker_on(clock, window=1, minimum_calls=1, half_open_calls=1)
    with pytest.raises(Boom):
        await breaker.acall(_async_boom)
    clock.advance(10.0)

    async def slow_probe() -> None:
        await anyio.sleep_forever()

    with anyio.CancelScope() as scope:
        scope.cancel()
        await breaker.acall(slow_probe)
    assert breaker.state is HALF_OPEN
    assert await breaker.acall(_async_value) == "value"  # the permit came back
    assert breaker.state is CLOSED


async def _async_boom() -> None:
    raise Boom


async def _async_value() -> str:
    return "value"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_pass_through_uncounted(
    clock: VirtualClock, exc_type: type[BaseException]
) -> None:
    breaker = breaker_on(clock, window=1, minimum_calls=1, half_open_calls=1)
    error = exc_type()

    def interrupted() -> None:
        raise error

    with pytest.raises(exc_type) as info:
        breaker.call(interrupted)
    assert info.value is error
    assert breaker.metrics().calls == 0
    with pytest.raises(Boom):
        breaker.call(_boom)
    clock.advance(10.0)
    with pytest.raises(exc_type):
        breaker.call(interrupted)  # takes the only probe permit, and gives it back
    assert breaker.state is HALF_OPEN
    assert breaker.call(lambda: 5) == 5
    assert breaker.state is CLOSED


@pytest.mark.anyio
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_and_system_exit_pass_through_async(
    clock: VirtualClock, exc_type: type[BaseException]
) -> None:
    breaker = breaker_on(clock, window=1, minimum_calls=1, half_open_calls=1)
    error = exc_type()

    async def interrupted() -> None:
        raise error

    with pytest.raises(Boom):
        await breaker.acall(_async_boom)
    clock.advance(10.0)
    with pytest.raises(exc_type) as info:
        await breaker.acall(interrupted)
    assert info.value is error
    assert breaker.state is HALF_OPEN
    assert await breaker.acall(_async_value) == "value"
    assert breaker.state is CLOSED


def _boom() -> None:
    raise Boom


# -- listeners ------------------------------------------------------------------------------


def test_a_raising_listener_does_not_break_the_call(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()

    def broken(event: StateTransition) -> None:
        raise RuntimeError("listener bug")

    breaker = breaker_on(clock, window=1, minimum_calls=1, listeners=[broken, recorder])
    with caplog.at_level(logging.INFO, logger="resilience_kit"):
        with pytest.raises(Boom):  # the call's own exception, not the listener's
            breaker.call(_boom)
    assert breaker.state is OPEN
    assert recorder.path == [(CLOSED, OPEN)]  # later listeners still run
    assert "a state listener failed" in caplog.text
    assert "closed -> open" in caplog.text


def test_add_listener_returns_a_remover(clock: VirtualClock) -> None:
    breaker = breaker_on(clock)
    recorder = Recorder()
    remove = breaker.add_listener(recorder)
    breaker.force_open()
    remove()
    remove()  # removing twice is harmless
    breaker.reset()
    assert recorder.path == [(CLOSED, FORCED_OPEN)]


def test_add_listener_rejects_a_non_callable(clock: VirtualClock) -> None:
    with pytest.raises(ConfigurationError) as info:
        breaker_on(clock).add_listener("print")  # type: ignore[arg-type]
    assert info.value.parameter == "listener"


# -- metrics and repr -----------------------------------------------------------------------


def test_metrics_snapshot(clock: VirtualClock) -> None:
    breaker = breaker_on(clock, window=10, minimum_calls=4, slow_call_duration=1.0)
    assert breaker.metrics() == BreakerMetrics(
        state=CLOSED,
        calls=0,
        failed_calls=0,
        slow_calls=0,
        failure_rate=None,
        slow_call_rate=None,
        rejected_calls=0,
        open_until=None,
    )
    breaker.call(clock.sleep, 1.0)
    breaker.call(lambda: None)
    with pytest.raises(Boom):
        breaker.call(_boom)
    assert breaker.metrics().failure_rate is None  # 3 calls: below minimum_calls
    breaker.call(lambda: None)
    assert breaker.metrics() == BreakerMetrics(
        state=CLOSED,
        calls=4,
        failed_calls=1,
        slow_calls=1,
        failure_rate=0.25,
        slow_call_rate=0.25,
        rejected_calls=0,
        open_until=None,
    )
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(_boom)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)
    metrics = breaker.metrics()
    assert (metrics.state, metrics.rejected_calls) == (OPEN, 1)
    assert metrics.open_until == clock.monotonic() + 10.0


def test_repr_names_the_breaker_and_its_state(clock: VirtualClock) -> None:
    breaker = breaker_on(clock, name="billing")
    assert repr(breaker) == "CircuitBreaker('billing', state=closed)"
    breaker.force_open()
    assert repr(breaker) == "CircuitBreaker('billing', state=forced_open)"
    assert str(CircuitState.HALF_OPEN) == "half_open"


def test_default_clock_comes_from_use_clock() -> None:
    virtual = VirtualClock(start=50.0)
    with use_clock(virtual):
        breaker = CircuitBreaker("defaults", window=1, minimum_calls=1, open_for=30.0)
        with pytest.raises(Boom):
            breaker.call(_boom)
        virtual.advance(12.0)
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(lambda: None)
    assert info.value.retry_after == 18.0


# -- a shared store -------------------------------------------------------------------------


def test_breakers_sharing_a_store_and_a_name_act_as_one(clock: VirtualClock) -> None:
    store = MemoryBreakerStore()
    seen_a, seen_b = Recorder(), Recorder()
    a = breaker_on(clock, name="inventory", store=store, half_open_calls=1, listeners=[seen_a])
    b = breaker_on(clock, name="inventory", store=store, half_open_calls=1, listeners=[seen_b])
    other = breaker_on(clock, name="other", store=store)
    for _ in range(4):
        with pytest.raises(Boom):
            a.call(_boom)
    assert (a.state, b.state, other.state) == (OPEN, OPEN, CLOSED)
    with pytest.raises(CircuitOpenError) as info:
        b.call(lambda: None)
    assert info.value.retry_after == 10.0
    clock.advance(10.0)
    assert b.call(lambda: "probe") == "probe"
    assert (a.state, b.state) == (CLOSED, CLOSED)
    # Each instance hears every transition; the writer knows why, the other does not.
    assert seen_a.path == seen_b.path == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert [e.reason for e in seen_a.events] == [
        "failure rate 1.00 >= 0.50",
        "changed by another instance",
        "changed by another instance",
    ]
    assert [e.reason for e in seen_b.events] == [
        "changed by another instance",
        "open interval elapsed",
        "1 of 1 probes succeeded",
    ]


def test_operator_commands_reach_every_instance(clock: VirtualClock) -> None:
    store = MemoryBreakerStore()
    a = breaker_on(clock, name="x", store=store)
    b = breaker_on(clock, name="x", store=store)
    a.force_open()
    with pytest.raises(CircuitOpenError):
        b.call(lambda: None)
    b.disable()
    assert a.state is DISABLED
    a.reset()
    assert b.state is CLOSED


def test_a_new_instance_starts_from_the_stored_state(clock: VirtualClock) -> None:
    store = MemoryBreakerStore()
    breaker_on(clock, name="x", store=store).force_open()
    late = breaker_on(clock, name="x", store=store)
    assert late.state is FORCED_OPEN
    assert store.load("x") == BreakerRecord(FORCED_OPEN, 1, 1000.0, None, 0)


def test_breakers_on_a_shared_store_are_garbage_collected(clock: VirtualClock) -> None:
    store = MemoryBreakerStore()
    keeper = breaker_on(clock, name="gc", store=store)
    transient = breaker_on(clock, name="gc", store=store)
    ref = weakref.ref(transient)
    del transient
    gc.collect()
    assert ref() is None
    assert len(store._subscribers._callbacks["gc"]) == 1  # its subscription went with it
    keeper.force_open()
    assert keeper.state is FORCED_OPEN


def test_a_late_notification_for_a_collected_breaker_is_dropped(clock: VirtualClock) -> None:
    class KeepingStore(MemoryBreakerStore):
        """Keeps every callback, as a store delivering notifications late might."""

        def __init__(self) -> None:
            super().__init__()
            self.callbacks: list[Callable[[BreakerRecord], None]] = []

        def subscribe(
            self, name: str, callback: Callable[[BreakerRecord], None]
        ) -> Callable[[], None]:
            self.callbacks.append(callback)
            return super().subscribe(name, callback)

    store = KeepingStore()
    breaker = breaker_on(clock, name="late", store=store)
    ref = weakref.ref(breaker)
    del breaker
    gc.collect()
    assert ref() is None
    store.callbacks[0](BreakerRecord(OPEN, 7, 0.0, 10.0, 1))  # nothing to notify: no error


class EchoingStore(MemoryBreakerStore):
    """Tells its subscribers of a record as if another instance had written it too."""

    def __init__(self) -> None:
        super().__init__()
        self._subscribers_of: list[Callable[[BreakerRecord], None]] = []

    def subscribe(self, name: str, callback: Callable[[BreakerRecord], None]) -> Callable[[], None]:
        self._subscribers_of.append(callback)
        return super().subscribe(name, callback)

    def echo(self, record: BreakerRecord) -> None:
        for callback in self._subscribers_of:
            callback(record)


@pytest.mark.parametrize("state", [CLOSED, HALF_OPEN])
def test_the_same_change_from_another_instance_keeps_the_counts(
    clock: VirtualClock, state: CircuitState
) -> None:
    store = EchoingStore()
    recorder = Recorder()
    breaker = breaker_on(clock, name="x", store=store, listeners=[recorder])
    if state is HALF_OPEN:
        for _ in range(4):
            with pytest.raises(Boom):
                breaker.call(_boom)
        clock.advance(10.0)
    breaker.call(lambda: None)  # CLOSED: one call recorded; HALF_OPEN: one probe of two
    current = store.load("x")
    assert current is not None
    assert current.state is state
    transitions = len(recorder.events)
    # The same version and state, its times a hair apart (another clock converted them).
    store.echo(dataclasses.replace(current, changed_at=current.changed_at + 1e-6))
    if state is CLOSED:
        assert breaker.metrics().calls == 1
    else:
        breaker.call(lambda: None)  # the second probe closes it: the first still counts
        assert breaker.state is CLOSED
        transitions += 1
    assert len(recorder.events) == transitions


def test_a_raising_store_subscriber_does_not_starve_the_others(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryBreakerStore()

    def broken(record: BreakerRecord) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = store.subscribe("x", broken)
    a = breaker_on(clock, name="x", store=store)
    b = breaker_on(clock, name="x", store=store)
    with caplog.at_level(logging.ERROR, logger="resilience_kit"):
        a.force_open()
    assert b.state is FORCED_OPEN
    assert "a subscriber of 'x' failed" in caplog.text
    unsubscribe()
    unsubscribe()
    a.reset()
    assert b.state is CLOSED


class RacingStore(MemoryBreakerStore):
    """A store where another writer's record lands just before the breaker's next write.

    With ``notify=False`` it tells subscribers nothing, like a store whose notifications
    lag: the breaker learns of the rival write only from the compare-and-set's answer.
    """

    def __init__(self, *, notify: bool) -> None:
        super().__init__()
        self.notify = notify
        self.rival: Callable[[BreakerRecord], BreakerRecord] | None = None

    def subscribe(self, name: str, callback: Callable[[BreakerRecord], None]) -> Callable[[], None]:
        if self.notify:
            return super().subscribe(name, callback)
        return lambda: None

    def compare_and_set(
        self, name: str, expected_version: int, record: BreakerRecord
    ) -> BreakerRecord:
        rival, self.rival = self.rival, None
        current = self.load(name)
        if rival is not None and current is not None:
            super().compare_and_set(name, current.version, rival(current))
        return super().compare_and_set(name, expected_version, record)


@pytest.mark.parametrize("notify", [True, False])
def test_a_probe_that_loses_the_race_to_a_reopen_is_rejected(
    clock: VirtualClock, notify: bool
) -> None:
    store = RacingStore(notify=notify)
    breaker = breaker_on(clock, name="x", store=store)
    for _ in range(4):
        with pytest.raises(Boom):
            breaker.call(_boom)
    clock.advance(10.0)
    now = clock.monotonic()
    # Another instance re-opens for 60 s just before this call's OPEN -> HALF_OPEN write.
    store.rival = lambda current: BreakerRecord(OPEN, current.version + 1, now, now + 60.0, 2)
    ran = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ran.append, 1)
    assert ran == []
    assert (info.value.state, info.value.retry_after) == ("open", 60.0)
    assert breaker.metrics().open_until == now + 60.0


@pytest.mark.parametrize("notify", [True, False])
def test_a_probe_that_loses_the_race_to_a_close_runs_as_a_closed_call(
    clock: VirtualClock, notify: bool
) -> None:
    store = RacingStore(notify=notify)
    breaker = breaker_on(clock, name="x", store=store)
    for _ in range(4):
        with pytest.raises(Boom):
            breaker.call(_boom)
    clock.advance(10.0)
    # Another instance's probes closed the breaker just before this call's write.
    store.rival = lambda current: BreakerRecord(CLOSED, current.version + 1, clock.monotonic())
    assert breaker.call(lambda: "ran") == "ran"
    assert breaker.state is CLOSED
    assert breaker.metrics().calls == 1  # counted in the new closed window, not as a probe


@pytest.mark.parametrize("notify", [True, False])
def test_an_operator_command_retries_a_lost_race(clock: VirtualClock, notify: bool) -> None:
    store = RacingStore(notify=notify)
    recorder = Recorder()
    breaker = breaker_on(clock, name="x", store=store, listeners=[recorder])
    store.rival = lambda current: BreakerRecord(DISABLED, current.version + 1, 0.0)
    breaker.force_open()
    assert breaker.state is FORCED_OPEN
    assert recorder.path == [(CLOSED, DISABLED), (DISABLED, FORCED_OPEN)]
    assert [e.reason for e in recorder.events] == ["changed by another instance", "forced"]


def test_losing_to_the_same_transition_keeps_the_reason(clock: VirtualClock) -> None:
    store = RacingStore(notify=False)
    recorder = Recorder()
    breaker = breaker_on(clock, name="x", store=store, listeners=[recorder])
    # A rival thread wins with the very transition this breaker was about to write.
    store.rival = lambda current: BreakerRecord(FORCED_OPEN, current.version + 1, 1000.0)
    breaker.force_open()
    assert recorder.path == [(CLOSED, FORCED_OPEN)]
    assert recorder.events[0].reason == "forced"
    stored = store.load("x")
    assert stored is not None
    assert stored.version == 1  # it did not write a second time


class StuckStore(MemoryBreakerStore):
    """A broken store whose compare-and-set stops accepting anything."""

    stuck = False

    def compare_and_set(
        self, name: str, expected_version: int, record: BreakerRecord
    ) -> BreakerRecord:
        current = self.load(name)
        if self.stuck and current is not None:
            return current
        return super().compare_and_set(name, expected_version, record)


def test_a_store_that_never_accepts_does_not_hang_the_breaker(clock: VirtualClock) -> None:
    store = StuckStore()
    breaker = breaker_on(clock, name="x", store=store)
    for _ in range(4):
        with pytest.raises(Boom):
            breaker.call(_boom)
    assert breaker.state is OPEN
    store.stuck = True
    clock.advance(10.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: None)  # cannot move to HALF_OPEN: refuses, does not spin
    assert info.value.retry_after == 1.0
    breaker.force_open()  # gives up quietly after a few tries
    assert breaker.state is OPEN


# -- threads --------------------------------------------------------------------------------


class Worker(threading.Thread):
    """A thread running ``fn``; `finish` joins it and fails the test on a hang."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the test thread by finish()
            self.error = exc

    def finish(self, timeout: float = 10.0) -> object:
        self.join(timeout)
        assert not self.is_alive(), "the thread hung"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads very often, so that races have a chance to show."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


def test_no_lock_is_held_across_the_call(clock: VirtualClock) -> None:
    breaker = breaker_on(clock)
    entered, release = threading.Event(), threading.Event()

    def blocking() -> str:
        entered.set()
        assert release.wait(10.0)
        return "released"

    first = Worker(lambda: breaker.call(blocking))
    first.start()
    try:
        assert entered.wait(10.0)
        second = Worker(lambda: breaker.call(lambda: "other"))
        second.start()
        # It completes while the first call still blocks inside the same breaker.
        assert second.finish() == "other"
        assert first.is_alive()
    finally:
        release.set()
    assert first.finish() == "released"
    assert breaker.metrics().calls == 2


def test_no_lock_is_held_while_listeners_run(clock: VirtualClock) -> None:
    breaker = breaker_on(clock, window=1, minimum_calls=1)
    hung: list[bool] = []

    def listener(event: StateTransition) -> None:
        # Another thread can use the breaker while a listener runs.
        other = Worker(breaker.metrics)
        other.start()
        other.join(5.0)
        hung.append(other.is_alive())

    breaker.add_listener(listener)
    with pytest.raises(Boom):
        breaker.call(_boom)
    assert hung == [False]
    assert breaker.state is OPEN


@pytest.mark.usefixtures("busy_switching")
def test_many_threads_keep_the_totals_consistent(clock: VirtualClock) -> None:
    threads, per_thread = 8, 300
    breaker = breaker_on(
        clock, window=threads * per_thread, minimum_calls=threads * per_thread, half_open_calls=1
    )
    barrier = threading.Barrier(threads)

    def work(index: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            if (i + index) % 4 == 0:
                with pytest.raises(Boom):
                    breaker.call(_boom)
            else:
                breaker.call(lambda: None)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30.0)
    metrics = breaker.metrics()
    assert metrics.calls == threads * per_thread
    assert metrics.failed_calls == threads * per_thread // 4
    assert metrics.state is CLOSED


@pytest.mark.usefixtures("busy_switching")
def test_many_threads_through_open_and_half_open(clock: VirtualClock) -> None:
    threads, per_thread = 6, 300
    recorder = Recorder()
    breaker = breaker_on(
        clock,
        window=10,
        minimum_calls=5,
        failure_rate_threshold=0.3,
        half_open_calls=3,
        open_for=1.0,
        listeners=[recorder],
    )
    barrier = threading.Barrier(threads)

    def work(index: int) -> tuple[int, int]:
        ran = rejected = 0
        barrier.wait()
        for i in range(per_thread):
            if index == 0 and i % 10 == 0:
                clock.advance(0.5)
            try:
                if (i + index) % 3 == 0:
                    breaker.call(_boom)
                else:
                    breaker.call(lambda: None)
            except Boom:
                ran += 1
            except CircuitOpenError:
                rejected += 1
            else:
                ran += 1
        return ran, rejected

    workers = [Worker(lambda n=n: work(n)) for n in range(threads)]
    for worker in workers:
        worker.start()
    tallies: list[Any] = [worker.finish(30.0) for worker in workers]
    assert sum(ran + rejected for ran, rejected in tallies) == threads * per_thread
    assert sum(rejected for _, rejected in tallies) == breaker.metrics().rejected_calls
    # A third of all outcomes fail, so some window of 10 holds 4 or more: it opened.
    assert (CLOSED, OPEN) in recorder.path


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "parameter"),
    [
        ({"name": ""}, "name"),
        ({"name": 42}, "name"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": -0.1}, "failure_rate_threshold"),
        ({"failure_rate_threshold": float("nan")}, "failure_rate_threshold"),
        ({"failure_rate_threshold": True}, "failure_rate_threshold"),
        ({"slow_call_rate_threshold": 2}, "slow_call_rate_threshold"),
        ({"window": 0}, "window"),
        ({"window": 2.5}, "window"),
        ({"window_type": "sliding"}, "window_type"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window": 5, "minimum_calls": 6}, "minimum_calls"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"slow_call_duration": -1.0}, "slow_call_duration"),
        ({"open_for": -1.0}, "open_for"),
        ({"open_for": 0}, "open_for"),
        ({"open_for": "30s"}, "open_for"),
        ({"open_for": Backoff.none()}, "open_for"),
        ({"half_open_calls": 0}, "half_open_calls"),
        ({"max_half_open_duration": 0}, "max_half_open_duration"),
        ({"record_on": "Exception"}, "record_on"),
        ({"record_on": (Exception, 3)}, "record_on"),
        ({"ignore_on": [KeyError]}, "ignore_on"),
        ({"record_result": "yes"}, "record_result"),
        ({"listeners": ["print"]}, "listeners"),
        ({"listeners": print}, "listeners"),
        ({"listeners": 3}, "listeners"),
        ({"threshold_listeners": [None]}, "threshold_listeners"),
        ({"threshold_listeners": print}, "threshold_listeners"),
        ({"store": {}}, "store"),
    ],
)
def test_bad_configuration_names_the_parameter(
    clock: VirtualClock, overrides: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        breaker_on(clock, **overrides)
    assert info.value.parameter == parameter
    assert parameter in str(info.value)
    assert isinstance(info.value, ValueError)


def test_good_edge_configuration_is_accepted(clock: VirtualClock) -> None:
    breaker = breaker_on(
        clock,
        failure_rate_threshold=1.0,
        slow_call_rate_threshold=1.0,
        window=1,
        minimum_calls=1,
        window_type="count",
        open_for=Backoff.fixed([0.0, 5.0]),
        half_open_calls=1,
    )
    with pytest.raises(Boom):
        breaker.call(_boom)
    # A zero first delay still opens (for an instant) rather than never opening.
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    clock.advance(1e-6)
    assert breaker.call(lambda: 1) == 1
    assert breaker.state is CLOSED


# -- decoration -----------------------------------------------------------------------------


def test_decorated_functions_keep_name_and_docstring(clock: VirtualClock) -> None:
    breaker = breaker_on(clock)

    @breaker
    def lookup(key: str) -> str:
        """Find ``key``."""
        return key.upper()

    @breaker
    async def alookup(key: str) -> str:
        """Find ``key``, asynchronously."""
        return key.upper()

    assert lookup.__name__ == "lookup"
    assert lookup.__doc__ == "Find ``key``."
    assert alookup.__name__ == "alookup"
    assert alookup.__doc__ == "Find ``key``, asynchronously."
    assert inspect.iscoroutinefunction(alookup)
    assert not inspect.iscoroutinefunction(lookup)
    assert lookup("a") == "A"


@pytest.mark.anyio
async def test_decorating_methods(clock: VirtualClock) -> None:
    breaker = breaker_on(clock, window=2, minimum_calls=2, failure_rate_threshold=1.0)

    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @breaker
        def get(self, path: str) -> str:
            self.calls += 1
            if path == "/bad":
                raise Boom
            return path

        @breaker
        async def aget(self, path: str) -> str:
            self.calls += 1
            if path == "/bad":
                raise Boom
            return path

    client = Client()
    assert client.get("/ok") == "/ok"
    assert await client.aget("/ok") == "/ok"
    with pytest.raises(Boom):
        client.get("/bad")
    with pytest.raises(Boom):
        await client.aget("/bad")
    assert breaker.state is OPEN  # one breaker guards both methods
    with pytest.raises(CircuitOpenError):
        await client.aget("/ok")
    assert client.calls == 4
    assert inspect.iscoroutinefunction(Client.aget)
