"""The sliding windows behind the circuit breaker: CountWindow and TimeWindow."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit.policies._window import FAILURE, SLOW, CountWindow, TimeWindow, WindowTotals

OK = 0
BOTH = FAILURE | SLOW
outcomes = st.sampled_from([OK, FAILURE, SLOW, BOTH])


def totals_of(items: list[int]) -> WindowTotals:
    """The naive aggregate of a list of outcome flags."""
    return WindowTotals(
        calls=len(items),
        failures=sum(1 for o in items if o & FAILURE),
        slow=sum(1 for o in items if o & SLOW),
    )


# -- CountWindow --------------------------------------------------------------------------


def test_count_window_starts_empty() -> None:
    window = CountWindow(3)
    assert window.totals(0.0) == WindowTotals(0, 0, 0)
    assert (window.calls, window.failures, window.slow) == (0, 0, 0)


def test_count_window_counts_flags_separately() -> None:
    window = CountWindow(5)
    for outcome in (OK, FAILURE, SLOW, BOTH):
        window.record(outcome, 0.0)
    assert window.totals(0.0) == WindowTotals(calls=4, failures=2, slow=2)


def test_count_window_evicts_the_oldest_when_full() -> None:
    window = CountWindow(3)
    for outcome in (FAILURE, BOTH, OK):
        window.record(outcome, 0.0)
    assert window.totals(0.0) == WindowTotals(3, 2, 1)
    window.record(OK, 0.0)  # evicts the first FAILURE
    assert window.totals(0.0) == WindowTotals(3, 1, 1)
    window.record(OK, 0.0)  # evicts BOTH
    assert window.totals(0.0) == WindowTotals(3, 0, 0)
    window.record(SLOW, 0.0)  # evicts OK; the ring wrapped around
    assert window.totals(0.0) == WindowTotals(3, 0, 1)


def test_count_window_of_one_holds_only_the_last_outcome() -> None:
    window = CountWindow(1)
    window.record(BOTH, 0.0)
    assert window.totals(0.0) == WindowTotals(1, 1, 1)
    window.record(OK, 0.0)
    assert window.totals(0.0) == WindowTotals(1, 0, 0)


def test_count_window_ignores_time() -> None:
    window = CountWindow(2)
    window.record(FAILURE, 0.0)
    assert window.totals(1e9) == WindowTotals(1, 1, 0)


def test_count_window_reset_forgets_everything() -> None:
    window = CountWindow(2)
    window.record(BOTH, 0.0)
    window.record(BOTH, 0.0)
    window.reset()
    assert window.totals(0.0) == WindowTotals(0, 0, 0)
    window.record(OK, 0.0)
    window.record(FAILURE, 0.0)
    window.record(OK, 0.0)  # evicts OK, not a stale BOTH from before the reset
    assert window.totals(0.0) == WindowTotals(2, 1, 0)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 8), items=st.lists(outcomes, max_size=40))
def test_count_window_matches_the_last_n_outcomes(size: int, items: list[int]) -> None:
    window = CountWindow(size)
    model: deque[int] = deque(maxlen=size)
    for outcome in items:
        window.record(outcome, 0.0)
        model.append(outcome)
        assert window.totals(0.0) == totals_of(list(model))


# -- TimeWindow ---------------------------------------------------------------------------


def test_time_window_starts_empty() -> None:
    window = TimeWindow(5)
    assert window.totals(123.4) == WindowTotals(0, 0, 0)


def test_time_window_keeps_outcomes_for_window_seconds_by_whole_second() -> None:
    window = TimeWindow(3)
    window.record(FAILURE, 10.2)
    window.record(SLOW, 11.9)
    assert window.totals(12.99) == WindowTotals(2, 1, 1)
    # At 13.0 the bucket of second 10 falls out; second 11's stays until 14.0.
    assert window.totals(13.0) == WindowTotals(1, 0, 1)
    assert window.totals(13.99) == WindowTotals(1, 0, 1)
    assert window.totals(14.0) == WindowTotals(0, 0, 0)


def test_time_window_sums_several_outcomes_in_one_bucket() -> None:
    window = TimeWindow(2)
    for outcome in (OK, FAILURE, BOTH):
        window.record(outcome, 5.5)
    assert window.totals(5.5) == WindowTotals(3, 2, 1)
    window.record(OK, 6.1)
    assert window.totals(6.1) == WindowTotals(4, 2, 1)
    assert window.totals(7.0) == WindowTotals(1, 0, 0)


def test_time_window_jump_longer_than_the_window_forgets_everything() -> None:
    window = TimeWindow(4)
    window.record(FAILURE, 1.0)
    window.record(FAILURE, 2.0)
    window.record(OK, 1000.0)
    assert window.totals(1000.0) == WindowTotals(1, 0, 0)
    assert window.totals(2000.0) == WindowTotals(0, 0, 0)
    # Empty and far ahead: recording starts a fresh window.
    window.record(SLOW, 5000.5)
    assert window.totals(5000.5) == WindowTotals(1, 0, 1)


def test_time_window_reading_from_the_past_lands_in_the_newest_bucket() -> None:
    window = TimeWindow(3)
    window.record(OK, 20.0)
    window.record(FAILURE, 19.0)  # a thread that read the clock a bit earlier
    assert window.totals(20.0) == WindowTotals(2, 1, 0)
    # Both live in second 20's bucket, so both leave together at 23.
    assert window.totals(22.9) == WindowTotals(2, 1, 0)
    assert window.totals(23.0) == WindowTotals(0, 0, 0)


def test_time_window_reset_forgets_everything() -> None:
    window = TimeWindow(3)
    window.record(BOTH, 1.0)
    window.record(BOTH, 2.0)
    window.reset()
    assert window.totals(2.0) == WindowTotals(0, 0, 0)
    window.record(FAILURE, 2.5)
    assert window.totals(3.0) == WindowTotals(1, 1, 0)
    assert window.totals(5.0) == WindowTotals(0, 0, 0)


ops = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.25, 0.5, 0.99, 1.0, 1.5, 2.0, 3.7, 6.0, 20.0]),
        st.one_of(st.none(), outcomes),  # None: only read the totals
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 6), start=st.floats(0, 100), steps=ops)
def test_time_window_matches_a_list_of_timed_outcomes(
    size: int, start: float, steps: list[tuple[float, int | None]]
) -> None:
    """An outcome at ``t`` counts at ``now`` while ``floor(now) - floor(t) < size``."""
    window = TimeWindow(size)
    model: list[tuple[float, int]] = []
    now = start
    for dt, outcome in steps:
        now += dt
        if outcome is not None:
            window.record(outcome, now)
            model.append((now, outcome))
        live = [o for t, o in model if int(now) - int(t) < size]
        assert window.totals(now) == totals_of(live)
        assert window.calls == len(live)


# -- record_success: the breaker's hot path -------------------------------------------------

# Times jump forwards and backwards, through negative seconds (int() truncates towards zero
# there) and across whole seconds exactly.
moments = st.sampled_from([-3.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 0.99, 1.0, 1.5, 2.0, 4.0, 9.5])
hot_path_steps = st.lists(
    st.one_of(
        st.tuples(st.just("success"), moments),
        st.tuples(st.just("record"), moments, outcomes),
        st.tuples(st.just("totals"), moments),
        st.tuples(st.just("reset")),
    ),
    max_size=60,
)


def _state_of(window: CountWindow | TimeWindow) -> tuple[int, int, int, bool]:
    return (window.calls, window.failures, window.slow, window.all_clear)


def _replay(
    plain: CountWindow | TimeWindow,
    fast: CountWindow | TimeWindow,
    steps: list[tuple[object, ...]],
) -> None:
    """Drive both windows alike, ``fast`` recording successes by `record_success`."""
    for step in steps:
        if step[0] == "success":
            now = float(step[1])  # type: ignore[arg-type]
            plain.record(OK, now)
            fast.record_success(now)
        elif step[0] == "record":
            now, outcome = float(step[1]), int(step[2])  # type: ignore[arg-type,call-overload]
            plain.record(outcome, now)
            fast.record(outcome, now)
        elif step[0] == "totals":
            now = float(step[1])  # type: ignore[arg-type]
            assert fast.totals(now) == plain.totals(now)
        else:
            plain.reset()
            fast.reset()
        assert _state_of(fast) == _state_of(plain)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 6), steps=hot_path_steps)
def test_a_count_window_records_a_success_as_record_does(
    size: int, steps: list[tuple[object, ...]]
) -> None:
    _replay(CountWindow(size), CountWindow(size), steps)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 6), steps=hot_path_steps)
def test_a_time_window_records_a_success_as_record_does(
    size: int, steps: list[tuple[object, ...]]
) -> None:
    _replay(TimeWindow(size), TimeWindow(size), steps)


def test_a_success_read_from_the_past_lands_in_the_newest_bucket() -> None:
    window = TimeWindow(3)
    window.record(OK, 20.0)
    window.record_success(19.0)  # a thread that read the clock a bit earlier
    assert window.totals(22.9) == WindowTotals(2, 0, 0)
    assert window.totals(23.0) == WindowTotals(0, 0, 0)


def test_a_success_after_a_negative_second_starts_the_next_bucket_just_above_it() -> None:
    window = TimeWindow(2)
    window.record(FAILURE, -1.5)  # the bucket of second -1 (int() truncates towards zero)
    window.record_success(-0.5)  # second 0: a new bucket, although less than 1 s later
    assert window.totals(-0.5) == WindowTotals(2, 1, 0)
    assert window.totals(1.0) == WindowTotals(1, 0, 0)


def test_a_success_at_a_nan_reading_fails_as_any_other_outcome_does() -> None:
    window = TimeWindow(2)
    window.record_success(1.0)
    with pytest.raises(ValueError, match="NaN"):
        window.record(OK, math.nan)
    with pytest.raises(ValueError, match="NaN"):
        window.record_success(math.nan)
    assert window.calls == 1
