"""Call policies: each wraps one call, as a decorator for sync and async functions.

Each policy's module loads on first use (PEP 562), so ``from resilience_kit import
RetryPolicy`` does not pay for the circuit breaker, the bulkhead or their imports.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    from resilience_kit.policies._breaker_store import (
        MemoryBreakerStore as MemoryBreakerStore,
    )
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
    "Jitter",
    "MemoryBreakerStore",
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

if not TYPE_CHECKING:  # mypy and editors see the imports above, not a catch-all
    import sys as _sys

    from resilience_kit._exports import present as _present

    # Which private module defines each name; a test checks it against `__all__`.
    _DEFINED_IN = {
        "Attempt": "_retry",
        "Attempts": "_retry",
        "Backoff": "_backoff",
        "BreakerMetrics": "_breaker",
        "BreakerRecord": "_breaker_store",
        "BreakerStore": "_breaker_store",
        "Bulkhead": "_bulkhead",
        "CircuitBreaker": "_breaker",
        "CircuitState": "_breaker_store",
        "Fallback": "_fallback",
        "MemoryBreakerStore": "_breaker_store",
        "Jitter": "_backoff",
        "Pipeline": "_pipeline",
        "Policy": "_base",
        "RetryBudget": "_budget",
        "RetryEvent": "_retry",
        "RetryPolicy": "_retry",
        "StateTransition": "_breaker",
        "ThresholdExceeded": "_breaker",
        "Timeout": "_timeout",
        "retry_after_hint": "_retry_after",
    }

    def _adopt_loaded() -> None:
        """Bind and present every name whose module is loaded, however it was loaded.

        A module other code imported directly (``policies._retry`` from messaging, say)
        gets its classes presented here too, so reprs do not depend on import order
        once anything was reached through this package.
        """
        namespace = globals()
        adopted = [
            name
            for name, module in _DEFINED_IN.items()
            if name not in namespace and f"{__name__}.{module}" in _sys.modules
        ]
        for name in adopted:
            namespace[name] = getattr(_sys.modules[f"{__name__}.{_DEFINED_IN[name]}"], name)
        # Reprs, docs and pickles name where users import a class from, not its module.
        _present(__name__, namespace, adopted)

    def __getattr__(name: str) -> object:
        """Import the module that defines ``name`` on first use (PEP 562)."""
        module = _DEFINED_IN.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        # `__import__`, unlike `importlib.import_module`, shows in ``python -X importtime``.
        __import__(f"{__name__}.{module}")
        _adopt_loaded()  # later lookups skip __getattr__
        return globals()[name]

    def __dir__() -> list[str]:
        return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
