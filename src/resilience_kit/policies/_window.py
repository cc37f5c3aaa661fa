"""Sliding windows of call outcomes with O(1) aggregates (resilience4j's model)."""

from __future__ import annotations

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

    __slots__ = ("_calls", "_current", "_failures", "_size", "_slow", "calls", "failures", "slow")

    def __init__(self, seconds: int) -> None:
        self._size = seconds
        self._calls = [0] * seconds
        self._failures = [0] * seconds
        self._slow = [0] * seconds
        self._current: int | None = None
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def _advance(self, now: float) -> int:
        tick = int(now)
        current = self._current
        if current is None or tick - current >= self._size:
            if self.calls:
                self.reset()
            self._current = tick
        elif tick > current:
            for stale in range(current + 1, tick + 1):
                slot = stale % self._size
                self.calls -= self._calls[slot]
                self.failures -= self._failures[slot]
                self.slow -= self._slow[slot]
                self._calls[slot] = self._failures[slot] = self._slow[slot] = 0
            self._current = tick
        # A reading older than the newest bucket (threads racing) lands in the newest.
        return max(tick, self._current if self._current is not None else tick) % self._size

    def record(self, outcome: int, now: float) -> None:
        """Add one outcome at time ``now``, dropping buckets older than the window."""
        slot = self._advance(now)
        failed = outcome & FAILURE
        slow = (outcome & SLOW) >> 1
        self._calls[slot] += 1
        self._failures[slot] += failed
        self._slow[slot] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def totals(self, now: float) -> WindowTotals:
        """The aggregates over the last ``seconds`` seconds before ``now``."""
        self._advance(now)
        return WindowTotals(self.calls, self.failures, self.slow)

    def reset(self) -> None:
        """Forget every outcome."""
        self._calls = [0] * self._size
        self._failures = [0] * self._size
        self._slow = [0] * self._size
        self._current = None
        self.calls = self.failures = self.slow = 0
