"""CircuitBreaker: stop calling a dependency that keeps failing, and probe for recovery."""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from resilience_kit import _config, _telemetry
from resilience_kit._checks import (
    ExceptionFilter,
    ExceptionTypes,
    check_int,
    check_positive,
    exception_matcher,
)
from resilience_kit.clock import SYSTEM_CLOCK, Clock, resolve_clock
from resilience_kit.errors import CircuitOpenError, ConfigurationError
from resilience_kit.policies._backoff import Backoff
from resilience_kit.policies._base import P, Policy, R
from resilience_kit.policies._breaker_store import (
    BreakerRecord,
    BreakerStore,
    CircuitState,
    MemoryBreakerStore,
)
from resilience_kit.policies._window import FAILURE, SLOW, CountWindow, TimeWindow

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED
METRICS_ONLY = CircuitState.METRICS_ONLY
_ADMIT_FREELY = (CLOSED, DISABLED, METRICS_ONLY)
_REJECTING = ("open", "half_open", "forced_open")  # the states that reject calls
_NAMES = {state: state.value for state in CircuitState}  # enum's .value is a slow property
_OTHER_INSTANCE = "changed by another instance"
# How often one call retries a transition it lost to another writer before giving up.
_MAX_RACES = 4
# Read on every call of a time-window breaker: bound once (neither is ever replaced).
_CONFIG = _config.state
_system_monotonic = SYSTEM_CLOCK.monotonic


