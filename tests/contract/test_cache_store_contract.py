"""The CacheStore contract, run against every cache store (in memory, Redis).

The contract tests read through `fetch` (the authoritative read): a store whose data
lives elsewhere may answer `peek` with ``None``. "Two instances" of a service share one
in-memory store, or two Redis clients on one prefix (`SharedStores` in conftest.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from resilience_kit.caching import CacheRecord, CacheStore, FailClosed, PolicyCache, Served
from resilience_kit.testing import VirtualClock
from tests.contract.conftest import SharedStores

MEMBER = ("acme", "ann")


@pytest.fixture
def store(cache_stores: SharedStores) -> Any:
    """One instance's store."""
    return cache_stores.first


@pytest.fixture
def pods(cache_stores: SharedStores) -> tuple[Any, Any]:
    """Two instances' stores, sharing one cache."""
    return cache_stores.first, cache_stores.second


@pytest.fixture
def clock(cache_stores: SharedStores) -> VirtualClock:
    """The clock the stores' records are timed on."""
    return cache_stores.clock


def record(value: object, expires_at: float = 60.0, retain: float | None = None) -> CacheRecord:
    return CacheRecord(value, 0.0, expires_at, retain)


async def fill(store: Any, key: str, value: object) -> bool:
    epoch = await store.begin_load(key)
    return await store.complete_load(key, epoch, record(value))


async def read(store: Any, key: str, now: float = 0.0) -> CacheRecord | None:
    return await store.fetch(key, now)


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


# -- instances share records and invalidations ------------------------------------------


@pytest.mark.anyio
async def test_what_one_instance_loads_the_other_serves(
    pods: tuple[Any, Any], clock: VirtualClock
) -> None:
    calls: list[str] = []

    async def plan(org: str) -> dict[str, Any]:
        calls.append(org)
        return {"plan": "pro", "seats": 50}

    a = PolicyCache(plan, ttl=3600, store=pods[0], clock=clock)
    b = PolicyCache(plan, ttl=3600, store=pods[1], clock=clock)
    assert (await a.lookup("acme")).served is Served.LOADED
    clock.advance(10)
    found = await b.lookup("acme")
    assert (found.served, found.value, found.age) == (
        Served.FRESH,
        {"plan": "pro", "seats": 50},
        10,
    )
    assert calls == ["acme"]
    await b.put("acme", {"plan": "free", "seats": 1})  # an EntitlementsChanged event on B
    assert (await a.lookup("acme")).value == {"plan": "free", "seats": 1}
    assert calls == ["acme"]


@pytest.mark.anyio
async def test_an_invalidation_on_one_instance_is_seen_by_the_other(
    pods: tuple[Any, Any], clock: VirtualClock
) -> None:
    directory = {MEMBER, ("acme", "bob")}

    async def is_member(key: tuple[str, str]) -> bool:
        return key in directory

    a = PolicyCache(is_member, ttl=900, policy=FailClosed(), store=pods[0], clock=clock)
    b = PolicyCache(is_member, ttl=900, policy=FailClosed(), store=pods[1], clock=clock)
    assert await b.get(MEMBER) is True  # B caches "member"...
    assert (await a.lookup(MEMBER)).served is Served.FRESH
    directory.discard(MEMBER)
    await a.invalidate(MEMBER)  # ...A handles MemberRemoved...
    found = await b.lookup(MEMBER)  # ...and B does not serve what it cached
    assert (found.served, found.value) == (Served.LOADED, False)
    assert await b.get(("acme", "bob")) is True
    directory.clear()
    await b.invalidate_all()
    assert await a.get(("acme", "bob")) is False


@pytest.mark.anyio
async def test_store_level_race_between_two_instances(pods: tuple[Any, Any]) -> None:
    a, b = pods
    epoch = await a.begin_load("k")
    await b.invalidate("k")
    assert not await a.complete_load("k", epoch, CacheRecord("late", 0.0, 60.0, None))
    assert await b.fetch("k", 0.0) is None
    epoch = await a.begin_load("k")
    await b.invalidate_all()
    assert not await a.complete_load("k", epoch, CacheRecord("late", 0.0, 60.0, None))
    epoch = await b.begin_load("k")
    assert await b.complete_load("k", epoch, CacheRecord("new", 0.0, 60.0, None))
    assert (await a.fetch("k", 0.0)).value == "new"
