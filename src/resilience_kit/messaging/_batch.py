"""`BatchWriter`: buffer items, write them in batches, hold producers back when full."""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus

from resilience_kit import _telemetry
from resilience_kit._checks import check_int, check_name, check_positive, is_async_callable
from resilience_kit.clock import Clock, SystemClock, TimerClock, resolve_clock
from resilience_kit.errors import ConfigurationError
from resilience_kit.policies._backoff import Backoff
from resilience_kit.policies._deadline import deadline_scope

__all__ = ("BatchWriter", "WriterStats")

logger = logging.getLogger("resilience_kit.batch_writer")

T = TypeVar("T")

_DEFAULT_BACKOFF = Backoff.exponential(initial=0.1, multiplier=2.0, maximum=30.0, jitter="full")


@dataclass(frozen=True, slots=True)
class WriterStats:
    """What a `BatchWriter` has done so far, and what it holds now.

    Attributes:
        depth: items held now: queued, plus the batch being written or retried.
        capacity: the most items it holds; `BatchWriter.put` waits beyond that.
        max_depth: the largest ``depth`` seen.
        written: items written.
        batches: batches written.
        failures: failed write attempts (each retried).
        last_batch_size: items in the last batch written.
        last_write_seconds: how long the last successful write took, on the clock.
        failing_since: when the batch now held first failed (clock time), or ``None``
            when the last attempt succeeded.
        last_error: the last write error, as ``"Type: message"``, or ``None``.

    Examples:
        >>> stats = WriterStats(depth=3, capacity=10)
        >>> stats.depth / stats.capacity
        0.3
    """

    depth: int = 0
    capacity: int = 0
    max_depth: int = 0
    written: int = 0
    batches: int = 0
    failures: int = 0
    last_batch_size: int = 0
    last_write_seconds: float | None = None
    failing_since: float | None = None
    last_error: str | None = None


