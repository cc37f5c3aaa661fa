from __future__ import annotations

from typing_extensions import assert_type

from resilience_kit import CircuitBreaker
from resilience_kit.caching import (
    CacheLookup,
    CacheStats,
    FailClosed,
    FailOpen,
    MemoryCacheStore,
    PolicyCache,
    ServeStale,
)


async def entitlements(org: str) -> dict[str, int]:
    return {"seats": 10}


billing = CircuitBreaker("billing")
cache = PolicyCache(billing(entitlements), ttl=3600.0, policy=FailOpen({"seats": 1}))
assert_type(cache, PolicyCache[str, dict[str, int]])
assert_type(
    PolicyCache(entitlements, ttl=900.0, policy=FailClosed()), PolicyCache[str, dict[str, int]]
)
assert_type(
    PolicyCache(
        entitlements, ttl=60.0, policy=ServeStale(stale_if_error=5.0), store=MemoryCacheStore(10)
    ),
    PolicyCache[str, dict[str, int]],
)
assert_type(
    PolicyCache(entitlements, ttl=60.0, policy=FailOpen()), PolicyCache[str, dict[str, int]]
)
assert_type(cache.stats(), CacheStats)


async def use() -> None:
    assert_type(await cache.get("org"), dict[str, int])
    assert_type(await cache.lookup("org"), CacheLookup[dict[str, int]])
    await cache.invalidate("org")
    await cache.put("org", {"seats": 2})
    async with cache as entered:
        assert_type(entered, PolicyCache[str, dict[str, int]])
