"""RedisCacheStore against a real Redis: instances share records and invalidations.

The store contract itself runs against Redis in tests/test_cache_store.py; these tests
cover what only a shared store has: several instances, outages, what is in Redis.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience_kit import ConfigurationError, ResilienceError
from resilience_kit.caching import (
    CacheLoadError,
    CacheRecord,
    CacheStore,
    FailClosed,
    FailOpen,
    MemoryCacheStore,
    PolicyCache,
    Served,
    ServeStale,
)
from resilience_kit.testing import VirtualClock
from tests.servers import free_port, redis_server

redis = pytest.importorskip("redis", reason="the redis extra is not installed")
from resilience_kit.errors import (  # noqa: E402
    CacheSerializationError,
    CacheStoreError,
    CacheStoreUnavailableError,
)
from resilience_kit.stores.redis import RedisCacheStore  # noqa: E402
from resilience_kit.stores.redis._cache import _glob_escape  # noqa: E402

MEMBER = ("acme", "ann")


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix; whatever a test left under it is deleted afterwards."""
    unique = f"test:{uuid.uuid4().hex}:"
    yield unique
    raw = redis.Redis.from_url(redis_url)
    for key in raw.scan_iter(match=_glob_escape(unique) + "*"):
        raw.delete(key)
    raw.close()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A raw client, to look at and tamper with what the stores keep."""
    raw = redis.Redis.from_url(redis_url)
    yield raw
    raw.close()


@pytest.fixture
def pods(redis_url: str, prefix: str, clock: VirtualClock) -> Iterator[tuple[Any, Any]]:
    """Two stores on one prefix, as in two instances of a service."""
    first = RedisCacheStore[Any, Any](url=redis_url, prefix=prefix, clock=clock)
    second = RedisCacheStore[Any, Any](url=redis_url, prefix=prefix, clock=clock)
    yield first, second
    first.close()
    second.close()


def down_store(clock: VirtualClock, **options: Any) -> RedisCacheStore[Any, Any]:
    """A store pointed at a port nothing listens on."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    return RedisCacheStore(url=url, prefix="down:", clock=clock, **options)


def record_key(prefix: str, key: str) -> str:
    return f'{prefix}rec:"{key}"'


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({}, "client"),
        ({"url": "redis://x", "client": object()}, "client"),
        ({"url": "redis://x", "prefix": ""}, "prefix"),
        ({"url": "redis://x", "retention": 0}, "retention"),
        ({"url": "redis://x", "invalidation_ttl": -1.0}, "invalidation_ttl"),
        ({"url": "redis://x", "key_serializer": "str"}, "key_serializer"),
        ({"url": "redis://x", "clock": "now"}, "clock"),
        ({"url": "redis://x", "value_type": object()}, "value_type"),
    ],
)
def test_bad_parameters_are_refused(options: dict[str, Any], parameter: str) -> None:
    options = {"prefix": "p", **options}
    with pytest.raises(ConfigurationError) as info:
        RedisCacheStore(**options)
    assert info.value.parameter == parameter


def test_it_is_a_cache_store_that_mirrors_nothing(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisCacheStore[str, str](client, prefix="members")
    assert isinstance(store, CacheStore)
    assert store.prefix == "members:"
    assert repr(store) == "RedisCacheStore(prefix='members:')"
    assert store.peek("anything") is None
    store.close()  # not ours to close: the client still works
    assert client.ping()
    client.close()


def test_store_errors_carry_their_context_and_pickle() -> None:
    error = CacheStoreUnavailableError("down", store="RedisCacheStore('m:')", key=("acme", "ann"))
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.store, copy.key, str(copy)) == (
        CacheStoreUnavailableError,
        "RedisCacheStore('m:')",
        ("acme", "ann"),
        "down",
    )
    assert isinstance(copy, ResilienceError)
    assert isinstance(copy, ConnectionError)


# -- instances share records and invalidations ------------------------------------------


