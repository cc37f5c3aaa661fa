"""RetryBudget: caps retries to a fraction of recent calls, shared between policies."""

from __future__ import annotations

import threading

from resilience_kit._checks import check_int, check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError


class RetryBudget:
    """Allow retries only while they stay under a fraction of recent calls.

    A budget is shared by every `RetryPolicy` given it, so that when a dependency goes
    down the retries of all callers together stay bounded: no retry storm. Within the
    last ``window`` seconds, the retries granted never exceed

        min_retries_per_second * window + ratio * calls

    where ``calls`` counts first attempts: a retry is granted only if it still fits.
    When the budget is spent, a failing call gives up at once and its exception
    propagates. (Finagle's retry budget works the same way.) The window slides in
    ``buckets`` steps: a call or retry leaves it between ``window * (1 - 1 / buckets)``
    and ``window`` seconds after it happened.

    Args:
        ratio: retries allowed per call, e.g. ``0.2`` for 20%.
        min_retries_per_second: a floor so that low-traffic callers can still retry.
        window: the length of the sliding window in seconds.
        buckets: how finely the window slides.
        clock: the clock (the virtual clock in tests).

    Examples:
        >>> from resilience_kit.testing import VirtualClock
        >>> budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, clock=VirtualClock())
        >>> for _ in range(4):
        ...     budget.record_call()
        >>> [budget.try_spend() for _ in range(3)]
        [True, True, False]
    """

    __slots__ = (
        "_buckets",
        "_calls",
        "_clock",
        "_current",
        "_floor",
        "_lock",
        "_ratio",
        "_retries",
        "_total_calls",
        "_total_retries",
        "window",
    )

    def __init__(
        self,
        ratio: float = 0.2,
        *,
        min_retries_per_second: float = 1.0,
        window: float = 10.0,
        buckets: int = 10,
        clock: Clock | None = None,
    ) -> None:
        for parameter, value in (
            ("ratio", ratio),
            ("min_retries_per_second", min_retries_per_second),
            ("window", window),
        ):
            if value is None:
                raise ConfigurationError(parameter, "must be a number, got None")
        check_positive("ratio", ratio, allow_zero=True)
        check_positive("min_retries_per_second", min_retries_per_second, allow_zero=True)
        check_positive("window", window)
        check_int("buckets", buckets, minimum=1)
        self._ratio = float(ratio)
        self._floor = float(min_retries_per_second) * float(window)
        self.window = float(window)
        self._buckets = buckets
        self._calls = [0] * buckets
        self._retries = [0] * buckets
        self._total_calls = 0
        self._total_retries = 0
        self._current: int | None = None
        self._clock = clock
        self._lock = threading.Lock()

    def _advance(self, now: float) -> int:
        """Move the window to ``now``, zeroing buckets that fell out; return the index."""
        # Not `now // (window / buckets)`: 1.0 // 0.1 is 9.0, which would keep a bucket
        # in the window after its time is up.
        tick = int(now * self._buckets // self.window)
        current = self._current
        size = len(self._calls)
        if current is None or tick - current >= size:
            self._calls = [0] * size
            self._retries = [0] * size
            self._total_calls = self._total_retries = 0
        elif tick > current:
            for stale in range(current + 1, tick + 1):
                slot = stale % size
                self._total_calls -= self._calls[slot]
                self._total_retries -= self._retries[slot]
                self._calls[slot] = self._retries[slot] = 0
        if current is None or tick > current:
            self._current = tick
        return (self._current if self._current is not None else tick) % size

    def record_call(self) -> None:
        """Count one call (a first attempt); each adds ``ratio`` retries to the budget."""
        now = resolve_clock(self._clock).monotonic()
        with self._lock:
            slot = self._advance(now)
            self._calls[slot] += 1
            self._total_calls += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` means the budget is spent."""
        now = resolve_clock(self._clock).monotonic()
        with self._lock:
            slot = self._advance(now)
            allowed = self._floor + self._ratio * self._total_calls
            # The epsilon absorbs float rounding: 0.29 * 100 must still allow 29 retries.
            if self._total_retries + 1 > allowed + 1e-9:
                return False
            self._retries[slot] += 1
            self._total_retries += 1
            return True

    def snapshot(self) -> tuple[int, int]:
        """Return ``(calls, retries)`` counted in the current window.

        Examples:
            >>> RetryBudget().snapshot()
            (0, 0)
        """
        now = resolve_clock(self._clock).monotonic()
        with self._lock:
            self._advance(now)
            return self._total_calls, self._total_retries

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self._ratio}, window={self.window})"
