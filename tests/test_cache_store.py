"""InMemoryCacheStore: LRU bounds and the epochs that stop stale loads from storing."""

from __future__ import annotations

import pytest

from resilience_kit import ConfigurationError
from resilience_kit.caching import CacheRecord, CacheStore, InMemoryCacheStore


def record(value: object, expires_at: float = 60.0, retain: float | None = None) -> CacheRecord:
    return CacheRecord(value, 0.0, expires_at, retain)


async def fill(store: InMemoryCacheStore, key: str, value: object) -> bool:
    epoch = await store.begin_load(key)
    return await store.complete_load(key, epoch, record(value))


def test_implements_the_protocol() -> None:
    assert isinstance(InMemoryCacheStore(), CacheStore)
    assert repr(InMemoryCacheStore(max_size=3)) == "InMemoryCacheStore(size=0, max_size=3)"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_max_size_is_validated(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        InMemoryCacheStore(max_size=bad)  # type: ignore[arg-type]
    assert info.value.parameter == "max_size"


@pytest.mark.anyio
async def test_least_recently_used_record_is_evicted() -> None:
    store: InMemoryCacheStore[str, str] = InMemoryCacheStore(max_size=2)
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
    store: InMemoryCacheStore[str, str] = InMemoryCacheStore(max_size=2)
    await fill(store, "a", "A")
    await fill(store, "b", "B")
    await fill(store, "a", "A2")
    assert (len(store), store.evictions) == (2, 0)
    assert store.peek("a") == record("A2")


@pytest.mark.anyio
async def test_fetch_drops_records_past_retain_until() -> None:
    store: InMemoryCacheStore[str, str] = InMemoryCacheStore()
    epoch = await store.begin_load("a")
    await store.complete_load("a", epoch, record("A", expires_at=10.0, retain=20.0))
    assert await store.fetch("a", 19.9) is not None
    assert await store.fetch("a", 20.0) is None
    assert len(store) == 0
    assert await store.fetch("missing", 0.0) is None


@pytest.mark.anyio
async def test_a_load_begun_before_an_invalidation_cannot_store() -> None:
    store: InMemoryCacheStore[str, str] = InMemoryCacheStore()
    old = await store.begin_load("a")
    await store.invalidate("a")
    new = await store.begin_load("a")
    assert not await store.complete_load("a", old, record("old"))
    assert store.peek("a") is None
    assert await store.complete_load("a", new, record("new"))
    assert store.peek("a") == record("new")
    # the epoch bookkeeping is gone once no load of the key is in progress
    assert store._pending == {}
    assert store._invalidated_at == {}


@pytest.mark.anyio
async def test_invalidating_other_keys_does_not_affect_a_load() -> None:
    store: InMemoryCacheStore[str, str] = InMemoryCacheStore()
    epoch = await store.begin_load("a")
    await store.invalidate("b")
    assert await store.complete_load("a", epoch, record("A"))


@pytest.mark.anyio
async def test_invalidation_before_a_load_begins_does_not_block_it() -> None:
    store: InMemoryCacheStore[str, str] = InMemoryCacheStore()
    first = await store.begin_load("a")
    await store.invalidate("a")  # recorded, since a load of "a" is in progress
    second = await store.begin_load("a")
    store.abort_load("a", first)
    assert await store.complete_load("a", second, record("A"))


@pytest.mark.anyio
async def test_invalidate_all_blocks_every_load_in_progress() -> None:
    store: InMemoryCacheStore[str, str] = InMemoryCacheStore()
    await fill(store, "x", "X")
    a = await store.begin_load("a")
    b = await store.begin_load("b")
    await store.invalidate_all()
    assert len(store) == 0
    assert not await store.complete_load("a", a, record("A"))
    store.abort_load("b", b)
    assert await fill(store, "b", "B")
    assert store._pending == {}


@pytest.mark.anyio
async def test_completing_with_none_removes_the_key() -> None:
    store: InMemoryCacheStore[str, str] = InMemoryCacheStore()
    await fill(store, "a", "A")
    epoch = await store.begin_load("a")
    assert await store.complete_load("a", epoch, None)
    assert store.peek("a") is None
