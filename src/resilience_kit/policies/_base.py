"""The shape every call policy shares: a decorator for sync and async functions."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from resilience_kit._checks import check_wrappable, is_async_callable

P = ParamSpec("P")
R = TypeVar("R")


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
