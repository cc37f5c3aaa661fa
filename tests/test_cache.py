"""PolicyCache: loading, freshness, bounds, single flight, cancellation, invalidation, metrics."""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Hashable
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import resilience_kit
from resilience_kit import CircuitBreaker, CircuitOpenError, ConfigurationError, ResilienceError
from resilience_kit import telemetry as rk_telemetry
from resilience_kit.caching import (
    CacheLoadError,
    CacheLookup,
    CacheStats,
    FailClosed,
    FailOpen,
    MemoryCacheStore,
    PolicyCache,
    Served,
    ServeStale,
)
from resilience_kit.caching._metrics import METRIC_NAMES
from resilience_kit.testing import VirtualClock, use_clock


class Source:
    """A fake dependency: values by key, a switch to fail, an optional gate to block on."""

    def __init__(self, clock: VirtualClock | None = None, **values: Any) -> None:
        self.values: dict[Hashable, Any] = dict(values)
        self.calls: list[Hashable] = []
        self.error: BaseException | None = None
        self.gate: anyio.Event | None = None
        self.started = 0
        self.cancelled = 0
        self.latency = 0.0
        self.clock = clock

    async def __call__(self, key: Hashable) -> Any:
        self.calls.append(key)
        self.started += 1
        try:
            if self.latency and self.clock is not None:
                await self.clock.asleep(self.latency)
            if self.gate is not None:
                await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return self.values.get(key)


def make(source: Source, clock: VirtualClock, **kwargs: Any) -> PolicyCache[Any, Any]:
    kwargs.setdefault("ttl", 60.0)
    return PolicyCache(source, clock=clock, **kwargs)


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1.0}, "ttl"),
        ({"ttl": math.inf}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"ttl": None}, "ttl"),
        ({"negative_ttl": 0}, "negative_ttl"),
        ({"negative_ttl": math.nan}, "negative_ttl"),
        ({"policy": "fail_open"}, "policy"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": 10, "store": MemoryCacheStore()}, "max_size"),
        ({"store": object()}, "store"),
        ({"clock": object()}, "clock"),
        ({"name": ""}, "name"),
        ({"is_negative": 3}, "is_negative"),
        ({"on": 42}, "on"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, Any], parameter: str) -> None:
    kwargs.setdefault("ttl", 60.0)
    with pytest.raises(ConfigurationError) as info:
        PolicyCache(Source(), **kwargs)
    assert info.value.parameter == parameter
    assert parameter in str(info.value)


def test_loader_must_be_callable() -> None:
    with pytest.raises(ConfigurationError) as info:
        PolicyCache("not a loader", ttl=1.0)  # type: ignore[call-overload]
    assert info.value.parameter == "loader"


