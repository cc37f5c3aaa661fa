"""Backoff schedules: exact values per mode, bad configuration, and hypothesis properties."""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit import Backoff, ConfigurationError
from resilience_kit.policies import _backoff

PROPERTY = settings(max_examples=100, deadline=None)


def const(value: float) -> Callable[[], float]:
    return lambda: value


# -- exact schedules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (Backoff.none(), [0.0, 0.0, 0.0]),
        (Backoff.constant(0.5), [0.5, 0.5, 0.5]),
        (Backoff.constant(0.0), [0.0, 0.0, 0.0]),
        (Backoff.linear(initial=1.0, step=0.5, maximum=2.0), [1.0, 1.5, 2.0, 2.0, 2.0]),
        (Backoff.linear(initial=1.0, step=0.0, maximum=2.0), [1.0, 1.0, 1.0]),
        (
            Backoff.exponential(initial=0.1, maximum=1.0, jitter="none"),
            [0.1, 0.2, 0.4, 0.8, 1.0, 1.0],
        ),
        (
            Backoff.exponential(initial=1.0, multiplier=3.0, maximum=20.0, jitter="none"),
            [1.0, 3.0, 9.0, 20.0],
        ),
        (Backoff.exponential(initial=0.0, maximum=5.0, jitter="none"), [0.0, 0.0, 0.0]),
        (Backoff.exponential(initial=2.0, multiplier=1.0, jitter="none"), [2.0, 2.0, 2.0]),
        (Backoff.fixed([0.1, 1.0, 5.0]), [0.1, 1.0, 5.0, 5.0, 5.0]),
        (Backoff.fixed([3.0, 1.0]), [3.0, 1.0, 1.0]),
    ],
)
def test_schedule_without_jitter(backoff: Backoff, expected: list[float]) -> None:
    delays = [backoff.delay(n, rand=const(0.999)) for n in range(1, len(expected) + 1)]
    assert delays == pytest.approx(expected)
    assert [backoff.base(n) for n in range(1, len(expected) + 1)] == pytest.approx(expected)


def test_full_jitter_scales_the_base() -> None:
    backoff = Backoff.exponential(initial=1.0, maximum=8.0, jitter="full")
    assert [backoff.delay(n, rand=const(0.5)) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 4, 4]
    assert backoff.delay(3, rand=const(0.0)) == 0.0


def test_equal_jitter_keeps_half_the_base() -> None:
    backoff = Backoff.exponential(initial=1.0, maximum=8.0, jitter="equal")
    assert backoff.delay(3, rand=const(0.0)) == 2.0
    assert backoff.delay(3, rand=const(0.5)) == 3.0
    assert backoff.delay(9, rand=const(0.0)) == 4.0


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    backoff = Backoff.exponential(initial=1.0, maximum=10.0, jitter="decorrelated")
    # No previous delay: uniform in [initial, 3 * initial].
    assert backoff.delay(1, rand=const(0.0)) == 1.0
    assert backoff.delay(1, rand=const(0.5)) == 2.0
    # Uniform in [initial, min(maximum, 3 * previous)].
    assert backoff.delay(2, 2.0, rand=const(0.5)) == 3.5
    assert backoff.delay(3, 3.5, rand=const(0.5)) == 5.5
    assert backoff.delay(4, 100.0, rand=const(0.5)) == 5.5
    # A previous delay too small to matter still starts at initial.
    assert backoff.delay(2, 0.1, rand=const(0.7)) == 1.0


@pytest.mark.parametrize("previous", [math.inf, math.nan, 1e308])
def test_decorrelated_jitter_survives_absurd_previous_delays(previous: float) -> None:
    backoff = Backoff.exponential(initial=1.0, maximum=10.0, jitter="decorrelated")
    for r in (0.0, 0.5, 0.999):
        delay = backoff.delay(2, previous, rand=const(r))
        assert 1.0 <= delay <= 10.0


def test_jitter_uses_the_given_random_source() -> None:
    draws: list[int] = []

    def rand() -> float:
        draws.append(1)
        return 0.25

    backoff = Backoff.linear(initial=4.0, step=0.0, maximum=4.0, jitter="full")
    assert backoff.delay(1, rand=rand) == 1.0
    assert draws == [1]
    # Without jitter nothing is drawn.
    assert Backoff.constant(2.0).delay(1, rand=rand) == 2.0
    assert draws == [1]


def test_default_random_source_stays_in_range() -> None:
    backoff = Backoff.exponential(initial=1.0, maximum=4.0)
    for n in range(1, 20):
        assert 0.0 <= backoff.delay(n) <= backoff.base(n) <= 4.0


