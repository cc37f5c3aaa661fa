"""RetryBudget: the ratio and floor rule, the sliding window, and a model-based property."""

from __future__ import annotations

import doctest
import math
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit import ConfigurationError, RetryBudget
from resilience_kit.testing import VirtualClock, use_clock


def spend(budget: RetryBudget, times: int) -> list[bool]:
    return [budget.try_spend() for _ in range(times)]


def record(budget: RetryBudget, calls: int) -> None:
    for _ in range(calls):
        budget.record_call()


def test_ratio_caps_retries_to_a_fraction_of_calls() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, clock=VirtualClock())
    record(budget, 10)
    assert spend(budget, 3) == [True, True, False]
    assert budget.snapshot() == (10, 2)
    record(budget, 5)
    assert spend(budget, 2) == [True, False]
    assert budget.snapshot() == (15, 3)


def test_a_fraction_of_a_retry_is_no_retry() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, clock=VirtualClock())
    budget.record_call()
    assert budget.try_spend() is False  # 1 retry would exceed 0.2 * 1 call
    record(budget, 4)
    assert spend(budget, 2) == [True, False]


def test_float_rounding_does_not_cost_a_retry() -> None:
    budget = RetryBudget(ratio=0.29, min_retries_per_second=0.0, clock=VirtualClock())
    record(budget, 100)  # 0.29 * 100 == 28.999999999999996 in floating point
    assert spend(budget, 30).count(True) == 29


def test_no_retries_without_calls_or_floor() -> None:
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, clock=VirtualClock())
    assert budget.try_spend() is False
    assert budget.snapshot() == (0, 0)


def test_floor_lets_quiet_callers_retry() -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.5, window=10.0, clock=VirtualClock())
    assert spend(budget, 6) == [True] * 5 + [False]


def test_floor_and_ratio_add_up() -> None:
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.1, window=10.0, clock=VirtualClock())
    record(budget, 4)
    assert spend(budget, 4) == [True, True, True, False]  # 1 (floor) + 0.5 * 4


def test_window_slides_bucket_by_bucket() -> None:
    clock = VirtualClock()
    budget = RetryBudget(
        ratio=1.0, min_retries_per_second=0.0, window=10.0, buckets=10, clock=clock
    )
    record(budget, 5)  # bucket of t=0
    clock.advance(5.0)
    record(budget, 5)  # bucket of t=5
    assert spend(budget, 11) == [True] * 10 + [False]
    clock.advance(4.99)
    assert budget.snapshot() == (10, 10)
    clock.advance(0.01)  # t=10: the calls made at t=0 leave the window, the retries stay
    assert budget.snapshot() == (5, 10)
    assert budget.try_spend() is False
    clock.advance(5.0)  # t=15: everything made at t=5 leaves too
    assert budget.snapshot() == (0, 0)
    record(budget, 2)
    assert spend(budget, 3) == [True, True, False]


def test_a_long_pause_empties_the_window() -> None:
    clock = VirtualClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=2.0, clock=clock)
    record(budget, 3)
    assert spend(budget, 2) == [True, True]
    clock.advance(1000.0)
    assert budget.snapshot() == (0, 0)
    assert budget.try_spend() is False


def test_floor_refills_as_the_window_slides() -> None:
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=1.0, window=4.0, clock=clock)
    assert spend(budget, 5) == [True] * 4 + [False]
    clock.advance(4.0)
    assert spend(budget, 5) == [True] * 4 + [False]


def test_use_clock_override_reaches_a_budget_built_without_clock() -> None:
    clock = VirtualClock(start=100.0)
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=10.0)
    with use_clock(clock):
        record(budget, 2)
        assert budget.snapshot() == (2, 0)
        clock.advance(10.0)
        assert budget.snapshot() == (0, 0)


def test_virtual_clock_fixture_reaches_the_budget(virtual_clock: VirtualClock) -> None:
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=1.0)
    budget.record_call()
    virtual_clock.advance(1.0)
    assert budget.try_spend() is False


def test_concurrent_spending_never_overdraws() -> None:
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, clock=VirtualClock())
    record(budget, 50)
    granted: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        granted.append(spend(budget, 40).count(True))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 50
    assert budget.snapshot() == (50, 50)


def test_concurrent_recording_counts_every_call() -> None:
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, clock=VirtualClock())
    threads = [threading.Thread(target=record, args=(budget, 250)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.snapshot() == (2000, 0)


def test_repr_and_window() -> None:
    budget = RetryBudget(0.25, window=30)
    assert repr(budget) == "RetryBudget(ratio=0.25, window=30.0)"
    assert budget.window == 30.0


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": math.nan}, "ratio"),
        ({"ratio": math.inf}, "ratio"),
        ({"ratio": "0.2"}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"min_retries_per_second": -1.0}, "min_retries_per_second"),
        ({"min_retries_per_second": math.inf}, "min_retries_per_second"),
        ({"window": 0}, "window"),
        ({"window": -10.0}, "window"),
        ({"window": math.nan}, "window"),
        ({"window": None}, "window"),
        ({"ratio": None}, "ratio"),
        ({"min_retries_per_second": None}, "min_retries_per_second"),
        ({"buckets": 0}, "buckets"),
        ({"buckets": 2.5}, "buckets"),
        ({"buckets": True}, "buckets"),
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryBudget(**kwargs)
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}: ")