@pytest.mark.parametrize(
    ("make_policy", "parameter"),
    [
        (lambda: FailOpen(1, default_factory=lambda key: 2), "default_factory"),
        (lambda: FailOpen(default_factory=3), "default_factory"),
        (lambda: FailOpen(on_fallback=3), "on_fallback"),
        (lambda: FailOpen(max_stale=-1.0), "max_stale"),
        (ServeStale, "stale_while_revalidate"),
        (
            lambda: ServeStale(stale_while_revalidate=-1.0, stale_if_error=1.0),
            "stale_while_revalidate",
        ),
        (lambda: ServeStale(stale_if_error=math.inf), "stale_if_error"),
    ],
)
def test_bad_policy_parameters_are_named(make_policy: Any, parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_policy()
    assert info.value.parameter == parameter


def test_defaults_and_reprs() -> None:
    async def entitlements(org: str) -> str:
        return org

    cache = PolicyCache(entitlements, ttl=3600)
    assert cache.name == "entitlements"
    assert isinstance(cache.policy, FailClosed)
    assert isinstance(cache.store, MemoryCacheStore)
    assert cache.store.max_size == 10_000
    assert repr(cache) == "PolicyCache('entitlements', ttl=3600.0, policy=FailClosed())"
    assert repr(FailOpen(1)) == "FailOpen(default=1, max_stale=None)"
    assert repr(FailOpen()) == "FailOpen(max_stale=None)"
    assert FailOpen().default is None
    assert not FailOpen().has_default
    assert FailOpen(default_factory=str).has_default
    assert PolicyCache(Source(), ttl=1, name="x", max_size=5).store.max_size == 5  # type: ignore[attr-defined]
    assert str(Served.FALLBACK) == "fallback"


def test_exports_say_resilience_kit() -> None:
    caching = importlib.import_module("resilience_kit.caching")
    assert list(caching.__all__) == sorted(caching.__all__)
    for name in caching.__all__:
        value = getattr(caching, name)
        if isinstance(value, type) and not issubclass(value, BaseException):
            home = "resilience_kit" if name in resilience_kit.__all__ else "resilience_kit.caching"
            assert value.__module__ == home, name
    assert issubclass(CacheLoadError, ResilienceError)


# -- reading and freshness ----------------------------------------------------------------


@pytest.mark.anyio
async def test_get_loads_once_then_serves_fresh_until_ttl() -> None:
    clock = VirtualClock()
    source = Source(a="A")
    cache = make(source, clock, ttl=10.0)
    assert await cache.get("a") == "A"
    clock.advance(9.999)
    found = await cache.lookup("a")
    assert (found.value, found.served, found.reason) == ("A", Served.FRESH, "within ttl")
    assert found.age == pytest.approx(9.999)
    assert found.error is None
    assert source.calls == ["a"]
    clock.advance(0.001)  # exactly at expiry: no longer fresh
    source.values["a"] = "A2"
    found = await cache.lookup("a")
    assert (found.value, found.served, found.age) == ("A2", Served.LOADED, 0.0)
    assert source.calls == ["a", "a"]
    assert cache.stats() == CacheStats(hits=1, misses=2, loads=2)


@pytest.mark.anyio
async def test_ttl_counts_from_when_the_load_began() -> None:
    clock = VirtualClock()
    source = Source(clock, a="A")
    source.latency = 4.0
    cache = make(source, clock, ttl=10.0)
    found = await cache.lookup("a")
    assert clock.monotonic() == 4.0
    assert found.served is Served.LOADED
    assert found.age == 4.0
    record = cache.store.peek("a")
    assert record is not None
    assert (record.loaded_at, record.expires_at) == (0.0, 10.0)
    clock.advance(6.0)
    assert (await cache.lookup("a")).served is Served.LOADED


@pytest.mark.anyio
async def test_keys_are_independent_and_lru_bounded() -> None:
    clock = VirtualClock()
    source = Source(a=1, b=2, c=3)
    cache = make(source, clock, max_size=2)
    assert [await cache.get(k) for k in "abac"] == [1, 2, 1, 3]
    assert source.calls == ["a", "b", "c"]
    assert len(cache.store) == 2  # type: ignore[arg-type]
    assert await cache.get("b") == 2  # b was the least recently used: evicted, loaded again
    assert source.calls == ["a", "b", "c", "b"]
    assert cache.store.evictions == 2  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_follows_the_default_clock_when_none_is_given() -> None:
    clock = VirtualClock()
    source = Source(a="A")
    cache = PolicyCache(source, ttl=5.0)
    with use_clock(clock):
        await cache.get("a")
        clock.advance(5.0)
        await cache.get("a")
    assert source.calls == ["a", "a"]


@pytest.mark.anyio
async def test_sync_loaders_and_lambdas_returning_coroutines() -> None:
    clock = VirtualClock()
    sync_cache = PolicyCache(lambda key: key * 2, ttl=5.0, clock=clock)
    assert await sync_cache.get(21) == 42
    assert sync_cache.name == "<lambda>"

    async def fetch(key: int) -> int:
        return key + 1

    lambda_cache = PolicyCache(lambda key: fetch(key), ttl=5.0, clock=clock)  # noqa: PLW0108
    assert await lambda_cache.get(1) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("key", "error"),
    [(None, TypeError), (["unhashable"], TypeError), ({"a": 1}, TypeError), (math.nan, ValueError)],
)
async def test_keys_are_validated(key: Any, error: type[Exception]) -> None:
    source = Source()
    cache = make(source, VirtualClock())
    with pytest.raises(error):
        await cache.get(key)
    with pytest.raises(error):
        await cache.lookup(key)
    with pytest.raises(error):
        await cache.put(key, 1)
    assert source.calls == []