@pytest.mark.anyio
async def test_member_removed_race_across_instances(
    pods: tuple[Any, Any], clock: VirtualClock, client: Any, prefix: str
) -> None:
    """A slow load on A read "member"; B handles MemberRemoved; A's late answer is dropped."""
    directory = {MEMBER}
    read_directory = anyio.Event()
    gate = anyio.Event()
    loads: list[bool] = []

    async def slow_is_member(key: tuple[str, str]) -> bool:
        answer = key in directory  # the database read...
        loads.append(answer)
        if len(loads) == 1:
            read_directory.set()
            await gate.wait()  # ...and a slow network on the way back
        return answer

    async def is_member(key: tuple[str, str]) -> bool:
        return key in directory

    a = PolicyCache(slow_is_member, ttl=900, policy=FailClosed(), store=pods[0], clock=clock)
    b = PolicyCache(is_member, ttl=900, policy=FailClosed(), store=pods[1], clock=clock)
    answers: list[Any] = []

    async def check() -> None:
        answers.append(await a.lookup(MEMBER))

    async with anyio.create_task_group() as tg:
        tg.start_soon(check)
        await read_directory.wait()
        directory.discard(MEMBER)  # MemberRemoved, handled by instance B
        await b.invalidate(MEMBER)
        gate.set()  # A's stale "member" arrives now
    assert loads == [True, False]  # refused, so A loaded again
    assert [(x.served, x.value) for x in answers] == [(Served.LOADED, False)]
    assert (await b.lookup(MEMBER)).value is False
    assert (await a.lookup(MEMBER)).value is False
    stored = client.get(f'{prefix}rec:["acme","ann"]')
    assert stored.endswith(b"|false")


# -- what Redis holds -------------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_ttls_follow_the_policy(
    pods: tuple[Any, Any], clock: VirtualClock, client: Any, prefix: str
) -> None:
    async def load(key: str) -> str:
        return key.upper()

    store = pods[0]
    cases = [
        ("closed", FailClosed(), 900.0),  # nothing to serve after expiry
        ("stale", ServeStale(stale_while_revalidate=30, stale_if_error=600), 1500.0),
        ("open", FailOpen(default="x"), 900 + store.retention),  # kept: retention past expiry
    ]
    for key, policy, seconds in cases:
        cache = PolicyCache(load, ttl=900, policy=policy, store=store, clock=clock)
        await cache.get(key)
        ttl_ms = client.pttl(record_key(prefix, key))
        assert seconds * 1000 - 5_000 < ttl_ms <= seconds * 1000, key


@pytest.mark.anyio
async def test_a_record_already_past_retention_is_not_stored(
    pods: tuple[Any, Any], clock: VirtualClock, client: Any, prefix: str
) -> None:
    store = pods[0]
    clock.advance(100)
    assert await store.complete_load(
        "a", await store.begin_load("a"), CacheRecord("A", 0.0, 50.0, 60.0)
    )
    assert client.exists(record_key(prefix, "a")) == 0


@pytest.mark.anyio
async def test_tombstones_are_pruned_after_the_invalidation_window(
    redis_url: str, prefix: str, client: Any
) -> None:
    store = RedisCacheStore[str, str](url=redis_url, prefix=prefix, invalidation_ttl=1e-6)
    for key in ("a", "b", "c"):
        await store.invalidate(key)
    assert client.zrange(prefix + "invalidated", 0, -1) == [b'"c"']
    store.close()


@pytest.mark.anyio
async def test_a_load_older_than_the_invalidation_window_is_not_stored(
    redis_url: str, prefix: str, client: Any
) -> None:
    store = RedisCacheStore[str, str](url=redis_url, prefix=prefix, invalidation_ttl=1.0)
    epoch = await store.begin_load("a")
    ancient = epoch - 2_000_000  # began two seconds (of Redis time) ago
    with pytest.raises(CacheStoreError, match="invalidation_ttl=1s") as info:
        await store.complete_load("a", ancient, CacheRecord("A", 0.0, 60.0, None))
    assert info.value.key == "a"
    assert client.exists(record_key(prefix, "a")) == 0
    assert await store.complete_load("a", epoch, CacheRecord("A", 0.0, 60.0, None))
    store.close()


@pytest.mark.anyio
async def test_epochs_keep_growing_when_redis_loses_the_counter(
    pods: tuple[Any, Any], client: Any, prefix: str
) -> None:
    store = pods[0]
    first = await store.begin_load("a")
    second = await store.begin_load("b")
    assert second > first
    client.delete(prefix + "seq")  # a restart without persistence, or an eviction
    await store.invalidate("a")
    assert not await store.complete_load("a", first, CacheRecord("A", 0.0, 60.0, None))
    client.set(prefix + "seq", b"garbage")
    third = await store.begin_load("b")
    assert third > second
    assert await store.complete_load("b", third, CacheRecord("B", 0.0, 60.0, None))


