"""Redis backends: state shared by every instance of a service.

- `RedisBreakerStore`: circuit-breaker state.
- `RedisCacheStore`: cache records and their invalidations.
- `RedisStore`: messaging's dead letters, inbox records and idempotency records (no outbox).

Needs the ``redis`` extra (``pip install resilience-patterns[redis]``). The store uses
redis-py's synchronous client on background threads, so it serves sync code and async
code on asyncio and trio alike without ever blocking a call or an event loop.
"""

from resilience_kit.stores.redis._breaker import RedisBreakerStore as RedisBreakerStore
from resilience_kit.stores.redis._cache import RedisCacheStore as RedisCacheStore
from resilience_kit.stores.redis._store import RedisStore as RedisStore

__all__ = ("RedisBreakerStore", "RedisCacheStore", "RedisStore")
