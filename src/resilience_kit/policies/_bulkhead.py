"""Bulkhead: cap how many calls run at once, with a bounded queue of waiters."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import anyio
import anyio.from_thread
import anyio.lowlevel

from resilience_kit import _telemetry
from resilience_kit._checks import check_int, check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import BulkheadFullError
from resilience_kit.policies._base import P, Policy, R
from resilience_kit.policies._deadline import deadline_scope

# anyio >= 4.11 can name an event loop, so that any thread can reach it; before that, only
# anyio's worker threads (``anyio.to_thread.run_sync``) can.
_current_token: Callable[[], Any] | None = getattr(anyio.lowlevel, "current_token", None)


class _Waiter:
    """A caller queued for a slot; ``granted`` flips (under the lock) when it gets one.

    A thread waits on a `threading.Event`, which any thread may set. A task waits on an
    `anyio.Event`, which only its event loop's thread may set: ``thread`` and ``token``
    let a sync caller leaving in another thread wake it through that loop.
    """

    __slots__ = ("event", "granted", "thread", "token")

    def __init__(
        self, event: threading.Event | anyio.Event, thread: int | None, token: Any = None
    ) -> None:
        self.granted = False
        self.event = event
        self.thread = thread
        self.token = token

    @classmethod
    def for_thread(cls) -> _Waiter:
        return cls(threading.Event(), None)

    @classmethod
    def for_task(cls) -> _Waiter:
        token = _current_token() if _current_token is not None else None
        return cls(anyio.Event(), threading.get_ident(), token)

    def wake(self) -> None:
        """Set the event, from whichever thread the slot was freed in."""
        if self.thread is None or self.thread == threading.get_ident():
            self.event.set()
        elif self.token is not None:
            anyio.from_thread.run_sync(self.event.set, token=self.token)
        else:
            anyio.from_thread.run_sync(self.event.set)


class Bulkhead(Policy):
    """Let at most ``max_concurrent`` calls run at once; queue up to ``max_waiting`` more.

    A call that finds every slot taken and the queue full is rejected at once with
    `BulkheadFullError`, as is a queued call that waited longer than ``max_wait``. Slots
    are handed to waiters first come, first served. A waiter that is cancelled gives
    its place (or a slot just handed to it) to the next one, so no slot leaks.

    The same bulkhead guards sync calls (threads wait on a `threading.Event`) and async
    calls (tasks wait on an `anyio.Event`); async waiters must all belong to one event
    loop (a sync call that frees a slot in another thread wakes the waiting task through
    that loop). ``max_wait`` follows the policy's clock for async callers (the virtual clock
    in tests) and real time for threads.

    Args:
        max_concurrent: calls allowed to run at once, >= 1.
        max_waiting: callers allowed to queue for a slot, >= 0.
        max_wait: the longest a caller waits in the queue (seconds); ``None``: no limit.
        name: a name for errors, logs and metrics.
        clock: the clock ``max_wait`` follows for async callers.

    Examples:
        >>> from resilience_kit import Bulkhead
        >>> bulkhead = Bulkhead(max_concurrent=10, max_waiting=20, max_wait=1.0, name="db")
        >>> @bulkhead
        ... def query() -> int:
        ...     return bulkhead.active
        >>> query()
        1
    """

    __slots__ = (
        "_active",
        "_clock",
        "_lock",
        "_waiters",
        "max_concurrent",
        "max_wait",
        "max_waiting",
        "name",
    )

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_waiting: int = 0,
        max_wait: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        check_int("max_concurrent", max_concurrent, minimum=1)
        check_int("max_waiting", max_waiting, minimum=0)
        check_positive("max_wait", max_wait)
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self.max_wait = max_wait
        self.name = name or "bulkhead"
        self._clock = clock
        self._active = 0
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Bulkhead(name={self.name!r}, max_concurrent={self.max_concurrent}, "
            f"max_waiting={self.max_waiting})"
        )

    @property
    def active(self) -> int:
        """Calls running now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Callers queued for a slot now."""
        return len(self._waiters)

    # -- the admission core -------------------------------------------------------------

    def _full(self) -> BulkheadFullError:
        _telemetry.emit(_telemetry.BULKHEAD_REJECTIONS, {"bulkhead": self.name})
        return BulkheadFullError(
            self.name, max_concurrent=self.max_concurrent, max_waiting=self.max_waiting
        )

    def _enter(self, new_waiter: Callable[[], _Waiter]) -> _Waiter | None:
        """Take a slot (``None``) or a place in the queue (a waiter); raise when full."""
        with self._lock:
            if self._active < self.max_concurrent and not self._waiters:
                self._active += 1
                return None
            if len(self._waiters) >= self.max_waiting:
                raise self._full()
            waiter = new_waiter()
            self._waiters.append(waiter)
            return waiter

    def _leave(self) -> None:
        """Free a slot: hand it to the first waiter, or give it back."""
        with self._lock:
            if not self._waiters:
                self._active -= 1
                return
            waiter = self._waiters.popleft()
            waiter.granted = True
        # Woken outside the lock: waking a task from another thread waits for its loop,
        # whose thread may itself be about to take the lock.
        try:
            waiter.wake()
        except RuntimeError:  # anyio.RunFinishedError (anyio >= 4.11) is one
            # Its event loop is gone, and the waiter with it: pass the slot on.
            self._leave()

    def _stop_waiting(self, waiter: _Waiter) -> bool:
        """Leave the queue; ``True`` if a slot was handed over meanwhile (the caller has it)."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            return False

    # -- drivers ------------------------------------------------------------------------

    def _wait_sync(self, waiter: _Waiter) -> None:
        event = waiter.event
        assert isinstance(event, threading.Event)  # noqa: S101  (the sync driver made it)
        try:
            event.wait(self.max_wait)
        except BaseException:
            if self._stop_waiting(waiter):
                self._leave()
            raise
        if not self._stop_waiting(waiter):
            raise self._full()

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        enter = self._enter
        leave = self._leave

        def bounded(*args: P.args, **kwargs: P.kwargs) -> R:
            waiter = enter(_Waiter.for_thread)
            if waiter is not None:
                self._wait_sync(waiter)
            try:
                return fn(*args, **kwargs)
            finally:
                leave()

        return bounded

    async def _wait_async(self, waiter: _Waiter) -> None:
        try:
            with deadline_scope(resolve_clock(self._clock), self.max_wait):
                await cast("anyio.Event", waiter.event).wait()
        except BaseException:
            if self._stop_waiting(waiter):
                self._leave()
            raise
        if not self._stop_waiting(waiter):
            raise self._full()

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        enter = self._enter
        leave = self._leave

        async def bounded(*args: P.args, **kwargs: P.kwargs) -> R:
            waiter = enter(_Waiter.for_task)
            if waiter is not None:
                await self._wait_async(waiter)
            try:
                return await fn(*args, **kwargs)
            finally:
                leave()

        return bounded
