"""A cancel scope whose deadline follows a policy's clock (the virtual clock in tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from resilience_kit.clock import Clock, SystemClock, TimerClock


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
