"""RetryPolicy as a decorator: limits, backoff, retry-after hints, hooks, budget,
cancellation, concurrency and configuration — sync, and async on asyncio and trio."""

from __future__ import annotations

import asyncio
import dataclasses
import doctest
import inspect
import logging
import math
import threading
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from resilience_kit import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    RetryBudget,
    RetryExhaustedError,
    RetryPolicy,
)
from resilience_kit.policies import _retry, retry_after_hint
from resilience_kit.testing import VirtualClock, no_wait, use_clock
from resilience_kit.typing import RetryEvent


class Script:
    """Outcomes played one per call: an exception instance is raised, anything else returned."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.starts: list[float] = []

    def next(self) -> object:
        if self.calls >= len(self.outcomes):
            pytest.fail(f"called {self.calls + 1} times, only {len(self.outcomes)} scripted")
        outcome = self.outcomes[self.calls]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class CountingClock(VirtualClock):
    """A virtual clock that also counts how often each sleep method was called."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sleep_calls = 0
        self.asleep_calls = 0

    def sleep(self, seconds: float) -> None:
        self.sleep_calls += 1
        super().sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        self.asleep_calls += 1
        await super().asleep(seconds)


@pytest.fixture(params=["sync", "asyncio", "trio"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run a scenario as a sync call, and as an async call on asyncio and on trio."""
    return str(request.param)


def run(
    policy: RetryPolicy,
    script: Script,
    mode: str,
    *,
    clock: VirtualClock | None = None,
    takes: float = 0.0,
) -> Any:
    """Call ``script`` through ``policy``; each attempt takes ``takes`` seconds on ``clock``."""
    if mode == "sync":

        @policy
        def work() -> object:
            if clock is not None:
                script.starts.append(clock.monotonic())
                if takes:
                    clock.sleep(takes)
            return script.next()

        return work()

    @policy
    async def awork() -> object:
        if clock is not None:
            script.starts.append(clock.monotonic())
            if takes:
                await clock.asleep(takes)
        await anyio.lowlevel.checkpoint()
        return script.next()

    async def main() -> tuple[bool, Any]:
        # Catch inside the event loop so that even KeyboardInterrupt leaves it cleanly.
        try:
            return True, await awork()
        except BaseException as exc:
            return False, exc

    ok, value = anyio.run(main, backend=mode)
    if ok:
        return value
    raise value


def frames(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


# -- attempts and the last exception -----------------------------------------------------


def test_retries_until_success(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.constant(1.0), clock=clock)
    script = Script(ConnectionError("a"), ConnectionError("b"), "ok")
    assert run(policy, script, mode, clock=clock) == "ok"
    assert script.calls == 3
    assert script.starts == [0.0, 1.0, 2.0]
    assert clock.sleeps == [1.0, 1.0]


def test_first_try_success_does_not_touch_the_clock(mode: str) -> None:
    clock = CountingClock()
    policy = RetryPolicy(attempts=3, backoff=Backoff.constant(1.0), clock=clock)
    assert run(policy, Script(42), mode) == 42
    assert clock.sleeps == []
    assert clock.sleep_calls == clock.asleep_calls == 0


def test_last_exception_propagates_unchanged_when_attempts_run_out(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.constant(1.0), clock=clock)
    last = ConnectionError("third")
    script = Script(ConnectionError("first"), ConnectionError("second"), last)
    with pytest.raises(ConnectionError) as caught:
        run(policy, script, mode)
    assert caught.value is last
    assert script.calls == 3
    assert clock.sleeps == [1.0, 1.0]
    # Not wrapped, not chained to the earlier attempts, and raised where it was raised.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert frames(caught.value)[-1] == "next"
    assert ("work" if mode == "sync" else "awork") in frames(caught.value)


def test_one_attempt_means_no_retry(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=1, backoff=Backoff.constant(1.0), clock=clock)
    error = ConnectionError()
    with pytest.raises(ConnectionError) as caught:
        run(policy, Script(error), mode)
    assert caught.value is error
    assert clock.sleeps == []


def test_non_retryable_exception_propagates_at_once(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=5, on=ConnectionError, backoff=Backoff.constant(1.0), clock=clock)
    error = ValueError("bad input")
    script = Script(ConnectionError(), error)
    with pytest.raises(ValueError, match="bad input") as caught:
        run(policy, script, mode)
    assert caught.value is error
    assert script.calls == 2
    assert clock.sleeps == [1.0]


@pytest.mark.parametrize(
    ("on", "retried", "not_retried"),
    [
        (ConnectionError, ConnectionResetError(), TimeoutError()),
        ((ConnectionError, TimeoutError), TimeoutError(), KeyError("k")),
        ((ConnectionError, TimeoutError), ConnectionError(), LookupError()),
        (lambda exc: "transient" in str(exc), RuntimeError("transient"), RuntimeError("fatal")),
        (OSError, ConnectionRefusedError(), ValueError()),
    ],
    ids=["subclass", "tuple-second", "tuple-first", "predicate", "base-class"],
)
def test_on_selects_what_is_retried(
    mode: str, on: Any, retried: Exception, not_retried: Exception
) -> None:
    policy = RetryPolicy(attempts=5, on=on, backoff=Backoff.none())
    script = Script(retried, retried, "ok")
    assert run(policy, script, mode) == "ok"
    assert script.calls == 3
    script = Script(not_retried)
    with pytest.raises(type(not_retried)):
        run(policy, script, mode)
    assert script.calls == 1


def test_predicate_sees_the_exception(mode: str) -> None:
    seen: list[BaseException] = []

    def transient(exc: BaseException) -> bool:
        seen.append(exc)
        return isinstance(exc, ConnectionError)

    first, second = ConnectionError(), KeyError()
    policy = RetryPolicy(attempts=5, on=transient, backoff=Backoff.none())
    with pytest.raises(KeyError):
        run(policy, Script(first, second), mode)
    assert seen == [first, second]


# -- deadline ----------------------------------------------------------------------------


def test_deadline_stops_before_a_sleep_would_cross_it(mode: str, caplog: Any) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(
        attempts=None, deadline=5.0, backoff=Backoff.constant(2.0), clock=clock, name="dl"
    )
    script = Script(*(ConnectionError(str(n)) for n in range(10)))
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        with pytest.raises(ConnectionError, match="2"):
            run(policy, script, mode, clock=clock)
    # Attempts at 0, 2 and 4; another 2 s sleep would end at 6, past the deadline.
    assert script.starts == [0.0, 2.0, 4.0]
    assert clock.sleeps == [2.0, 2.0]
    assert clock.monotonic() <= 5.0
    assert "(deadline)" in caplog.text


def test_deadline_counts_the_time_attempts_take(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=10, deadline=5.0, backoff=Backoff.none(), clock=clock)
    script = Script(*(ConnectionError() for _ in range(10)))
    with pytest.raises(ConnectionError):
        run(policy, script, mode, clock=clock, takes=3.0)
    # The second attempt starts at 3 and ends at 6: no third attempt starts after 5.
    assert script.starts == [0.0, 3.0]
    assert all(start < 5.0 for start in script.starts)


def test_deadline_is_measured_from_the_first_attempt(mode: str) -> None:
    clock = VirtualClock(start=1000.0)
    policy = RetryPolicy(attempts=None, deadline=3.0, backoff=Backoff.constant(1.0), clock=clock)
    script = Script(*(ConnectionError() for _ in range(10)))
    with pytest.raises(ConnectionError):
        run(policy, script, mode, clock=clock)
    assert script.starts == [1000.0, 1001.0, 1002.0]


def test_attempts_and_deadline_whichever_comes_first(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=2, deadline=100.0, backoff=Backoff.constant(1.0), clock=clock)
    script = Script(ConnectionError(), ConnectionError(), "never")
    with pytest.raises(ConnectionError):
        run(policy, script, mode)
    assert script.calls == 2


def test_unlimited_attempts_with_deadline_and_zero_delay_stop_on_the_clock(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=None, deadline=10.0, backoff=Backoff.none(), clock=clock)
    script = Script(*(ConnectionError() for _ in range(20)))
    with pytest.raises(ConnectionError):
        run(policy, script, mode, clock=clock, takes=1.0)
    assert script.starts == [float(n) for n in range(10)]
    assert clock.sleeps == [1.0] * 10  # only the attempts' own time


def test_unlimited_attempts_need_a_deadline() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(attempts=None)
    assert caught.value.parameter == "attempts"
    assert "deadline" in str(caught.value)


# -- result predicate ----------------------------------------------------------------------


def test_rejected_results_are_retried(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(
        attempts=3,
        retry_if_result=lambda result: result is None,
        backoff=Backoff.constant(0.5),
        clock=clock,
    )
    script = Script(None, None, "ready")
    assert run(policy, script, mode) == "ready"
    assert script.calls == 3
    assert clock.sleeps == [0.5, 0.5]


def test_retry_exhausted_error_when_the_result_predicate_runs_out(mode: str) -> None:
    policy = RetryPolicy(attempts=3, retry_if_result=lambda r: r < 10, backoff=Backoff.none())
    script = Script(1, 2, 3)
    with pytest.raises(RetryExhaustedError) as caught:
        run(policy, script, mode)
    assert caught.value.attempts == 3
    assert caught.value.last_result == 3
    assert caught.value.__context__ is None
    assert script.calls == 3


def test_last_exception_wins_over_earlier_rejected_results(mode: str) -> None:
    policy = RetryPolicy(attempts=2, retry_if_result=lambda r: r is None, backoff=Backoff.none())
    error = ConnectionError()
    with pytest.raises(ConnectionError) as caught:
        run(policy, Script(None, error), mode)
    assert caught.value is error


def test_last_rejected_result_wins_over_earlier_exceptions(mode: str) -> None:
    policy = RetryPolicy(attempts=2, retry_if_result=lambda r: r is None, backoff=Backoff.none())
    with pytest.raises(RetryExhaustedError) as caught:
        run(policy, Script(ConnectionError(), None), mode)
    assert caught.value.attempts == 2
    assert caught.value.last_result is None


def test_result_predicate_respects_the_deadline(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(
        attempts=None,
        deadline=2.5,
        retry_if_result=lambda r: r == "pending",
        backoff=Backoff.constant(1.0),
        clock=clock,
    )
    with pytest.raises(RetryExhaustedError) as caught:
        run(policy, Script(*["pending"] * 10), mode)
    assert caught.value.attempts == 3  # at 0, 1 and 2; a sleep to 3 would cross 2.5
    assert caught.value.last_result == "pending"


# -- backoff wired through the policy ------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "rand", "sleeps"),
    [
        (Backoff.constant(1.5), 0.5, [1.5, 1.5, 1.5]),
        (Backoff.linear(initial=1.0, step=2.0, maximum=4.0), 0.5, [1.0, 3.0, 4.0]),
        (Backoff.exponential(initial=1.0, maximum=3.0, jitter="none"), 0.5, [1.0, 2.0, 3.0]),
        (Backoff.exponential(initial=1.0, maximum=3.0, jitter="full"), 0.5, [0.5, 1.0, 1.5]),
        (Backoff.exponential(initial=1.0, maximum=3.0, jitter="equal"), 0.5, [0.75, 1.5, 2.25]),
        (
            Backoff.exponential(initial=1.0, maximum=10.0, jitter="decorrelated"),
            0.5,
            [2.0, 3.5, 5.5],
        ),
        (Backoff.linear(initial=2.0, step=0.0, maximum=2.0, jitter="full"), 0.25, [0.5] * 3),
        (Backoff.fixed([0.5, 2.0]), 0.5, [0.5, 2.0, 2.0]),
    ],
    ids=["constant", "linear", "exp", "exp-full", "exp-equal", "decorrelated", "lin-full", "fixed"],
)
def test_every_backoff_mode_sets_the_sleeps(
    mode: str, backoff: Backoff, rand: float, sleeps: list[float]
) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=4, backoff=backoff, rand=lambda: rand, clock=clock)
    with pytest.raises(ConnectionError):
        run(policy, Script(*(ConnectionError() for _ in range(4))), mode)
    assert clock.sleeps == pytest.approx(sleeps)
    assert clock.monotonic() == pytest.approx(sum(sleeps))


def test_default_backoff_is_exponential_with_full_jitter(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=4, rand=lambda: 0.5, clock=clock)
    with pytest.raises(ConnectionError):
        run(policy, Script(*(ConnectionError() for _ in range(4))), mode)
    assert clock.sleeps == pytest.approx([0.05, 0.1, 0.2])


@pytest.mark.parametrize(
    "backoff",
    [
        Backoff.none(),
        Backoff.constant(0.0),
        Backoff.exponential(initial=0.0, maximum=0.0),
        Backoff.exponential(initial=1.0, jitter="full"),  # rand() == 0.0 below
        Backoff.fixed([0.0]),
    ],
)
def test_zero_delay_never_sleeps(mode: str, backoff: Backoff) -> None:
    clock = CountingClock()
    events: list[RetryEvent] = []
    policy = RetryPolicy(
        attempts=4, backoff=backoff, rand=lambda: 0.0, clock=clock, before_sleep=events.append
    )
    script = Script(ConnectionError(), ConnectionError(), ConnectionError(), "ok")
    assert run(policy, script, mode) == "ok"
    assert clock.sleeps == []
    assert clock.sleep_calls == clock.asleep_calls == 0
    assert [event.delay for event in events] == [0.0, 0.0, 0.0]


def test_only_the_nonzero_delays_of_a_schedule_sleep(mode: str) -> None:
    clock = CountingClock()
    policy = RetryPolicy(attempts=4, backoff=Backoff.fixed([0.0, 1.0, 0.0]), clock=clock)
    with pytest.raises(ConnectionError):
        run(policy, Script(*(ConnectionError() for _ in range(4))), mode)
    assert clock.sleeps == [1.0]
    assert clock.sleep_calls + clock.asleep_calls == 1


def test_no_wait_skips_sleeps_but_hooks_see_the_planned_delays(mode: str) -> None:
    clock = VirtualClock()
    events: list[RetryEvent] = []
    policy = RetryPolicy(
        attempts=3, backoff=Backoff.constant(5.0), clock=clock, before_sleep=events.append
    )
    script = Script(ConnectionError(), ConnectionError(), "ok")
    with no_wait():
        assert run(policy, script, mode) == "ok"
    assert script.calls == 3
    assert clock.sleeps == []
    assert clock.monotonic() == 0.0
    assert [event.delay for event in events] == [5.0, 5.0]
    # Switched off again, the same policy sleeps.
    assert run(policy, Script(ConnectionError(), "ok"), mode) == "ok"
    assert clock.sleeps == [5.0]


@pytest.mark.usefixtures("no_wait")
def test_no_wait_fixture_applies_to_policies(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=2, backoff=Backoff.constant(5.0), clock=clock)
    assert run(policy, Script(ConnectionError(), "ok"), mode) == "ok"
    assert clock.sleeps == []


def test_no_wait_keeps_the_deadline_as_if_the_waits_had_happened(mode: str) -> None:
    clock = VirtualClock()
    events: list[RetryEvent] = []
    policy = RetryPolicy(
        attempts=None,
        deadline=10.0,
        backoff=Backoff.constant(3.0),
        clock=clock,
        before_sleep=events.append,
    )
    # With real waits: attempts at 0, 3, 6 and 9. No-wait mode keeps that count (and,
    # with attempts=None, terminates although virtual time never moves).
    with no_wait():
        with pytest.raises(ConnectionError):
            run(policy, Script(*(ConnectionError() for _ in range(10))), mode)
    assert len(events) == 3
    assert [event.elapsed for event in events] == [0.0, 3.0, 6.0]
    assert clock.sleeps == []


def test_use_clock_reaches_a_policy_built_without_a_clock(mode: str) -> None:
    policy = RetryPolicy(attempts=3, deadline=100.0, backoff=Backoff.constant(2.0))
    clock = VirtualClock(start=50.0)
    script = Script(ConnectionError(), ConnectionError(), "ok")
    with use_clock(clock):
        assert run(policy, script, mode, clock=clock) == "ok"
    assert clock.sleeps == [2.0, 2.0]
    assert script.starts == [50.0, 52.0, 54.0]


def test_virtual_clock_fixture_reaches_a_policy(mode: str, virtual_clock: VirtualClock) -> None:
    policy = RetryPolicy(attempts=2, backoff=Backoff.constant(4.0))
    assert run(policy, Script(ConnectionError(), "ok"), mode) == "ok"
    assert virtual_clock.sleeps == [4.0]


# -- retry-after hints -------------------------------------------------------------------


class Throttled(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__(f"retry after {retry_after!r}")
        self.retry_after = retry_after


@pytest.mark.parametrize(
    ("hint", "sleep"),
    [
        (5.0, 5.0),
        (3, 3.0),
        (timedelta(seconds=4, milliseconds=500), 4.5),
        (0.5, 1.0),  # shorter than the backoff: the backoff wins
        (-3.0, 1.0),
        (True, 1.0),
        (math.nan, 1.0),
        (math.inf, 1.0),
        ("7", 1.0),
        (None, 1.0),
        (timedelta(seconds=-5), 1.0),
    ],
)
def test_wait_is_the_larger_of_backoff_and_hint(mode: str, hint: object, sleep: float) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=2, backoff=Backoff.constant(1.0), clock=clock)
    assert run(policy, Script(Throttled(hint), "ok"), mode) == "ok"
    assert clock.sleeps == [sleep]


def test_circuit_open_error_retry_after_is_honoured(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=3, backoff=Backoff.constant(1.0), clock=clock)
    script = Script(
        CircuitOpenError("billing", state="open", retry_after=7.0),
        CircuitOpenError("billing", state="forced_open", retry_after=None),
        "ok",
    )
    assert run(policy, script, mode) == "ok"
    assert clock.sleeps == [7.0, 1.0]


def test_retry_waits_for_a_real_breaker_to_admit_its_probe() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker(
        "billing",
        window=2,
        minimum_calls=2,
        failure_rate_threshold=0.5,
        open_for=30.0,
        half_open_calls=1,
        clock=clock,
    )
    healthy = False

    @breaker
    def charge() -> str:
        if not healthy:
            raise ConnectionError("down")
        return "charged"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            charge()
    healthy = True
    clock.advance(10.0)
    retry = RetryPolicy(attempts=2, on=CircuitOpenError, backoff=Backoff.none(), clock=clock)
    assert retry.call(charge) == "charged"
    assert clock.sleeps == [pytest.approx(20.0)]


def test_hint_above_max_retry_after_gives_up(mode: str, caplog: Any) -> None:
    clock = VirtualClock()
    events: list[RetryEvent] = []
    policy = RetryPolicy(
        attempts=5,
        backoff=Backoff.constant(1.0),
        max_retry_after=60.0,
        clock=clock,
        before_sleep=events.append,
    )
    error = Throttled(61.0)
    script = Script(error, "never")
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        with pytest.raises(Throttled) as caught:
            run(policy, script, mode)
    assert caught.value is error
    assert script.calls == 1
    assert clock.sleeps == []
    assert events == []
    assert "(retry_after)" in caplog.text


def test_hint_equal_to_max_retry_after_is_waited(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=2, max_retry_after=60.0, clock=clock)
    assert run(policy, Script(Throttled(60), "ok"), mode) == "ok"
    assert clock.sleeps == [60.0]


def test_default_max_retry_after_and_none(mode: str) -> None:
    clock = VirtualClock()
    capped = RetryPolicy(attempts=2, backoff=Backoff.none(), clock=clock)
    with pytest.raises(Throttled):
        run(capped, Script(Throttled(301.0), "never"), mode)
    uncapped = RetryPolicy(attempts=2, backoff=Backoff.none(), max_retry_after=None, clock=clock)
    assert run(uncapped, Script(Throttled(3600.0), "ok"), mode) == "ok"
    assert clock.sleeps == [3600.0]


def test_hint_past_the_deadline_gives_up(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=5, deadline=10.0, backoff=Backoff.none(), clock=clock)
    script = Script(Throttled(10.0), "never")
    with pytest.raises(Throttled):
        run(policy, script, mode)
    assert script.calls == 1
    assert clock.sleeps == []


def test_custom_retry_after_extractor(mode: str) -> None:
    clock = VirtualClock()
    seen: list[BaseException] = []

    def from_args(exc: BaseException) -> float | None:
        seen.append(exc)
        return exc.args[0] if exc.args else None

    policy = RetryPolicy(
        attempts=5, backoff=Backoff.constant(1.0), retry_after=from_args, clock=clock
    )
    first = ConnectionError(4.0)
    script = Script(
        first,
        ConnectionError(),  # None: the backoff alone
        ConnectionError(math.nan),  # ignored
        ConnectionError(timedelta(seconds=2)),
        "ok",
    )
    assert run(policy, script, mode) == "ok"
    assert clock.sleeps == [4.0, 1.0, 1.0, 2.0]
    assert seen[0] is first


def test_retry_after_none_ignores_hints(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=2, backoff=Backoff.constant(1.0), retry_after=None, clock=clock)
    assert run(policy, Script(Throttled(100.0), "ok"), mode) == "ok"
    assert clock.sleeps == [1.0]


def test_hints_are_not_read_for_rejected_results(mode: str) -> None:
    class Pending:
        retry_after = 50.0

    clock = VirtualClock()
    policy = RetryPolicy(
        attempts=2,
        retry_if_result=lambda r: isinstance(r, Pending),
        backoff=Backoff.constant(1.0),
        clock=clock,
    )
    assert run(policy, Script(Pending(), "ok"), mode) == "ok"
    assert clock.sleeps == [1.0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, 2.0),
        (2.5, 2.5),
        (0, 0.0),
        (-1, 0.0),
        (timedelta(minutes=1), 60.0),
        (timedelta(seconds=-1), 0.0),
        (True, None),
        (False, None),
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
        (10**400, None),
        ("3", None),
        (None, None),
        ([1], None),
    ],
)
def test_retry_after_hint(value: object, expected: float | None) -> None:
    assert retry_after_hint(Throttled(value)) == expected
    result = retry_after_hint(Throttled(value))
    assert result is None or type(result) is float


def test_retry_after_hint_without_the_attribute() -> None:
    assert retry_after_hint(ValueError()) is None
    assert retry_after_hint(CircuitOpenError("b", state="open", retry_after=1.25)) == 1.25


# -- hooks -----------------------------------------------------------------------------------


def test_single_hook_receives_events(mode: str) -> None:
    clock = VirtualClock()
    events: list[RetryEvent] = []
    first, second = ConnectionError("1"), ConnectionError("2")
    policy = RetryPolicy(
        attempts=3,
        backoff=Backoff.linear(initial=1.0, step=1.0, maximum=10.0),
        clock=clock,
        before_sleep=events.append,
        name="orders",
    )
    assert run(policy, Script(first, second, "ok"), mode) == "ok"
    assert events == [
        RetryEvent("orders", 1, 1.0, 0.0, first, None),
        RetryEvent("orders", 2, 2.0, 0.0, second, None),
    ]
    assert events[0].exception is first
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].delay = 3.0  # type: ignore[misc]


def test_hook_sequence_runs_in_order_and_not_when_giving_up(mode: str) -> None:
    log: list[tuple[str, int]] = []
    policy = RetryPolicy(
        attempts=3,
        backoff=Backoff.none(),
        before_sleep=[
            lambda event: log.append(("a", event.attempt)),
            lambda event: log.append(("b", event.attempt)),
        ],
    )
    with pytest.raises(ConnectionError):
        run(policy, Script(*(ConnectionError() for _ in range(3))), mode)
    assert log == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_hook_sees_elapsed_time_when_a_deadline_is_set(mode: str) -> None:
    clock = VirtualClock(start=10.0)
    events: list[RetryEvent] = []
    policy = RetryPolicy(
        attempts=3,
        deadline=100.0,
        backoff=Backoff.constant(2.0),
        clock=clock,
        before_sleep=events.append,
    )
    with pytest.raises(ConnectionError):
        run(policy, Script(*(ConnectionError() for _ in range(3))), mode, clock=clock, takes=1.0)
    # Attempt 1 runs 0-1, sleeps 2; attempt 2 runs 3-4.
    assert [(e.attempt, e.elapsed, e.delay) for e in events] == [(1, 1.0, 2.0), (2, 4.0, 2.0)]


def test_hook_sees_rejected_results(mode: str) -> None:
    events: list[RetryEvent] = []
    policy = RetryPolicy(
        attempts=3,
        retry_if_result=lambda r: r != "done",
        backoff=Backoff.none(),
        before_sleep=events.append,
        name="poll",
    )
    assert run(policy, Script("queued", "running", "done"), mode) == "done"
    assert [(e.policy, e.attempt, e.exception, e.result) for e in events] == [
        ("poll", 1, None, "queued"),
        ("poll", 2, None, "running"),
    ]


def test_retries_are_logged(mode: str, caplog: Any) -> None:
    policy = RetryPolicy(attempts=2, backoff=Backoff.none(), name="logged")
    with caplog.at_level(logging.INFO, logger="resilience_kit"):
        with pytest.raises(KeyError):
            run(policy, Script(KeyError(), KeyError()), mode)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "retry 'logged': attempt 1 failed (KeyError); retrying in 0.000s",
        "retry 'logged': giving up after 2 attempt(s) (attempts): KeyError",
    ]


# -- retry budget --------------------------------------------------------------------------


def test_shared_budget_caps_retries_across_policies(mode: str, caplog: Any) -> None:
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.4, min_retries_per_second=0.0, clock=clock)
    first = RetryPolicy(attempts=5, backoff=Backoff.none(), budget=budget, clock=clock)
    second = RetryPolicy(attempts=5, backoff=Backoff.none(), budget=budget, clock=clock)
    # Successful calls earn retries: 0.4 each.
    for policy in (first, second, first, second, first):
        assert run(policy, Script("ok"), mode) == "ok"
    assert budget.snapshot() == (5, 0)
    # calls=6 allows 2.4 retries: the third retry does not fit, the call gives up with
    # its last exception although attempts remain.
    last = ConnectionError("last")
    script = Script(ConnectionError(), ConnectionError(), last, "never")
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        with pytest.raises(ConnectionError) as caught:
            run(first, script, mode)
    assert caught.value is last
    assert script.calls == 3
    assert budget.snapshot() == (6, 2)
    assert "(budget)" in caplog.text
    # The budget is spent: a failing call on the other policy gives up at once, with
    # its own exception.
    own = ConnectionError("own")
    script = Script(own, "never")
    with pytest.raises(ConnectionError) as caught:
        run(second, script, mode)
    assert caught.value is own
    assert script.calls == 1
    assert budget.snapshot() == (7, 2)
    # More calls refill it: calls=8 allows 3.2 retries.
    script = Script(ConnectionError(), "ok")
    assert run(first, script, mode) == "ok"
    assert budget.snapshot() == (8, 3)


def test_budget_floor_and_sliding_window(mode: str) -> None:
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.2, window=10.0, clock=clock)
    policy = RetryPolicy(attempts=10, backoff=Backoff.none(), budget=budget, clock=clock)
    script = Script(*(ConnectionError() for _ in range(3)))
    with pytest.raises(ConnectionError):
        run(policy, script, mode)
    assert script.calls == 3  # the floor: 0.2 / s * 10 s = 2 retries
    script = Script(ConnectionError(), "never")
    with pytest.raises(ConnectionError):
        run(policy, script, mode)
    assert script.calls == 1
    clock.advance(10.0)  # the window slides past those retries
    script = Script(ConnectionError(), ConnectionError(), "ok")
    assert run(policy, script, mode) == "ok"
    assert budget.snapshot() == (1, 2)


def test_budget_is_not_spent_when_giving_up_for_another_reason(mode: str) -> None:
    budget = RetryBudget(ratio=1.0, clock=VirtualClock())
    policy = RetryPolicy(attempts=2, backoff=Backoff.none(), budget=budget)
    with pytest.raises(ConnectionError):
        run(policy, Script(ConnectionError(), ConnectionError()), mode)
    assert budget.snapshot() == (1, 1)
    non_retryable = RetryPolicy(on=KeyError, budget=budget)
    with pytest.raises(ValueError):
        run(non_retryable, Script(ValueError()), mode)
    assert budget.snapshot() == (2, 1)


# -- cancellation and interrupts -------------------------------------------------------------


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("on", [Exception, BaseException, lambda exc: True])
def test_interrupts_are_never_retried(mode: str, interrupt: type[BaseException], on: Any) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=5, on=on, backoff=Backoff.constant(1.0), clock=clock)
    error = interrupt()
    script = Script(ConnectionError(), error, "never")
    with pytest.raises(interrupt) as caught:
        run(policy, script, mode)
    assert caught.value is error
    assert script.calls == 2
    assert clock.sleeps == [1.0]


def test_asyncio_cancelled_error_from_a_sync_function_is_not_retried() -> None:
    policy = RetryPolicy(attempts=5, on=BaseException, backoff=Backoff.none())
    script = Script(asyncio.CancelledError(), "never")
    with pytest.raises(asyncio.CancelledError):
        run(policy, script, "sync")
    assert script.calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize("on", [Exception, BaseException, lambda exc: True])
async def test_cancel_scope_cancelling_a_retried_call_is_not_retried(on: Any) -> None:
    clock = VirtualClock()
    calls = 0

    @RetryPolicy(attempts=5, on=on, backoff=Backoff.constant(1.0), clock=clock)
    async def work() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError
        scope.cancel()
        await anyio.lowlevel.checkpoint()
        pytest.fail("not cancelled")

    with anyio.CancelScope() as scope:
        await work()
    assert scope.cancelled_caught
    assert calls == 2
    assert clock.sleeps == [1.0]


@pytest.mark.anyio
async def test_cancelling_during_the_backoff_sleep_ends_the_retries() -> None:
    clock = VirtualClock(auto_advance=False)
    calls = 0

    @RetryPolicy(attempts=5, backoff=Backoff.constant(5.0), clock=clock)
    async def work() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        await anyio.wait_all_tasks_blocked()
        assert clock.sleeps == [5.0]  # asleep on the clock, waiting for it to advance
        tg.cancel_scope.cancel()
    clock.advance(100.0)
    await anyio.wait_all_tasks_blocked()
    assert calls == 1


# -- concurrency -----------------------------------------------------------------------------


def test_one_policy_used_from_many_threads_counts_each_call_apart() -> None:
    clock = VirtualClock()
    seen: dict[int, list[int]] = defaultdict(list)
    lock = threading.Lock()

    def hook(event: RetryEvent) -> None:
        with lock:
            seen[event.exception.args[0]].append(event.attempt)  # type: ignore[union-attr]

    policy = RetryPolicy(
        attempts=4,
        on=ConnectionError,
        backoff=Backoff.constant(1.0),
        clock=clock,
        before_sleep=hook,
    )
    calls: dict[int, int] = defaultdict(int)
    barrier = threading.Barrier(16)
    results: dict[int, object] = {}

    @policy
    def work(n: int) -> int:
        calls[n] += 1
        if calls[n] <= n % 5:  # thread n fails n % 5 times; 4 failures exhaust it
            raise ConnectionError(n, calls[n])
        return n

    def worker(n: int) -> None:
        barrier.wait()
        try:
            results[n] = work(n)
        except ConnectionError as exc:
            results[n] = exc

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(16):
        failures = n % 5
        if failures < 4:
            assert results[n] == n
            assert calls[n] == failures + 1
            assert seen[n] == list(range(1, failures + 1))
        else:
            assert isinstance(results[n], ConnectionError)
            assert results[n].args == (n, 4)  # type: ignore[attr-defined]
            assert calls[n] == 4
            assert seen[n] == [1, 2, 3]
    assert len(clock.sleeps) == sum(min(n % 5, 3) for n in range(16))


def test_threads_retrying_in_lockstep_do_not_share_attempt_counts() -> None:
    policy = RetryPolicy(attempts=4, backoff=Backoff.constant(1.0), clock=VirtualClock())
    barrier = threading.Barrier(8)
    attempts: dict[int, list[int]] = defaultdict(list)

    @policy
    def work(n: int) -> int:
        barrier.wait(timeout=10)  # every thread is inside the policy at every attempt
        attempts[n].append(len(attempts[n]) + 1)
        if len(attempts[n]) < 3:
            raise ConnectionError
        return n

    results: list[int] = []
    threads = [threading.Thread(target=lambda n=n: results.append(work(n))) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(8))
    assert all(attempts[n] == [1, 2, 3] for n in range(8))


@pytest.mark.anyio
async def test_one_policy_used_from_many_tasks_counts_each_call_apart() -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=4, backoff=Backoff.constant(1.0), clock=clock)
    calls: dict[int, int] = defaultdict(int)
    results: dict[int, object] = {}

    @policy
    async def work(n: int) -> int:
        calls[n] += 1
        await anyio.lowlevel.checkpoint()
        if calls[n] <= n % 5:
            raise ConnectionError(n)
        return n

    async def task(n: int) -> None:
        try:
            results[n] = await work(n)
        except ConnectionError as exc:
            results[n] = exc

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(task, n)
    for n in range(20):
        failures = n % 5
        assert calls[n] == min(failures + 1, 4)
        if failures < 4:
            assert results[n] == n
        else:
            assert isinstance(results[n], ConnectionError)


# -- the decorator ---------------------------------------------------------------------------


def test_decorator_keeps_name_doc_and_signature() -> None:
    def fetch(org_id: str, *, limit: int = 10) -> dict[str, int]:
        """Fetch an organisation's entitlements."""
        return {org_id: limit}

    decorated = RetryPolicy()(fetch)
    assert decorated.__name__ == "fetch"
    assert decorated.__qualname__ == fetch.__qualname__
    assert decorated.__doc__ == "Fetch an organisation's entitlements."
    assert decorated.__module__ == __name__
    assert decorated.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert not inspect.iscoroutinefunction(decorated)
    assert decorated("acme", limit=3) == {"acme": 3}


def test_decorated_coroutine_function_stays_a_coroutine_function() -> None:
    async def fetch(org_id: str) -> str:
        """Fetch."""
        return org_id

    decorated = RetryPolicy()(fetch)
    assert inspect.iscoroutinefunction(decorated)
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert decorated.__name__ == "fetch"
    assert decorated.__doc__ == "Fetch."


def test_decorating_methods(mode: str) -> None:
    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none())
        def get(self, key: str) -> str:
            self.calls += 1
            if self.calls < 3:
                raise ConnectionError
            return key.upper()

        @RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none())
        async def aget(self, key: str) -> str:
            self.calls += 1
            if self.calls < 3:
                raise ConnectionError
            return key.upper()

    client, other = Client(), Client()
    if mode == "sync":
        assert client.get("a") == "A"
    else:
        assert anyio.run(client.aget, "a", backend=mode) == "A"
    assert client.calls == 3
    assert other.calls == 0


