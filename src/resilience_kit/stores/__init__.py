"""Storage backends, one module per backend; each implements the primitives' store protocols.

- `resilience_kit.stores.redis`: `RedisBreakerStore` (needs the ``redis`` extra).
"""

__all__ = ()
