"""Call policies: each wraps one call, as a decorator for sync and async functions."""

from resilience_kit._exports import present
from resilience_kit.policies._backoff import Backoff as Backoff
from resilience_kit.policies._backoff import Jitter as Jitter
from resilience_kit.policies._base import Policy as Policy
from resilience_kit.policies._breaker import BreakerMetrics as BreakerMetrics
from resilience_kit.policies._breaker import CircuitBreaker as CircuitBreaker
from resilience_kit.policies._breaker import StateTransition as StateTransition
from resilience_kit.policies._breaker import ThresholdExceeded as ThresholdExceeded
from resilience_kit.policies._breaker_store import BreakerRecord as BreakerRecord
from resilience_kit.policies._breaker_store import BreakerStore as BreakerStore
from resilience_kit.policies._breaker_store import CircuitState as CircuitState
from resilience_kit.policies._breaker_store import InMemoryBreakerStore as InMemoryBreakerStore
from resilience_kit.policies._budget import RetryBudget as RetryBudget
from resilience_kit.policies._bulkhead import Bulkhead as Bulkhead
from resilience_kit.policies._fallback import Fallback as Fallback
from resilience_kit.policies._pipeline import Pipeline as Pipeline
from resilience_kit.policies._retry import Attempt as Attempt
from resilience_kit.policies._retry import Attempts as Attempts
from resilience_kit.policies._retry import RetryEvent as RetryEvent
from resilience_kit.policies._retry import RetryPolicy as RetryPolicy
from resilience_kit.policies._retry_after import retry_after_hint as retry_after_hint
from resilience_kit.policies._timeout import Timeout as Timeout

__all__ = (
    "Attempt",
    "Attempts",
    "Backoff",
    "BreakerMetrics",
    "BreakerRecord",
    "BreakerStore",
    "Bulkhead",
    "CircuitBreaker",
    "CircuitState",
    "Fallback",
    "InMemoryBreakerStore",
    "Jitter",
    "Pipeline",
    "Policy",
    "RetryBudget",
    "RetryEvent",
    "RetryPolicy",
    "StateTransition",
    "ThresholdExceeded",
    "Timeout",
    "retry_after_hint",
)

# Reprs, docs and pickles name where users import a class from, not its private module.
present(__name__, globals(), __all__)