@pytest.mark.anyio
async def test_invalidate_all_deletes_the_old_records(
    pods: tuple[Any, Any], client: Any, prefix: str
) -> None:
    store = pods[0]
    await store.complete_load("kept", await store.begin_load("kept"), None)
    with client.pipeline(transaction=False) as pipe:  # more than one sweep batch
        for index in range(600):
            pipe.set(record_key(prefix, f"old{index}"), b"rk1|1|0.0|60.0||1")
        pipe.set(record_key(prefix, "garbage"), b"\xff\x00")
        pipe.hset(record_key(prefix, "hash"), "x", "y")
        pipe.execute()
    # Another cache whose keys match this prefix when read as a pattern: left alone.
    neighbour = prefix.replace(":", "x", 1)
    client.set(neighbour + 'rec:"a"', b"rk1|1|0.0|60.0||1")
    await store.invalidate_all()
    assert list(client.scan_iter(match=_glob_escape(prefix) + "rec:*")) == []
    assert client.exists(neighbour + 'rec:"a"') == 1
    client.delete(neighbour + 'rec:"a"')


@pytest.mark.anyio
async def test_records_from_before_invalidate_all_are_hidden_until_swept(
    pods: tuple[Any, Any], client: Any, prefix: str
) -> None:
    store = pods[0]
    before = await store.begin_load("x")
    await store.invalidate_all()
    after = await store.begin_load("x")
    # What an instance's sweep may not have reached yet, and what was written since:
    client.set(record_key(prefix, "old"), b"rk1|%d|0.0|60.0||1" % before)
    client.set(record_key(prefix, "new"), b"rk1|%d|0.0|60.0||2" % after)
    assert await pods[1].fetch("old", 0.0) is None
    assert (await pods[1].fetch("new", 0.0)).value == 2


def test_glob_escape() -> None:
    assert _glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


# -- values and keys ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entitlements:
    plan: str
    seats: int
    features: tuple[str, ...]


@pytest.mark.anyio
async def test_typed_values_round_trip_through_pydantic(
    redis_url: str, prefix: str, clock: VirtualClock, client: Any
) -> None:
    store = RedisCacheStore[tuple[str, int], Entitlements](
        url=redis_url, prefix=prefix, value_type=Entitlements, clock=clock
    )
    value = Entitlements("pro", 50, ("sso", "audit"))

    async def load(key: tuple[str, int]) -> Entitlements:
        return value

    cache = PolicyCache(load, ttl=60, store=store, clock=clock)
    assert await cache.get(("acme", 1)) == value
    found = await PolicyCache(load, ttl=60, store=store, clock=clock).lookup(("acme", 1))
    assert (found.served, found.value) == (Served.FRESH, value)
    assert isinstance(found.value.features, tuple)
    assert client.exists(f'{prefix}rec:["acme",1]') == 1
    store.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("value_type", "value"),
    [
        (None, ("a", "b")),  # would come back as a list
        (None, {1: "one"}),  # would come back with a string key
        (None, {"at": object()}),  # not JSON at all
        (None, float("nan")),
        (int, "not an int"),
    ],
)
async def test_a_value_that_cannot_be_stored_faithfully_is_refused(
    redis_url: str,
    prefix: str,
    clock: VirtualClock,
    client: Any,
    value_type: Any,
    value: Any,
) -> None:
    store = RedisCacheStore[str, Any](
        url=redis_url, prefix=prefix, value_type=value_type, clock=clock
    )
    epoch = await store.begin_load("org-1")
    with pytest.raises(CacheSerializationError, match="'org-1'") as info:
        await store.complete_load("org-1", epoch, CacheRecord(value, 0.0, 60.0, None))
    assert info.value.key == "org-1"
    assert client.exists(record_key(prefix, "org-1")) == 0

    async def load(key: str) -> Any:
        return value

    cache = PolicyCache(load, ttl=60, policy=FailClosed(), store=store, clock=clock)
    with pytest.raises(CacheLoadError) as denied:  # the policy decides, as for any failure
        await cache.get("org-1")
    assert isinstance(denied.value.__cause__, CacheSerializationError)
    store.close()


