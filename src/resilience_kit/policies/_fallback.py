"""Fallback: answer with a substitute when a call fails in a chosen way."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar, cast, overload

from resilience_kit import _telemetry
from resilience_kit._checks import ExceptionFilter, exception_matcher, is_async_callable
from resilience_kit.errors import ConfigurationError
from resilience_kit.policies._base import P, Policy, R

T = TypeVar("T")
_MISSING: Any = object()


class Fallback(Policy, Generic[T]):
    """Return a substitute when the call raises a matching exception.

    Give either a ``value`` or a ``handler``: a function of the exception (sync, or
    async when it guards async calls) that returns the substitute or raises. Only
    exceptions matched by ``on`` fall back; anything else, and cancellation,
    `KeyboardInterrupt` and `SystemExit`, propagates. A result matched by
    ``on_result`` is replaced too (the handler then receives ``None``).

    Args:
        value: the substitute.
        handler: computes the substitute from the exception.
        on: exception types or a predicate (default: any `Exception`).
        on_result: a predicate on results that should be replaced.
        name: a name for logs and metrics.

    Examples:
        >>> from resilience_kit import CircuitOpenError, Fallback
        >>> @Fallback(value=[], on=(CircuitOpenError, ConnectionError))
        ... def recommendations() -> list[str]:
        ...     raise ConnectionError("recommender is down")
        >>> recommendations()
        []
    """

    __slots__ = ("_handler", "_matches", "_on_result", "name")

    def __init__(
        self,
        value: T = _MISSING,
        *,
        handler: Callable[[BaseException | None], T | Awaitable[T]] | None = None,
        on: ExceptionFilter = Exception,
        on_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
    ) -> None:
        if (value is _MISSING) == (handler is None):
            raise ConfigurationError("value", "give exactly one of value= and handler=")
        if handler is not None and not callable(handler):
            raise ConfigurationError("handler", f"must be callable, got {handler!r}")
        if on_result is not None and not callable(on_result):
            raise ConfigurationError("on_result", "must be a callable")
        if handler is None:

            def constant(_: BaseException | None) -> T:
                return value

            handler = constant
        self._handler = handler
        self._matches = exception_matcher(on, "on")
        self._on_result = on_result
        self.name = name or "fallback"

    def __repr__(self) -> str:
        return f"Fallback(name={self.name!r})"

    @overload  # type: ignore[override]
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R | T]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R | T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn``; its return type widens to include the fallback's."""
        return super().__call__(fn)

    def _activated(self, exc: BaseException | None) -> None:
        error = "result" if exc is None else type(exc).__qualname__
        _telemetry.emit(
            _telemetry.FALLBACK_ACTIVATIONS, {"fallback": self.name, "error_type": error}
        )
        _telemetry.logger.info("fallback %r: serving a substitute (%s)", self.name, error)

    def _handles(self, exc: BaseException) -> bool:
        return isinstance(exc, Exception) and self._matches(exc)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        if is_async_callable(self._handler):
            raise TypeError(f"{self!r} has an async handler and cannot guard sync {fn!r}")
        handler = cast("Callable[[BaseException | None], R]", self._handler)
        on_result = self._on_result

        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not self._handles(exc):
                    raise
                self._activated(exc)
                return handler(exc)
            if on_result is not None and on_result(result):
                self._activated(None)
                return handler(None)
            return result

        return guarded

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        handler = self._handler
        on_result = self._on_result

        async def substitute(exc: BaseException | None) -> R:
            self._activated(exc)
            value = handler(exc)
            if inspect.isawaitable(value):
                value = await value
            return cast("R", value)

        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if not self._handles(exc):
                    raise
                return await substitute(exc)
            if on_result is not None and on_result(result):
                return await substitute(None)
            return result

        return guarded
