"""Sliding windows of call outcomes with O(1) aggregates (resilience4j's model)."""

from __future__ import annotations

import math
from dataclasses import dataclass

FAILURE = 1
SLOW = 2


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """Counts over a window: calls, failed calls and slow calls."""

    calls: int
    failures: int
    slow: int


class CountWindow:
    """The last ``size`` call outcomes, in a ring; totals kept incrementally."""

    __slots__ = ("_head", "_outcomes", "_size", "all_clear", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._outcomes = bytearray(size)
        self._head = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        # Full, and every outcome clean: recording one more clean outcome changes nothing
        # (clean outcomes are indistinguishable), so the breaker may skip it.
        self.all_clear = False

    def record(self, outcome: int, now: float) -> None:
        """Add one outcome (bit flags `FAILURE`, `SLOW`), evicting the oldest when full."""
        head = self._head
        outcomes = self._outcomes
        if self.calls == self._size:
            old = outcomes[head]
            if old:  # most outcomes are clean: skip the arithmetic for them
                self.failures -= old & FAILURE
                self.slow -= (old & SLOW) >> 1
        else:
            self.calls += 1
        outcomes[head] = outcome
        if outcome:
            self.failures += outcome & FAILURE
            self.slow += (outcome & SLOW) >> 1
        head += 1
        self._head = 0 if head == self._size else head
        self.all_clear = self.calls == self._size and not self.failures and not self.slow

    def record_success(self, now: float) -> None:
        """``record(0, now)`` for the breaker's hot path: a clean outcome, fewer steps."""
        calls = self.calls
        if calls == self._size:
            head = self._head
            outcomes = self._outcomes
            old = outcomes[head]
            if old:
                outcomes[head] = 0
                self.failures -= old & FAILURE
                self.slow -= (old & SLOW) >> 1
                self.all_clear = not self.failures and not self.slow
            head += 1
            self._head = 0 if head == calls else head
        else:
            # Filling since the last reset: the head is at `calls`, and the slots from
            # there on were never written (they hold 0 already).
            self.calls = calls = calls + 1
            if calls == self._size:
                self._head = 0
                self.all_clear = not self.failures and not self.slow
            else:
                self._head = calls

    def totals(self, now: float) -> WindowTotals:
        """The aggregates over the window."""
        return WindowTotals(self.calls, self.failures, self.slow)

    def reset(self) -> None:
        """Forget every outcome."""
        self._outcomes = bytearray(self._size)
        self._head = self.calls = self.failures = self.slow = 0
        self.all_clear = False


class TimeWindow:
    """Outcomes of the last ``seconds`` seconds, in one bucket per second."""

    # Every outcome counts towards the bucket of its second: none can be skipped.
    all_clear = False

    __slots__ = (
        "_calls",
        "_current",
        "_edge",
        "_failures",
        "_older",
        "_size",
        "_slow",
        "calls",
        "failures",
        "slow",
    )

    def __init__(self, seconds: int) -> None:
        self._size = seconds
        # The calls of each bucket but the newest: the newest one's are `calls - _older`,
        # written into its slot when the next bucket opens, so that recording a call
        # bumps one total only.
        self._calls = [0] * seconds
        self._older = 0
        self._failures = [0] * seconds
        self._slow = [0] * seconds
        self._current: int | None = None
        # Every reading below the edge lands in the newest bucket: the hot path of
        # `record_success` compares one float instead of advancing.
        self._edge = -math.inf
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def _advance(self, now: float) -> int:
        tick = int(now)
        current = self._current
        size = self._size
        if current is None or tick - current >= size:
            if self.calls:
                self.reset()
            self._current = newest = tick
        elif tick > current:
            calls = self.calls
            self._calls[current % size] = calls - self._older
            older = calls
            for stale in range(current + 1, tick + 1):
                slot = stale % size
                evicted = self._calls[slot]
                calls -= evicted
                older -= evicted
                self.failures -= self._failures[slot]
                self.slow -= self._slow[slot]
                self._calls[slot] = self._failures[slot] = self._slow[slot] = 0
            self.calls = calls
            self._older = older
            self._current = newest = tick
        else:
            # A reading older than the newest bucket (threads racing) lands in the newest.
            newest = current
        # int() truncates towards zero: after a negative bucket the next one starts just
        # above it, not one second later. A float: comparing a float with an int is the
        # slow way in CPython.
        self._edge = float(newest + 1 if newest >= 0 else newest)
        return newest % size

    def record(self, outcome: int, now: float) -> None:
        """Add one outcome at time ``now``, dropping buckets older than the window."""
        slot = self._advance(now)
        if outcome:
            failed = outcome & FAILURE
            slow = (outcome & SLOW) >> 1
            self._failures[slot] += failed
            self._slow[slot] += slow
            self.failures += failed
            self.slow += slow
        self.calls += 1

    def record_success(self, now: float) -> None:
        """``record(0, now)`` for the breaker's hot path: one total to bump."""
        if now < self._edge:  # not `>=`: a NaN reading must fail in _advance, as in record
            self.calls += 1
        else:
            self._advance(now)
            self.calls += 1

    def totals(self, now: float) -> WindowTotals:
        """The aggregates over the last ``seconds`` seconds before ``now``."""
        self._advance(now)
        return WindowTotals(self.calls, self.failures, self.slow)

    def reset(self) -> None:
        """Forget every outcome."""
        self._calls = [0] * self._size
        self._older = 0
        self._failures = [0] * self._size
        self._slow = [0] * self._size
        self._current = None
        self._edge = -math.inf
        self.calls = self.failures = self.slow = 0