@pytest.mark.anyio
async def test_keys_that_cannot_be_serialised_are_refused(
    redis_url: str, prefix: str, clock: VirtualClock
) -> None:
    calls: list[object] = []

    async def load(key: object) -> int:
        calls.append(key)
        return 1

    default = RedisCacheStore[Any, int](url=redis_url, prefix=prefix, clock=clock)
    with pytest.raises(CacheSerializationError) as info:
        await PolicyCache(load, ttl=60, store=default, clock=clock).get(frozenset({1}))
    assert info.value.key == frozenset({1})
    custom = RedisCacheStore[Any, int](
        url=redis_url, prefix=prefix, key_serializer=lambda key: key, clock=clock
    )
    with pytest.raises(CacheSerializationError, match="returned int"):
        await custom.begin_load(7)
    with pytest.raises(CacheSerializationError):
        await custom.invalidate(7)
    assert calls == []
    named = RedisCacheStore[Any, int](
        url=redis_url, prefix=prefix, key_serializer=lambda key: f"org/{key}", clock=clock
    )
    assert await PolicyCache(load, ttl=60, store=named, clock=clock).get(7) == 1
    assert (await named.fetch(7, 0.0)).value == 1
    for store in (default, custom, named):
        store.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\x00\x13 not a record",
        b"rk1|nope",
        b"xx1|1|0.0|60.0||1",  # not our format
        b'rk1|99|0.0|60.0||"not an int"',  # fails the value type
        b"rk1|99|60.0|0.0||1",  # expires before it was loaded
        b"rk1|99|0.0|60.0|30.0|1",  # retained for less than its freshness
        b"rk1|99|nan|60.0||1",  # not a time
    ],
)
async def test_garbage_in_redis_is_a_logged_miss(
    redis_url: str,
    prefix: str,
    clock: VirtualClock,
    client: Any,
    caplog: pytest.LogCaptureFixture,
    garbage: bytes,
) -> None:
    store = RedisCacheStore[str, int](url=redis_url, prefix=prefix, value_type=int, clock=clock)

    async def load(key: str) -> int:
        return 42

    cache = PolicyCache(load, ttl=60, store=store, clock=clock)
    client.set(record_key(prefix, "a"), garbage)
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        found = await cache.lookup("a")
    assert (found.served, found.value) == (Served.LOADED, 42)  # a miss, then a load
    assert any("unreadable" in r.getMessage() and "'a'" in r.getMessage() for r in caplog.records)
    assert (await cache.lookup("a")).served is Served.FRESH  # the load replaced the garbage
    store.close()