@pytest.mark.parametrize(
    "backoff",
    [
        Backoff.none(),
        Backoff.constant(1.0),
        Backoff.linear(),
        Backoff.exponential(),
        Backoff.exponential(jitter="decorrelated"),
        Backoff.fixed([1.0]),
    ],
)
@pytest.mark.parametrize("retry", [0, -1])
def test_retry_numbers_start_at_one(backoff: Backoff, retry: int) -> None:
    with pytest.raises(ValueError, match="start at 1"):
        backoff.base(retry)
    with pytest.raises(ValueError, match="start at 1"):
        backoff.delay(retry)


def test_maximum_and_repr() -> None:
    backoff = Backoff.exponential(initial=0.5, maximum=9.0, jitter="equal")
    assert backoff.maximum == 9.0
    assert repr(backoff) == "Backoff.exponential(initial=0.5, maximum=9.0, jitter='equal')"
    assert Backoff.fixed([2, 1, 3]).maximum == 3.0
    assert Backoff.none().maximum == 0.0


@pytest.mark.parametrize(
    "backoff",
    [
        Backoff.exponential(initial=0.1, maximum=30.0, jitter="none"),
        Backoff.exponential(initial=1e-300, multiplier=1.0001, maximum=1e300, jitter="none"),
        Backoff.linear(initial=0.1, step=0.1, maximum=30.0),
        Backoff.linear(initial=0.1, step=1e-300, maximum=30.0),
    ],
)
@pytest.mark.parametrize("retry", [10**6, 10**20, 10**400])
def test_huge_retry_numbers_reach_the_cap_without_overflow(backoff: Backoff, retry: int) -> None:
    assert backoff.base(retry) <= backoff.maximum
    assert backoff.base(retry) >= backoff.base(1000)
    assert 0.0 <= backoff.delay(retry, rand=const(0.5)) <= backoff.maximum


