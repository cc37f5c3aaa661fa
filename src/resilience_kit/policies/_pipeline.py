"""Pipeline: compose policies into one, outermost first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from resilience_kit.errors import ConfigurationError
from resilience_kit.policies._base import P, Policy, R


class Pipeline(Policy):
    """Apply several policies to a call; the first given is the outermost.

    ``Pipeline(a, b, c)(fn)`` is exactly ``a(b(c(fn)))``: the policies are nested once,
    when decorating, so a pipeline costs nothing beyond its policies. Nested pipelines
    are flattened. A usual order is Fallback, Timeout (for the whole operation),
    RetryPolicy, CircuitBreaker, Bulkhead, so that each retry passes the breaker.

    Args:
        *policies: the policies, outermost first.

    Raises:
        ConfigurationError: when empty or given something that is not a policy.

    Examples:
        >>> from resilience_kit import Backoff, CircuitBreaker, Pipeline, RetryPolicy
        >>> resilient = Pipeline(
        ...     RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none()),
        ...     CircuitBreaker("inventory"),
        ... )
        >>> @resilient
        ... def stock(sku: str) -> int:
        ...     return 7
        >>> stock("A-1")
        7
    """

    __slots__ = ("policies",)

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ConfigurationError("policies", "a Pipeline needs at least one policy")
        flat: list[Policy] = []
        for policy in policies:
            if isinstance(policy, Pipeline):
                flat.extend(policy.policies)
            elif isinstance(policy, Policy):
                flat.append(policy)
            else:
                raise ConfigurationError("policies", f"{policy!r} is not a policy")
        self.policies: tuple[Policy, ...] = tuple(flat)

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.policies))})"

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        for policy in reversed(self.policies):
            fn = policy._wrap_sync(fn)
        return fn

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        inner: Callable[P, Awaitable[R]] = fn
        for policy in reversed(self.policies):
            inner = wrapped = policy._wrap_async(inner)
        return wrapped
