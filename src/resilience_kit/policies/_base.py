"""The shape every call policy shares: a decorator for sync and async functions."""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from resilience_kit import _config
from resilience_kit.clock import SYSTEM_CLOCK, Clock
from resilience_kit.errors import ConfigurationError

P = ParamSpec("P")
R = TypeVar("R")

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]
ExceptionFilter = ExceptionTypes | Callable[[BaseException], bool]


def is_async_callable(fn: object) -> bool:
    """Tell whether calling ``fn`` returns an awaitable we must await."""
    if inspect.iscoroutinefunction(fn):
        return True
    # A callable object whose __call__ is async counts too.
    return inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def check_wrappable(fn: object, policy: object) -> None:
    """Reject what a policy cannot wrap, at decoration time rather than on first call."""
    if not callable(fn):
        raise TypeError(f"{policy!r} can only decorate a callable, got {fn!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{policy!r} cannot decorate generator function {fn!r}: the policy would only "
            "guard the creation of the generator, not its iteration"
        )


def exception_matcher(value: ExceptionFilter, parameter: str) -> Callable[[BaseException], bool]:
    """Turn exception types or a predicate into one predicate, validating it."""
    if isinstance(value, type) and issubclass(value, BaseException):
        types: tuple[type[BaseException], ...] = (value,)
    elif isinstance(value, tuple):
        for item in value:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise ConfigurationError(parameter, f"expected exception types, got {item!r}")
        types = value
    elif isinstance(value, type):
        raise ConfigurationError(parameter, f"expected exception types, got {value!r}")
    elif callable(value):
        return value
    else:
        raise ConfigurationError(
            parameter, f"expected an exception type, a tuple of them or a predicate, got {value!r}"
        )

    def matches(exc: BaseException) -> bool:
        return isinstance(exc, types)

    return matches


def resolve_clock(clock: Clock | None) -> Clock:
    """The clock to use now: the injected one, a test override, or the system clock."""
    return clock or _config.state.clock or SYSTEM_CLOCK


def check_positive(parameter: str, value: float | None, *, allow_zero: bool = False) -> None:
    """Fail construction with a message naming ``parameter`` unless it is a positive number."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(parameter, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(parameter, f"must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(parameter, f"must be {bound}, got {value!r}")


def check_int(parameter: str, value: int, *, minimum: int) -> None:
    """Fail construction unless ``value`` is an int no smaller than ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(parameter, f"must be an int, got {value!r}")
    if value < minimum:
        raise ConfigurationError(parameter, f"must be >= {minimum}, got {value!r}")


class Policy(ABC):
    """Base class of every call policy: a decorator for sync and async callables.

    Subclasses implement `_wrap_sync` and `_wrap_async`; this class picks the right one,
    keeps the wrapped function's metadata and offers `call` / `acall` for one-off calls.
    """

    __slots__ = ("__weakref__",)

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async); the signature and coroutine-ness are kept."""
        return functools.wraps(fn)(self.wrap(fn))

    def wrap(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Return ``fn`` guarded by this policy, without copying its metadata."""
        check_wrappable(fn, self)
        if is_async_callable(fn):
            return self._wrap_async(fn)
        return self._wrap_sync(fn)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the synchronous ``fn(*args, **kwargs)`` once under this policy."""
        if is_async_callable(fn):
            raise TypeError(f"{fn!r} is async: use `await policy.acall(...)`")
        return self._wrap_sync(fn)(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` once under this policy.

        ``fn`` may be any callable returning an awaitable, such as a lambda around a
        client call: ``await retry.acall(lambda: client.get(url))``.
        """
        wrapped: Callable[P, Coroutine[Any, Any, R]] = self._wrap_async(fn)
        return await wrapped(*args, **kwargs)

    @abstractmethod
    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    @abstractmethod
    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]: ...
