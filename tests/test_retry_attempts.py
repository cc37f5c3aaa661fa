"""RetryPolicy.attempts(): retrying a block of code with ``for`` and ``async for``."""

from __future__ import annotations

import traceback
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from resilience_kit import Attempt, Attempts, Backoff, RetryBudget, RetryExhaustedError, RetryPolicy
from resilience_kit.testing import VirtualClock, no_wait, use_clock
from resilience_kit.typing import RetryEvent


class CountingClock(VirtualClock):
    def __init__(self) -> None:
        super().__init__()
        self.asleep_calls = 0
        self.sleep_calls = 0

    def sleep(self, seconds: float) -> None:
        self.sleep_calls += 1
        super().sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        self.asleep_calls += 1
        await super().asleep(seconds)


def policy(clock: VirtualClock | None = None, **kwargs: Any) -> RetryPolicy:
    kwargs.setdefault("attempts", 3)
    kwargs.setdefault("on", ConnectionError)
    kwargs.setdefault("backoff", Backoff.constant(1.0))
    return RetryPolicy(clock=clock, **kwargs)


# -- sync -------------------------------------------------------------------------------------


def test_success_on_the_first_attempt_ends_the_loop() -> None:
    clock = VirtualClock()
    numbers = []
    for attempt in policy(clock).attempts():
        with attempt:
            numbers.append(attempt.number)
    assert numbers == [1]
    assert clock.sleeps == []


def test_retryable_errors_are_swallowed_and_the_loop_sleeps_the_backoff() -> None:
    clock = VirtualClock()
    numbers, starts, after = [], [], []
    for attempt in policy(clock, backoff=Backoff.linear(initial=1.0, step=1.0)).attempts():
        with attempt:
            numbers.append(attempt.number)
            starts.append(clock.monotonic())
            if attempt.number < 3:
                raise ConnectionError
        after.append(attempt.number)  # runs after a swallowed error too
    assert numbers == [1, 2, 3]
    assert starts == [0.0, 1.0, 3.0]
    assert clock.sleeps == [1.0, 2.0]
    assert after == [1, 2, 3]


def test_non_retryable_error_propagates_at_once() -> None:
    clock = VirtualClock()
    numbers = []
    with pytest.raises(KeyError):
        for attempt in policy(clock).attempts():
            with attempt:
                numbers.append(attempt.number)
                raise KeyError("fatal")
    assert numbers == [1]
    assert clock.sleeps == []


def test_exhaustion_reraises_the_last_exception_unchanged() -> None:
    clock = VirtualClock()
    raised: list[ConnectionError] = []
    with pytest.raises(ConnectionError) as caught:
        for attempt in policy(clock).attempts():
            with attempt:
                raised.append(ConnectionError(attempt.number))
                raise raised[-1]
    assert caught.value is raised[-1]
    assert len(raised) == 3
    assert caught.value.__context__ is None
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert names[-1] == "test_exhaustion_reraises_the_last_exception_unchanged"
    assert clock.sleeps == [1.0, 1.0]


def test_set_result_feeds_retry_if_result() -> None:
    clock = VirtualClock()
    retry = policy(clock, retry_if_result=lambda r: r == "pending")
    results = iter(["pending", "pending", "done"])
    seen = []
    for attempt in retry.attempts():
        with attempt:
            value = next(results)
            seen.append(value)
            attempt.set_result(value)
    assert seen == ["pending", "pending", "done"]
    assert clock.sleeps == [1.0, 1.0]


def test_rejected_results_run_out_with_retry_exhausted_error() -> None:
    retry = policy(VirtualClock(), retry_if_result=lambda r: r is None)
    numbers = []
    with pytest.raises(RetryExhaustedError) as caught:
        for attempt in retry.attempts():
            with attempt:
                numbers.append(attempt.number)
                attempt.set_result(None)
    assert numbers == [1, 2, 3]
    assert caught.value.attempts == 3
    assert caught.value.last_result is None


def test_set_result_without_a_predicate_is_ignored() -> None:
    numbers = []
    for attempt in policy(VirtualClock()).attempts():
        with attempt:
            numbers.append(attempt.number)
            attempt.set_result(None)
    assert numbers == [1]


def test_breaking_out_of_the_loop() -> None:
    clock = VirtualClock()
    numbers = []
    for attempt in policy(clock, attempts=5).attempts():
        with attempt:
            numbers.append(attempt.number)
            raise ConnectionError
        if attempt.number == 2:
            break
    assert numbers == [1, 2]
    assert clock.sleeps == [1.0]


