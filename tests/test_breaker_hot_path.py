"""The closed breaker's success path: the clean-window shortcut and the success recorder."""

from __future__ import annotations

import pytest

from resilience_kit import CircuitBreaker, CircuitState
from resilience_kit.testing import VirtualClock, use_clock


def ok() -> int:
    return 1


async def aok() -> int:
    return 1


def fail() -> int:
    raise ConnectionError


def test_a_full_clean_window_stays_full_and_clean_through_more_successes() -> None:
    breaker = CircuitBreaker("b", window=3, minimum_calls=2, clock=VirtualClock())
    guarded = breaker(ok)
    for _ in range(10):
        assert guarded() == 1
    metrics = breaker.metrics()
    assert (metrics.calls, metrics.failed_calls, metrics.state) == (3, 0, CircuitState.CLOSED)


@pytest.mark.anyio
async def test_an_async_full_clean_window_stays_full_and_clean_through_more_successes() -> None:
    breaker = CircuitBreaker("b", window=3, minimum_calls=2, clock=VirtualClock())
    guarded = breaker(aok)
    for _ in range(10):
        assert await guarded() == 1
    assert (breaker.metrics().calls, breaker.metrics().failed_calls) == (3, 0)


def test_a_success_that_brings_the_window_to_minimum_calls_can_open_it() -> None:
    breaker = CircuitBreaker("b", window=4, minimum_calls=2, clock=VirtualClock())
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert breaker.state is CircuitState.CLOSED  # one call: below minimum_calls
    assert breaker.call(ok) == 1  # 1 failure in 2 calls: 0.5 >= 0.5
    assert breaker.metrics().state is CircuitState.OPEN


def test_successes_evict_a_failure_from_a_full_count_window() -> None:
    breaker = CircuitBreaker(
        "b", window=3, minimum_calls=3, failure_rate_threshold=0.5, clock=VirtualClock()
    )
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    for _ in range(3):
        breaker.call(ok)
    metrics = breaker.metrics()
    assert (metrics.calls, metrics.failed_calls, metrics.failure_rate) == (3, 0, 0.0)


def test_a_time_window_success_reads_the_clock_installed_after_the_breaker_was_built() -> None:
    breaker = CircuitBreaker("b", window_type="time", window=10, minimum_calls=1)
    clock = VirtualClock()
    with use_clock(clock):
        breaker.call(ok)
        clock.advance(10.0)  # the success above leaves the window now
        assert breaker.metrics().calls == 0


def test_a_success_in_metrics_only_is_counted_without_changing_the_state() -> None:
    breaker = CircuitBreaker("b", window=4, minimum_calls=2, clock=VirtualClock())
    breaker.metrics_only()
    for _ in range(3):
        breaker.call(ok)
    assert breaker.metrics().calls == 3
    assert breaker.state is CircuitState.METRICS_ONLY


@pytest.mark.anyio
async def test_a_success_admitted_before_a_reset_is_not_counted_after_it() -> None:
    breaker = CircuitBreaker("b", window=4, minimum_calls=2, clock=VirtualClock())

    async def reset_midway() -> int:
        breaker.reset()  # a new version while the call runs
        return 1

    assert await breaker(reset_midway)() == 1
    assert breaker.metrics().calls == 0