@pytest.mark.parametrize("retry", [10**6, 10**20, 10**400])
def test_huge_retry_numbers_keep_constant_schedules_constant(retry: int) -> None:
    # initial=0 or multiplier=1 never grows: a huge retry number must not jump to the cap.
    assert Backoff.exponential(initial=0.0, maximum=5.0, jitter="none").base(retry) == 0.0
    assert Backoff.exponential(initial=1.0, multiplier=1.0, maximum=5.0).base(retry) == 1.0
    assert Backoff.linear(initial=1.0, step=0.0, maximum=5.0).base(retry) == 1.0
    assert Backoff.fixed([1.0, 2.0]).base(retry) == 2.0
    assert Backoff.exponential(initial=1.0, maximum=30.0, jitter="none").base(retry) == 30.0
    assert Backoff.linear(initial=1.0, step=1.0, maximum=30.0).base(retry) == 30.0


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: Backoff.constant(-1.0), "delay"),
        (lambda: Backoff.constant(math.nan), "delay"),
        (lambda: Backoff.constant(math.inf), "delay"),
        (lambda: Backoff.constant(True), "delay"),
        (lambda: Backoff.constant("1"), "delay"),
        (lambda: Backoff.constant(None), "delay"),
        (lambda: Backoff.linear(step=None), "step"),
        (lambda: Backoff.linear(maximum=None), "maximum"),
        (lambda: Backoff.exponential(initial=None), "initial"),
        (lambda: Backoff.exponential(multiplier=None), "multiplier"),
        (lambda: Backoff.fixed([1.0, None]), "delays"),
        (lambda: Backoff.fixed(None), "delays"),
        (lambda: Backoff.constant(1.0, jitter="bogus"), "jitter"),
        (lambda: Backoff.linear(initial=-0.1), "initial"),
        (lambda: Backoff.linear(step=-0.1), "step"),
        (lambda: Backoff.linear(step=math.inf), "step"),
        (lambda: Backoff.linear(initial=5.0, maximum=1.0), "maximum"),
        (lambda: Backoff.linear(maximum=math.inf), "maximum"),
        (lambda: Backoff.linear(jitter="random"), "jitter"),
        (lambda: Backoff.exponential(multiplier=0.5), "multiplier"),
        (lambda: Backoff.exponential(multiplier=0.0), "multiplier"),
        (lambda: Backoff.exponential(multiplier=-2.0), "multiplier"),
        (lambda: Backoff.exponential(multiplier=math.nan), "multiplier"),
        (lambda: Backoff.exponential(initial=2.0, maximum=1.0), "maximum"),
        (lambda: Backoff.exponential(maximum=-1.0), "maximum"),
        (lambda: Backoff.exponential(initial=math.nan), "initial"),
        (lambda: Backoff.exponential(jitter="Full"), "jitter"),
        (lambda: Backoff.exponential(jitter=None), "jitter"),
        (lambda: Backoff.fixed([]), "delays"),
        (lambda: Backoff.fixed(()), "delays"),
        (lambda: Backoff.fixed([1.0, -1.0]), "delays"),
        (lambda: Backoff.fixed([1.0, math.nan]), "delays"),
        (lambda: Backoff.fixed([math.inf]), "delays"),
        (lambda: Backoff.fixed(["1"]), "delays"),
    ],
)
def test_bad_configuration_names_the_parameter(build: Callable[[], Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build()
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}: ")
    assert isinstance(caught.value, ValueError)


def test_docstring_examples_run() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(Backoff, "Backoff", module=False, globs={"Backoff": Backoff})
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted >= 8
    assert results.failed == 0


# -- properties -----------------------------------------------------------------------------

delays = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
retries = st.integers(min_value=1, max_value=10**6) | st.integers(min_value=1, max_value=10**500)
jitters = st.sampled_from(_backoff._JITTERS)


@st.composite
def backoffs(draw: st.DrawFn, jitter: st.SearchStrategy[str] = jitters) -> Backoff:
    """Any schedule; with a given jitter, only the kinds that take one."""
    kinds = ["constant", "linear", "exponential"]
    if jitter is jitters:
        kinds += ["none", "fixed"]
    kind = draw(st.sampled_from(kinds))
    mode: Any = draw(jitter)
    if kind == "none":
        return Backoff.none()
    if kind == "constant":
        return Backoff.constant(draw(delays), jitter=mode)
    if kind == "fixed":
        return Backoff.fixed(draw(st.lists(delays, min_size=1, max_size=6)))
    initial = draw(delays)
    maximum = initial + draw(delays)
    if kind == "linear":
        return Backoff.linear(initial=initial, step=draw(delays), maximum=maximum, jitter=mode)
    multiplier = draw(st.floats(min_value=1.0, max_value=100.0))
    return Backoff.exponential(initial=initial, multiplier=multiplier, maximum=maximum, jitter=mode)


@PROPERTY
@given(backoffs(), retries, st.none() | delays, rands)
def test_every_delay_lies_within_zero_and_maximum(
    backoff: Backoff, retry: int, previous: float | None, r: float
) -> None:
    delay = backoff.delay(retry, previous, rand=const(r))
    assert 0.0 <= delay <= backoff.maximum
    assert 0.0 <= backoff.base(retry) <= backoff.maximum


@st.composite
def growing(draw: st.DrawFn) -> Backoff:
    initial = draw(delays)
    maximum = initial + draw(delays)
    if draw(st.booleans()):
        return Backoff.linear(initial=initial, step=draw(delays), maximum=maximum)
    multiplier = draw(st.floats(min_value=1.0, max_value=100.0))
    return Backoff.exponential(
        initial=initial, multiplier=multiplier, maximum=maximum, jitter="none"
    )


@PROPERTY
@given(growing(), retries, retries)
def test_base_is_monotone_and_capped(backoff: Backoff, a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert backoff.base(low) <= backoff.base(high) <= backoff.maximum
    assert backoff.base(1) <= backoff.base(low)


@PROPERTY
@given(growing(), st.integers(min_value=1, max_value=200))
def test_base_is_monotone_step_by_step(backoff: Backoff, retry: int) -> None:
    assert backoff.base(retry) <= backoff.base(retry + 1) <= backoff.maximum


@PROPERTY
@given(backoffs(jitter=st.just("full")), retries, rands)
def test_full_jitter_lies_within_zero_and_base(backoff: Backoff, retry: int, r: float) -> None:
    assert 0.0 <= backoff.delay(retry, rand=const(r)) <= backoff.base(retry)


@PROPERTY
@given(backoffs(jitter=st.just("equal")), retries, rands)
def test_equal_jitter_lies_within_half_base_and_base(
    backoff: Backoff, retry: int, r: float
) -> None:
    base = backoff.base(retry)
    assert base / 2.0 <= backoff.delay(retry, rand=const(r)) <= base


@PROPERTY
@given(backoffs(jitter=st.just("decorrelated")), retries, st.none() | delays, rands)
def test_decorrelated_jitter_lies_within_initial_and_three_times_previous(
    backoff: Backoff, retry: int, previous: float | None, r: float
) -> None:
    initial = backoff._initial
    reference = initial if previous is None else previous
    upper = max(initial, min(backoff.maximum, 3.0 * reference))
    assert initial <= backoff.delay(retry, previous, rand=const(r)) <= upper


@PROPERTY
@given(st.lists(delays, min_size=1, max_size=8), retries)
def test_fixed_follows_its_list_then_repeats_the_last_value(
    values: list[float], retry: int
) -> None:
    backoff = Backoff.fixed(values)
    expected = values[retry - 1] if retry <= len(values) else values[-1]
    assert backoff.base(retry) == expected
    assert backoff.delay(retry, rand=const(0.3)) == expected
