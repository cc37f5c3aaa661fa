"""resilience-kit: typed, anyio-native resilience primitives for Python services.

The top level holds what you instantiate and the errors you catch. Protocols and
records for backend authors and annotations are in `resilience_kit.typing`; every
error is in `resilience_kit.errors`; each area's package (`resilience_kit.policies`,
`.messaging`, `.caching`, `.security`) exports its full set. Subpackages load on
first use, so ``import resilience_kit`` stays cheap.

Examples:
    >>> from resilience_kit import Backoff, CircuitBreaker, Pipeline, RetryPolicy
    >>> policy = Pipeline(
    ...     RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none()),
    ...     CircuitBreaker("billing"),
    ... )
"""

from typing import TYPE_CHECKING

from resilience_kit._version import __version__ as __version__

if TYPE_CHECKING:
    from resilience_kit.caching import FailClosed as FailClosed
    from resilience_kit.caching import FailOpen as FailOpen
    from resilience_kit.caching import PolicyCache as PolicyCache
    from resilience_kit.caching import ServeStale as ServeStale
    from resilience_kit.errors import BulkheadFullError as BulkheadFullError
    from resilience_kit.errors import CacheLoadError as CacheLoadError
    from resilience_kit.errors import CircuitOpenError as CircuitOpenError
    from resilience_kit.errors import ConfigurationError as ConfigurationError
    from resilience_kit.errors import IdempotencyConflictError as IdempotencyConflictError
    from resilience_kit.errors import IdempotencyInProgressError as IdempotencyInProgressError
    from resilience_kit.errors import IdempotencyKeyError as IdempotencyKeyError
    from resilience_kit.errors import ResilienceError as ResilienceError
    from resilience_kit.errors import RetryExhaustedError as RetryExhaustedError
    from resilience_kit.errors import StoreUnavailableError as StoreUnavailableError
    from resilience_kit.errors import TimeoutExceededError as TimeoutExceededError
    from resilience_kit.errors import TokenRejectedError as TokenRejectedError
    from resilience_kit.errors import TransportUnavailableError as TransportUnavailableError
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
    from resilience_kit.policies import Bulkhead as Bulkhead
    from resilience_kit.policies import CircuitBreaker as CircuitBreaker
    from resilience_kit.policies import CircuitState as CircuitState
    from resilience_kit.policies import Fallback as Fallback
    from resilience_kit.policies import Pipeline as Pipeline
    from resilience_kit.policies import RetryBudget as RetryBudget
    from resilience_kit.policies import RetryPolicy as RetryPolicy
    from resilience_kit.policies import Timeout as Timeout
    from resilience_kit.security import Keyring as Keyring
    from resilience_kit.security import KeyState as KeyState
    from resilience_kit.security import TokenIssuer as TokenIssuer
    from resilience_kit.security import VersionedTokenVerifier as VersionedTokenVerifier

__all__ = (
    "Attempt",
    "Attempts",
    "Backoff",
    "Bulkhead",
    "BulkheadFullError",
    "CacheLoadError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "ConfigurationError",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "Event",
    "FailClosed",
    "FailOpen",
    "Fallback",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "IdempotencyKeyError",
    "IdempotencyMiddleware",
    "Inbox",
    "KeyState",
    "Keyring",
    "Outbox",
    "OutboxRelay",
    "Pipeline",
    "PolicyCache",
    "ResilienceError",
    "ResilientConsumer",
    "RetryBudget",
    "RetryExhaustedError",
    "RetryPolicy",
    "ServeStale",
    "StoreUnavailableError",
    "Timeout",
    "TimeoutExceededError",
    "TokenIssuer",
    "TokenRejectedError",
    "TransportUnavailableError",
    "VersionedTokenVerifier",
    "__version__",
    "idempotent",
)

if not TYPE_CHECKING:  # mypy and editors see the imports above, not a catch-all
    import sys as _sys

    from resilience_kit._exports import TOP_LEVEL as _TOP_LEVEL

    def __getattr__(name: str) -> object:
        """Import the subpackage that defines ``name`` on first use (PEP 562)."""
        module = _TOP_LEVEL.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        # `__import__`, unlike `importlib.import_module`, shows in ``python -X importtime``.
        __import__(module)
        value = getattr(_sys.modules[module], name)
        globals()[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
