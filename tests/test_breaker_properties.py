"""CircuitBreaker against simple independent models, driven by hypothesis.

The models use exact fractions for rates, recompute every aggregate from a plain list,
and decide half-open verdicts by trying every possible completion of the probes, so they
share no arithmetic with the implementation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from resilience_kit import Backoff, CircuitBreaker, CircuitOpenError, CircuitState
from resilience_kit.testing import VirtualClock
from resilience_kit.typing import StateTransition

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED
METRICS_ONLY = CircuitState.METRICS_ONLY

THRESHOLDS = ["0.2", "0.25", "0.3", "0.5", "0.55", "0.6", "0.67", "0.75", "0.9", "1"]


class Boom(Exception):
    """A recorded failure."""


class Unrecorded(Exception):
    """Not in record_on: counts as a success."""


class Ignored(Exception):
    """In ignore_on: counts as nothing."""


BAD_RESULT = "bad"  # record_result says this result is a failure


@dataclass
class Config:
    window: int
    minimum_calls: int
    threshold: str
    slow_threshold: str
    half_open_calls: int
    slow_after: float | None
    growing: bool
    # Without record_result and slow_call_duration the breaker skips recording a success
    # into a full, clean window (its fast path): both ways must agree with the model.
    judge_results: bool


@st.composite
def configs(draw: st.DrawFn) -> Config:
    window = draw(st.integers(1, 6))
    return Config(
        window=window,
        minimum_calls=draw(st.integers(1, window)),
        threshold=draw(st.sampled_from(THRESHOLDS)),
        slow_threshold=draw(st.sampled_from(THRESHOLDS)),
        half_open_calls=draw(st.integers(1, 3)),
        slow_after=draw(st.sampled_from([None, 2.0])),
        growing=draw(st.booleans()),
        judge_results=draw(st.booleans()),
    )


@dataclass
class Model:
    """The breaker's state machine, written plainly."""

    config: Config
    state: CircuitState = CLOSED
    window: deque[tuple[bool, bool]] = field(default_factory=deque)  # (failed, slow)
    opens: int = 0
    open_until: float | None = None
    probes_admitted: int = 0
    probes: list[tuple[bool, bool]] = field(default_factory=list)
    rejected: int = 0
    path: list[tuple[CircuitState, CircuitState]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.window = deque(maxlen=self.config.window)

    def open_for(self, opens: int) -> float:
        if self.config.growing:
            return min(3.0 + 2.0 * (opens - 1), 8.0)
        return 5.0

    def move(self, to: CircuitState, now: float) -> None:
        if to is not self.state:
            self.path.append((self.state, to))
        self.state = to
        self.probes_admitted = 0
        self.probes = []
        self.open_until = None
        if to is OPEN:
            self.opens += 1
            self.open_until = now + self.open_for(self.opens)
        if to is CLOSED:
            self.opens = 0
        if to in (CLOSED, METRICS_ONLY):
            self.window.clear()

    def operate(self, to: CircuitState, now: float) -> None:
        if to is self.state and to is not CLOSED:
            return  # already there: nothing changes
        self.move(to, now)

    def admit(self, now: float) -> float | bool | None:
        """True to run the call, else the retry_after of the rejection."""
        if self.state is OPEN:
            assert self.open_until is not None
            if now < self.open_until:
                self.rejected += 1
                return self.open_until - now
            self.move(HALF_OPEN, now)
        if self.state is HALF_OPEN:
            if self.probes_admitted < self.config.half_open_calls:
                self.probes_admitted += 1
                return True
            self.rejected += 1
            return min(self.open_for(1), self.config.slow_after or 1.0)
        if self.state is FORCED_OPEN:
            self.rejected += 1
            return None
        return True

    def opens_on(self, failures: int, slow: int, calls: int) -> bool:
        threshold = Fraction(self.config.threshold)
        slow_threshold = Fraction(self.config.slow_threshold)
        return Fraction(failures, calls) >= threshold or (
            slow > 0 and Fraction(slow, calls) >= slow_threshold
        )

    def finish(self, failed: bool | None, slow: bool, now: float) -> None:
        """Record a finished call; ``failed=None`` means ignored."""
        if failed is None:
            if self.state is HALF_OPEN:
                self.probes_admitted -= 1
            return
        if self.state is DISABLED:
            return
        if self.state is HALF_OPEN:
            self.probes.append((failed, slow))
            total = self.config.half_open_calls
            failures = sum(f for f, _ in self.probes)
            slows = sum(s for _, s in self.probes)
            remaining = total - len(self.probes)
            verdicts = {
                self.opens_on(failures + more_failed, slows + more_slow, total)
                for more_failed in range(remaining + 1)
                for more_slow in range(remaining + 1 if self.config.slow_after else 1)
            }
            if verdicts == {True}:
                self.move(OPEN, now)
            elif verdicts == {False}:
                self.move(CLOSED, now)
            return
        self.window.append((failed, slow))
        calls = len(self.window)
        if self.state is CLOSED and calls >= self.config.minimum_calls:
            failures = sum(f for f, _ in self.window)
            slows = sum(s for _, s in self.window)
            if self.opens_on(failures, slows, calls):
                self.move(OPEN, now)


KINDS = ["ok", "fail", "unrecorded", "ignored", "bad_result"]


class BreakerMachine(RuleBasedStateMachine):
    """A count-window breaker and the model, fed the same calls, time and commands."""

    clock: VirtualClock
    breaker: CircuitBreaker
    model: Model
    events: list[StateTransition]

    @initialize(config=configs())
    def setup(self, config: Config) -> None:
        self.clock = VirtualClock(start=100.0)
        self.events = []
        open_for: float | Backoff = (
            Backoff.linear(initial=3.0, step=2.0, maximum=8.0, jitter="none")
            if config.growing
            else 5.0
        )
        self.breaker = CircuitBreaker(
            "machine",
            window=config.window,
            minimum_calls=config.minimum_calls,
            failure_rate_threshold=float(config.threshold),
            slow_call_rate_threshold=float(config.slow_threshold),
            slow_call_duration=config.slow_after,
            half_open_calls=config.half_open_calls,
            open_for=open_for,
            record_on=Boom,
            ignore_on=Ignored,
            record_result=(lambda result: result == BAD_RESULT) if config.judge_results else None,
            listeners=[self.events.append],
            clock=self.clock,
        )
        self.model = Model(config)

    def one_call(self, kind: str, duration: float) -> None:
        now = self.clock.monotonic()
        admitted = self.model.admit(now)
        ran = []

        def target() -> str:
            ran.append(1)
            if duration:
                self.clock.sleep(duration)
            if kind == "fail":
                raise Boom
            if kind == "unrecorded":
                raise Unrecorded
            if kind == "ignored":
                raise Ignored
            return BAD_RESULT if kind == "bad_result" else "good"

        expected: Any = {"fail": Boom, "unrecorded": Unrecorded, "ignored": Ignored}.get(kind)
        raised: Exception | None = None
        result = None
        try:
            result = self.breaker.call(target)
        except Exception as error:  # compared with what the model expects below
            raised = error
        if isinstance(raised, CircuitOpenError):
            assert admitted is not True, f"rejected, the model admits ({self.breaker!r})"
            assert ran == []
            assert raised.state == self.model.state.value
            if admitted is None:
                assert raised.retry_after is None
            else:
                assert raised.retry_after == pytest.approx(admitted)
            return
        assert type(raised) is (type(None) if expected is None else expected)
        if expected is None:
            assert result == (BAD_RESULT if kind == "bad_result" else "good")
        assert admitted is True, f"admitted, the model rejects with {admitted!r}"
        assert ran == [1]
        slow_after = self.model.config.slow_after
        slow = slow_after is not None and duration >= slow_after
        failed = {"fail": True, "ignored": None}.get(kind, False)
        if kind == "bad_result":
            failed = self.model.config.judge_results
        self.model.finish(failed, slow, self.clock.monotonic())

    @rule(
        calls=st.lists(
            st.tuples(st.sampled_from(KINDS), st.sampled_from([0.0, 0.0, 1.0, 2.0, 3.0])),
            min_size=1,
            max_size=5,
        )
    )
    def call(self, calls: list[tuple[str, float]]) -> None:
        for kind, duration in calls:
            self.one_call(kind, duration)
            self.check_agreement()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 4.0, 8.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(command=st.sampled_from(["force_open", "disable", "metrics_only", "reset"]))
    def operate(self, command: str) -> None:
        getattr(self.breaker, command)()
        to = {
            "force_open": FORCED_OPEN,
            "disable": DISABLED,
            "metrics_only": METRICS_ONLY,
            "reset": CLOSED,
        }[command]
        self.model.operate(to, self.clock.monotonic())

    @invariant()
    def check_agreement(self) -> None:
        model, metrics = self.model, self.breaker.metrics()
        assert self.breaker.state is model.state
        assert metrics.state is model.state
        assert metrics.calls == len(model.window)
        assert metrics.failed_calls == sum(f for f, _ in model.window)
        assert metrics.slow_calls == sum(s for _, s in model.window)
        assert metrics.rejected_calls == model.rejected
        if metrics.calls >= model.config.minimum_calls:
            assert metrics.failure_rate == metrics.failed_calls / metrics.calls
        else:
            assert metrics.failure_rate is None
        if model.state is OPEN:
            assert metrics.open_until == pytest.approx(model.open_until)
        else:
            assert metrics.open_until is None
        assert [(e.from_state, e.to_state) for e in self.events] == model.path


BreakerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestBreakerMachine = BreakerMachine.TestCase


# -- the time window against a list of (time, outcome) ------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    window=st.integers(1, 5),
    minimum_calls=st.integers(1, 8),
    threshold=st.sampled_from(THRESHOLDS),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.3, 0.5, 1.0, 1.7, 2.0, 4.5, 7.0]),
            st.sampled_from(["ok", "fail", "look"]),
        ),
        max_size=40,
    ),
)
def test_time_window_breaker_matches_timed_outcome_list(
    window: int, minimum_calls: int, threshold: str, steps: list[tuple[float, str]]
) -> None:
    """An outcome at ``t`` is in the window at ``now`` while ``floor(now) - floor(t) < window``."""
    clock = VirtualClock(start=50.0)
    breaker = CircuitBreaker(
        "timed",
        window_type="time",
        window=window,
        minimum_calls=minimum_calls,
        failure_rate_threshold=float(threshold),
        clock=clock,
    )
    history: list[tuple[float, bool]] = []

    def live() -> list[bool]:
        now = clock.monotonic()
        return [failed for t, failed in history if int(now) - int(t) < window]

    for dt, action in steps:
        clock.advance(dt)
        if action != "look":
            failed = action == "fail"
            try:
                breaker.call(_fail if failed else _succeed)
            except Boom:
                pass
            history.append((clock.monotonic(), failed))
        outcomes = live()
        should_open = (
            action != "look"
            and len(outcomes) >= minimum_calls
            and Fraction(sum(outcomes), len(outcomes)) >= Fraction(threshold)
        )
        if should_open:
            assert breaker.state is OPEN
            return
        assert breaker.state is CLOSED
        metrics = breaker.metrics()
        assert (metrics.calls, metrics.failed_calls) == (len(outcomes), sum(outcomes))


def _fail() -> None:
    raise Boom


def _succeed() -> None:
    return None


# -- the threshold is compared exactly ----------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    percent=st.integers(1, 100),
    window=st.integers(1, 100),
    data=st.data(),
)
def test_opens_exactly_when_the_rate_reaches_the_threshold(
    percent: int, window: int, data: st.DataObject
) -> None:
    failures = data.draw(st.integers(0, window), label="failures")
    breaker = CircuitBreaker(
        "exact",
        window=window,
        minimum_calls=window,
        failure_rate_threshold=percent / 100,
        clock=VirtualClock(),
    )
    for _ in range(window - failures):
        breaker.call(_succeed)
    for _ in range(failures):
        try:
            breaker.call(_fail)
        except Boom:
            pass
    # Judged once, on the last call: the window is full for the first time.
    expected = OPEN if Fraction(failures, window) >= Fraction(percent, 100) else CLOSED
    assert breaker.state is expected