@pytest.mark.anyio
async def test_negative_results_are_not_cached_by_default_and_remove_the_old_value() -> None:
    clock = VirtualClock()
    source = Source(ann=True)
    cache = make(source, clock, ttl=10.0, policy=FailOpen())
    assert await cache.get("ann") is True
    clock.advance(10.0)
    del source.values["ann"]  # the member is gone: the loader now says None
    assert await cache.get("ann") is None
    assert cache.store.peek("ann") is None
    assert await cache.get("ann") is None
    assert source.calls == ["ann"] * 3
    # and nothing is left to fall back on
    source.error = ConnectionError("down")
    with pytest.raises(CacheLoadError):
        await cache.get("ann")


@pytest.mark.anyio
async def test_negative_ttl_caches_negative_results_for_their_own_time() -> None:
    clock = VirtualClock()
    source = Source(present=1)
    cache = make(source, clock, ttl=100.0, negative_ttl=5.0)
    assert await cache.get("absent") is None
    clock.advance(4.9)
    assert (await cache.lookup("absent")).served is Served.FRESH
    clock.advance(0.1)
    assert (await cache.lookup("absent")).served is Served.LOADED
    assert source.calls == ["absent", "absent"]
    assert await cache.get("present") == 1
    clock.advance(50.0)
    assert (await cache.lookup("present")).served is Served.FRESH


@pytest.mark.anyio
async def test_custom_negative_predicate() -> None:
    clock = VirtualClock()
    source = Source(a=[], b=[1])
    cache = make(source, clock, is_negative=lambda value: value == [])
    await cache.get("a")
    await cache.get("a")
    await cache.get("b")
    await cache.get("b")
    assert source.calls == ["a", "a", "b"]


@pytest.mark.anyio
async def test_put_stores_a_value_and_counts_as_an_invalidation() -> None:
    clock = VirtualClock()
    source = Source(org="free")
    cache = make(source, clock, ttl=10.0)
    await cache.put("org", "pro")
    found = await cache.lookup("org")
    assert (found.value, found.served) == ("pro", Served.FRESH)
    assert source.calls == []
    assert cache.stats().invalidations == 1
    clock.advance(10.0)
    assert await cache.get("org") == "free"


# -- the loader fails ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_unhandled_loader_exceptions_propagate_unchanged_and_are_not_cached() -> None:
    clock = VirtualClock()
    source = Source(a="A")
    cache = make(source, clock, policy=FailOpen("default"), on=ConnectionError)
    source.error = ValueError("a bug")
    with pytest.raises(ValueError, match="a bug"):
        await cache.get("a")
    assert cache.stats().load_failures == 0
    assert cache.stats().misses == 1
    source.error = None
    assert await cache.get("a") == "A"


@pytest.mark.anyio
async def test_denial_chains_the_loader_exception() -> None:
    clock = VirtualClock()
    source = Source()
    source.error = ConnectionError("membership service down")
    cache = make(source, clock, name="membership")
    with pytest.raises(CacheLoadError) as info:
        await cache.get(("org-1", "ann"))
    err = info.value
    assert (err.cache, err.key, err.policy) == ("membership", ("org-1", "ann"), "fail_closed")
    assert isinstance(err.__cause__, ConnectionError)
    assert cache.stats().denials == 1
    assert cache.stats().load_failures == 1


