"""`OutboxRelay`: publish committed outbox rows, at least once, in order per key."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Literal

import anyio
from anyio.abc import TaskStatus

from resilience_kit import _telemetry
from resilience_kit._checks import check_int, check_name, check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError, InvalidEventError
from resilience_kit.messaging._protocols import OutboxStore, Publisher
from resilience_kit.messaging._records import DeadLetter, OutboxMessage, OutboxStatus
from resilience_kit.policies._backoff import Backoff
from resilience_kit.policies._deadline import MovableDeadline, movable_deadline

__all__ = ("OutboxRelay", "RelayReport")

logger = logging.getLogger("resilience_kit.outbox")

OnExhausted = Literal["dead_letter", "block"]

_DEFAULT_BACKOFF = Backoff.exponential(initial=1.0, multiplier=2.0, maximum=300.0, jitter="full")


@dataclass(frozen=True, slots=True)
class RelayReport:
    """What one pass of a relay did.

    Attributes:
        claimed: rows leased.
        published: rows published and marked published.
        retried: rows that failed and will be retried after a backoff.
        dead_lettered: rows moved to dead letters (attempts used up, or undecodable).
        blocked: rows blocked (attempts used up under ``on_exhausted="block"``).
        released: rows given back unattempted (a row before them in their key failed).
        lost_leases: rows whose lease expired before the relay finished with them (a
            slower relay's writes change nothing; another relay owns the row now).

    Examples:
        >>> RelayReport(claimed=3, published=3).published
        3
    """

    claimed: int = 0
    published: int = 0
    retried: int = 0
    dead_lettered: int = 0
    blocked: int = 0
    released: int = 0
    lost_leases: int = 0


class _Tally:
    __slots__ = ("blocked", "dead_lettered", "lost", "published", "released", "retried")

    def __init__(self) -> None:
        self.published = self.retried = self.dead_lettered = self.blocked = 0
        self.released = self.lost = 0


class OutboxRelay:
    """Publishes committed outbox rows to a `Publisher`, at least once, in order per key.

    Each pass claims a batch of rows with a lease (so several relays, in any number of
    processes, never publish one row at the same time), publishes them — keys in
    parallel, each key's rows in order — and marks them published. A row that fails is
    retried after a backoff of its own while the rest of the outbox moves on; rows after
    it in its key wait for it. After ``max_attempts`` the ``on_exhausted`` policy
    decides: ``"dead_letter"`` moves the row to the store's dead letters and lets its key
    continue; ``"block"`` keeps it, holding back its key, until an operator requeues it
    (``resilience-kit outbox replay``). A row whose JSON cannot be decoded is never
    retried. Every write about a row is fenced by the lease the relay holds: a relay
    whose lease expired (it was paused, or slow) changes nothing.

    Between passes the relay waits for the store to announce new rows (LISTEN/NOTIFY on
    PostgreSQL) or for ``poll_interval``, whichever comes first: it never busy-polls.
    Published rows older than ``retention`` are deleted every ``purge_interval``.

    Args:
        store: a backend's outbox (``store.outbox``).
        publisher: where rows go (a transport, such as `MemoryBus`).
        name: the relay's name, in metrics and logs.
        batch_size: rows claimed per pass.
        lease_for: seconds a claim holds its rows; must exceed ``publish_timeout``.
        publish_timeout: seconds one publish may take before it counts as failed.
        concurrency: keys published at the same time within a batch.
        max_attempts: attempts per row (claims, including ones a crash cut short).
        backoff: the delay before a failed row's next attempt.
        on_exhausted: ``"dead_letter"`` (park and continue) or ``"block"`` (hold the key).
        poll_interval: the longest wait between passes when idle.
        retention: seconds published rows are kept; ``None`` keeps them.
        purge_interval: seconds between retention purges.
        status_interval: seconds between backlog/lag measurements for metrics.
        clock: the clock for backoff waits (default: the system clock).
        rand: the random source for the backoff's jitter (a seeded one makes a test's
            retry times reproducible); `random.random` by default.

    Raises:
        ConfigurationError: a parameter is invalid (named in the message).

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import Event, Outbox, OutboxRelay
        >>> from resilience_kit.stores.memory import MemoryStore
        >>> from resilience_kit.transports import MemoryBus
        >>> store, bus = MemoryStore(), MemoryBus()
        >>> with store.transaction() as transaction:
        ...     Outbox(store.outbox, topic="orgs").add(
        ...         transaction, Event(type="org.created", key="org:1", payload={})
        ...     )
        >>> relay = OutboxRelay(store.outbox, bus)
        >>> anyio.run(relay.drain)
        RelayReport(claimed=1, published=1, retried=0, dead_lettered=0, blocked=0, released=0, lost_leases=0)
    """  # noqa: E501 - a doctest's output line cannot be wrapped

    def __init__(
        self,
        store: OutboxStore,
        publisher: Publisher,
        *,
        name: str = "outbox",
        batch_size: int = 200,
        lease_for: float = 60.0,
        publish_timeout: float = 30.0,
        concurrency: int = 32,
        max_attempts: int = 10,
        backoff: Backoff = _DEFAULT_BACKOFF,
        on_exhausted: OnExhausted = "dead_letter",
        poll_interval: float = 1.0,
        retention: float | None = 7 * 86_400.0,
        purge_interval: float = 300.0,
        status_interval: float = 15.0,
        clock: Clock | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(store, OutboxStore):
            raise ConfigurationError("store", f"must implement OutboxStore, got {store!r}")
        if not isinstance(publisher, Publisher):
            raise ConfigurationError(
                "publisher", f"must have an async publish(topic, event), got {publisher!r}"
            )
        check_int("batch_size", batch_size, minimum=1)
        check_int("concurrency", concurrency, minimum=1)
        check_int("max_attempts", max_attempts, minimum=1)
        for parameter, value in (
            ("lease_for", lease_for),
            ("publish_timeout", publish_timeout),
            ("poll_interval", poll_interval),
            ("purge_interval", purge_interval),
            ("status_interval", status_interval),
            ("retention", retention),
        ):
            check_positive(parameter, value)
        if publish_timeout >= lease_for:
            raise ConfigurationError(
                "publish_timeout",
                f"must be shorter than lease_for ({lease_for}), got {publish_timeout}: "
                "a lease must outlast the publish it covers",
            )
        if not isinstance(backoff, Backoff):
            raise ConfigurationError("backoff", f"must be a Backoff, got {backoff!r}")
        if rand is not None and not callable(rand):
            raise ConfigurationError("rand", f"must be a callable, got {rand!r}")
        if on_exhausted not in ("dead_letter", "block"):
            raise ConfigurationError(
                "on_exhausted", f"must be 'dead_letter' or 'block', got {on_exhausted!r}"
            )
        self.name = check_name("name", name)
        self.store = store
        self.publisher = publisher
        self.batch_size = batch_size
        self.lease_for = float(lease_for)
        self.publish_timeout = float(publish_timeout)
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.on_exhausted: OnExhausted = on_exhausted
        self.poll_interval = float(poll_interval)
        self.retention = None if retention is None else float(retention)
        self.purge_interval = float(purge_interval)
        self.status_interval = float(status_interval)
        self._clock = clock
        self._rand = rand or random.random
        self._last_status: OutboxStatus | None = None
        self._labels = {"relay": self.name}
        self._outcome_labels = {
            outcome: {"relay": self.name, "outcome": outcome}
            for outcome in ("published", "retried", "dead_lettered", "blocked", "lost_lease")
        }
        _telemetry.observe(_telemetry.OUTBOX_BACKLOG, self, OutboxRelay._read_backlog)
        _telemetry.observe(_telemetry.OUTBOX_LAG, self, OutboxRelay._read_lag)

    def __repr__(self) -> str:
        return f"OutboxRelay({self.name!r}, store={self.store!r}, publisher={self.publisher!r})"

    # -- metrics --------------------------------------------------------------------

    def _read_backlog(self) -> list[tuple[float, dict[str, str]]]:
        status = self._last_status
        if status is None:
            return []
        return [
            (status.pending, {"relay": self.name, "state": "pending"}),
            (status.leased, {"relay": self.name, "state": "leased"}),
            (status.blocked, {"relay": self.name, "state": "blocked"}),
        ]

    def _read_lag(self) -> list[tuple[float, dict[str, str]]]:
        status = self._last_status
        return [] if status is None else [(status.oldest_pending_age, self._labels)]

    @property
    def last_status(self) -> OutboxStatus | None:
        """The backlog and lag as last measured by `run` (or `measure`), if ever."""
        return self._last_status

    async def measure(self) -> OutboxStatus:
        """Measure the backlog and lag now; metrics report this until the next measure.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import OutboxRelay
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> from resilience_kit.transports import MemoryBus
            >>> relay = OutboxRelay(MemoryStore().outbox, MemoryBus())
            >>> anyio.run(relay.measure).backlog
            0
        """
        self._last_status = await self.store.status()
        return self._last_status

    # -- one pass -------------------------------------------------------------------

    async def run_once(self) -> RelayReport:
        """Claim one batch, publish it, and record the outcome of every row.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import OutboxRelay
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> from resilience_kit.transports import MemoryBus
            >>> anyio.run(OutboxRelay(MemoryStore().outbox, MemoryBus()).run_once)
            RelayReport(claimed=0, published=0, retried=0, dead_lettered=0, blocked=0, released=0, lost_leases=0)
        """  # noqa: E501 - a doctest's output line cannot be wrapped
        messages = await self.store.claim(limit=self.batch_size, lease_for=self.lease_for)
        if not messages:
            return RelayReport()
        by_key: dict[str, list[OutboxMessage]] = {}
        for message in messages:
            by_key.setdefault(message.key, []).append(message)
        tally = _Tally()
        published: list[OutboxMessage] = []
        try:
            runs = iter(by_key.values())
            workers = min(self.concurrency, len(by_key))
            if workers == 1:
                await self._publish_runs(runs, published, tally)
            else:
                # A few workers share one iterator of key runs: one task per worker, not
                # per key (a batch of 200 single-row keys would otherwise start 200).
                async with anyio.create_task_group() as group:
                    for _ in range(workers):
                        group.start_soon(self._publish_runs, runs, published, tally)
        finally:
            # Also on cancellation: record what was published, so that a relay stopped
            # mid-batch does not publish those rows again after its restart.
            if published:
                with anyio.CancelScope(shield=True):
                    marked = await self.store.mark_published(published)
                tally.published += marked
                tally.lost += len(published) - marked
                self._count("published", marked)
                self._count("lost_lease", len(published) - marked)
        return RelayReport(
            claimed=len(messages),
            published=tally.published,
            retried=tally.retried,
            dead_lettered=tally.dead_lettered,
            blocked=tally.blocked,
            released=tally.released,
            lost_leases=tally.lost,
        )

    def _count(self, outcome: str, amount: int) -> None:
        if amount:
            _telemetry.emit(_telemetry.OUTBOX_EVENTS, self._outcome_labels[outcome], amount)

    async def _publish_runs(
        self,
        runs: Iterator[list[OutboxMessage]],
        published: list[OutboxMessage],
        tally: _Tally,
    ) -> None:
        """Publish key runs one after another (a worker); each run stops at its first failure.

        One cancel scope serves many publishes, its deadline moved before each one (a
        scope per publish costs ~10 us a row). A scope that fired is spent, so after a
        timeout the worker settles that run and goes on in a new one.
        """
        clock = resolve_clock(self._clock)
        while True:
            at = [0]  # the row being published, for a timeout
            current: list[OutboxMessage] | None = None
            stop: tuple[int, Exception | None] | None = None
            with movable_deadline(clock) as deadline:
                for next_run in runs:
                    current = next_run
                    stop = await self._publish_run(deadline, at, next_run, published)
                    if stop is not None:
                        break
                else:
                    current = None
            if deadline.scope.cancelled_caught:
                stop = (at[0], self._timed_out())
            if current is None or stop is None:
                return
            await self._settle(current, stop, tally)

    async def _settle(
        self, run: list[OutboxMessage], stop: tuple[int, Exception | None] | None, tally: _Tally
    ) -> None:
        """Record how a run stopped: its failed row, and the rows after it released."""
        if stop is None:
            return
        index, error = stop
        if error is not None:
            message = run[index]
            if isinstance(error, InvalidEventError):  # a corrupted row: retrying cannot help
                await self._give_up(message, error, tally)
            else:
                await self._failed(message, error, tally)
            index += 1
        await self._release(run[index:], tally)

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(f"publishing took longer than publish_timeout={self.publish_timeout}s")

    async def _publish_run(
        self,
        deadline: MovableDeadline,
        at: list[int],
        run: list[OutboxMessage],
        published: list[OutboxMessage],
    ) -> tuple[int, Exception | None] | None:
        """Publish one key's rows in order inside the worker's scope, each on a deadline.

        Returns where the run stopped and why (the error of that row, or ``None`` when
        the rest goes back unattempted), or ``None`` when every row was published.
        """
        for index, message in enumerate(run):
            at[0] = index
            try:
                event = message.event()
                deadline.arm(self.publish_timeout)
                await self.publisher.publish(message.topic, event)
            except Exception as exc:  # noqa: BLE001 - any publish failure is the row's
                return index, exc
            published.append(message)
            if deadline.scope.cancel_called:  # pragma: no cover - a race of one loop tick
                # The deadline passed just as this publish returned: it counts, and the
                # rest of the run goes back unattempted (the scope is spent).
                return index + 1, None
        return None

    async def _release(self, rest: Sequence[OutboxMessage], tally: _Tally) -> None:
        if rest:
            with anyio.CancelScope(shield=True):
                tally.released += await self.store.release(rest)

    async def _failed(self, message: OutboxMessage, error: Exception, tally: _Tally) -> None:
        if message.attempts >= self.max_attempts:
            await self._give_up(message, error, tally)
            return
        delay = self.backoff.delay(message.attempts, rand=self._rand)
        description = _describe(error)
        with anyio.CancelScope(shield=True):
            held = await self.store.retry_later(message, error=description, delay=delay)
        if held:
            tally.retried += 1
            self._count("retried", 1)
            logger.warning(
                "outbox relay %r: publishing row %d (key %r) failed on attempt %d of %d, "
                "retrying in %.3gs: %s",
                self.name,
                message.position,
                message.key,
                message.attempts,
                self.max_attempts,
                delay,
                description,
            )
        else:
            tally.lost += 1
            self._count("lost_lease", 1)

    async def _give_up(self, message: OutboxMessage, error: Exception, tally: _Tally) -> None:
        description = _describe(error)
        with anyio.CancelScope(shield=True):
            if self.on_exhausted == "block":
                held = await self.store.block(message, error=description)
                outcome = "blocked"
            else:
                letter = DeadLetter.create(
                    source="outbox",
                    topic=message.topic,
                    data=message.data,
                    error=error,
                    attempts=message.attempts,
                    first_failed_at=message.first_failed_at,
                    now=datetime.fromtimestamp(resolve_clock(self._clock).time(), timezone.utc),
                    key=message.key,
                )
                held = await self.store.dead_letter(message, letter)
                outcome = "dead_lettered"
        if not held:
            tally.lost += 1
            self._count("lost_lease", 1)
            return
        if outcome == "blocked":
            tally.blocked += 1
        else:
            tally.dead_lettered += 1
        self._count(outcome, 1)
        logger.error(
            "outbox relay %r: gave up on row %d (key %r) after %d attempt(s), %s: %s",
            self.name,
            message.position,
            message.key,
            message.attempts,
            outcome.replace("_", " "),
            description,
        )

    # -- loops ----------------------------------------------------------------------

    async def drain(self, *, max_passes: int | None = None) -> RelayReport:
        """Run passes until a claim comes back empty (or ``max_passes``); sum them up.

        Rows waiting for a retry are not due, so `drain` does not wait for them; a test
        moves its virtual clock and drains again.

        Examples:
            >>> import anyio
            >>> from resilience_kit.messaging import OutboxRelay
            >>> from resilience_kit.stores.memory import MemoryStore
            >>> from resilience_kit.transports import MemoryBus
            >>> anyio.run(OutboxRelay(MemoryStore().outbox, MemoryBus()).drain).claimed
            0
        """
        total = RelayReport()
        passes = 0
        while max_passes is None or passes < max_passes:
            report = await self.run_once()
            passes += 1
            if not report.claimed:
                break
            total = _add(total, report)
        return total

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Relay until cancelled: pass after pass, waiting for new rows when idle.

        A failing store (database down) is logged and retried with a growing pause,
        up to ``poll_interval`` times 30; the relay itself never stops on an error.
        Start it in a task group (``await group.start(relay.run)``) and cancel the
        group to stop it; a batch in flight records what it published first.
        """
        clock = resolve_clock(self._clock)
        task_status.started()
        next_purge = next_status = -math.inf
        failures = 0
        while True:
            try:
                now = clock.monotonic()
                if self.retention is not None and now >= next_purge:
                    next_purge = now + self.purge_interval
                    await self.store.purge_published(older_than=self.retention)
                if now >= next_status:
                    next_status = now + self.status_interval
                    await self.measure()
                report = await self.run_once()
                failures = 0
            except Exception:  # the relay outlives a broken store
                failures += 1
                pause = min(self.poll_interval * 30, self.poll_interval * 2 ** min(failures, 10))
                logger.exception(
                    "outbox relay %r: the store failed (%d in a row); next try in %.3gs",
                    self.name,
                    failures,
                    pause,
                )
                await clock.asleep(pause)
                continue
            if report.claimed < self.batch_size:
                await self._wait_for_rows(clock)

    async def _wait_for_rows(self, clock: Clock) -> None:
        """Wait for the store's hint of new rows, at most ``poll_interval`` on our clock.

        A store may wait in real time (SQLite's hint is a thread waiting for a commit):
        on a virtual clock, the poll must still come after ``poll_interval`` of *its*
        time, or rows from another process would wait for real seconds.
        """
        async with anyio.create_task_group() as group:

            async def poll() -> None:
                await clock.asleep(self.poll_interval)
                group.cancel_scope.cancel()

            group.start_soon(poll)
            # Awaited here, not in a task: it starts listening before anything can run.
            await self.store.wait_for_rows(self.poll_interval)
            group.cancel_scope.cancel()


def _describe(error: BaseException) -> str:
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}: {error}"


def _add(a: RelayReport, b: RelayReport) -> RelayReport:
    return RelayReport(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(a)})
