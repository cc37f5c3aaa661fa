"""A cancel scope whose deadline follows a policy's clock (the virtual clock in tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from resilience_kit.clock import Clock, SystemClock, TimerClock, TimerHandle


@contextmanager
def deadline_scope(clock: Clock, seconds: float | None) -> Iterator[anyio.CancelScope]:
    """Yield a cancel scope that is cancelled once ``clock`` has advanced ``seconds``.

    The system clock uses the event loop's own deadline; any other clock must implement
    `TimerClock` so that it can cancel the scope when its time passes the deadline.
    """
    # The exact type first: the common case skips the (slower) protocol check.
    if seconds is None or type(clock) is SystemClock:
        with anyio.move_on_after(seconds) as scope:
            yield scope
        return
    if isinstance(clock, TimerClock):
        with anyio.CancelScope() as scope:
            handle = clock.call_at(clock.monotonic() + seconds, scope.cancel)
            try:
                yield scope
            finally:
                handle.cancel()
        return
    if isinstance(clock, SystemClock):  # a subclass without timers of its own
        with anyio.move_on_after(seconds) as scope:
            yield scope
        return
    raise TypeError(f"a deadline on {clock!r} needs a clock with call_at()")


class MovableDeadline:
    """A cancel scope whose deadline can be set again and again, on any clock.

    One scope for many timed steps (a relay's publishes): re-arming costs a timer, not a
    new scope each time. Once the deadline fires the scope is spent, as any cancel
    scope is; a caller that goes on enters a new one.
    """

    __slots__ = ("_handle", "_timers", "scope")

    def __init__(self, clock: Clock, scope: anyio.CancelScope) -> None:
        # The system clock moves the event loop's own deadline; other clocks set timers.
        self._timers = clock if isinstance(clock, TimerClock) else None
        self._handle: TimerHandle | None = None
        self.scope = scope

    def arm(self, seconds: float) -> None:
        """Cancel the scope ``seconds`` from now (replacing any earlier deadline)."""
        timers = self._timers
        if timers is None:
            self.scope.deadline = anyio.current_time() + seconds
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = timers.call_at(timers.monotonic() + seconds, self.scope.cancel)

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


@contextmanager
def movable_deadline(clock: Clock) -> Iterator[MovableDeadline]:
    """Yield a `MovableDeadline` (not armed until `MovableDeadline.arm`) on ``clock``.

    The system clock uses the event loop's own deadline; any other clock must implement
    `TimerClock`, as for `deadline_scope`.
    """
    if not isinstance(clock, (SystemClock, TimerClock)):
        raise TypeError(f"a deadline on {clock!r} needs a clock with call_at()")
    with anyio.CancelScope() as scope:
        deadline = MovableDeadline(clock, scope)
        try:
            yield deadline
        finally:
            deadline._disarm()