def test_not_entering_the_attempt_ends_iteration() -> None:
    clock = VirtualClock()
    # No `with attempt:` in the body: nothing to retry, so the loop ends.
    numbers = [attempt.number for attempt in policy(clock).attempts()]
    assert numbers == [1]
    assert clock.sleeps == []


def test_a_finished_loop_stays_finished() -> None:
    attempts = policy(VirtualClock()).attempts()
    assert iter(attempts) is attempts
    assert isinstance(attempts, Attempts)
    for attempt in attempts:
        assert isinstance(attempt, Attempt)
        with attempt:
            pass
    assert list(attempts) == []


def test_hooks_deadline_and_budget_apply_to_the_loop() -> None:
    clock = VirtualClock()
    events: list[RetryEvent] = []
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=10.0, clock=clock)
    retry = policy(
        clock,
        attempts=None,
        deadline=6.0,
        backoff=Backoff.constant(2.0),
        budget=budget,
        before_sleep=events.append,
        name="block",
    )
    starts = []
    with pytest.raises(ConnectionError):
        for attempt in retry.attempts():
            with attempt:
                starts.append(clock.monotonic())
                raise ConnectionError(attempt.number)
    # The deadline allows attempts at 0, 2 and 4; the budget (1 retry) stops at 2.
    assert starts == [0.0, 2.0]
    assert [(e.policy, e.attempt, e.delay, e.elapsed) for e in events] == [("block", 1, 2.0, 0.0)]
    assert budget.snapshot() == (1, 1)


def test_deadline_ends_the_loop() -> None:
    clock = VirtualClock()
    starts = []
    with pytest.raises(ConnectionError):
        for attempt in policy(clock, attempts=None, deadline=5.0).attempts():
            with attempt:
                starts.append(clock.monotonic())
                clock.sleep(1.5)
                raise ConnectionError
    # 0-1.5, sleep 1, 2.5-4, then 4 + 1 reaches the deadline.
    assert starts == [0.0, 2.5]


def test_no_wait_skips_the_sleeps_and_keeps_the_deadline() -> None:
    clock = VirtualClock()
    events: list[RetryEvent] = []
    retry = policy(
        clock,
        attempts=None,
        deadline=10.0,
        backoff=Backoff.constant(3.0),
        before_sleep=events.append,
    )
    numbers = []
    with no_wait(), pytest.raises(ConnectionError):
        for attempt in retry.attempts():
            with attempt:
                numbers.append(attempt.number)
                raise ConnectionError
    assert numbers == [1, 2, 3, 4]
    assert [event.elapsed for event in events] == [0.0, 3.0, 6.0]
    assert [event.delay for event in events] == [3.0, 3.0, 3.0]
    assert clock.sleeps == []


def test_use_clock_reaches_the_loop() -> None:
    clock = VirtualClock()
    with use_clock(clock):
        for attempt in policy().attempts():
            with attempt:
                if attempt.number == 1:
                    raise ConnectionError
    assert clock.sleeps == [1.0]


def test_interrupts_are_not_retried() -> None:
    numbers = []
    with pytest.raises(KeyboardInterrupt):
        for attempt in policy(VirtualClock(), on=BaseException).attempts():
            with attempt:
                numbers.append(attempt.number)
                raise KeyboardInterrupt
    assert numbers == [1]


def test_two_loops_on_one_policy_are_independent() -> None:
    clock = VirtualClock()
    retry = policy(clock)
    outer_numbers, inner_numbers = [], []
    for outer in retry.attempts():
        with outer:
            outer_numbers.append(outer.number)
            for inner in retry.attempts():
                with inner:
                    inner_numbers.append(inner.number)
                    if inner.number < 3:
                        raise ConnectionError
            if outer.number < 2:
                raise ConnectionError
    assert outer_numbers == [1, 2]
    assert inner_numbers == [1, 2, 3, 1, 2, 3]


# -- async ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_for_retries_and_sleeps_on_the_clock() -> None:
    clock = VirtualClock()
    numbers, starts = [], []
    async for attempt in policy(clock, backoff=Backoff.fixed([1.0, 4.0])).attempts():
        with attempt:
            numbers.append(attempt.number)
            starts.append(clock.monotonic())
            await anyio.lowlevel.checkpoint()
            if attempt.number < 3:
                raise ConnectionError
    assert numbers == [1, 2, 3]
    assert starts == [0.0, 1.0, 5.0]
    assert clock.sleeps == [1.0, 4.0]