@pytest.mark.anyio
async def test_a_wrong_type_under_a_record_key_is_a_logged_miss(
    pods: tuple[Any, Any], client: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.hset(record_key(prefix, "a"), "field", "value")
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        assert await pods[0].fetch("a", 0.0) is None
    assert any("WRONGTYPE" in r.getMessage() for r in caplog.records)
    assert pods[0].healthy  # Redis answered: not an outage
    client.set(prefix + "cleared", b"garbage")  # a corrupt epoch: nothing is trusted
    with pytest.raises(CacheStoreError, match="corrupt"):  # refusing would loop the cache
        await pods[0].complete_load("b", await pods[0].begin_load("b"), None)
    assert await pods[0].fetch("b", 0.0) is None
    await pods[1].invalidate_all()  # the way out
    assert await pods[0].complete_load("b", await pods[0].begin_load("b"), None)


@pytest.mark.anyio
async def test_a_refusal_by_redis_is_a_store_error_not_an_outage(
    pods: tuple[Any, Any], client: Any, prefix: str
) -> None:
    client.set(prefix + "invalidated", b"not a sorted set")
    with pytest.raises(CacheStoreError, match="refused") as info:
        await pods[0].invalidate("a")
    assert not isinstance(info.value, CacheStoreUnavailableError)
    assert info.value.key == "a"
    assert pods[0].healthy


@pytest.mark.anyio
async def test_invalidate_all_holds_even_if_the_sweep_fails(
    pods: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = pods[0]
    await store.complete_load("a", await store.begin_load("a"), CacheRecord(1, 0.0, 60.0, None))

    def lost_connection(self: Any) -> None:
        raise redis.ConnectionError("connection lost mid-sweep")

    monkeypatch.setattr(RedisCacheStore, "_sweep_sync", lost_connection)
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        await store.invalidate_all()  # the epoch moved: done, even though nothing was deleted
    assert any("mid-sweep" in r.getMessage() for r in caplog.records)
    assert await pods[1].fetch("a", 0.0) is None


# -- outages ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_down_fail_closed_denies(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def is_member(key: str) -> bool:
        calls.append(key)
        return True

    store = down_store(clock)
    cache = PolicyCache(is_member, ttl=900, policy=FailClosed(), store=store, clock=clock)
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        for _ in range(3):
            with pytest.raises(CacheLoadError) as info:
                await cache.get("ann")
            assert isinstance(info.value.__cause__, CacheStoreUnavailableError)
            assert info.value.__cause__.key == "ann"
    assert calls == []  # no invalidation can be seen, so nobody is let in
    assert not store.healthy
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1  # once per outage
    assert await store.fetch("ann", 0.0) is None
    with pytest.raises(CacheStoreUnavailableError) as failed:  # the caller must retry
        await cache.invalidate("ann")
    assert isinstance(failed.value, ConnectionError)
    with pytest.raises(CacheStoreUnavailableError):
        await cache.invalidate_all()
    with pytest.raises(CacheStoreUnavailableError):
        await store.complete_load("ann", 1, CacheRecord(True, 0.0, 900.0, 900.0))
    store.close()


@pytest.mark.anyio
async def test_redis_down_fail_open_serves_the_default(clock: VirtualClock) -> None:
    events: list[Any] = []

    async def entitlements(org: str) -> str:
        return "pro"

    policy = FailOpen(default="free", on_fallback=events.append)
    cache = PolicyCache(entitlements, ttl=3600, policy=policy, store=down_store(clock), clock=clock)
    found = await cache.lookup("acme")
    assert (found.served, found.value) == (Served.DEFAULT, "free")
    assert isinstance(found.error, CacheStoreUnavailableError)
    assert [event.served for event in events] == [Served.DEFAULT]


@pytest.mark.anyio
async def test_an_outage_ends_when_redis_is_back(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    store = RedisCacheStore[str, str](url=f"redis://127.0.0.1:{port}/0", prefix="p", clock=clock)

    async def load(key: str) -> str:
        return key.upper()

    cache = PolicyCache(load, ttl=60, store=store, clock=clock)
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        with pytest.raises(CacheLoadError):
            await cache.get("a")
        with redis_server(port):
            assert await cache.get("a") == "A"
            assert store.healthy
            assert (await cache.lookup("a")).served is Served.FRESH
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    store.close()


# -- the Redis pair behaves as one in-memory store ---------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("begin"), st.integers(0, 1), st.sampled_from("ab")),
        st.tuples(st.just("complete"), st.integers(0, 1), st.integers(0, 9)),
        st.tuples(st.just("abort"), st.integers(0, 1), st.integers(0, 9)),
        st.tuples(st.just("invalidate"), st.integers(0, 1), st.sampled_from("ab")),
        st.tuples(st.just("invalidate_all"), st.integers(0, 1), st.just("")),
        st.tuples(st.just("read"), st.integers(0, 1), st.sampled_from("ab")),
    ),
    max_size=14,
)


@pytest.mark.anyio
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
async def test_two_redis_instances_act_like_one_in_memory_store(
    redis_url: str, ops: list[tuple[str, int, Any]]
) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    clock = VirtualClock()  # the system clock's wall offset drifts by a few µs per read
    pair = [RedisCacheStore[str, int](url=redis_url, prefix=prefix, clock=clock) for _ in "ab"]
    model: MemoryCacheStore[str, int] = MemoryCacheStore()
    loads: list[tuple[str, int, int]] = []  # key, Redis epoch, model epoch
    for step, (op, which, arg) in enumerate(ops):
        store = pair[which]
        if op == "begin":
            loads.append((arg, await store.begin_load(arg), await model.begin_load(arg)))
        elif op in {"complete", "abort"} and loads:
            key, epoch, model_epoch = loads.pop(arg % len(loads))
            if op == "abort":
                store.abort_load(key, epoch)
                model.abort_load(key, model_epoch)
            else:
                stored = CacheRecord(step, 0.0, 60.0, None)
                assert await store.complete_load(key, epoch, stored) == (
                    await model.complete_load(key, model_epoch, stored)
                )
        elif op == "invalidate":
            await store.invalidate(arg)
            await model.invalidate(arg)
        elif op == "invalidate_all":
            await store.invalidate_all()
            await model.invalidate_all()
        elif op == "read":
            assert await store.fetch(arg, 0.0) == await model.fetch(arg, 0.0)
    client = pair[0]._client
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    for store in pair:
        store.close()
