"""Time as the policies see it: a `Clock` protocol and the real `SystemClock`.

Every policy takes a ``clock``; tests pass `resilience_kit.testing.VirtualClock` so that
retries and breaker timers run without real sleeps.

Examples:
    >>> from resilience_kit.clock import SystemClock
    >>> clock = SystemClock()
    >>> clock.monotonic() <= clock.monotonic()
    True
"""

from __future__ import annotations

import time as _time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from resilience_kit import _config

__all__ = ("Clock", "SystemClock", "TimerClock", "TimerHandle", "get_clock", "resolve_clock")


@runtime_checkable
class Clock(Protocol):
    """What a policy needs from time: a monotonic reading, wall time and sleeping.

    Examples:
        >>> isinstance(SystemClock(), Clock)
        True
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for timestamps people read)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class TimerHandle(Protocol):
    """A scheduled callback that can still be called off."""

    def cancel(self) -> None:
        """Do not run the callback (a no-op once it has run)."""
        ...


@runtime_checkable
class TimerClock(Clock, Protocol):
    """A clock that can run a callback when its time reaches a deadline.

    `Timeout` needs it for any clock other than `SystemClock` (whose deadlines the event
    loop enforces); `resilience_kit.testing.VirtualClock` implements it.
    """

    def call_at(self, deadline: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback()`` once `monotonic()` reaches ``deadline``; return a handle."""
        ...


class SystemClock:
    """The real clock: `time.monotonic`, `time.time`, `time.sleep` and `anyio.sleep`.

    Examples:
        >>> SystemClock().time() > 0
        True
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "SystemClock()"

    monotonic = staticmethod(_time.monotonic)
    time = staticmethod(_time.time)
    sleep = staticmethod(_time.sleep)

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task with `anyio.sleep`."""
        await _anyio_sleep(seconds)


async def _first_sleep(seconds: float) -> None:
    """Bind `anyio.sleep` for `SystemClock.asleep`, then sleep with it."""
    # anyio loads on the first async sleep, not on import: a synchronous user never pays
    # for it, and later sleeps cost one global lookup, as a module-level import would.
    global _anyio_sleep  # noqa: PLW0603  (bound once, on first use)
    import anyio  # noqa: PLC0415  (deferred: see above)

    _anyio_sleep = anyio.sleep
    await anyio.sleep(seconds)


_anyio_sleep: Callable[[float], Awaitable[None]] = _first_sleep

SYSTEM_CLOCK = SystemClock()


def get_clock() -> Clock:
    """Return the clock policies use when none was given.

    That is `SystemClock` unless a test installed another one with
    `resilience_kit.testing.use_clock`.

    Examples:
        >>> get_clock()
        SystemClock()
    """
    return _config.state.clock or SYSTEM_CLOCK


def resolve_clock(clock: Clock | None) -> Clock:
    """Return the clock to use now: the one given, else the one `get_clock` returns.

    A policy keeps the ``clock=`` it was built with, possibly None, and resolves it on
    each use, so that `resilience_kit.testing.use_clock` installed later still applies.

    Args:
        clock: the clock a policy was given, or None.

    Examples:
        >>> from resilience_kit.testing import VirtualClock
        >>> resolve_clock(None)
        SystemClock()
        >>> virtual = VirtualClock()
        >>> resolve_clock(virtual) is virtual
        True
    """
    return clock or _config.state.clock or SYSTEM_CLOCK