@pytest.mark.anyio
async def test_async_for_success_stops_the_loop() -> None:
    numbers = []
    async for attempt in policy(VirtualClock()).attempts():
        with attempt:
            numbers.append(attempt.number)
    assert numbers == [1]


@pytest.mark.anyio
async def test_async_for_non_retryable_propagates() -> None:
    numbers = []
    with pytest.raises(KeyError):
        async for attempt in policy(VirtualClock()).attempts():
            with attempt:
                numbers.append(attempt.number)
                raise KeyError
    assert numbers == [1]


@pytest.mark.anyio
async def test_async_for_exhaustion_reraises_the_last_exception() -> None:
    raised: list[ConnectionError] = []
    with pytest.raises(ConnectionError) as caught:
        async for attempt in policy(VirtualClock()).attempts():
            with attempt:
                raised.append(ConnectionError(attempt.number))
                raise raised[-1]
    assert caught.value is raised[-1]
    assert len(raised) == 3


@pytest.mark.anyio
async def test_async_for_result_predicate() -> None:
    retry = policy(VirtualClock(), attempts=2, retry_if_result=lambda r: r < 0)
    with pytest.raises(RetryExhaustedError) as caught:
        async for attempt in retry.attempts():
            with attempt:
                attempt.set_result(-attempt.number)
    assert caught.value.attempts == 2
    assert caught.value.last_result == -2
    values = iter([-1, 7])
    async for attempt in retry.attempts():
        with attempt:
            value = next(values)
            attempt.set_result(value)
    assert value == 7


@pytest.mark.anyio
async def test_async_for_break_and_not_entering() -> None:
    clock = VirtualClock()
    numbers = []
    async for attempt in policy(clock, attempts=5).attempts():
        with attempt:
            numbers.append(attempt.number)
            raise ConnectionError
        break
    assert numbers == [1]
    numbers += [attempt.number async for attempt in policy(clock).attempts()]
    assert numbers == [1, 1]
    assert clock.sleeps == []


@pytest.mark.anyio
async def test_async_for_zero_delay_never_calls_asleep() -> None:
    clock = CountingClock()
    numbers = []
    async for attempt in policy(clock, backoff=Backoff.none()).attempts():
        with attempt:
            numbers.append(attempt.number)
            if attempt.number < 3:
                raise ConnectionError
    assert numbers == [1, 2, 3]
    assert clock.asleep_calls == 0
    assert clock.sleeps == []


@pytest.mark.anyio
async def test_async_for_no_wait_skips_asleep() -> None:
    clock = CountingClock()
    events: list[RetryEvent] = []
    with no_wait():
        async for attempt in policy(clock, before_sleep=events.append).attempts():
            with attempt:
                if attempt.number < 3:
                    raise ConnectionError
    assert clock.asleep_calls == 0
    assert [event.delay for event in events] == [1.0, 1.0]


@pytest.mark.anyio
async def test_async_for_cancellation_is_not_retried() -> None:
    numbers = []
    with anyio.CancelScope() as scope:
        async for attempt in policy(VirtualClock(), on=BaseException).attempts():
            with attempt:
                numbers.append(attempt.number)
                if attempt.number == 1:
                    raise ConnectionError
                scope.cancel()
                await anyio.lowlevel.checkpoint()
                pytest.fail("not cancelled")
    assert scope.cancelled_caught
    assert numbers == [1, 2]


@pytest.mark.anyio
async def test_async_for_cancelled_during_the_sleep() -> None:
    clock = VirtualClock(auto_advance=False)
    numbers = []

    async def loop() -> None:
        async for attempt in policy(clock, backoff=Backoff.constant(5.0)).attempts():
            with attempt:
                numbers.append(attempt.number)
                raise ConnectionError

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        await anyio.wait_all_tasks_blocked()
        assert clock.sleeps == [5.0]
        tg.cancel_scope.cancel()
    assert numbers == [1]


@pytest.mark.anyio
async def test_async_for_in_many_tasks_on_one_policy() -> None:
    retry = policy(VirtualClock(), attempts=4)
    numbers: dict[int, list[int]] = {}

    async def task(n: int) -> None:
        numbers[n] = []
        async for attempt in retry.attempts():
            with attempt:
                numbers[n].append(attempt.number)
                await anyio.lowlevel.checkpoint()
                if attempt.number <= n % 4:
                    raise ConnectionError

    async with anyio.create_task_group() as tg:
        for n in range(12):
            tg.start_soon(task, n)
    assert numbers == {n: list(range(1, n % 4 + 2)) for n in range(12)}
