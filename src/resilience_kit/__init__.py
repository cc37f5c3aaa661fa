"""resilience-kit: typed, anyio-native resilience primitives for Python services.

Examples:
    >>> from resilience_kit import Backoff, CircuitBreaker, Pipeline, RetryPolicy
    >>> policy = Pipeline(
    ...     RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none()),
    ...     CircuitBreaker("billing"),
    ... )
"""

from resilience_kit._exports import present_at_top_level
from resilience_kit._version import __version__ as __version__
from resilience_kit.caching import CacheLookup as CacheLookup
from resilience_kit.caching import CachePolicy as CachePolicy
from resilience_kit.caching import CacheRecord as CacheRecord
from resilience_kit.caching import CacheStats as CacheStats
from resilience_kit.caching import CacheStore as CacheStore
from resilience_kit.caching import FailClosed as FailClosed
from resilience_kit.caching import FailOpen as FailOpen
from resilience_kit.caching import FallbackEvent as FallbackEvent
from resilience_kit.caching import InMemoryCacheStore as InMemoryCacheStore
from resilience_kit.caching import PolicyCache as PolicyCache
from resilience_kit.caching import Served as Served
from resilience_kit.caching import ServeStale as ServeStale
from resilience_kit.errors import BulkheadFullError as BulkheadFullError
from resilience_kit.errors import CacheLoadError as CacheLoadError
from resilience_kit.errors import CacheSerializationError as CacheSerializationError
from resilience_kit.errors import CacheStoreError as CacheStoreError
from resilience_kit.errors import CacheStoreUnavailableError as CacheStoreUnavailableError
from resilience_kit.errors import CircuitOpenError as CircuitOpenError
from resilience_kit.errors import ConfigurationError as ConfigurationError
from resilience_kit.errors import CorruptRecordError as CorruptRecordError
from resilience_kit.errors import EventTooLargeError as EventTooLargeError
from resilience_kit.errors import IdempotencyConflictError as IdempotencyConflictError
from resilience_kit.errors import IdempotencyError as IdempotencyError
from resilience_kit.errors import IdempotencyInProgressError as IdempotencyInProgressError
from resilience_kit.errors import IdempotencyKeyError as IdempotencyKeyError
from resilience_kit.errors import InjectedFaultError as InjectedFaultError
from resilience_kit.errors import InvalidEventError as InvalidEventError
from resilience_kit.errors import MalformedEventError as MalformedEventError
from resilience_kit.errors import MalformedTokenError as MalformedTokenError
from resilience_kit.errors import ResilienceError as ResilienceError
from resilience_kit.errors import RetryExhaustedError as RetryExhaustedError
from resilience_kit.errors import StoreError as StoreError
from resilience_kit.errors import StoreUnavailableError as StoreUnavailableError
from resilience_kit.errors import StoreURLError as StoreURLError
from resilience_kit.errors import TimeoutExceededError as TimeoutExceededError
from resilience_kit.errors import TokenAlgorithmError as TokenAlgorithmError
from resilience_kit.errors import TokenClaimError as TokenClaimError
from resilience_kit.errors import TokenExpiredError as TokenExpiredError
from resilience_kit.errors import TokenKeyError as TokenKeyError
from resilience_kit.errors import TokenNotYetValidError as TokenNotYetValidError
from resilience_kit.errors import TokenRejectedError as TokenRejectedError
from resilience_kit.errors import TokenRevokedError as TokenRevokedError
from resilience_kit.errors import TokenSignatureError as TokenSignatureError
from resilience_kit.errors import TransportError as TransportError
from resilience_kit.errors import TransportUnavailableError as TransportUnavailableError
from resilience_kit.errors import ValidatorUnavailableError as ValidatorUnavailableError
from resilience_kit.messaging import DeadLetter as DeadLetter
from resilience_kit.messaging import DeadLetterFilter as DeadLetterFilter
from resilience_kit.messaging import DeadLetterQueue as DeadLetterQueue
from resilience_kit.messaging import Event as Event
from resilience_kit.messaging import IdempotencyMiddleware as IdempotencyMiddleware
from resilience_kit.messaging import Inbox as Inbox
from resilience_kit.messaging import Outbox as Outbox
from resilience_kit.messaging import OutboxRelay as OutboxRelay
from resilience_kit.messaging import ResilientConsumer as ResilientConsumer
from resilience_kit.messaging import idempotent as idempotent
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
from resilience_kit.security import JWKSKeySource as JWKSKeySource
from resilience_kit.security import Keyring as Keyring
from resilience_kit.security import KeySource as KeySource
from resilience_kit.security import KeyState as KeyState
from resilience_kit.security import KeyVersion as KeyVersion
from resilience_kit.security import TokenIssuer as TokenIssuer
from resilience_kit.security import VerifiedToken as VerifiedToken
from resilience_kit.security import VersionedTokenVerifier as VersionedTokenVerifier

__all__ = (
    "Attempt",
    "Attempts",
    "Backoff",
    "BreakerMetrics",
    "BreakerRecord",
    "BreakerStore",
    "Bulkhead",
    "BulkheadFullError",
    "CacheLoadError",
    "CacheLookup",
    "CachePolicy",
    "CacheRecord",
    "CacheSerializationError",
    "CacheStats",
    "CacheStore",
    "CacheStoreError",
    "CacheStoreUnavailableError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "ConfigurationError",
    "CorruptRecordError",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "Event",
    "EventTooLargeError",
    "FailClosed",
    "FailOpen",
    "Fallback",
    "FallbackEvent",
    "IdempotencyConflictError",
    "IdempotencyError",
    "IdempotencyInProgressError",
    "IdempotencyKeyError",
    "IdempotencyMiddleware",
    "InMemoryBreakerStore",
    "InMemoryCacheStore",
    "Inbox",
    "InjectedFaultError",
    "InvalidEventError",
    "JWKSKeySource",
    "KeySource",
    "KeyState",
    "KeyVersion",
    "Keyring",
    "MalformedEventError",
    "MalformedTokenError",
    "Outbox",
    "OutboxRelay",
    "Pipeline",
    "Policy",
    "PolicyCache",
    "ResilienceError",
    "ResilientConsumer",
    "RetryBudget",
    "RetryEvent",
    "RetryExhaustedError",
    "RetryPolicy",
    "ServeStale",
    "Served",
    "StateTransition",
    "StoreError",
    "StoreURLError",
    "StoreUnavailableError",
    "Timeout",
    "TimeoutExceededError",
    "TokenAlgorithmError",
    "TokenClaimError",
    "TokenExpiredError",
    "TokenIssuer",
    "TokenKeyError",
    "TokenNotYetValidError",
    "TokenRejectedError",
    "TokenRevokedError",
    "TokenSignatureError",
    "TransportError",
    "TransportUnavailableError",
    "ValidatorUnavailableError",
    "VerifiedToken",
    "VersionedTokenVerifier",
    "__version__",
    "idempotent",
    "retry_after_hint",
)

# What this package re-exports presents itself as `resilience_kit.X` (reprs, docs, pickle).
present_at_top_level(globals(), __all__)