def test_docstring_examples_run() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(
        RetryBudget, "RetryBudget", module=False, globs={"RetryBudget": RetryBudget}
    ):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted >= 4
    assert results.failed == 0


# -- the model: plain timestamps, no buckets ---------------------------------------------


class NaiveBudget:
    """Every call and retry kept with its timestamp; the window recomputed each time."""

    def __init__(self, ratio: float, floor: float, window: float, buckets: int) -> None:
        self.ratio = ratio
        self.floor = floor
        self.window = window
        self.buckets = buckets
        self.calls: list[float] = []
        self.retries: list[float] = []

    def in_window(self, stamps: list[float], now: float) -> int:
        # The budget slides bucket by bucket: the buckets of the last `window` seconds,
        # the current (partial) one included.
        tick = int(now * self.buckets // self.window)
        return sum(
            1 for stamp in stamps if int(stamp * self.buckets // self.window) > tick - self.buckets
        )

    def allowed(self, now: float) -> float:
        return self.floor + self.ratio * self.in_window(self.calls, now)

    def try_spend(self, now: float) -> bool:
        if self.in_window(self.retries, now) + 1 > self.allowed(now) + 1e-9:
            return False
        self.retries.append(now)
        return True


operations = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(min_value=1, max_value=5)),
        st.tuples(st.just("spend"), st.integers(min_value=1, max_value=4)),
        st.tuples(
            st.just("advance"),
            st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 40.0]),
        ),
        # Steps measured in windows: most stay inside the window, so that buckets expire
        # one by one and their slots are reused before the whole window is cleared.
        st.tuples(st.just("advance_windows"), st.sampled_from([0.1, 0.2, 0.26, 0.5, 0.9])),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 1.0, 3.0]),
    per_second=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    window=st.sampled_from([1.0, 2.0, 4.0, 10.0]),
    buckets=st.sampled_from([1, 2, 4, 8]),
    ops=operations,
)
def test_budget_matches_a_naive_model_and_never_overdraws(
    ratio: float,
    per_second: float,
    window: float,
    buckets: int,
    ops: list[tuple[str, float]],
) -> None:
    clock = VirtualClock()
    budget = RetryBudget(
        ratio, min_retries_per_second=per_second, window=window, buckets=buckets, clock=clock
    )
    model = NaiveBudget(ratio, per_second * window, window, buckets)
    width = window / buckets
    for op, amount in ops:
        now = clock.monotonic()
        if op == "call":
            for _ in range(int(amount)):
                budget.record_call()
                model.calls.append(now)
        elif op == "spend":
            for _ in range(int(amount)):
                granted = budget.try_spend()
                assert granted == model.try_spend(now)
                if granted:
                    # Within the budget's window the retries never exceed the allowance...
                    assert model.in_window(model.retries, now) <= model.allowed(now) + 1e-9
                    # ...and, in plain timestamps, the retries of the last
                    # `window - width` seconds never exceed the allowance of the calls
                    # of the last `window` seconds.
                    recent = sum(1 for t in model.retries if t > now - (window - width))
                    calls = sum(1 for t in model.calls if t > now - window)
                    assert recent <= model.floor + ratio * calls + 1e-9
        elif op == "advance_windows":
            clock.advance(amount * window)
        else:
            clock.advance(amount)
        now = clock.monotonic()
        assert budget.snapshot() == (
            model.in_window(model.calls, now),
            model.in_window(model.retries, now),
        )


@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
    window=st.sampled_from([0.1, 0.3, 1.0, 2.5, 10.0, 60.0]),
    buckets=st.sampled_from([1, 3, 10, 16]),
)
def test_a_call_leaves_the_window_within_one_bucket_of_its_end(
    start: float, window: float, buckets: int
) -> None:
    clock = VirtualClock(start=start)
    budget = RetryBudget(1.0, min_retries_per_second=0.0, window=window, buckets=buckets)
    with use_clock(clock):
        budget.record_call()
        # Still counted until `window - width` has passed (less a hair, for rounding)...
        clock.advance(window * (1 - 1 / buckets) * (1 - 1e-6))
        assert budget.snapshot() == (1, 0)
        # ...and gone once the whole window has passed.
        clock.advance(window / buckets + window * 1e-6)
        assert budget.snapshot() == (0, 0)