@dataclass(frozen=True, slots=True)
class StateTransition:
    """What a breaker hands its listeners when its state changes.

    Attributes:
        breaker: the breaker's name.
        from_state: the state it left.
        to_state: the state it entered.
        at: when, on the breaker clock's monotonic scale.
        reason: why, in a few words (``"failure rate 0.60 >= 0.50"``, ``"forced"``...).
    """

    breaker: str
    from_state: CircuitState
    to_state: CircuitState
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class ThresholdExceeded:
    """What a METRICS_ONLY breaker hands its threshold listeners when its window crosses one.

    In CLOSED the same crossing opens the breaker (a `StateTransition`); in METRICS_ONLY
    the state never changes, so this event is what says the breaker would have opened.
    It comes once per crossing: the rates must fall back below both thresholds (or the
    state change) before the next one is reported.

    Attributes:
        breaker: the breaker's name.
        state: the state it is in (``METRICS_ONLY``).
        at: when, on the breaker clock's monotonic scale.
        threshold: ``"failure_rate"`` or ``"slow_call_rate"``: which one was reached.
        rate: that rate over the window.
        calls: the calls in the window.
        reason: in a few words, as a transition would give it.

    Examples:
        >>> from resilience_kit.testing import VirtualClock
        >>> seen = []
        >>> breaker = CircuitBreaker(
        ...     "x", window=2, minimum_calls=2, threshold_listeners=[seen.append],
        ...     clock=VirtualClock(),
        ... )
        >>> breaker.metrics_only()
        >>> for _ in range(2):
        ...     try:
        ...         breaker.call(lambda: 1 / 0)
        ...     except ZeroDivisionError:
        ...         pass
        >>> seen[0].threshold, seen[0].rate, seen[0].calls
        ('failure_rate', 1.0, 2)
    """

    breaker: str
    state: CircuitState
    at: float
    threshold: Literal["failure_rate", "slow_call_rate"]
    rate: float
    calls: int
    reason: str


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot of a breaker, computed in O(1) from running totals.

    Attributes:
        state: the current state.
        calls: calls recorded in the sliding window.
        failed_calls: failed calls in the window.
        slow_calls: slow calls in the window.
        failure_rate: ``failed_calls / calls``, or ``None`` below ``minimum_calls``.
        slow_call_rate: ``slow_calls / calls``, or ``None`` below ``minimum_calls``.
        rejected_calls: calls rejected since the breaker was created.
        open_until: when an open breaker admits a probe (monotonic), else ``None``.
    """

    state: CircuitState
    calls: int
    failed_calls: int
    slow_calls: int
    failure_rate: float | None
    slow_call_rate: float | None
    rejected_calls: int
    open_until: float | None


Listener = Callable[[StateTransition], object]
ThresholdListener = Callable[[ThresholdExceeded], object]


class CircuitBreaker(Policy):
    """Reject calls to a failing dependency for a while, then let a few probes through.

    The model is resilience4j's. While CLOSED, outcomes go into a sliding window (the
    last ``window`` calls, or the last ``window`` seconds with ``window_type="time"``).
    Once it holds ``minimum_calls``, a failure rate of ``failure_rate_threshold`` or
    more, or a slow-call rate of ``slow_call_rate_threshold`` or more, opens the
    breaker. OPEN rejects every call with `CircuitOpenError` for ``open_for`` seconds
    (a `Backoff` makes the interval grow with consecutive opens); then HALF_OPEN admits
    ``half_open_calls`` probes, whose outcomes close the breaker or open it again.

    Cancellation, `KeyboardInterrupt` and `SystemExit` are never counted; exceptions
    matched by ``ignore_on`` count as neither success nor failure; a result matched by
    ``record_result`` counts as a failure. No lock is held while the call runs, nor
    while the store or a listener is called.

    Args:
        name: identifies the breaker in errors, logs, metrics and a shared store.
        failure_rate_threshold: in ``(0, 1]``.
        window: the sliding window's size: calls, or seconds for a time window.
        window_type: ``"count"`` or ``"time"``.
        minimum_calls: outcomes needed in the window before rates are judged.
        slow_call_duration: calls taking this long or longer (seconds) count as slow.
        slow_call_rate_threshold: in ``(0, 1]``.
        open_for: seconds to stay open, or a `Backoff` over consecutive opens.
        half_open_calls: probes admitted while half-open.
        max_half_open_duration: if the probes have not settled after this long, the
            breaker opens again (protects against probes that never return).
        record_on: what counts as a failure (default: any `Exception`).
        ignore_on: exception types that count as neither success nor failure.
        record_result: a predicate; a result for which it is ``True`` is a failure.
        listeners: called with a `StateTransition` on every state change.
        threshold_listeners: called with a `ThresholdExceeded` when, in METRICS_ONLY, the
            window reaches a threshold (the breaker would have opened).
        store: where the state lives; breakers sharing a store and a name act as one.
        clock: the clock (the virtual clock in tests).

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> from resilience_kit import CircuitBreaker, CircuitOpenError
        >>> breaker = CircuitBreaker("billing", window=4, minimum_calls=2, open_for=30.0)
        >>> @breaker
        ... def charge() -> None:
        ...     raise ConnectionError("billing is down")
        >>> for _ in range(2):
        ...     try:
        ...         charge()
        ...     except ConnectionError:
        ...         pass
        >>> breaker.state
        <CircuitState.OPEN: 'open'>
        >>> try:
        ...     charge()
        ... except CircuitOpenError as exc:
        ...     print(round(exc.retry_after))
        30
    """

    __slots__ = (
        "_clock",
        "_exceeded",
        "_half_open_calls",
        "_half_open_timeout",
        "_ignored",
        "_listeners",
        "_local",
        "_lock",
        "_min_calls",
        "_open_attributes",
        "_open_for",
        "_open_ticks",
        "_probe_failures",
        "_probe_slow",
        "_probes_admitted",
        "_probes_done",
        "_reads",
        "_record",
        "_recorded",
        "_rejection_attributes",
        "_rejection_ticks",
        "_result_failure",
        "_slow_after",
        "_slow_threshold",
        "_state",
        "_store",
        "_threshold",
        "_threshold_listeners",
        "_timed",
        "_unsubscribe",
        "_version",
        "_window",
        "name",
    )

    def __init__(  # noqa: PLR0915  (validation of each parameter, one after another)
        self,
        name: str,
        *,
        failure_rate_threshold: float = 0.5,
        window: int = 100,
        window_type: Literal["count", "time"] = "count",
        minimum_calls: int = 20,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float = 1.0,
        open_for: float | Backoff = 30.0,
        half_open_calls: int = 5,
        max_half_open_duration: float | None = None,
        record_on: ExceptionFilter = Exception,
        ignore_on: ExceptionTypes = (),
        record_result: Callable[[Any], bool] | None = None,
        listeners: Sequence[Listener] = (),
        threshold_listeners: Sequence[ThresholdListener] = (),
        store: BreakerStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name", f"must be a non-empty string, got {name!r}")
        _check_rate("failure_rate_threshold", failure_rate_threshold)
        _check_rate("slow_call_rate_threshold", slow_call_rate_threshold)
        check_int("window", window, minimum=1)
        if window_type not in ("count", "time"):
            raise ConfigurationError(
                "window_type", f"must be 'count' or 'time', got {window_type!r}"
            )
        check_int("minimum_calls", minimum_calls, minimum=1)
        if window_type == "count" and minimum_calls > window:
            raise ConfigurationError(
                "minimum_calls",
                f"must be <= window ({window}) for a count window, got {minimum_calls}; "
                "the breaker could never open",
            )
        check_positive("slow_call_duration", slow_call_duration)
        if isinstance(open_for, Backoff):
            if open_for.maximum <= 0:
                raise ConfigurationError("open_for", "a Backoff must allow a delay > 0")
        else:
            check_positive("open_for", open_for)
        check_int("half_open_calls", half_open_calls, minimum=1)
        check_positive("max_half_open_duration", max_half_open_duration)
        if store is not None and not isinstance(store, BreakerStore):
            raise ConfigurationError("store", f"must implement BreakerStore, got {store!r}")
        if record_result is not None and not callable(record_result):
            raise ConfigurationError("record_result", "must be a callable")
        _check_listeners("listeners", listeners)
        _check_listeners("threshold_listeners", threshold_listeners)

        self.name = name
        self._threshold = float(failure_rate_threshold)
        self._slow_threshold = float(slow_call_rate_threshold)
        self._min_calls = minimum_calls
        self._slow_after = slow_call_duration
        self._open_for = open_for
        self._half_open_calls = half_open_calls
        self._half_open_timeout = max_half_open_duration
        self._recorded = exception_matcher(record_on, "record_on")
        ignored = exception_matcher(ignore_on, "ignore_on") if ignore_on != () else None
        self._ignored = ignored
        self._result_failure = record_result
        self._listeners: list[Listener] = list(listeners)
        self._threshold_listeners: list[ThresholdListener] = list(threshold_listeners)
        self._exceeded = False  # METRICS_ONLY: a threshold crossing was reported
        self._clock = clock
        self._window: CountWindow | TimeWindow = (
            CountWindow(window) if window_type == "count" else TimeWindow(window)
        )
        self._timed = window_type == "time" or slow_call_duration is not None
        # Never held while calling out (the call, the store, listeners): a plain Lock.
        self._lock = threading.Lock()
        # The record this thread is writing, and why (see _on_store_change).
        self._local = threading.local()
        # Rejections are counted without a lock, one counter per state: next() on an
        # itertools.count is atomic. A reader takes a tick from each counter too, and
        # subtracts the ticks readers took before (see _rejections).
        self._rejection_ticks = {state: itertools.count() for state in _REJECTING}
        self._open_ticks = self._rejection_ticks["open"]
        self._reads = 0
        self._rejection_attributes = {
            state: {"breaker": name, "state": state} for state in _REJECTING
        }
        self._open_attributes = self._rejection_attributes["open"]
        self._probes_admitted = self._probes_done = 0
        self._probe_failures = self._probe_slow = 0

        self._store: BreakerStore = store if store is not None else MemoryBreakerStore()
        record = self._store.load(name)
        if record is None:
            record = self._store.compare_and_set(name, 0, BreakerRecord(CLOSED))
        self._record = record
        self._state = record.state
        self._version = record.version
        self._unsubscribe: Callable[[], None] | None = None
        if store is not None:
            self_ref = weakref.ref(self)

            def on_store_change(new: BreakerRecord) -> None:
                breaker = self_ref()
                if breaker is not None:
                    breaker._on_store_change(new)

            self._unsubscribe = self._store.subscribe(name, on_store_change)
            weakref.finalize(self, self._unsubscribe)
        _telemetry.observe(_telemetry.BREAKER_REJECTIONS, self, CircuitBreaker._observe_rejections)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"

    # -- public state -------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state.

        An OPEN breaker whose interval has passed reads OPEN until the next call turns it
        HALF_OPEN.
        """
        return self._state

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every state change; returns a function that removes it."""
        if not callable(listener):
            raise ConfigurationError("listener", f"must be callable, got {listener!r}")
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def add_threshold_listener(self, listener: ThresholdListener) -> Callable[[], None]:
        """Call ``listener`` when a METRICS_ONLY window reaches a threshold; returns a remover.

        Examples:
            >>> from resilience_kit.testing import VirtualClock
            >>> breaker = CircuitBreaker("x", window=2, minimum_calls=2, clock=VirtualClock())
            >>> breaker.metrics_only()
            >>> remove = breaker.add_threshold_listener(lambda event: print(event.reason))
            >>> for _ in range(2):
            ...     try:
            ...         breaker.call(lambda: 1 / 0)
            ...     except ZeroDivisionError:
            ...         pass
            failure rate 1.00 >= 0.50
            >>> breaker.state
            <CircuitState.METRICS_ONLY: 'metrics_only'>
        """
        if not callable(listener):
            raise ConfigurationError("listener", f"must be callable, got {listener!r}")
        with self._lock:
            self._threshold_listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._threshold_listeners:
                    self._threshold_listeners.remove(listener)

        return remove

    def metrics(self) -> BreakerMetrics:
        """A snapshot of the window and state.

        Examples:
            >>> CircuitBreaker("x").metrics().calls
            0
        """
        now = self._now()
        with self._lock:
            totals = self._window.totals(now)
            judged = totals.calls >= self._min_calls
            rejected = sum(self._rejections_locked().values())
            return BreakerMetrics(
                state=self._state,
                calls=totals.calls,
                failed_calls=totals.failures,
                slow_calls=totals.slow,
                failure_rate=totals.failures / totals.calls if judged else None,
                slow_call_rate=totals.slow / totals.calls if judged else None,
                rejected_calls=rejected,
                open_until=self._record.open_until if self._state is OPEN else None,
            )

    def _rejections_locked(self) -> dict[str, int]:
        """Rejections so far, per state (the caller holds the lock)."""
        reads = self._reads
        self._reads = reads + 1
        return {state: next(ticks) - reads for state, ticks in self._rejection_ticks.items()}

    def _observe_rejections(self) -> list[tuple[int, dict[str, str]]]:
        """Cumulative rejections per state, for the observable counter (telemetry)."""
        with self._lock:
            counts = self._rejections_locked()
        return [
            (counts[state], self._rejection_attributes[state])
            for state in _REJECTING
            if counts[state]
        ]

    def force_open(self) -> None:
        """Reject every call until `reset` (an operator's kill switch)."""
        self._transition(FORCED_OPEN, "forced")

    def disable(self) -> None:
        """Admit every call and record nothing until `reset`."""
        self._transition(DISABLED, "disabled")

    def metrics_only(self) -> None:
        """Record outcomes (for metrics) but never change state, until `reset`."""
        self._transition(METRICS_ONLY, "metrics only")

    def reset(self) -> None:
        """Close the breaker and forget its window and its consecutive opens."""
        self._transition(CLOSED, "reset")

    # -- the decision core ----------------------------------------------------------------
    #
    # The lock guards the local bookkeeping (window, probe counters, the adopted record)
    # and is only ever held for a few attribute updates. Deciding happens under it; the
    # transition itself goes through the store's compare-and-set after it is released,
    # so neither the store, nor another breaker sharing it, nor a listener ever runs
    # under this lock (no lock-order cycles between breakers sharing a store).

    def _now(self) -> float:
        return resolve_clock(self._clock).monotonic()

    def _open_duration(self, opens: int, previous: float | None = None) -> float:
        open_for = self._open_for
        if isinstance(open_for, Backoff):
            return max(open_for.delay(opens, previous), 1e-9)
        return open_for

    def _admit(self) -> int:
        """Admit a call or raise `CircuitOpenError`; returns the version it was admitted at.

        The drivers call it only when the state is not one that admits freely; they read
        the version before the state because _adopt writes it last, so a fresh version
        implies a fresh state.
        """
        now = self._now()
        for _ in range(_MAX_RACES):
            with self._lock:
                current = self._record
                state = self._state
                if state is OPEN:
                    open_until = current.open_until
                    if open_until is not None and now < open_until:
                        raise self._rejection(open_until - now)
                    to, reason = HALF_OPEN, "open interval elapsed"
                elif state is HALF_OPEN:
                    if self._probes_admitted < self._half_open_calls:
                        self._probes_admitted += 1
                        return self._version
                    timeout = self._half_open_timeout
                    if timeout is None or now - current.changed_at < timeout:
                        raise self._rejection(self._probe_hint())
                    to, reason = OPEN, "probes did not settle in time"
                elif state is FORCED_OPEN:
                    raise self._rejection(None)
                else:
                    return self._version  # another thread moved it to an admitting state
            self._change(current, to, reason, now)
        # Every transition lost to another writer: refuse rather than spin.
        with self._lock:
            raise self._rejection(self._probe_hint())

    def _probe_hint(self) -> float:
        """How long a caller turned away while probes run should wait: a short interval."""
        base = self._open_duration(1)
        return min(base, self._slow_after or 1.0)

    def _rejection(self, retry_after: float | None) -> CircuitOpenError:
        """Count a rejection (the caller holds the lock) and build a fresh error for it."""
        state = _NAMES[self._state]
        next(self._rejection_ticks[state])
        _telemetry.span_event(_telemetry.BREAKER_REJECTIONS, self._rejection_attributes[state])
        return CircuitOpenError.new(self.name, state, retry_after)

    def _reject_if_open(self) -> None:
        """Raise `CircuitOpenError` if the breaker is OPEN and its interval has not passed.

        The drivers' lock-free path for the common rejection: the record is immutable,
        so one read of it is consistent; anything else goes through `_admit`.
        """
        record = self._record
        open_until = record.open_until
        if record.state is OPEN and open_until is not None:
            # resolve_clock inlined: this is the hot path of an open breaker.
            now = (self._clock or _config.state.clock or SYSTEM_CLOCK).monotonic()
            if now < open_until:
                next(self._open_ticks)
                _telemetry.span_event(_telemetry.BREAKER_REJECTIONS, self._open_attributes)
                raise CircuitOpenError.new(self.name, "open", open_until - now)

    def _outcome_of_exception(self, exc: BaseException) -> int | None:
        """The outcome flags for an exception; ``None`` means it is not counted."""
        if not isinstance(exc, Exception):
            return None  # cancellation, KeyboardInterrupt, SystemExit
        if self._ignored is not None and self._ignored(exc):
            return None
        return FAILURE if self._recorded(exc) else 0

    def _on_exception(self, version: int, exc: BaseException, started: float) -> None:
        outcome = self._outcome_of_exception(exc)
        if outcome is None:
            self._release(version)
        else:
            self._on_outcome(version, outcome, started)

    def _release(self, version: int) -> None:
        """Give back a probe permit for a call that ended without a countable outcome."""
        if self._state is HALF_OPEN:
            with self._lock:
                if self._version == version and self._probes_admitted > 0:
                    self._probes_admitted -= 1

    def _on_outcome(self, version: int, outcome: int, started: float) -> None:
        if self._state is DISABLED:
            return
        now = self._now() if self._timed else None
        slow_after = self._slow_after
        if slow_after is not None and now is not None and now - started >= slow_after:
            outcome |= SLOW
        event = None
        lock = self._lock
        lock.acquire()  # not `with`: see _success_recorder
        try:
            if version != self._version:
                return  # admitted under an earlier state: its outcome is stale
            if self._state is HALF_OPEN:
                verdict = self._judge_probe(outcome)
            else:
                window = self._window
                window.record(outcome, 0.0 if now is None else now)
                failures, slow, calls = window.failures, window.slow, window.calls
                # A clean window cannot open the breaker (thresholds are > 0): the usual case.
                if not (failures or slow) or calls < self._min_calls or self._state is not CLOSED:
                    if self._state is not METRICS_ONLY:
                        return
                    event = self._crossing(failures, slow, calls, now)
                    if event is None:
                        return
                    listeners = tuple(self._threshold_listeners)
                    verdict = None
                else:
                    verdict = self._judge_window(failures, slow, calls)
            if verdict is None and event is None:
                return
            current = self._record
        finally:
            lock.release()
        if verdict is None:
            if event is not None:
                self._announce(event, listeners)
            return
        self._change(current, verdict[0], verdict[1], now)

    def _success_recorder(self) -> Callable[[int], None]:
        """`_on_outcome` for a clean outcome without a slow-call timer: the usual case.

        The drivers call the function returned for every clean outcome (no failure, no
        result the ``record_result`` predicate flags) of a breaker without a slow-call
        timer that the clean-window shortcut does not cover. It records in a CLOSED
        breaker in fewer steps than the general case (what it reads is bound once: none
        of it is ever replaced); any other state goes the general way.
        """
        breaker = self
        lock = self._lock
        acquire, release = lock.acquire, lock.release
        record_success = self._window.record_success
        window = self._window
        clock = self._clock
        timed = self._timed
        minimum = self._min_calls
        threshold, slow_threshold = self._threshold, self._slow_threshold

        def on_success(version: int) -> None:
            # resolve_clock inlined: every call of a time-window breaker reads the clock.
            if timed:
                installed = clock or _CONFIG.clock
                now = _system_monotonic() if installed is None else installed.monotonic()
            else:
                now = 0.0
            # acquire/release rather than `with`: half the cost, on every recorded call.
            acquire()
            try:
                if version != breaker._version:
                    return  # admitted under an earlier state: its outcome is stale
                if breaker._state is not CLOSED:
                    current = None
                else:
                    record_success(now)
                    failures, slow, calls = window.failures, window.slow, window.calls
                    # A clean window cannot open the breaker (thresholds are > 0); nor
                    # can one under both thresholds (_judge_window's test, inlined).
                    if (
                        not (failures or slow)
                        or calls < minimum
                        or (
                            failures / calls < threshold
                            and (not slow or slow / calls < slow_threshold)
                        )
                    ):
                        return
                    verdict = breaker._judge_window(failures, slow, calls)
                    current = breaker._record
            finally:
                release()
            if current is None:
                breaker._on_outcome(version, 0, 0.0)
            elif verdict is not None:  # pragma: no branch  (the test above says it opens)
                breaker._change(current, verdict[0], verdict[1], now if timed else None)

        return on_success

    def _crossing(
        self, failures: int, slow: int, calls: int, now: float | None
    ) -> ThresholdExceeded | None:
        """In METRICS_ONLY (the caller holds the lock): the event of a threshold newly reached."""
        verdict = self._judge_window(failures, slow, calls) if calls >= self._min_calls else None
        if verdict is None:
            self._exceeded = False  # below both thresholds again: the next crossing counts
            return None
        if self._exceeded:
            return None
        self._exceeded = True
        failing = failures / calls >= self._threshold
        return ThresholdExceeded(
            self.name,
            METRICS_ONLY,
            self._now() if now is None else now,
            "failure_rate" if failing else "slow_call_rate",
            (failures if failing else slow) / calls,
            calls,
            verdict[1],
        )

    def _announce(self, event: ThresholdExceeded, listeners: tuple[ThresholdListener, ...]) -> None:
        """Report a threshold crossing: telemetry, a log line, the threshold listeners."""
        _telemetry.emit(
            _telemetry.BREAKER_THRESHOLDS_EXCEEDED,
            {"breaker": self.name, "state": event.state.value, "threshold": event.threshold},
        )
        _telemetry.logger.warning(
            "circuit %r: %s in %s (would have opened)", self.name, event.reason, event.state.value
        )
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001, PERF203  (a broken listener must not break calls)
                _telemetry.logger.exception("circuit %r: a threshold listener failed", self.name)

    def _judge_window(
        self, failures: int, slow: int, calls: int
    ) -> tuple[CircuitState, str] | None:
        """Say whether a CLOSED breaker with these window totals must open."""
        # Rates as quotients: 55 / 100 >= 0.55 holds, 55 >= 0.55 * 100 does not in floats.
        rate = failures / calls
        if rate >= self._threshold:
            return OPEN, f"failure rate {rate:.2f} >= {self._threshold:.2f}"
        if slow and slow / calls >= self._slow_threshold:
            return OPEN, f"slow-call rate {slow / calls:.2f} >= {self._slow_threshold:.2f}"
        return None

    def _judge_probe(self, outcome: int) -> tuple[CircuitState, str] | None:
        """Count a probe; decide as soon as the remaining probes cannot change the verdict."""
        self._probes_done += 1
        self._probe_failures += outcome & FAILURE
        self._probe_slow += (outcome & SLOW) >> 1
        total = self._half_open_calls
        done = self._probes_done
        remaining = total - done
        failures, slow = self._probe_failures, self._probe_slow
        if failures / total >= self._threshold:
            return OPEN, f"{failures} of {total} probes failed"
        if slow and slow / total >= self._slow_threshold:
            return OPEN, f"{slow} of {total} probes were slow"
        if (failures + remaining) / total < self._threshold and (
            self._slow_after is None or (slow + remaining) / total < self._slow_threshold
        ):
            return CLOSED, f"{done - failures} of {done} probes succeeded"
        return None

    # -- transitions ------------------------------------------------------------------------

    def _transition(self, to: CircuitState, reason: str) -> None:
        """An operator's transition: retried if another writer got in first.

        Asking for the state the breaker is already in changes nothing (in-flight calls
        still count), except that `reset` always forgets the window.
        """
        for _ in range(_MAX_RACES):
            with self._lock:
                current = self._record
            if current.state is to and to is not CLOSED:
                return
            if self._change(current, to, reason):
                return

    def _change(
        self, current: BreakerRecord, to: CircuitState, reason: str, now: float | None = None
    ) -> bool:
        """Move from ``current`` to ``to`` through the store; tell whether this write won.

        Called without the lock. Losing the compare-and-set is normal under contention:
        the winning record is adopted instead.
        """
        if now is None:
            now = self._now()
        opens = current.consecutive_opens
        interval = current.open_interval
        open_until = None
        if to is OPEN:
            opens += 1
            interval = self._open_duration(opens, interval)
            open_until = now + interval
        elif to is CLOSED:
            opens = 0
            interval = None
        new = BreakerRecord(to, current.version + 1, now, open_until, opens, interval)
        local = self._local
        local.writing = (new, reason)
        try:
            winner = self._store.compare_and_set(self.name, current.version, new)
        finally:
            local.writing = None
        won = winner.version == new.version and winner.state is to
        self._adopt(winner, reason if won else _OTHER_INSTANCE)
        if won and current.state is not to:
            # Counted by the instance whose write made the change, and only there: the
            # others sharing the store adopt it without counting, so a fleet's sum is
            # the number of changes the shared breaker went through.
            _telemetry.emit(
                _telemetry.BREAKER_TRANSITIONS,
                {"breaker": self.name, "from_state": current.state.value, "to_state": to.value},
            )
        return won

    def _on_store_change(self, record: BreakerRecord) -> None:
        """A store notification: our own write (with its reason) or another instance's."""
        writing = getattr(self._local, "writing", None)
        if writing is not None and writing[0] is record:
            self._adopt(record, writing[1])
        else:
            self._adopt(record, _OTHER_INSTANCE)

    def _adopt(self, record: BreakerRecord, reason: str) -> None:
        """Make ``record`` this breaker's state if it is newer; reset what it invalidates."""
        with self._lock:
            # Newer versions win; an equal version with other contents is the store's
            # verdict on a race this breaker lost (a shared store resolves it).
            if record.version < self._version or record == self._record:
                return
            if record.version == self._version and record.state is self._state:
                # The same change written by another instance too (both opened, or both
                # wrote the state back to an empty store): its times may differ a little,
                # but nothing this breaker counted since is invalid.
                self._record = record
                return
            previous = self._state
            self._record = record
            self._state = record.state
            self._probes_admitted = self._probes_done = 0
            self._probe_failures = self._probe_slow = 0
            self._exceeded = False
            if record.state is CLOSED or record.state is METRICS_ONLY:
                self._window.reset()
            self._version = record.version  # last: see _admit
            listeners = tuple(self._listeners)
        if previous is record.state:
            return
        event = StateTransition(self.name, previous, record.state, record.changed_at, reason)
        log = _telemetry.logger.warning if record.state is OPEN else _telemetry.logger.info
        log("circuit %r: %s -> %s (%s)", self.name, previous.value, record.state.value, reason)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001, PERF203  (a broken listener must not break calls)
                _telemetry.logger.exception("circuit %r: a state listener failed", self.name)

    # -- drivers ----------------------------------------------------------------------------

    # Both drivers inline the closed path: read the state, call, then record under the lock
    # unless the outcome cannot change the window.

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        breaker = self
        admit = self._admit
        reject_if_open = self._reject_if_open
        on_exception = self._on_exception
        on_outcome = self._on_outcome
        on_success = self._success_recorder()
        is_failure = self._result_failure
        slow_timer = self._slow_after is not None
        window = self._window
        skippable = is_failure is None and not slow_timer

        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            version = breaker._version  # before the state: see _admit
            state = breaker._state
            if state is not CLOSED:
                if state is OPEN:
                    reject_if_open()
                if state not in _ADMIT_FREELY:
                    version = admit()
            started = breaker._now() if slow_timer else 0.0
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                on_exception(version, exc, started)
                raise
            if skippable:
                if window.all_clear and breaker._state is CLOSED and breaker._version == version:
                    return result  # one more success in a clean full window changes nothing
                on_success(version)
                return result
            failed = is_failure is not None and is_failure(result)
            if failed or slow_timer:
                on_outcome(version, FAILURE if failed else 0, started)
            else:
                on_success(version)
            return result

        return guarded

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        breaker = self
        admit = self._admit
        reject_if_open = self._reject_if_open
        on_exception = self._on_exception
        on_outcome = self._on_outcome
        on_success = self._success_recorder()
        is_failure = self._result_failure
        slow_timer = self._slow_after is not None
        window = self._window
        skippable = is_failure is None and not slow_timer

        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            version = breaker._version  # before the state: see _admit
            state = breaker._state
            if state is not CLOSED:
                if state is OPEN:
                    reject_if_open()
                if state not in _ADMIT_FREELY:
                    version = admit()
            started = breaker._now() if slow_timer else 0.0
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                on_exception(version, exc, started)
                raise
            if skippable:
                if window.all_clear and breaker._state is CLOSED and breaker._version == version:
                    return result  # one more success in a clean full window changes nothing
                on_success(version)
                return result
            failed = is_failure is not None and is_failure(result)
            if failed or slow_timer:
                on_outcome(version, FAILURE if failed else 0, started)
            else:
                on_success(version)
            return result

        return guarded


def _check_listeners(parameter: str, listeners: object) -> None:
    if callable(listeners) or isinstance(listeners, str) or not isinstance(listeners, Iterable):
        raise ConfigurationError(parameter, f"must be a sequence of callables, got {listeners!r}")
    for listener in listeners:
        if not callable(listener):
            raise ConfigurationError(parameter, f"must be callable, got {listener!r}")


def _check_rate(parameter: str, value: float) -> None:
    check_positive(parameter, value)
    if value > 1:
        raise ConfigurationError(parameter, f"must be in (0, 1], got {value!r}")
