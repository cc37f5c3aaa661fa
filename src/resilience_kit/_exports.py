"""The top-level names, where each is defined, and how re-exported classes present themselves.

`resilience_kit` loads its subpackages lazily (PEP 562): `TOP_LEVEL` tells its module
``__getattr__`` which subpackage to import for a name. Each subpackage calls `present`
once, at the end of its ``__init__``, so a class says ``resilience_kit.X`` (or
``resilience_kit.<subpackage>.X``) in reprs, docs and pickles whichever way it was
first imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

_POLICIES = "resilience_kit.policies"
_MESSAGING = "resilience_kit.messaging"
_CACHING = "resilience_kit.caching"
_SECURITY = "resilience_kit.security"
_ERRORS = "resilience_kit.errors"

# The top-level `__all__` (less `__version__`) lists exactly these keys; a test checks it.
TOP_LEVEL: Final[Mapping[str, str]] = {
    # call policies and the values a user writes to configure them
    "Attempt": _POLICIES,
    "Attempts": _POLICIES,
    "Backoff": _POLICIES,
    "Bulkhead": _POLICIES,
    "CircuitBreaker": _POLICIES,
    "CircuitState": _POLICIES,
    "Fallback": _POLICIES,
    "Pipeline": _POLICIES,
    "RetryBudget": _POLICIES,
    "RetryPolicy": _POLICIES,
    "Timeout": _POLICIES,
    # messaging primitives
    "DeadLetterFilter": _MESSAGING,
    "DeadLetterQueue": _MESSAGING,
    "Event": _MESSAGING,
    "IdempotencyMiddleware": _MESSAGING,
    "Inbox": _MESSAGING,
    "Outbox": _MESSAGING,
    "OutboxRelay": _MESSAGING,
    "ResilientConsumer": _MESSAGING,
    "idempotent": _MESSAGING,
    # caches and their policies
    "FailClosed": _CACHING,
    "FailOpen": _CACHING,
    "PolicyCache": _CACHING,
    "ServeStale": _CACHING,
    # tokens
    "KeyState": _SECURITY,
    "Keyring": _SECURITY,
    "TokenIssuer": _SECURITY,
    "VersionedTokenVerifier": _SECURITY,
    # the errors a caller catches; every error is in `resilience_kit.errors`
    "BulkheadFullError": _ERRORS,
    "CacheLoadError": _ERRORS,
    "CircuitOpenError": _ERRORS,
    "ConfigurationError": _ERRORS,
    "IdempotencyConflictError": _ERRORS,
    "IdempotencyInProgressError": _ERRORS,
    "IdempotencyKeyError": _ERRORS,
    "ResilienceError": _ERRORS,
    "RetryExhaustedError": _ERRORS,
    "StoreUnavailableError": _ERRORS,
    "TransportUnavailableError": _ERRORS,
    "TimeoutExceededError": _ERRORS,
    "TokenRejectedError": _ERRORS,
}


def present(module: str, namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Set ``__module__`` on the classes among ``names`` to where users import them from.

    A class the top level re-exports says ``resilience_kit``; any other class defined
    in one of ``module``'s private submodules says ``module``. Exceptions keep their
    module: they are documented and imported as ``resilience_kit.errors``.
    """
    for name in names:
        obj = namespace[name]
        if not isinstance(obj, type) or issubclass(obj, BaseException):
            continue
        if TOP_LEVEL.get(name) == module:
            obj.__module__ = "resilience_kit"
        elif obj.__module__.startswith(f"{module}._"):
            obj.__module__ = module
