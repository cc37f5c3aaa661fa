"""Where a `PolicyCache` keeps its records: the `CacheStore` protocol and its in-memory store."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from resilience_kit._checks import check_int
from resilience_kit._integrity import RecordReader

__all__ = ("CacheRecord", "CacheStore", "MemoryCacheStore", "read_cache_record")

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheRecord(Generic[V]):
    """One loaded value and its timing: what a `CacheStore` holds per key.

    Times are on the cache clock's monotonic scale. A store shared between processes
    translates them to wall time at its boundary, as breaker stores do.

    Attributes:
        value: what the loader returned.
        loaded_at: when the load that produced it *began* (the data is no older).
        expires_at: when it stops being fresh (``loaded_at + ttl``).
        retain_until: after this, no policy of the cache will serve it, so the store
            may drop it; ``None`` means keep it while there is room (a `FailOpen`
            cache's last known good value).

    Examples:
        >>> record = CacheRecord("pro", loaded_at=10.0, expires_at=70.0, retain_until=None)
        >>> record.expires_at - record.loaded_at
        60.0
    """

    value: V
    loaded_at: float
    expires_at: float
    retain_until: float | None


def read_cache_record(
    *, store: str, key: object, value: V, fields: Mapping[str, object], offset: float = 0.0
) -> CacheRecord[V]:
    """The cache record of ``value`` with the times in ``fields``, or `CorruptRecordError`.

    The rule of every cache store: ``loaded_at`` and ``expires_at`` are finite numbers
    with ``expires_at >= loaded_at``; ``retain_until`` is absent (keep while there is
    room) or a finite number ``>= expires_at`` (no policy retains a record for less
    than its freshness). ``offset`` is added to the three times (a store translating
    wall time back to the clock's monotonic scale). Decoding ``value`` is the store's
    own business, done before.

    Args:
        store: the store's repr.
        key: the cache key (or the key it is stored under).
        value: the decoded value.
        fields: the times, as the backend read them.
        offset: seconds added to each time.

    Raises:
        CorruptRecordError: a time is missing, not a finite number, or out of order.

    Examples:
        >>> read_cache_record(store="redis", key="k", value=1, fields={
        ...     "loaded_at": 10.0, "expires_at": 5.0, "retain_until": None})
        Traceback (most recent call last):
        ...
        resilience_kit.errors.CorruptRecordError: redis: the cache record 'k' cannot be read \
back (expires_at 5.0 is before loaded_at 10.0)
    """
    reader = RecordReader(store=store, kind="cache record", record=key, fields=fields)
    loaded_at = reader.number("loaded_at", finite=True)
    expires_at = reader.number("expires_at", finite=True)
    retain_until = reader.optional_number("retain_until", finite=True)
    if expires_at < loaded_at:
        raise reader.corrupt(f"expires_at {expires_at} is before loaded_at {loaded_at}")
    if retain_until is not None and retain_until < expires_at:
        raise reader.corrupt(f"retain_until {retain_until} is before expires_at {expires_at}")
    return CacheRecord(
        value,
        loaded_at + offset,
        expires_at + offset,
        None if retain_until is None else retain_until + offset,
    )


@runtime_checkable
class CacheStore(Protocol[K_contra, V]):
    """Keeps a `PolicyCache`'s records, and the invalidation epochs that guard them.

    The contract:

    - `peek` answers from memory without blocking: it is the fresh-hit path. A store
      whose data lives elsewhere returns what it mirrors locally, or ``None``.
    - `fetch` is the authoritative read; the cache calls it whenever `peek` did not give
      it a fresh record.
    - Loads are bracketed: `begin_load` returns the key's epoch, and `complete_load`
      stores the result only if the key was not invalidated since (else returns
      ``False``). A load that fails or is cancelled calls `abort_load` instead. This is
      what stops a slow load from re-populating a value an invalidation removed.
    - `invalidate` drops a key's record and moves its epoch on; `invalidate_all` does it
      for every key. A shared store makes both visible to every instance. Before it
      first suspends, `invalidate` must stop `peek` from returning the dropped record,
      and `peek` must never return a record from a load that began before it (even if
      that load completes on a remote store before the invalidation reaches it). The
      cache re-checks everything `fetch` returns while an invalidation runs.
    - The cache shields `begin_load`, `complete_load`, `invalidate` and
      `invalidate_all` from cancellation, so that every begun load is ended and no
      begun write or invalidation is lost: a store talking to a server must bound
      their waiting with timeouts of its own.

    Examples:
        >>> isinstance(MemoryCacheStore(), CacheStore)
        True
    """

    def peek(self, key: K_contra) -> CacheRecord[V] | None:
        """Return the record for ``key`` if it is at hand, without waiting for I/O."""
        ...

    async def fetch(self, key: K_contra, now: float) -> CacheRecord[V] | None:
        """Return the record for ``key``; a record past its ``retain_until`` may be dropped."""
        ...

    async def begin_load(self, key: K_contra) -> int:
        """Note that a load of ``key`` starts; return the key's current epoch."""
        ...

    async def complete_load(self, key: K_contra, epoch: int, record: CacheRecord[V] | None) -> bool:
        """Finish a load begun at ``epoch``: store ``record`` (``None``: remove the key).

        Returns ``False``, and changes nothing, if ``key`` was invalidated since the load
        began.
        """
        ...

    def abort_load(self, key: K_contra, epoch: int) -> None:
        """Finish a load begun at ``epoch`` that produced nothing (it failed or was cancelled)."""
        ...

    async def invalidate(self, key: K_contra) -> None:
        """Drop the record for ``key``; loads of it in progress may no longer store."""
        ...

    async def invalidate_all(self) -> None:
        """Drop every record; no load in progress may store."""
        ...


class MemoryCacheStore(Generic[K, V]):
    """A `CacheStore` in this process's memory, bounded by a least-recently-used policy.

    When a new record would exceed ``max_size``, the record used least recently (read or
    written) is evicted. Epochs are exact and cost memory only while a load of the key is
    in progress. Every method is synchronous underneath: nothing here waits.

    Args:
        max_size: how many records it holds at most, >= 1.

    Attributes:
        evictions: records evicted to make room, since creation.

    Examples:
        >>> import anyio
        >>> store = MemoryCacheStore(max_size=1)
        >>> async def main() -> None:
        ...     for key in ("a", "b"):
        ...         epoch = await store.begin_load(key)
        ...         record = CacheRecord(key.upper(), 0.0, 60.0, None)
        ...         await store.complete_load(key, epoch, record)
        >>> anyio.run(main)
        >>> len(store), store.evictions, store.peek("b")
        (1, 1, CacheRecord(value='B', loaded_at=0.0, expires_at=60.0, retain_until=None))
    """

    __slots__ = (
        "_cleared_at",
        "_invalidated_at",
        "_pending",
        "_records",
        "_seq",
        "evictions",
        "max_size",
    )

    def __init__(self, max_size: int = 10_000) -> None:
        check_int("max_size", max_size, minimum=1)
        self.max_size = max_size
        self.evictions = 0
        self._records: OrderedDict[K, CacheRecord[V]] = OrderedDict()
        self._seq = 0
        self._cleared_at = 0
        # Only keys with a load in progress have entries here, so memory stays bounded.
        self._pending: dict[K, int] = {}
        self._invalidated_at: dict[K, int] = {}

    def __repr__(self) -> str:
        return f"MemoryCacheStore(size={len(self._records)}, max_size={self.max_size})"

    def __len__(self) -> int:
        return len(self._records)

    def peek(self, key: K) -> CacheRecord[V] | None:
        """Return the record for ``key`` and mark it recently used."""
        record = self._records.get(key)
        if record is not None:
            self._records.move_to_end(key)
        return record

    async def fetch(self, key: K, now: float) -> CacheRecord[V] | None:
        """Return the record for ``key``, dropping it if it is past ``retain_until``."""
        record = self._records.get(key)
        if record is None:
            return None
        if record.retain_until is not None and now >= record.retain_until:
            del self._records[key]
            return None
        self._records.move_to_end(key)
        return record

    async def begin_load(self, key: K) -> int:
        """Count a load of ``key`` in progress; return the epoch it starts at."""
        self._pending[key] = self._pending.get(key, 0) + 1
        return self._seq

    def _end_load(self, key: K, epoch: int) -> bool:
        """Stop counting a load; tell whether no invalidation happened since ``epoch``."""
        valid = epoch >= self._cleared_at and epoch >= self._invalidated_at.get(key, 0)
        remaining = self._pending.get(key, 0) - 1
        if remaining > 0:
            self._pending[key] = remaining
        else:
            self._pending.pop(key, None)
            self._invalidated_at.pop(key, None)
        return valid

    async def complete_load(self, key: K, epoch: int, record: CacheRecord[V] | None) -> bool:
        """Store ``record`` (or remove the key) unless ``key`` was invalidated since ``epoch``."""
        if not self._end_load(key, epoch):
            return False
        records = self._records
        if record is None:
            records.pop(key, None)
            return True
        records[key] = record
        records.move_to_end(key)
        if len(records) > self.max_size:
            records.popitem(last=False)
            self.evictions += 1
        return True

    def abort_load(self, key: K, epoch: int) -> None:
        """Stop counting a load that stores nothing."""
        self._end_load(key, epoch)

    async def invalidate(self, key: K) -> None:
        """Drop ``key``'s record; loads of it in progress can no longer store."""
        self._seq += 1
        self._records.pop(key, None)
        if key in self._pending:
            self._invalidated_at[key] = self._seq

    async def invalidate_all(self) -> None:
        """Drop every record; no load in progress can store."""
        self._seq += 1
        self._cleared_at = self._seq
        self._records.clear()
