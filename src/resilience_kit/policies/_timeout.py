"""Timeout: cancel an async call that runs too long."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

from resilience_kit import _config, _telemetry
from resilience_kit._checks import check_positive
from resilience_kit.clock import Clock, SystemClock, TimerClock
from resilience_kit.errors import ConfigurationError, TimeoutExceededError
from resilience_kit.policies._base import P, Policy, R
from resilience_kit.policies._deadline import deadline_scope


class Timeout(Policy):
    """Cancel an async call after ``seconds`` and raise `TimeoutExceededError`.

    Cancellation goes through anyio's cancel scopes, so it works on asyncio and trio and
    the call's ``finally`` blocks run. `TimeoutExceededError` is also a built-in
    `TimeoutError`. A synchronous function cannot be interrupted safely, so decorating
    one raises `TypeError` at once rather than pretending; run it in a worker thread
    (``anyio.to_thread.run_sync``) inside an async function instead.

    With a clock other than the system clock (the virtual clock in tests) the deadline
    follows that clock, so tests time out without waiting.

    Args:
        seconds: the limit, > 0.
        name: a name for errors, logs and metrics.
        clock: the clock whose time the deadline follows.

    Examples:
        >>> import anyio
        >>> from resilience_kit import Timeout, TimeoutExceededError
        >>> @Timeout(0.01)
        ... async def slow() -> None:
        ...     await anyio.sleep(1)
        >>> async def main() -> str:
        ...     try:
        ...         await slow()
        ...     except TimeoutExceededError:
        ...         return "timed out"
        ...     return "finished"
        >>> anyio.run(main)
        'timed out'
    """

    __slots__ = ("_clock", "name", "seconds")

    def __init__(
        self, seconds: float, *, name: str | None = None, clock: Clock | None = None
    ) -> None:
        if seconds is None:  # check_positive lets None through for optional limits
            raise ConfigurationError("seconds", "must be a number, got None")
        check_positive("seconds", seconds)
        if clock is not None and not isinstance(clock, (SystemClock, TimerClock)):
            raise ConfigurationError(
                "clock", "must be SystemClock or have call_at() (like testing.VirtualClock)"
            )
        self.seconds = float(seconds)
        self.name = name or "timeout"
        self._clock = clock

    def __repr__(self) -> str:
        return f"Timeout({self.seconds}, name={self.name!r})"

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        raise TypeError(
            f"Timeout cannot interrupt the synchronous function {fn!r}: make it async, or "
            "call it with `await anyio.to_thread.run_sync(...)` from an async function"
        )

    def _expired(self) -> TimeoutExceededError:
        _telemetry.emit(_telemetry.TIMEOUT_EXPIRATIONS, {"timeout": self.name})
        return TimeoutExceededError(self.name, seconds=self.seconds)

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        seconds = self.seconds

        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            clock = self._clock or _config.state.clock
            if clock is None:
                # The common case, kept as lean as a hand-written anyio.move_on_after.
                with anyio.move_on_after(seconds):
                    return await fn(*args, **kwargs)
            else:
                with deadline_scope(clock, seconds):
                    return await fn(*args, **kwargs)
            raise self._expired()

        return timed
