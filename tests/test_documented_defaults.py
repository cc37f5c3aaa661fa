"""The defaults the docs promise, pinned by behaviour and against the docs' own tables."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from resilience_kit import Backoff, CircuitBreaker, CircuitOpenError, CircuitState, RetryBudget
from resilience_kit.testing import VirtualClock

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _fail() -> None:
    raise ConnectionError("down")


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            breaker.call(_fail)


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.call(lambda: None)


def documented_defaults(page: str) -> dict[str, Any]:
    """The `| `parameter` | `default` | ...` rows of a page's parameter table."""
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", (DOCS / page).read_text(), re.MULTILINE)
    found: dict[str, Any] = {}
    for name, text in rows:
        try:
            found[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            continue  # not a literal (a class name, say)
    return found


def test_the_breaker_table_gives_the_signature_defaults() -> None:
    table = documented_defaults("circuit-breaker.md")
    signature = inspect.signature(CircuitBreaker).parameters
    assert table == {
        "failure_rate_threshold": 0.5,
        "window": 100,
        "window_type": "count",
        "minimum_calls": 20,
        "slow_call_duration": None,
        "slow_call_rate_threshold": 1.0,
        "open_for": 30.0,
        "half_open_calls": 5,
        "max_half_open_duration": None,
        "ignore_on": (),
        "record_result": None,
        "listeners": (),
        "threshold_listeners": (),
    }
    for name, value in table.items():
        assert signature[name].default == value, name


def test_a_default_breaker_judges_from_20_calls_at_a_50_percent_failure_rate() -> None:
    breaker = CircuitBreaker("defaults", clock=VirtualClock())
    fail(breaker, 19)
    assert breaker.state is CircuitState.CLOSED  # 19 calls: not judged yet
    fail(breaker)
    assert breaker.state is CircuitState.OPEN

    below = CircuitBreaker("below", clock=VirtualClock())
    succeed(below, 11)
    fail(below, 9)
    assert below.state is CircuitState.CLOSED  # 9 of 20 failed: 45%

    at = CircuitBreaker("at", clock=VirtualClock())
    succeed(at, 10)
    fail(at, 10)
    assert at.state is CircuitState.OPEN  # 10 of 20 failed: 50%


def test_a_default_breaker_remembers_the_last_100_calls() -> None:
    breaker = CircuitBreaker("window", clock=VirtualClock())
    succeed(breaker, 100)
    fail(breaker, 49)
    assert breaker.state is CircuitState.CLOSED  # 49 of the last 100
    assert breaker.metrics().calls == 100
    fail(breaker)
    assert breaker.state is CircuitState.OPEN  # 50 of the last 100


def test_a_default_breaker_opens_for_30_seconds_and_probes_5_times() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker("probes", clock=clock)
    fail(breaker, 20)
    with pytest.raises(CircuitOpenError) as rejected:
        succeed(breaker)
    assert rejected.value.retry_after == 30.0
    clock.advance(30.0)
    fail(breaker, 2)
    assert breaker.state is CircuitState.HALF_OPEN  # 2 of 5 probes: not yet 50%
    fail(breaker)
    assert breaker.state is CircuitState.OPEN  # 3 of 5

    clock.advance(30.0)
    succeed(breaker, 2)
    assert breaker.state is CircuitState.HALF_OPEN  # 3 more failures could still open it
    succeed(breaker)
    assert breaker.state is CircuitState.CLOSED  # 3 of 5 succeeded: the verdict is certain


def test_a_default_breaker_opens_on_slow_calls_only_when_all_are_slow() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker("slow", slow_call_duration=1.0, clock=clock)
    for _ in range(19):
        breaker.call(clock.sleep, 1.0)
    succeed(breaker)
    assert breaker.state is CircuitState.CLOSED  # 19 of 20 slow: below 1.0
    breaker.reset()
    for _ in range(20):
        breaker.call(clock.sleep, 1.0)
    assert breaker.state is CircuitState.OPEN


def test_a_default_budget_allows_20_percent_plus_one_retry_a_second_over_10_seconds() -> None:
    clock = VirtualClock()
    budget = RetryBudget(clock=clock)
    for _ in range(50):
        budget.record_call()
    granted = 0
    while budget.try_spend():
        granted += 1
    assert granted == 10 + 10  # 1/s over 10 s, plus 20% of 50 calls
    clock.advance(10.0)
    assert budget.snapshot() == (0, 0)  # the window is 10 s


def test_a_default_budget_slides_in_10_buckets() -> None:
    clock = VirtualClock(start=5.5)
    budget = RetryBudget(clock=clock)
    budget.record_call()  # in the bucket [5, 6)
    clock.advance(9.0)
    assert budget.snapshot() == (1, 0)  # 5 buckets of 2 s would have dropped it at 14
    clock.advance(0.5)
    assert budget.snapshot() == (0, 0)  # 20 buckets of 0.5 s would keep it until 15.5


def test_the_backoff_defaults_are_the_documented_ones() -> None:
    linear = Backoff.linear()
    assert [linear.delay(n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])
    assert linear.maximum == 30.0
    assert linear.delay(10_000) == 30.0

    exponential = Backoff.exponential(jitter="none")
    assert [exponential.delay(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert exponential.maximum == 30.0
    assert exponential.delay(100) == 30.0
    full = Backoff.exponential()  # full jitter by default
    assert full.delay(3, rand=lambda: 0.0) == 0.0
    assert full.delay(3, rand=lambda: 0.5) == 0.2
