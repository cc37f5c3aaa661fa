"""resilience-kit: typed, anyio-native resilience primitives for Python services.

Example:
    >>> from resilience_kit import Backoff, CircuitBreaker, Pipeline, RetryPolicy
    >>> policy = Pipeline(
    ...     RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none()),
    ...     CircuitBreaker("billing"),
    ... )
"""

from resilience_kit._version import __version__ as __version__
from resilience_kit.errors import BulkheadFullError as BulkheadFullError
from resilience_kit.errors import CircuitOpenError as CircuitOpenError
from resilience_kit.errors import ConfigurationError as ConfigurationError
from resilience_kit.errors import InjectedFaultError as InjectedFaultError
from resilience_kit.errors import ResilienceError as ResilienceError
from resilience_kit.errors import RetryExhaustedError as RetryExhaustedError
from resilience_kit.errors import TimeoutExceededError as TimeoutExceededError
from resilience_kit.policies import Attempt as Attempt
from resilience_kit.policies import Attempts as Attempts
from resilience_kit.policies import Backoff as Backoff
from resilience_kit.policies import BreakerMetrics as BreakerMetrics
from resilience_kit.policies import BreakerRecord as BreakerRecord
from resilience_kit.policies import BreakerStore as BreakerStore
from resilience_kit.policies import Bulkhead as Bulkhead
from resilience_kit.policies import CircuitBreaker as CircuitBreaker
from resilience_kit.policies import CircuitState as CircuitState
from resilience_kit.policies import Fallback as Fallback
from resilience_kit.policies import InMemoryBreakerStore as InMemoryBreakerStore
from resilience_kit.policies import Pipeline as Pipeline
from resilience_kit.policies import Policy as Policy
from resilience_kit.policies import RetryBudget as RetryBudget
from resilience_kit.policies import RetryEvent as RetryEvent
from resilience_kit.policies import RetryPolicy as RetryPolicy
from resilience_kit.policies import StateTransition as StateTransition
from resilience_kit.policies import Timeout as Timeout
from resilience_kit.policies import retry_after_hint as retry_after_hint

__all__ = (
    "Attempt",
    "Attempts",
    "Backoff",
    "BreakerMetrics",
    "BreakerRecord",
    "BreakerStore",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "ConfigurationError",
    "Fallback",
    "InMemoryBreakerStore",
    "InjectedFaultError",
    "Pipeline",
    "Policy",
    "ResilienceError",
    "RetryBudget",
    "RetryEvent",
    "RetryExhaustedError",
    "RetryPolicy",
    "StateTransition",
    "Timeout",
    "TimeoutExceededError",
    "__version__",
    "retry_after_hint",
)