def test_call_and_acall(mode: str) -> None:
    clock = VirtualClock()
    policy = RetryPolicy(attempts=3, backoff=Backoff.constant(1.0), clock=clock)
    script = Script(ConnectionError(), "ok")

    def work(a: int, *, b: int) -> tuple[int, int, object]:
        return a, b, script.next()

    async def awork(a: int, *, b: int) -> tuple[int, int, object]:
        return a, b, script.next()

    if mode == "sync":
        assert policy.call(work, 1, b=2) == (1, 2, "ok")
    else:

        async def main() -> tuple[int, int, object]:
            return await policy.acall(awork, 1, b=2)

        assert anyio.run(main, backend=mode) == (1, 2, "ok")
    assert script.calls == 2
    assert clock.sleeps == [1.0]


def test_call_on_an_async_function_raises_type_error() -> None:
    calls = 0

    async def work() -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(TypeError, match="acall"):
        RetryPolicy().call(work)  # type: ignore[arg-type]
    assert calls == 0


def test_callable_object_with_async_call_is_wrapped_as_async() -> None:
    class Handler:
        async def __call__(self) -> str:
            return "handled"

    decorated = RetryPolicy().wrap(Handler())
    assert inspect.iscoroutinefunction(decorated)
    assert anyio.run(decorated) == "handled"


