"""Where a circuit breaker keeps its state, so that instances can share it."""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from resilience_kit import _telemetry
from resilience_kit._integrity import RecordReader


class CircuitState(str, enum.Enum):
    """The states of a `CircuitBreaker`.

    - ``CLOSED``: calls run; outcomes are recorded; too many failures open it.
    - ``OPEN``: calls are rejected until ``open_for`` has passed.
    - ``HALF_OPEN``: a few probe calls run; their outcome closes or re-opens it.
    - ``FORCED_OPEN``: rejected until an operator calls ``reset()``.
    - ``DISABLED``: calls run; nothing is recorded.
    - ``METRICS_ONLY``: calls run and are recorded; the state never changes.

    Examples:
        >>> CircuitState.OPEN.value
        'open'
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """The shared part of a breaker's state: what a `BreakerStore` holds.

    Attributes:
        state: the current state.
        version: bumped by every transition; stores compare-and-set on it.
        changed_at: when the state last changed, on the breaker clock's monotonic scale.
        open_until: when an ``OPEN`` breaker admits its next probe (same scale).
        consecutive_opens: opens since the breaker was last closed (grows ``open_for``).
        open_interval: the length of the latest open interval since the breaker was last
            closed, in seconds (a decorrelated-jitter `Backoff` grows from it).

    A store shared between processes translates the two timestamps to wall time at its
    boundary; the breaker itself only ever compares them with its own clock.
    """

    state: CircuitState
    version: int = 0
    changed_at: float = 0.0
    open_until: float | None = None
    consecutive_opens: int = 0
    open_interval: float | None = None


_STATES = tuple(state.value for state in CircuitState)


def read_breaker_record(
    *, store: str, name: str, fields: Mapping[str, object], offset: float = 0.0
) -> BreakerRecord:
    """The breaker record in ``fields``, or `CorruptRecordError`: the rule of every breaker store.

    Fields: ``state`` (a `CircuitState` value), ``version`` and ``consecutive_opens``
    (integers >= 0; ``consecutive_opens`` may be absent, as in records written before
    it existed), ``changed_at`` (a finite number), ``open_until`` (a finite number,
    present exactly when the state is ``open``) and ``open_interval`` (a finite number
    >= 0 or absent: the latest open interval, which decorrelated jitter grows from).
    ``offset`` is added to both times (a store translating wall time back to the
    clock's monotonic scale).

    Args:
        store: the store's repr.
        name: the breaker's name (or the key it is stored under).
        fields: what the backend read.
        offset: seconds added to ``changed_at`` and ``open_until``.

    Raises:
        CorruptRecordError: a field is missing, of the wrong type or out of range, or an
            open breaker has no ``open_until``.

    Examples:
        >>> read_breaker_record(store="redis", name="billing", fields={
        ...     "state": "open", "version": 3, "changed_at": 10.0, "open_until": None})
        Traceback (most recent call last):
        ...
        resilience_kit.errors.CorruptRecordError: redis: the breaker record 'billing' cannot \
be read back (state 'open' without open_until)
    """
    reader = RecordReader(store=store, kind="breaker record", record=name, fields=fields)
    state = CircuitState(reader.choice("state", _STATES))
    version = reader.count("version")
    changed_at = reader.number("changed_at", finite=True)
    open_until = reader.optional_number("open_until", finite=True)
    if state is CircuitState.OPEN and open_until is None:
        raise reader.corrupt("state 'open' without open_until")
    opens = reader.count("consecutive_opens") if "consecutive_opens" in fields else 0
    interval = reader.optional_number("open_interval", finite=True)
    if interval is not None and interval < 0:
        raise reader.corrupt(f"negative open_interval {interval!r}")
    return BreakerRecord(
        state=state,
        version=version,
        changed_at=changed_at + offset,
        open_until=None if open_until is None else open_until + offset,
        consecutive_opens=opens,
        open_interval=interval,
    )


@runtime_checkable
class BreakerStore(Protocol):
    """Keeps `BreakerRecord`s by breaker name; breakers with one name share one record.

    The contract: every method is quick and never blocks on I/O. A store backed by a
    network service keeps a local mirror, applies writes in the background, and reports
    changes made elsewhere through ``subscribe``; when it cannot reach its service it
    keeps answering from the mirror, so the breaker degrades to a local one.
    """

    def load(self, name: str) -> BreakerRecord | None:
        """Return the record for ``name``, or ``None`` if there is none yet."""
        ...

    def compare_and_set(
        self, name: str, expected_version: int, record: BreakerRecord
    ) -> BreakerRecord:
        """Store ``record`` if the stored version is ``expected_version``.

        Returns the record that is current afterwards: ``record`` on success, or the one
        that won the race.
        """
        ...

    def subscribe(self, name: str, callback: Callable[[BreakerRecord], None]) -> Callable[[], None]:
        """Call ``callback`` with every new record for ``name``; return an unsubscriber."""
        ...


class Subscribers:
    """The breakers listening to a store, per name: thread-safe, for every store to share."""

    __slots__ = ("_callbacks", "_lock")

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[BreakerRecord], None]]] = {}
        self._lock = threading.Lock()

    def add(self, name: str, callback: Callable[[BreakerRecord], None]) -> Callable[[], None]:
        """Register ``callback`` for ``name``; return a function that removes it."""
        with self._lock:
            self._callbacks.setdefault(name, []).append(callback)

        def remove() -> None:
            with self._lock:
                callbacks = self._callbacks.get(name, [])
                if callback in callbacks:
                    callbacks.remove(callback)

        return remove

    def notify(self, name: str, record: BreakerRecord) -> None:
        """Hand ``record`` to every callback of ``name``; one that fails is logged."""
        with self._lock:
            callbacks = list(self._callbacks.get(name, ()))
        for callback in callbacks:
            try:
                callback(record)
            except Exception:  # noqa: BLE001, PERF203  (one bad subscriber must not starve the rest)
                _telemetry.logger.exception("breaker store: a subscriber of %r failed", name)


class MemoryBreakerStore:
    """A `BreakerStore` in this process: breakers sharing it and a name act as one.

    Examples:
        >>> from resilience_kit import CircuitBreaker
        >>> store = MemoryBreakerStore()
        >>> a = CircuitBreaker("billing", store=store)
        >>> b = CircuitBreaker("billing", store=store)
        >>> a.force_open()
        >>> b.state
        <CircuitState.FORCED_OPEN: 'forced_open'>
    """

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}
        self._subscribers = Subscribers()
        self._lock = threading.Lock()

    def load(self, name: str) -> BreakerRecord | None:
        """Return the record for ``name``."""
        return self._records.get(name)

    def compare_and_set(
        self, name: str, expected_version: int, record: BreakerRecord
    ) -> BreakerRecord:
        """Store ``record`` if the current version is ``expected_version``; notify subscribers."""
        with self._lock:
            current = self._records.get(name)
            current_version = current.version if current is not None else 0
            if current is not None and current_version != expected_version:
                return current
            self._records[name] = record
        self._subscribers.notify(name, record)
        return record

    def subscribe(self, name: str, callback: Callable[[BreakerRecord], None]) -> Callable[[], None]:
        """Register ``callback`` for changes of ``name``."""
        return self._subscribers.add(name, callback)
