"""MemoryCacheStore's own behaviour: its LRU bound and its bookkeeping.

The CacheStore contract every store meets is tests/contract/test_cache_store_contract.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from resilience_kit import ConfigurationError
from resilience_kit.caching import CacheRecord, MemoryCacheStore


def record(value: object, expires_at: float = 60.0, retain: float | None = None) -> CacheRecord:
    return CacheRecord(value, 0.0, expires_at, retain)


async def fill(store: Any, key: str, value: object) -> bool:
    epoch = await store.begin_load(key)
    return await store.complete_load(key, epoch, record(value))


async def read(store: Any, key: str, now: float = 0.0) -> CacheRecord | None:
    return await store.fetch(key, now)


# -- MemoryCacheStore: the LRU bound and its bookkeeping ----------------------------


def test_in_memory_repr() -> None:
    assert repr(MemoryCacheStore(max_size=3)) == "MemoryCacheStore(size=0, max_size=3)"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_max_size_is_validated(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        MemoryCacheStore(max_size=bad)  # type: ignore[arg-type]
    assert info.value.parameter == "max_size"


@pytest.mark.anyio
async def test_least_recently_used_record_is_evicted() -> None:
    store: MemoryCacheStore[str, str] = MemoryCacheStore(max_size=2)
    await fill(store, "a", "A")
    await fill(store, "b", "B")
    assert store.peek("a") is not None  # a is now the most recently used
    await fill(store, "c", "C")
    assert store.peek("b") is None
    assert store.peek("a") is not None
    assert store.peek("c") is not None
    assert (len(store), store.evictions) == (2, 1)
    # fetch counts as a use too
    assert await store.fetch("a", 0.0) is not None
    await fill(store, "d", "D")
    assert store.peek("c") is None
    assert store.peek("a") is not None


@pytest.mark.anyio
async def test_overwriting_a_key_does_not_evict() -> None:
    store: MemoryCacheStore[str, str] = MemoryCacheStore(max_size=2)
    await fill(store, "a", "A")
    await fill(store, "b", "B")
    await fill(store, "a", "A2")
    assert (len(store), store.evictions) == (2, 0)
    assert store.peek("a") == record("A2")


@pytest.mark.anyio
async def test_in_memory_epoch_bookkeeping_is_released() -> None:
    store: MemoryCacheStore[str, str] = MemoryCacheStore()
    old = await store.begin_load("a")
    await store.invalidate("a")
    new = await store.begin_load("a")
    assert not await store.complete_load("a", old, record("old"))
    assert await store.complete_load("a", new, record("new"))
    assert store.peek("a") == record("new")
    # the epoch bookkeeping is gone once no load of the key is in progress
    assert store._pending == {}
    assert store._invalidated_at == {}
    b = await store.begin_load("b")
    await store.invalidate_all()
    store.abort_load("b", b)
    assert store._pending == {}
    await store.fetch("gone", 0.0)
    assert len(store) == 0