def test_generator_functions_are_rejected_at_decoration_time() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def anumbers() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        RetryPolicy()(numbers)
    with pytest.raises(TypeError, match="generator"):
        RetryPolicy()(anumbers)
    with pytest.raises(TypeError, match="callable"):
        RetryPolicy()(42)  # type: ignore[call-overload]


def test_repr_and_name() -> None:
    policy = RetryPolicy(attempts=4, deadline=3.0, backoff=Backoff.constant(1.0), name="db")
    assert policy.name == "db"
    assert repr(policy) == (
        "RetryPolicy(name='db', attempts=4, deadline=3.0, "
        "backoff=Backoff.constant(initial=1.0, maximum=1.0, jitter='none'))"
    )
    assert RetryPolicy().name == "retry"


def test_docstring_examples_run() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    namespace = dict(vars(_retry))
    for obj in (RetryPolicy, retry_after_hint):
        for test in finder.find(obj, obj.__name__, module=False, globs=dict(namespace)):
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted >= 8
    assert results.failed == 0


# -- configuration -------------------------------------------------------------------------


def not_callable_hooks() -> list[object]:
    return [print, 3]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": -1}, "attempts"),
        ({"attempts": 1.5}, "attempts"),
        ({"attempts": 3.0}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"attempts": "3"}, "attempts"),
        ({"attempts": None}, "attempts"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": -1.0}, "deadline"),
        ({"deadline": math.nan}, "deadline"),
        ({"deadline": math.inf}, "deadline"),
        ({"deadline": True}, "deadline"),
        ({"deadline": "10"}, "deadline"),
        ({"attempts": None, "deadline": math.inf}, "deadline"),
        ({"max_retry_after": -1.0}, "max_retry_after"),
        ({"max_retry_after": math.nan}, "max_retry_after"),
        ({"backoff": 1.0}, "backoff"),
        ({"backoff": "exponential"}, "backoff"),
        ({"backoff": Backoff}, "backoff"),
        ({"budget": 0.2}, "budget"),
        ({"retry_if_result": True}, "retry_if_result"),
        ({"before_sleep": not_callable_hooks()}, "before_sleep"),
        ({"before_sleep": 5}, "before_sleep"),
        ({"before_sleep": "hook"}, "before_sleep"),
        ({"on": (ValueError, 3)}, "on"),
        ({"on": (ValueError, int)}, "on"),
        ({"on": (ValueError, "KeyError")}, "on"),
        ({"on": 5}, "on"),
        ({"on": "ValueError"}, "on"),
        ({"on": int}, "on"),
        ({"retry_after": 5.0}, "retry_after"),
        ({"rand": 0.5}, "rand"),
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(**kwargs)
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}: ")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 1},
        {"attempts": None, "deadline": 0.5},
        {"deadline": 1},
        {"max_retry_after": 0},
        {"max_retry_after": None},
        {"on": ()},
        {"on": BaseException},
        {"before_sleep": []},
        {"before_sleep": (print,)},
        {"retry_after": None},
        {"budget": RetryBudget()},
    ],
)
def test_good_configuration_is_accepted(kwargs: dict[str, Any]) -> None:
    assert isinstance(RetryPolicy(**kwargs), RetryPolicy)


def test_empty_on_tuple_retries_nothing(mode: str) -> None:
    policy = RetryPolicy(attempts=3, on=(), backoff=Backoff.none())
    script = Script(ConnectionError(), "never")
    with pytest.raises(ConnectionError):
        run(policy, script, mode)
    assert script.calls == 1


def test_hooks_can_be_any_callable(mode: str) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.events: list[RetryEvent] = []

        def __call__(self, event: RetryEvent) -> None:
            self.events.append(event)

    recorder = Recorder()
    hooks: Callable[[RetryEvent], object] = recorder
    policy = RetryPolicy(attempts=2, backoff=Backoff.none(), before_sleep=hooks)
    assert run(policy, Script(KeyError(), "ok"), mode) == "ok"
    assert [event.attempt for event in recorder.events] == [1]
