"""Storage backends, one module per backend; each implements the primitives' store protocols.

- `open_store(url)`: the messaging store a URL names (``sqlite:///app.db``,
  ``postgresql://...?schema=rk``, ``redis://...?prefix=rk:``, ``memory://``).
- `resilience_kit.stores.memory`: `MemoryStore` (tests and single-process tools).
- `resilience_kit.stores.sqlite`: `SQLiteStore`, the embedded default.
- `resilience_kit.stores.postgres`: `PostgresStore` (needs the ``postgres`` extra).
- `resilience_kit.stores.redis`: `RedisBreakerStore`, `RedisCacheStore`, `RedisStore`
  (dead letters, inbox, idempotency; needs the ``redis`` extra).
"""

from resilience_kit.stores._url import open_store as open_store

__all__ = ("open_store",)
