"""Caches that know what to serve when their source is down: `PolicyCache` and its policies.

Examples:
    >>> from resilience_kit.caching import FailOpen, PolicyCache
    >>> async def entitlements(org: str) -> dict[str, int]:
    ...     return {"seats": 10}
    >>> cache = PolicyCache(entitlements, ttl=3600.0, policy=FailOpen(default={"seats": 1}))
"""

from resilience_kit._exports import present
from resilience_kit.caching._cache import CacheLookup as CacheLookup
from resilience_kit.caching._cache import PolicyCache as PolicyCache
from resilience_kit.caching._errors import CacheLoadError as CacheLoadError
from resilience_kit.caching._metrics import CacheStats as CacheStats
from resilience_kit.caching._policies import CachePolicy as CachePolicy
from resilience_kit.caching._policies import FailClosed as FailClosed
from resilience_kit.caching._policies import FailOpen as FailOpen
from resilience_kit.caching._policies import FallbackEvent as FallbackEvent
from resilience_kit.caching._policies import Served as Served
from resilience_kit.caching._policies import ServeStale as ServeStale
from resilience_kit.caching._store import CacheRecord as CacheRecord
from resilience_kit.caching._store import CacheStore as CacheStore
from resilience_kit.caching._store import MemoryCacheStore as MemoryCacheStore

__all__ = (
    "CacheLoadError",
    "CacheLookup",
    "CachePolicy",
    "CacheRecord",
    "CacheStats",
    "CacheStore",
    "FailClosed",
    "FailOpen",
    "FallbackEvent",
    "MemoryCacheStore",
    "PolicyCache",
    "ServeStale",
    "Served",
)

# Reprs, docs and pickles name where users import a class from, not its private module.
present(__name__, globals(), __all__)
