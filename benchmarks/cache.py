"""Cost of a cache hit inside a running event loop: PolicyCache vs cachetools.TTLCache vs a dict.

    .venv/bin/python benchmarks/cache.py      # needs the bench extra (cachetools)

Each figure is the best of 7 runs of 200,000 hits, loop overhead included, in ns per hit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import cachetools

from resilience_kit.caching import PolicyCache
from resilience_kit.clock import SystemClock

N = 200_000
ROUNDS = 7


async def load(key: str) -> int:
    return 1


def best(run: Callable[[], None]) -> float:
    fastest = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest / N * 1e9


async def abest(run: Callable[[], Awaitable[None]]) -> float:
    fastest = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        await run()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest / N * 1e9


async def main() -> dict[str, float]:
    cache = PolicyCache(load, ttl=1e9, clock=SystemClock())
    await cache.get("k")
    ttl_cache: cachetools.TTLCache[str, int] = cachetools.TTLCache(maxsize=10_000, ttl=1e9)
    ttl_cache["k"] = 1
    plain = {"k": 1}

    def dict_hits() -> None:
        for _ in range(N):
            plain["k"]

    def ttl_hits() -> None:
        for _ in range(N):
            ttl_cache["k"]

    async def get_hits() -> None:
        get = cache.get
        for _ in range(N):
            await get("k")

    async def lookup_hits() -> None:
        lookup = cache.lookup
        for _ in range(N):
            await lookup("k")

    return {
        "dict['k']": best(dict_hits),
        "cachetools.TTLCache['k']": best(ttl_hits),
        "await PolicyCache.get('k')": await abest(get_hits),
        "await PolicyCache.lookup('k')": await abest(lookup_hits),
    }


if __name__ == "__main__":
    results = {backend: anyio.run(main, backend=backend) for backend in ("asyncio", "trio")}
    print("| case | asyncio ns | trio ns |")
    print("|---|---:|---:|")
    for case in results["asyncio"]:
        print(f"| `{case}` | {results['asyncio'][case]:.0f} | {results['trio'][case]:.0f} |")