@pytest.mark.anyio
async def test_a_circuit_breaker_guards_the_loader() -> None:
    clock = VirtualClock()
    source = Source(org="pro")
    breaker = CircuitBreaker("billing", window=2, minimum_calls=2, open_for=30.0, clock=clock)
    seen: list[Any] = []
    cache = PolicyCache(
        breaker(source), ttl=10.0, policy=FailOpen("free", on_fallback=seen.append), clock=clock
    )
    assert await cache.get("org") == "pro"
    clock.advance(10.0)
    source.error = ConnectionError("billing down")
    for _ in range(2):  # two failures open the breaker
        found = await cache.lookup("org")
        assert (found.value, found.served) == ("pro", Served.FALLBACK)
    calls = len(source.calls)
    found = await cache.lookup("org")
    assert isinstance(found.error, CircuitOpenError)
    assert found.value == "pro"
    assert len(source.calls) == calls  # the open breaker spared billing
    assert await cache.get("other-org") == "free"
    assert [event.served for event in seen] == [Served.FALLBACK] * 3 + [Served.DEFAULT]
    # after the breaker's open interval a probe succeeds and the cache is fresh again
    source.error = None
    clock.advance(30.0)
    assert (await cache.lookup("org")).served is Served.LOADED


@pytest.mark.anyio
async def test_without_a_callback_failing_open_logs_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source()
    source.error = ConnectionError("down")
    cache = make(source, VirtualClock(), policy=FailOpen("free"), name="entitlements")
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        assert await cache.get("org") == "free"
    assert "cache 'entitlements': loading 'org' failed (ConnectionError)" in caplog.text
    assert "default" in caplog.text


@pytest.mark.anyio
async def test_a_broken_fallback_callback_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("callback bug")

    source = Source()
    source.error = ConnectionError("down")
    cache = make(source, VirtualClock(), policy=FailOpen("free", on_fallback=broken))
    with caplog.at_level(logging.ERROR, logger="resilience_kit"):
        assert await cache.get("org") == "free"
    assert "on_fallback callback failed" in caplog.text


# -- single flight ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("background", [False, True])
async def test_a_thousand_concurrent_misses_call_the_loader_once(background: bool) -> None:
    clock = VirtualClock()
    source = Source(k="v")
    source.gate = anyio.Event()
    cache = make(source, clock)
    results: list[Any] = []

    async def one() -> None:
        results.append(await cache.get("k"))

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(one)
            await anyio.wait_all_tasks_blocked()
            assert source.started == 1
            assert cache.stats().loads_in_progress == 1
            assert source.gate is not None
            source.gate.set()

    if background:
        async with cache:
            await run()
    else:
        await run()
    assert results == ["v"] * 1000
    assert source.calls == ["k"]
    stats = cache.stats()
    assert (stats.misses, stats.loads, stats.loads_in_progress) == (1000, 1, 0)
    assert cache._keys == {}


@pytest.mark.anyio
async def test_concurrent_failures_are_shared_and_each_caller_is_denied() -> None:
    source = Source()
    source.gate = anyio.Event()
    source.error = ConnectionError("down")
    cache = make(source, VirtualClock())
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await cache.get("k")
        except CacheLoadError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        source.gate.set()
    assert len(errors) == 5
    assert len({id(err) for err in errors}) == 5
    assert len({id(err.__cause__) for err in errors}) == 1
    assert source.calls == ["k"]
    assert cache.stats().denials == 5
    assert cache.stats().load_failures == 1


@pytest.mark.anyio
async def test_concurrent_callers_share_an_unhandled_exception() -> None:
    source = Source()
    source.gate = anyio.Event()
    source.error = KeyError("bug")
    cache = make(source, VirtualClock(), on=ConnectionError)
    caught: list[BaseException] = []

    async def one() -> None:
        try:
            await cache.get("k")
        except KeyError as exc:
            caught.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        source.gate.set()
    assert len(caught) == 3
    assert source.calls == ["k"]


