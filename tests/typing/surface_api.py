"""The lazily loaded top level and `resilience_kit.typing` are fully typed for mypy."""

from __future__ import annotations

from typing_extensions import assert_type

import resilience_kit
from resilience_kit import CircuitBreaker, CircuitState, RetryPolicy
from resilience_kit.stores.memory import MemoryBreakerStore, MemoryCacheStore
from resilience_kit.typing import BreakerRecord, BreakerStore, CacheStore, Policy

assert_type(resilience_kit.RetryPolicy, type[RetryPolicy])
assert_type(resilience_kit.__version__, str)
breaker = CircuitBreaker("billing", store=MemoryBreakerStore())
assert_type(breaker.state, CircuitState)
policy: Policy = RetryPolicy(attempts=2)
store: BreakerStore = MemoryBreakerStore()
assert_type(store.load("billing"), BreakerRecord | None)
cache_store: CacheStore[str, int] = MemoryCacheStore[str, int]()
