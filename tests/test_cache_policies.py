"""FailClosed, FailOpen and ServeStale: their pure decisions, and the cache against a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from resilience_kit.caching import (
    CacheLoadError,
    CachePolicy,
    CacheRecord,
    CacheStats,
    FailClosed,
    FailOpen,
    PolicyCache,
    Served,
    ServeStale,
)
from resilience_kit.testing import VirtualClock

RECORD = CacheRecord("v", loaded_at=0.0, expires_at=10.0, retain_until=None)

# -- the pure decisions -----------------------------------------------------------------------


def test_fail_closed_never_serves_after_a_failure() -> None:
    policy = FailClosed()
    assert policy._on_failure("k", RECORD, 10.0) is None
    assert policy._on_failure("k", None, 0.0) is None
    assert policy._retain_until(10.0) == 10.0
    assert policy.stale_while_revalidate == 0.0


def test_fail_open_serves_the_last_known_good_value_of_any_age() -> None:
    policy = FailOpen()
    decision = policy._on_failure("k", RECORD, 1e9)
    assert decision is not None
    assert (decision.served, decision.value, decision.record) == (Served.FALLBACK, "v", RECORD)
    assert policy._on_failure("k", None, 0.0) is None
    assert policy._retain_until(10.0) is None


def test_fail_open_max_stale_bounds_the_last_known_good_value() -> None:
    policy = FailOpen("default", max_stale=5.0)
    decision = policy._on_failure("k", RECORD, 14.9)
    assert decision is not None
    assert decision.served is Served.FALLBACK
    decision = policy._on_failure("k", RECORD, 15.0)
    assert decision is not None
    assert (decision.served, decision.value, decision.record) == (Served.DEFAULT, "default", None)
    assert policy._retain_until(10.0) == 15.0


def test_fail_open_defaults_from_a_factory() -> None:
    policy = FailOpen(default_factory=lambda key: f"default for {key}")
    decision = policy._on_failure("org-1", None, 0.0)
    assert decision is not None
    assert decision.value == "default for org-1"
    assert policy.default is None


@pytest.mark.parametrize(
    ("swr", "sie", "now", "served"),
    [
        (5.0, 0.0, 14.9, True),  # within stale-while-revalidate
        (5.0, 0.0, 15.0, False),
        (0.0, 30.0, 39.9, True),  # within stale-if-error
        (0.0, 30.0, 40.0, False),
        (5.0, 30.0, 39.0, True),
        (50.0, 30.0, 59.0, True),  # the wider window wins
    ],
)
def test_serve_stale_windows(swr: float, sie: float, now: float, served: bool) -> None:
    policy = ServeStale(stale_while_revalidate=swr, stale_if_error=sie)
    decision = policy._on_failure("k", RECORD, now)
    assert (decision is not None) == served
    if decision is not None:
        assert (decision.served, decision.value) == (Served.STALE, "v")
    assert policy._on_failure("k", None, now) is None
    assert policy._retain_until(10.0) == 10.0 + max(swr, sie)
    assert policy.stale_while_revalidate == swr


# -- the scenarios of the failure-mode analysis ----------------------------------------------


@pytest.mark.anyio
async def test_billing_down_entitlements_fail_open_with_a_warning() -> None:
    clock = VirtualClock()
    billing_up = True
    warnings: list[Any] = []

    async def entitlements(org: str) -> dict[str, int]:
        if not billing_up:
            raise ConnectionError("billing is down")
        return {"seats": 50}

    cache = PolicyCache(
        entitlements,
        ttl=3600.0,
        policy=FailOpen({"seats": 5}, on_fallback=warnings.append),
        clock=clock,
    )
    assert await cache.get("acme") == {"seats": 50}
    billing_up = False
    clock.advance(7200.0)
    found = await cache.lookup("acme")  # expired an hour ago: the last known good value
    assert (found.value, found.served, found.age) == ({"seats": 50}, Served.FALLBACK, 7200.0)
    assert isinstance(found.error, ConnectionError)
    found = await cache.lookup("newco")  # never seen: allowed with the default
    assert (found.value, found.served, found.age) == ({"seats": 5}, Served.DEFAULT, None)
    assert [(w.key, w.served) for w in warnings] == [
        ("acme", Served.FALLBACK),
        ("newco", Served.DEFAULT),
    ]
    assert warnings[0].cache == "entitlements"
    assert warnings[0].age == 7200.0
    billing_up = True
    assert (await cache.lookup("acme")).served is Served.LOADED
    assert cache.stats().fail_open_serves == 2


@pytest.mark.anyio
async def test_membership_fails_closed_on_a_miss() -> None:
    clock = VirtualClock()
    up = True

    async def is_member(key: tuple[str, str]) -> bool:
        if not up:
            raise ConnectionError("organization service down")
        return True

    cache = PolicyCache(is_member, ttl=900.0, policy=FailClosed(), clock=clock)
    assert await cache.get(("acme", "ann")) is True
    up = False
    clock.advance(899.0)
    assert await cache.get(("acme", "ann")) is True  # still fresh
    clock.advance(1.0)
    with pytest.raises(CacheLoadError) as info:  # expired: a miss, and it fails closed
        await cache.get(("acme", "ann"))
    assert isinstance(info.value.__cause__, ConnectionError)
    assert cache.stats().denials == 1


# -- the cache against a model ----------------------------------------------------------------


@dataclass
class ModelRecord:
    value: Any
    loaded_at: float
    expires_at: float


@dataclass
class Model:
    """What the cache must serve, computed the simple way: one get at a time."""

    policy: CachePolicy[Any]
    ttl: float
    negative_ttl: float | None
    records: dict[str, ModelRecord] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CacheStats.__slots__, 0))

    def store(self, key: str, value: Any, now: float) -> None:
        if value is None:
            if self.negative_ttl is None:
                self.records.pop(key, None)
                return
            self.records[key] = ModelRecord(value, now, now + self.negative_ttl)
        else:
            self.records[key] = ModelRecord(value, now, now + self.ttl)

    def get(self, key: str, now: float, ok: bool, value: Any) -> tuple[Served, Any, Any] | None:
        """(served, value, age), or None for a denial."""
        record = self.records.get(key)
        if record is not None and now < record.expires_at:
            self.stats["hits"] += 1
            return Served.FRESH, record.value, now - record.loaded_at
        self.stats["misses"] += 1
        self.stats["loads"] += 1
        if ok:
            self.store(key, value, now)
            return Served.LOADED, value, 0.0
        self.stats["load_failures"] += 1
        policy = self.policy
        if isinstance(policy, FailOpen):
            fresh_enough = record is not None and (
                policy.max_stale is None or now < record.expires_at + policy.max_stale
            )
            if record is not None and fresh_enough:
                self.stats["fail_open_serves"] += 1
                return Served.FALLBACK, record.value, now - record.loaded_at
            if policy.has_default:
                self.stats["fail_open_serves"] += 1
                return Served.DEFAULT, policy.default, None
        elif isinstance(policy, ServeStale):
            window = max(policy.stale_while_revalidate, policy.stale_if_error)
            if record is not None and now < record.expires_at + window:
                self.stats["stale_serves"] += 1
                return Served.STALE, record.value, now - record.loaded_at
        self.stats["denials"] += 1
        return None


KEYS = ("a", "b")
values = st.none() | st.integers(0, 1000)
# Every get draws whether the loader fails, so failures meet records of every age; gets
# and time steps are drawn most often, so that records expire and windows pass.
_op_strategies: dict[str, st.SearchStrategy[Any]] = {
    "get": st.tuples(st.sampled_from(KEYS), st.booleans()),
    "lookup": st.tuples(st.sampled_from(KEYS), st.booleans()),
    "advance": st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0, 8.0]),
    "value": values,
    "invalidate": st.sampled_from(KEYS),
    "invalidate_all": st.none(),
    "put": st.tuples(st.sampled_from(KEYS), values),
}
_kinds = (
    ["get"] * 3
    + ["lookup"] * 4
    + ["advance"] * 4
    + ["value", "invalidate", "invalidate_all", "put"]
)
operations = st.lists(
    st.sampled_from(_kinds).flatmap(lambda kind: st.tuples(st.just(kind), _op_strategies[kind])),
    min_size=15,
    max_size=60,
)
windows = st.integers(0, 12).map(float)


def _serve_stale(swr: float, sie: float) -> CachePolicy[Any]:
    return ServeStale(stale_while_revalidate=swr, stale_if_error=sie)


@st.composite
def configurations(draw: st.DrawFn) -> tuple[CachePolicy[Any], float, float | None]:
    kind = draw(st.sampled_from(["fail_closed", "fail_open", "fail_open_no_default", "stale"]))
    policy: CachePolicy[Any]
    if kind == "fail_closed":
        policy = FailClosed()
    elif kind == "fail_open":
        policy = FailOpen(-1, max_stale=draw(st.none() | windows))
    elif kind == "fail_open_no_default":
        policy = FailOpen(max_stale=draw(st.none() | windows))
    else:
        swr, sie = draw(windows), draw(windows)
        if swr == sie == 0:
            sie = 1.0
        policy = _serve_stale(swr, sie)
    ttl = draw(st.integers(1, 10).map(float))
    negative_ttl = draw(st.none() | st.integers(1, 10).map(float))
    return policy, ttl, negative_ttl


async def check_against_model(
    ops: list[tuple[str, Any]], policy: CachePolicy[Any], ttl: float, negative_ttl: float | None
) -> set[Served]:
    clock = VirtualClock()
    loader_ok, next_value = True, 0
    served_kinds: set[Served] = set()

    async def load(key: str) -> Any:
        if not loader_ok:
            raise ConnectionError("down")
        return next_value

    cache: PolicyCache[str, Any] = PolicyCache(
        load, ttl=ttl, policy=policy, negative_ttl=negative_ttl, clock=clock
    )
    model = Model(policy, ttl, negative_ttl)
    for op, arg in ops:
        now = clock.monotonic()
        if op in ("get", "lookup"):
            key, fails = arg
            loader_ok = not fails
            expected = model.get(key, now, loader_ok, next_value)
            if expected is None:
                with pytest.raises(CacheLoadError) as info:
                    await cache.lookup(key)
                assert isinstance(info.value.__cause__, ConnectionError)
                continue
            served, value, age = expected
            served_kinds.add(served)
            if op == "get":
                assert await cache.get(key) == value
                continue
            found = await cache.lookup(key)
            assert (found.served, found.value, found.age) == (served, value, age), (op, arg)
            if served in (Served.FRESH, Served.LOADED):
                assert found.error is None
            else:
                assert isinstance(found.error, ConnectionError)
        elif op == "value":
            next_value = arg
        elif op == "advance":
            clock.advance(arg)
        elif op == "invalidate":
            model.records.pop(arg, None)
            model.stats["invalidations"] += 1
            await cache.invalidate(arg)
        elif op == "invalidate_all":
            model.records.clear()
            model.stats["invalidations"] += 1
            await cache.invalidate_all()
        else:
            key, value = arg
            model.store(key, value, now)
            model.stats["invalidations"] += 1
            await cache.put(key, value)
    assert cache.stats() == CacheStats(**model.stats)
    return served_kinds


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, configuration=configurations())
def test_the_cache_serves_what_the_model_says(
    backend: str,
    ops: list[tuple[str, Any]],
    configuration: tuple[CachePolicy[Any], float, float | None],
) -> None:
    policy, ttl, negative_ttl = configuration

    async def main() -> None:
        for served in await check_against_model(ops, policy, ttl, negative_ttl):
            event(f"served {served}")

    anyio.run(main, backend=backend)
