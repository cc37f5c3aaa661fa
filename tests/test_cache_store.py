"""The CacheStore contract, run against every store; then InMemoryCacheStore's LRU bound.

The contract tests read through `fetch` (the authoritative read): a store whose data
lives elsewhere may answer `peek` with ``None``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from resilience_kit import ConfigurationError
from resilience_kit.caching import CacheRecord, CacheStore, InMemoryCacheStore
from resilience_kit.testing import VirtualClock


def record(value: object, expires_at: float = 60.0, retain: float | None = None) -> CacheRecord:
    return CacheRecord(value, 0.0, expires_at, retain)


async def fill(store: Any, key: str, value: object) -> bool:
    epoch = await store.begin_load(key)
    return await store.complete_load(key, epoch, record(value))


async def read(store: Any, key: str, now: float = 0.0) -> CacheRecord | None:
    return await store.fetch(key, now)


def _redis_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    url = request.getfixturevalue("redis_url")
    from resilience_kit.stores.redis import RedisCacheStore  # noqa: PLC0415  (optional extra)

    prefix = f"test:{uuid.uuid4().hex}:"
    # Records hold times on the cache clock: a virtual clock at 0 makes these records current.
    store: Any = RedisCacheStore(url=url, prefix=prefix, clock=VirtualClock())
    yield store
    client = store._client
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    store.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Each store under the same contract (Redis: a real server, a fresh prefix per test)."""
    if request.param == "memory":
        yield InMemoryCacheStore()
    else:
        yield from _redis_store(request)


# -- the contract ---------------------------------------------------------------------


def test_implements_the_protocol(store: Any) -> None:
    assert isinstance(store, CacheStore)


@pytest.mark.anyio
async def test_a_stored_record_reads_back_unchanged(store: Any) -> None:
    stored = CacheRecord({"seats": 5, "plan": "pro"}, 10.0, 70.0, 100.0)
    epoch = await store.begin_load("a")
    assert await store.complete_load("a", epoch, stored)
    assert await read(store, "a") == stored
    assert await read(store, "missing") is None


@pytest.mark.anyio
async def test_fetch_drops_records_past_retain_until(store: Any) -> None:
    epoch = await store.begin_load("a")
    await store.complete_load("a", epoch, record("A", expires_at=10.0, retain=20.0))
    assert await read(store, "a", 19.9) is not None
    assert await read(store, "a", 20.0) is None
    assert await read(store, "missing") is None


@pytest.mark.anyio
async def test_a_load_begun_before_an_invalidation_cannot_store(store: Any) -> None:
    await fill(store, "a", "before")
    old = await store.begin_load("a")
    await store.invalidate("a")
    assert await read(store, "a") is None
    new = await store.begin_load("a")
    assert not await store.complete_load("a", old, record("old"))
    assert await read(store, "a") is None
    assert await store.complete_load("a", new, record("new"))
    assert await read(store, "a") == record("new")


@pytest.mark.anyio
async def test_a_refused_load_changes_nothing(store: Any) -> None:
    removal = await store.begin_load("a")
    old = await store.begin_load("a")
    await store.invalidate("a")
    assert await fill(store, "a", "current")
    assert not await store.complete_load("a", removal, None)  # not even a removal
    assert not await store.complete_load("a", old, record("old"))
    assert await read(store, "a") == record("current")


@pytest.mark.anyio
async def test_invalidating_other_keys_does_not_affect_a_load(store: Any) -> None:
    epoch = await store.begin_load("a")
    await store.invalidate("b")
    assert await store.complete_load("a", epoch, record("A"))
    assert await read(store, "a") == record("A")


@pytest.mark.anyio
async def test_invalidation_before_a_load_begins_does_not_block_it(store: Any) -> None:
    first = await store.begin_load("a")
    await store.invalidate("a")  # recorded, since a load of "a" is in progress
    second = await store.begin_load("a")
    store.abort_load("a", first)
    assert await store.complete_load("a", second, record("A"))
    await store.invalidate("b")  # no load of "b" in progress: nothing to guard
    assert await fill(store, "b", "B")


@pytest.mark.anyio
async def test_invalidate_all_blocks_every_load_in_progress(store: Any) -> None:
    await fill(store, "x", "X")
    a = await store.begin_load("a")
    b = await store.begin_load("b")
    await store.invalidate_all()
    assert await read(store, "x") is None
    assert not await store.complete_load("a", a, record("A"))
    store.abort_load("b", b)
    assert await fill(store, "b", "B")
    assert await fill(store, "x", "X2")
    assert await read(store, "x") == record("X2")
    assert await read(store, "a") is None


@pytest.mark.anyio
async def test_completing_with_none_removes_the_key(store: Any) -> None:
    await fill(store, "a", "A")
    epoch = await store.begin_load("a")
    assert await store.complete_load("a", epoch, None)
    assert await read(store, "a") is None


@pytest.mark.anyio
async def test_peek_never_returns_an_invalidated_record(store: Any) -> None:
    await fill(store, "a", "A")
    await store.invalidate("a")
    assert store.peek("a") is None
    await fill(store, "b", "B")
    await store.invalidate_all()
    assert store.peek("b") is None


# -- InMemoryCacheStore: the LRU bound and its bookkeeping ----------------------------


def test_in_memory_repr() -> None:
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
async def test_in_memory_epoch_bookkeeping_is_released() -> None:
    store: InMemoryCacheStore[str, str] = InMemoryCacheStore()
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
