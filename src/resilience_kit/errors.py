"""The exceptions resilience-kit raises, all rooted at `ResilienceError`.

```text
ResilienceError
├── ConfigurationError (also ValueError)     a policy was built with a bad parameter
├── RetryExhaustedError                      a result predicate kept asking for retries
├── CircuitOpenError                         a breaker rejected the call
├── TimeoutExceededError (also TimeoutError) a Timeout cancelled the call
├── BulkheadFullError                        no slot and no room to wait
└── InjectedFaultError                       raised by the testing chaos policies
```

Retries never wrap your exception: when the attempts run out, the last exception
propagates unchanged. `RetryExhaustedError` is raised only when the calls *succeeded*
but a result predicate rejected every result.

Example:
    >>> from resilience_kit import CircuitOpenError, ResilienceError
    >>> issubclass(CircuitOpenError, ResilienceError)
    True
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "BulkheadFullError",
    "CircuitOpenError",
    "ConfigurationError",
    "InjectedFaultError",
    "ResilienceError",
    "RetryExhaustedError",
    "TimeoutExceededError",
)


class ResilienceError(Exception):
    """Raised when a resilience policy refuses, cancels or gives up on a call.

    Catch it to handle every rejection of the library at once.

    Example:
        >>> try:
        ...     raise BulkheadFullError("db", max_concurrent=1, max_waiting=0)
        ... except ResilienceError as exc:
        ...     print(type(exc).__name__)
        BulkheadFullError
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds with ``type(self)(*self.args)``, which our keyword-only
        # constructors refuse; rebuild without __init__ so copy and pickle keep working.
        return (_rebuild, (type(self), self.args, self.__dict__))


class ConfigurationError(ResilienceError, ValueError):
    """Raised when a policy is constructed with an invalid parameter.

    The message names the parameter; `parameter` holds it too.

    Example:
        >>> ConfigurationError("attempts", "must be >= 1, got 0").parameter
        'attempts'
    """

    def __init__(self, parameter: str, problem: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {problem}")


class RetryExhaustedError(ResilienceError):
    """Raised when every attempt returned a result the retry's result predicate rejected.

    Exceptions are never wrapped in it: when the attempts run out on an exception, that
    exception propagates unchanged.

    Attributes:
        attempts: how many attempts ran.
        last_result: the result of the last attempt.

    Example:
        >>> err = RetryExhaustedError(attempts=3, last_result=None)
        >>> err.attempts
        3
    """

    def __init__(self, *, attempts: int, last_result: Any) -> None:
        self.attempts = attempts
        self.last_result = last_result
        super().__init__(
            f"gave up after {attempts} attempt(s); the last result was {last_result!r}"
        )


class CircuitOpenError(ResilienceError):
    """Raised when a circuit breaker rejects a call without running it.

    Attributes:
        name: the breaker's name.
        state: the breaker's state name (``"open"``, ``"half_open"``, ``"forced_open"``).
        retry_after: seconds until the breaker admits a probe, or ``None`` when only an
            operator can close it (forced open). A `RetryPolicy` honours it.

    Example:
        >>> err = CircuitOpenError("billing", state="open", retry_after=12.5)
        >>> err.retry_after
        12.5
    """

    def __init__(self, name: str, *, state: str, retry_after: float | None) -> None:
        self.name = name
        self.state = state
        self.retry_after = retry_after
        when = "" if retry_after is None else f"; next probe in {retry_after:.3f}s"
        super().__init__(f"circuit {name!r} is {state}{when}")


class TimeoutExceededError(ResilienceError, TimeoutError):
    """Raised when a `Timeout` cancelled the call because it ran too long.

    It is also a built-in `TimeoutError`, so ``except TimeoutError`` and
    ``RetryPolicy(on=TimeoutError)`` catch it.

    Attributes:
        name: the timeout policy's name.
        seconds: the limit that was exceeded.

    Example:
        >>> isinstance(TimeoutExceededError("db", seconds=2.0), TimeoutError)
        True
    """

    def __init__(self, name: str, *, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        super().__init__(f"{name!r} timed out after {seconds}s")


class BulkheadFullError(ResilienceError):
    """Raised when a bulkhead has no free slot and no room (or time) left to wait.

    Attributes:
        name: the bulkhead's name.
        max_concurrent: its concurrency limit.
        max_waiting: how many callers may queue.

    Example:
        >>> BulkheadFullError("db", max_concurrent=10, max_waiting=0).max_concurrent
        10
    """

    def __init__(self, name: str, *, max_concurrent: int, max_waiting: int) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        super().__init__(
            f"bulkhead {name!r} is full ({max_concurrent} running, {max_waiting} waiting)"
        )


class InjectedFaultError(ResilienceError):
    """Raised by `resilience_kit.testing.ChaosFault` when no other exception was chosen.

    Example:
        >>> str(InjectedFaultError("chaos"))
        'chaos'
    """


def _rebuild(cls: type[ResilienceError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Recreate an error from its class, ``args`` and attributes (for copy and pickle)."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error