# -- cancellation -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelling_the_loading_caller_hands_the_load_to_a_waiter() -> None:
    clock = VirtualClock()
    source = Source(k="v")
    source.gate = anyio.Event()
    cache = make(source, clock)
    results: list[Any] = []
    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            results.append(await cache.get("k"))

    async def waiter() -> None:
        results.append(await cache.get("k"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        for _ in range(3):
            tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert source.started == 1
        leader_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        # the leader's load was cancelled with it; one waiter started it again
        assert source.cancelled == 1
        assert source.started == 2
        assert cache.stats().loads_in_progress == 1
        source.gate.set()
    assert leader_scope.cancelled_caught
    assert results == ["v"] * 3
    assert cache._keys == {}
    assert cache.store._pending == {}  # type: ignore[attr-defined]
    assert (await cache.lookup("k")).served is Served.FRESH


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_load_alone() -> None:
    source = Source(k="v")
    source.gate = anyio.Event()
    cache = make(source, VirtualClock())
    results: list[Any] = []
    scope = anyio.CancelScope()

    async def leader() -> None:
        results.append(await cache.get("k"))

    async def waiter() -> None:
        with scope:
            await cache.get("k")

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert source.cancelled == 0
        source.gate.set()
    assert results == ["v"]
    assert source.started == 1
    assert cache._keys == {}


@pytest.mark.anyio
async def test_a_cancelled_lone_caller_frees_the_slot() -> None:
    source = Source(k="v")
    source.gate = anyio.Event()
    cache = make(source, VirtualClock())
    with anyio.move_on_after(0):  # cancelled at its first checkpoint, inside the loader
        await cache.get("k")
    assert source.cancelled == 1
    assert cache._keys == {}
    assert cache.store._pending == {}  # type: ignore[attr-defined]
    source.gate.set()
    assert await cache.get("k") == "v"


@pytest.mark.anyio
async def test_in_the_cache_task_group_a_cancelled_caller_does_not_cancel_the_load() -> None:
    source = Source(k="v")
    source.gate = anyio.Event()
    cache = make(source, VirtualClock())
    results: list[Any] = []
    scopes = [anyio.CancelScope() for _ in range(3)]

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            results.append(await cache.get("k"))

    async with cache:
        async with anyio.create_task_group() as tg:
            for scope in scopes:
                tg.start_soon(caller, scope)
            await anyio.wait_all_tasks_blocked()
            scopes[0].cancel()  # the caller that started the load
            await anyio.wait_all_tasks_blocked()
            assert source.cancelled == 0
            scopes[1].cancel()
            scopes[2].cancel()  # nobody waits any more; the load goes on
            await anyio.wait_all_tasks_blocked()
            source.gate.set()
            await anyio.wait_all_tasks_blocked()
        assert results == []
        assert source.calls == ["k"]
        found = await cache.lookup("k")
        assert (found.value, found.served) == ("v", Served.FRESH)
    assert cache._keys == {}


@pytest.mark.anyio
async def test_leaving_the_cache_context_cancels_background_loads_and_waiters_retry() -> None:
    source = Source(k="v")
    source.gate = anyio.Event()
    cache = make(source, VirtualClock())
    results: list[Any] = []

    async def waiter() -> None:
        results.append(await cache.get("k"))

    async with anyio.create_task_group() as outer:
        async with cache:
            outer.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert source.started == 1
        await anyio.wait_all_tasks_blocked()
        assert source.cancelled == 1
        assert source.started == 2  # the waiter runs the load itself now
        source.gate.set()
    assert results == ["v"]
    assert cache._keys == {}


@pytest.mark.anyio
async def test_leaving_the_cache_context_before_a_background_load_starts() -> None:
    source = Source(k="v")
    cache = make(source, VirtualClock())
    results: list[Any] = []

    async def waiter() -> None:
        results.append(await cache.get("k"))

    async with anyio.create_task_group() as outer:
        async with cache:
            outer.start_soon(waiter)
            # let the waiter spawn the background load, but leave before it runs
            await anyio.lowlevel.cancel_shielded_checkpoint()
    assert results == ["v"]
    assert cache._keys == {}
    assert cache._running == {}


@pytest.mark.anyio
async def test_the_cache_context_cannot_be_entered_twice() -> None:
    cache = make(Source(), VirtualClock())
    async with cache:
        with pytest.raises(RuntimeError, match="already"):
            await cache.__aenter__()
    async with cache:  # but again once left
        pass


# -- re-entrancy --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("background", [False, True])
async def test_a_loader_needing_its_own_key_fails_instead_of_deadlocking(background: bool) -> None:
    cache: PolicyCache[str, str]

    async def load(key: str) -> str:
        return await cache.get(key)

    cache = PolicyCache(load, ttl=5.0, clock=VirtualClock())
    with anyio.fail_after(5):
        if background:
            async with cache:
                with pytest.raises(CacheLoadError) as info:
                    await cache.get("a")
        else:
            with pytest.raises(CacheLoadError) as info:
                await cache.get("a")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "needs the value it is loading" in str(info.value.__cause__)


@pytest.mark.anyio
@pytest.mark.parametrize("background", [False, True])
async def test_a_cycle_between_keys_fails_instead_of_deadlocking(background: bool) -> None:
    cache: PolicyCache[str, str]

    async def load(key: str) -> str:
        return await cache.get("b" if key == "a" else "a")

    cache = PolicyCache(load, ttl=5.0, clock=VirtualClock(), on=ConnectionError)
    with anyio.fail_after(5):
        if background:
            async with cache:
                with pytest.raises(RuntimeError, match="needs the value"):
                    await cache.get("a")
        else:
            with pytest.raises(RuntimeError, match="needs the value"):
                await cache.get("a")
    assert cache._keys == {}


@pytest.mark.anyio
async def test_loaders_may_use_the_cache_for_other_keys() -> None:
    cache: PolicyCache[int, int]

    async def factorial(n: int) -> int:
        return 1 if n <= 1 else n * await cache.get(n - 1)

    cache = PolicyCache(factorial, ttl=5.0, clock=VirtualClock())
    assert await cache.get(10) == 3628800
    assert cache.stats().loads == 10
    async with cache:
        await cache.invalidate_all()
        assert await cache.get(6) == 720


# -- invalidation -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_invalidate_drops_the_key_and_counts() -> None:
    clock = VirtualClock()
    source = Source(a=1, b=2)
    cache = make(source, clock)
    await cache.get("a")
    await cache.get("b")
    await cache.invalidate("a")
    source.values["a"] = 10
    assert await cache.get("a") == 10
    assert (await cache.lookup("b")).served is Served.FRESH
    await cache.invalidate_all()
    assert (await cache.lookup("b")).served is Served.LOADED
    assert cache.stats().invalidations == 2


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["invalidate", "invalidate_all", "put"])
async def test_a_waiting_caller_never_gets_a_value_loaded_before_an_invalidation(how: str) -> None:
    source = Source(k="old")
    source.gate = anyio.Event()
    cache = make(source, VirtualClock())
    results: list[Any] = []

    async def one() -> None:
        results.append(await cache.get("k"))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        old_gate = source.gate
        source.values["k"] = "new"
        source.gate = None
        if how == "invalidate":
            await cache.invalidate("k")
        elif how == "invalidate_all":
            await cache.invalidate_all()
        else:
            await cache.put("k", "new")
        old_gate.set()
    assert results == ["new"] * 3
    assert cache.store.peek("k").value == "new"  # type: ignore[union-attr]


# -- background revalidation -------------------------------------------------------------


@pytest.mark.anyio
async def test_stale_while_revalidate_refreshes_in_the_cache_task_group() -> None:
    clock = VirtualClock()
    source = Source(k="v1")
    cache = make(source, clock, ttl=10.0, policy=ServeStale(stale_while_revalidate=5.0))
    async with cache:
        await cache.get("k")
        clock.advance(12.0)
        source.values["k"] = "v2"
        source.gate = anyio.Event()
        found = await cache.lookup("k")
        assert (found.value, found.served) == ("v1", Served.STALE)
        assert found.reason == "expired; refreshing in the background"
        assert found.age == 12.0
        await anyio.wait_all_tasks_blocked()
        found = await cache.lookup("k")
        assert (found.served, found.reason) == (Served.STALE, "expired; a refresh is in progress")
        assert source.started == 2
        source.gate.set()
        await anyio.wait_all_tasks_blocked()
        found = await cache.lookup("k")
        assert (found.value, found.served) == ("v2", Served.FRESH)
    assert cache.stats().stale_serves == 2


@pytest.mark.anyio
async def test_background_refresh_failures_are_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    source = Source(k="v1")
    cache = make(
        source,
        clock,
        ttl=10.0,
        policy=ServeStale(stale_while_revalidate=5.0),
        on=ConnectionError,
    )
    async with cache:
        await cache.get("k")
        clock.advance(11.0)
        source.error = ConnectionError("down")
        assert await cache.get("k") == "v1"
        await anyio.wait_all_tasks_blocked()
        assert cache.stats().load_failures == 1
        source.error = ValueError("bug")
        with caplog.at_level(logging.ERROR, logger="resilience_kit"):
            assert await cache.get("k") == "v1"
            await anyio.wait_all_tasks_blocked()
        assert "raised an exception the policy does not handle" in caplog.text
        clock.advance(5.0)  # past the window: a miss, which the caller waits for
        source.error = None
        source.values["k"] = "v2"
        assert (await cache.lookup("k")).served is Served.LOADED


@pytest.mark.anyio
async def test_without_a_task_group_the_first_stale_caller_refreshes() -> None:
    clock = VirtualClock()
    source = Source(k="v1")
    cache = make(source, clock, ttl=10.0, policy=ServeStale(stale_while_revalidate=5.0))
    await cache.get("k")
    clock.advance(11.0)
    source.values["k"] = "v2"
    source.gate = anyio.Event()
    found: list[CacheLookup[Any]] = []

    async def one() -> None:
        found.append(await cache.lookup("k"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(one)
        tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        assert [f.served for f in found] == [Served.STALE, Served.STALE]
        source.gate.set()
    assert found[2].served is Served.LOADED
    assert found[2].value == "v2"
    assert source.started == 2


# -- telemetry ----------------------------------------------------------------------------


def _counter_values(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    values: dict[tuple[str, str], int] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    values[metric.name, str(point.attributes.get("cache"))] = point.value  # type: ignore[union-attr]
    return values


@pytest.mark.anyio
async def test_counters_are_reported_to_opentelemetry() -> None:
    reader = InMemoryMetricReader()
    rk_telemetry.configure(meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        clock = VirtualClock()
        source = Source(a=1)
        name = f"otel-test-{id(reader)}"  # caches of other tests may still be alive
        cache = make(source, clock, name=name, policy=FailOpen(0, on_fallback=print))
        twin = make(source, clock, name=name, policy=FailOpen(0, on_fallback=print))
        await cache.get("a")
        await cache.get("a")
        await twin.get("a")
        source.error = ConnectionError()
        await cache.get("b")
        await cache.invalidate("a")
        values = _counter_values(reader)
    finally:
        rk_telemetry.configure()
    assert values[METRIC_NAMES["hits"], name] == 1
    assert values[METRIC_NAMES["misses"], name] == 3  # the two caches add up
    assert values[METRIC_NAMES["loads"], name] == 3
    assert values[METRIC_NAMES["load_failures"], name] == 1
    assert values[METRIC_NAMES["fail_open_serves"], name] == 1
    assert values[METRIC_NAMES["invalidations"], name] == 1
    assert values[METRIC_NAMES["denials"], name] == 0
    assert values[METRIC_NAMES["stale_serves"], name] == 0
    assert set(METRIC_NAMES.values()) == {name for name, _ in values}


def test_instruments_are_registered_once_per_provider() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    rk_telemetry.configure(meter_provider=provider)
    try:
        # Kept alive: caches are observed through weak references, and a garbage
        # collection between here and the reading would leave nothing to report.
        caches = [make(Source(), VirtualClock(), name=name) for name in ("once-a", "once-b")]
        names = [m.name for _, m in _metrics_of(reader)]  # no duplicate-instrument warning
        del caches
    finally:
        rk_telemetry.configure()
    assert sorted(set(names)) == sorted(METRIC_NAMES.values())
    assert len(names) == len(set(names))
    make(Source(), VirtualClock(), name="global")  # the global provider path
    make(Source(), VirtualClock(), name="global")


def _metrics_of(reader: InMemoryMetricReader) -> list[tuple[str, Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        (scope.scope.name, metric)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    ]


@pytest.mark.anyio
async def test_serves_other_than_fresh_are_span_events() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    clock = VirtualClock()
    source = Source(a=1)
    cache = make(source, clock, ttl=1.0, policy=ServeStale(stale_if_error=10.0))
    await cache.get("a")
    clock.advance(2.0)
    source.error = ConnectionError()
    with tracer.start_as_current_span("request"):
        await cache.get("a")
        with pytest.raises(CacheLoadError):
            await cache.get("b")
    (span,) = exporter.get_finished_spans()
    assert [event.name for event in span.events] == ["cache.stale_serves", "cache.denials"]
    assert span.events[0].attributes == {"cache": "Source", "policy": "serve_stale"}


# -- stores that fail or wait -------------------------------------------------------------


class BrokenStore(MemoryCacheStore[Any, Any]):
    """A store whose writes raise once ``fail_writes`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_writes = False

    async def complete_load(self, key: Any, epoch: int, record: Any) -> bool:
        if self.fail_writes:
            self.abort_load(key, epoch)
            raise OSError("store unreachable")
        return await super().complete_load(key, epoch, record)


@pytest.mark.anyio
async def test_a_store_failing_to_write_is_a_load_failure_for_the_policy() -> None:
    store = BrokenStore()
    source = Source(a="A")
    cache = PolicyCache(source, ttl=5.0, store=store, clock=VirtualClock(), policy=FailOpen("d"))
    assert cache.store is store
    store.fail_writes = True
    found = await cache.lookup("a")
    assert (found.value, found.served) == ("d", Served.DEFAULT)
    assert isinstance(found.error, OSError)
    assert store._pending == {}


@pytest.mark.anyio
async def test_a_store_failing_to_read_after_a_failed_load_has_nothing_to_fall_back_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = BrokenStore()
    source = Source(a="A")
    clock = VirtualClock()
    cache = PolicyCache(source, ttl=5.0, store=store, clock=clock, policy=FailOpen())
    await cache.get("a")
    clock.advance(5.0)
    source.error = ConnectionError("down")

    original = store.fetch
    calls = 0

    async def fetch_then_break(key: Any, now: float) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:  # the read after the failed load
            raise OSError("store unreachable")
        return await original(key, now)

    store.fetch = fetch_then_break  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="resilience_kit"), pytest.raises(CacheLoadError):
        await cache.get("a")
    assert "after a failed load" in caplog.text


@pytest.mark.anyio
async def test_fail_open_default_factory_gets_the_key() -> None:
    source = Source()
    source.error = ConnectionError("down")
    cache = make(source, VirtualClock(), policy=FailOpen(default_factory=lambda key: f"{key}!"))
    found = await cache.lookup("org")
    assert (found.value, found.served, found.age) == ("org!", Served.DEFAULT, None)


@pytest.mark.anyio
async def test_a_background_load_that_never_ran_is_settled_on_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # anyio starts every task it spawns, but should a task ever be dropped before its
    # first step, leaving the cache context must still release whoever waits on it.
    async def never_runs(*args: Any) -> None:
        return None

    source = Source(k="v")
    cache = make(source, VirtualClock())
    monkeypatch.setattr(PolicyCache, "_background", never_runs)
    results: list[Any] = []

    async def waiter() -> None:
        results.append(await cache.get("k"))

    async with anyio.create_task_group() as outer:
        async with cache:
            outer.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert source.started == 0
            assert len(cache._running) == 1
    assert results == ["v"]
    assert cache._running == {}
    assert cache._keys == {}