class BatchWriter(Generic[T]):
    """Writes items in batches, retrying failed batches, never holding more than a bound.

    Producers hand items over with `put` (returns once the item is queued) or `write`
    (returns once it is written: many concurrent callers share one write, a *group
    commit*). A background task (`run`, or ``async with writer:``) takes up to
    ``max_batch`` items at a time, as soon as that many are queued or the oldest has
    waited ``max_delay`` seconds, or on `flush`, and calls ``write(batch)`` — an async
    function, or a sync one, which runs in a worker thread.

    A batch that fails is held and written again after a ``backoff`` delay, as often as
    it takes: nothing is dropped, and the order of items is kept (the next batch waits).
    Make ``write`` all-or-nothing (one transaction) or idempotent, as a batch may be
    written again after a failure that hid a success; deal with items that can never be
    written (poison) inside ``write``, since every exception it raises is retried.

    The writer holds at most ``capacity`` items — queued, plus the batch being
    written. When it is full, `put` and `write` wait (back-pressure): a producer slows
    down, a consumer stops pulling from its broker, and memory stays bounded while the
    storage is slow or down. ``on_near_full`` is called when the depth first reaches
    ``near_full`` of the capacity; `health.batch_writer_check` turns the same into a
    health check.

    `aclose` (or leaving ``async with``) stops new items and waits until everything
    held is written; bound it with a timeout if the storage may stay down, and read
    `unwritten` afterwards.

    Metrics: ``resilience.batch_writer.depth`` (gauge), ``.items`` and ``.batches``
    (counters, ``outcome`` ``written`` or ``failed``), ``.batch_size`` and
    ``.write_duration`` (histograms), all with the attribute ``writer``.

    Args:
        write: ``write(batch)``, sync or async; an exception means "not written".
        name: the writer's name, in metrics and logs.
        capacity: the most items held (queued and in flight).
        max_batch: the most items in one batch.
        max_delay: seconds the oldest item may wait for its batch to fill (0: write
            whatever is queued at once).
        backoff: the delay before each retry of a failed batch (default: exponential,
            0.1 s to 30 s, full jitter).
        near_full: the fill ratio (of ``capacity``) at which the writer counts as near
            full, in ``(0, 1]``.
        on_near_full: called with the writer when it becomes near full (once, until
            it drains below the mark again); errors it raises are logged.
        clock: the clock for ``max_delay``, backoff waits and timings (default: the
            system clock); it needs timers (``call_at``), as a `VirtualClock` has.
        rand: a source of floats in ``[0, 1)`` for the backoff's jitter.

    Raises:
        ConfigurationError: a parameter is invalid (named in the message).

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import BatchWriter
        >>> written: list[list[int]] = []
        >>> async def main() -> None:
        ...     async with BatchWriter(written.append, name="audit", max_batch=4) as writer:
        ...         for n in range(10):
        ...             await writer.put(n)
        >>> anyio.run(main)
        >>> written
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    def __init__(
        self,
        write: Callable[[list[T]], object] | Callable[[list[T]], Awaitable[object]],
        *,
        name: str,
        capacity: int = 1000,
        max_batch: int = 100,
        max_delay: float = 1.0,
        backoff: Backoff | None = None,
        near_full: float = 0.8,
        on_near_full: Callable[[BatchWriter[T]], object] | None = None,
        clock: Clock | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        _validate(
            write=write,
            capacity=capacity,
            max_batch=max_batch,
            max_delay=max_delay,
            backoff=backoff,
            near_full=near_full,
            on_near_full=on_near_full,
            clock=clock,
        )
        self.name = check_name("name", name)
        self._write = write
        self._async = is_async_callable(write)
        self.capacity = capacity
        self.max_batch = max_batch
        self.max_delay = float(max_delay)
        self.backoff = backoff if backoff is not None else _DEFAULT_BACKOFF
        self._near_mark = max(1, int(capacity * near_full + 0.999999))
        self._on_near_full = on_near_full
        self._clock = clock
        self._rand = rand if rand is not None else random.random
        # Items queued, each with its sequence number and the time it was queued.
        self._queue: deque[tuple[int, float, T]] = deque()
        self._batch: list[T] = []  # being written, or held for a retry
        self._held = 0  # slots taken: queued + batch + producers granted a slot
        self._waiters: deque[anyio.Event] = deque()  # producers waiting for a slot
        self._accepted = 0  # sequence number of the last item queued
        self._taken = 0  # ... of the last item taken into a batch
        self._written = 0  # ... of the last item written (items are written in order)
        self._flush_upto = 0
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._closing = False
        self._running = False
        self._stopped = False
        self._near = False
        self._group: TaskGroup | None = None
        self._max_depth = 0
        self._batches = 0
        self._failures = 0
        self._last_batch_size = 0
        self._last_write_seconds: float | None = None
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._labels = {"writer": self.name}
        self._outcome_labels = {
            outcome: {"writer": self.name, "outcome": outcome} for outcome in ("written", "failed")
        }
        _telemetry.observe(_telemetry.BATCH_WRITER_DEPTH, self, BatchWriter._read_depth)

    def __repr__(self) -> str:
        return (
            f"BatchWriter({self.name!r}, depth={self.depth}, capacity={self.capacity}, "
            f"max_batch={self.max_batch})"
        )

    # -- what it holds ----------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Items held now: queued, plus the batch being written or retried."""
        return len(self._queue) + len(self._batch)

    @property
    def near_full(self) -> bool:
        """Whether the depth has reached the ``near_full`` mark."""
        return self.depth >= self._near_mark

    @property
    def failing(self) -> bool:
        """Whether the batch held now has failed at least once (it is being retried)."""
        return self._failing_since is not None

    @property
    def stats(self) -> WriterStats:
        """A snapshot of what the writer did and holds."""
        return WriterStats(
            depth=self.depth,
            capacity=self.capacity,
            max_depth=self._max_depth,
            written=self._written,
            batches=self._batches,
            failures=self._failures,
            last_batch_size=self._last_batch_size,
            last_write_seconds=self._last_write_seconds,
            failing_since=self._failing_since,
            last_error=self._last_error,
        )

    def unwritten(self) -> list[T]:
        """Every item held and not yet written, in order (after a cut-short `aclose`)."""
        return [*self._batch, *(item for _, _, item in self._queue)]

    def _read_depth(self) -> list[tuple[float, dict[str, str]]]:
        return [(self.depth, self._labels)]

    # -- producers --------------------------------------------------------------------

    async def put(self, item: T) -> None:
        """Queue ``item``; wait while the writer is full (back-pressure).

        Raises:
            anyio.ClosedResourceError: the writer is closing or closed.
        """
        await self._enqueue(item)

    async def write(self, item: T) -> None:
        """Queue ``item`` and wait until it is written (it shares a batch with others).

        A caller cancelled while waiting leaves the item queued: it is still written.

        Raises:
            anyio.ClosedResourceError: the writer is closing, or stopped before the item
                was written.
        """
        await self._until_written(await self._enqueue(item))

    async def flush(self) -> None:
        """Write everything queued so far now, and wait until it is written.

        Nothing waits for ``max_delay`` or a full batch: what is queued goes out in
        batches of up to ``max_batch`` at once.

        Raises:
            anyio.ClosedResourceError: the writer stopped before it was written.
        """
        target = self._accepted
        if target > self._written:
            self._flush_upto = max(self._flush_upto, target)
            self._wake.set()
        await self._until_written(target)

    async def _enqueue(self, item: T) -> int:
        if self._closing:
            raise anyio.ClosedResourceError(f"batch writer {self.name!r} is closed")
        if self._held < self.capacity and not self._waiters:
            self._held += 1
            await anyio.lowlevel.checkpoint()
        else:
            granted = anyio.Event()
            self._waiters.append(granted)
            try:
                await granted.wait()
            except BaseException:
                if granted.is_set():  # a slot was handed over as we were cancelled
                    self._release(1)
                else:
                    self._waiters.remove(granted)
                raise
        if self._closing:  # closed while this producer waited for room
            self._release(1)
            raise anyio.ClosedResourceError(f"batch writer {self.name!r} is closed")
        self._accepted += 1
        queue = self._queue
        queue.append((self._accepted, resolve_clock(self._clock).monotonic(), item))
        if len(queue) == 1 or len(queue) >= self.max_batch:
            self._wake.set()  # arm the age timer, or a batch is full
        depth = self.depth
        self._max_depth = max(self._max_depth, depth)
        if depth >= self._near_mark and not self._near:
            self._near = True
            self._call_near_full()
        return self._accepted

    def _release(self, count: int) -> None:
        self._held -= count
        while self._waiters and self._held < self.capacity:
            self._held += 1
            self._waiters.popleft().set()

    def _call_near_full(self) -> None:
        if self._on_near_full is None:
            return
        try:
            self._on_near_full(self)
        except Exception:  # a broken alert hook must not lose the item being queued
            logger.exception("batch writer %r: on_near_full failed", self.name)

    async def _until_written(self, sequence: int) -> None:
        while self._written < sequence:
            if self._stopped:
                raise anyio.ClosedResourceError(
                    f"batch writer {self.name!r} stopped before writing the item"
                )
            await self._progress.wait()

    # -- the background task ------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write batches until closed and drained (or cancelled).

        Start it in a task group (``await group.start(writer.run)``), or use
        ``async with writer:``, which does. A writer runs once.
        """
        if self._running or self._stopped:
            raise RuntimeError(f"batch writer {self.name!r} is already running or has run")
        self._running = True
        task_status.started()
        try:
            while await self._gather():
                await self._write_held()
        finally:
            self._running = False
            self._stopped = True
            self._progress.set()  # waiters learn that their item will not be written

    async def _gather(self) -> bool:
        """Wait until a batch is due and take it; False when closed and drained."""
        clock = resolve_clock(self._clock)
        queue = self._queue
        while True:
            wait: float | None = None
            if queue:
                due = (
                    len(queue) >= self.max_batch or self._closing or self._flush_upto > self._taken
                )
                if not due:
                    wait = queue[0][1] + self.max_delay - clock.monotonic()
                    due = wait <= 0
                if due:
                    size = min(self.max_batch, len(queue))
                    batch = [queue.popleft() for _ in range(size)]
                    self._taken = batch[-1][0]
                    self._batch = [item for _, _, item in batch]
                    return True
            elif self._closing:
                return False
            self._wake = anyio.Event()
            if wait is None:
                await self._wake.wait()
            else:
                with deadline_scope(clock, wait):
                    await self._wake.wait()

    async def _write_held(self) -> None:
        clock = resolve_clock(self._clock)
        batch = self._batch
        retry = 0
        previous: float | None = None
        while True:
            started = clock.monotonic()
            try:
                if self._async:
                    await self._write(list(batch))  # type: ignore[misc]
                else:
                    await anyio.to_thread.run_sync(self._write, list(batch))
            except Exception as exc:  # noqa: BLE001 - held and retried: a batch is never dropped
                retry += 1
                self._failures += 1
                if self._failing_since is None:
                    self._failing_since = started
                self._last_error = f"{type(exc).__name__}: {exc}"
                _telemetry.emit(_telemetry.BATCH_WRITER_BATCHES, self._outcome_labels["failed"])
                delay = self.backoff.delay(retry, previous, self._rand)
                previous = delay
                logger.warning(
                    "batch writer %r: writing %d item(s) failed (%d in a row), next try "
                    "in %.3gs: %s",
                    self.name,
                    len(batch),
                    retry,
                    delay,
                    self._last_error,
                )
                await clock.asleep(delay)
                continue
            break
        elapsed = clock.monotonic() - started
        size = len(batch)
        self._batch = []
        self._written = self._taken
        self._batches += 1
        self._last_batch_size = size
        self._last_write_seconds = elapsed
        self._failing_since = None
        self._release(size)
        if self.depth < self._near_mark:
            self._near = False
        progress, self._progress = self._progress, anyio.Event()
        progress.set()
        _telemetry.emit(_telemetry.BATCH_WRITER_BATCHES, self._outcome_labels["written"])
        _telemetry.emit(_telemetry.BATCH_WRITER_ITEMS, self._outcome_labels["written"], size)
        _telemetry.record(_telemetry.BATCH_WRITER_BATCH_SIZE, size, self._labels)
        _telemetry.record(_telemetry.BATCH_WRITER_WRITE_DURATION, elapsed, self._labels)

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new items from now on; `run` writes what is held, then returns."""
        self._closing = True
        self._wake.set()
        while self._waiters:  # producers waiting for room: refused, not queued
            self._waiters.popleft().set()
            self._held += 1  # each hands its slot back when it sees the writer closed

    async def aclose(self) -> None:
        """Refuse new items and wait until everything held is written."""
        self.close()
        await self._until_written(self._accepted)

    async def __aenter__(self) -> BatchWriter[T]:
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            await group.start(self.run)
        except BaseException:
            await group.__aexit__(None, None, None)
            raise
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        group, self._group = self._group, None
        if group is None:
            raise RuntimeError(f"batch writer {self.name!r} was not entered")
        try:
            await self.aclose()
        except BaseException as error:  # noqa: BLE001 - handed to the task group to unwind
            return await group.__aexit__(type(error), error, error.__traceback__)
        return await group.__aexit__(exc_type, exc, tb)


def _validate(
    *,
    write: object,
    capacity: int,
    max_batch: int,
    max_delay: float,
    backoff: object,
    near_full: float,
    on_near_full: object,
    clock: object,
) -> None:
    if not callable(write):
        raise ConfigurationError("write", f"must be callable, got {write!r}")
    check_int("capacity", capacity, minimum=1)
    check_int("max_batch", max_batch, minimum=1)
    if max_batch > capacity:
        raise ConfigurationError("max_batch", f"must be <= capacity ({capacity}), got {max_batch}")
    check_positive("max_delay", max_delay, allow_zero=True)
    if backoff is not None and not isinstance(backoff, Backoff):
        raise ConfigurationError("backoff", f"must be a Backoff, got {backoff!r}")
    check_positive("near_full", near_full)
    if near_full > 1:
        raise ConfigurationError("near_full", f"must be in (0, 1], got {near_full!r}")
    if on_near_full is not None and not callable(on_near_full):
        raise ConfigurationError("on_near_full", f"must be callable, got {on_near_full!r}")
    if clock is not None and not isinstance(clock, (SystemClock, TimerClock)):
        raise ConfigurationError(
            "clock", f"must have timers (call_at), as VirtualClock has; got {clock!r}"
        )
