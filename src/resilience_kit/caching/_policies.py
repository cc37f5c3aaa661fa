"""What a `PolicyCache` serves when it cannot serve a fresh value: the three policies.

Each policy is a pure decision over a record, the time and the load's outcome; the
cache does the I/O and the waiting.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar, overload

from typing_extensions import Never

from resilience_kit._checks import check_positive
from resilience_kit.caching._store import CacheRecord
from resilience_kit.errors import ConfigurationError

__all__ = ("CachePolicy", "FailClosed", "FailOpen", "FallbackEvent", "ServeStale", "Served")

T_co = TypeVar("T_co", covariant=True)
_MISSING: Any = object()


class Served(str, enum.Enum):
    """Where the value a `PolicyCache` returned came from.

    - ``FRESH``: a record within its ttl, no loader call.
    - ``LOADED``: the loader just produced it (for this caller, or for a concurrent
      caller whose load this one joined).
    - ``STALE``: an expired record, within `ServeStale`'s windows.
    - ``FALLBACK``: `FailOpen`'s last known good value, after the loader failed.
    - ``DEFAULT``: `FailOpen`'s default, after the loader failed with nothing known.

    A cache that serves nothing raises `CacheLoadError` (a *denial*).

    Examples:
        >>> Served.STALE.value
        'stale'
    """

    FRESH = "fresh"
    LOADED = "loaded"
    STALE = "stale"
    FALLBACK = "fallback"
    DEFAULT = "default"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class FallbackEvent:
    """What `FailOpen` hands its ``on_fallback`` callback each time it fails open.

    Attributes:
        cache: the cache's name.
        key: the key that was asked for.
        served: ``Served.FALLBACK`` (last known good) or ``Served.DEFAULT``.
        age: seconds since the served value was loaded; ``None`` for the default.
        error: the loader's exception.

    Examples:
        >>> event = FallbackEvent("entitlements", "org-1", Served.DEFAULT, None, OSError())
        >>> event.served
        <Served.DEFAULT: 'default'>
    """

    cache: str
    key: Hashable
    served: Served
    age: float | None
    error: BaseException


class _Serve(NamedTuple):
    """A policy's decision to serve something after a failed load."""

    served: Served
    value: Any
    record: CacheRecord[Any] | None
    reason: str


class CachePolicy(ABC, Generic[T_co]):
    """The base of `FailClosed`, `FailOpen` and `ServeStale`.

    A policy decides three things, as pure functions of a record and the time: whether
    an expired record may be served while it is refreshed (stale-while-revalidate), what
    to serve when the loader fails, and how long a record is worth keeping.

    Examples:
        >>> isinstance(FailClosed(), CachePolicy)
        True
    """

    __slots__ = ()

    #: The policy's name in errors, logs and metrics.
    name: ClassVar[str] = "policy"

    #: Seconds after expiry during which the record is served while it is refreshed.
    stale_while_revalidate: float = 0.0

    @abstractmethod
    def _on_failure(self, key: Any, record: CacheRecord[Any] | None, now: float) -> _Serve | None:
        """What to serve after the loader failed; ``None`` denies."""

    @abstractmethod
    def _retain_until(self, expires_at: float) -> float | None:
        """After when no decision of this policy can serve a record expiring then."""


class FailClosed(CachePolicy[Never]):
    """Serve only what is fresh; when the loader fails, deny with `CacheLoadError`.

    For security decisions: the analysis' membership cache ("reject on cache miss",
    15-minute ttl, invalidated on MemberRemoved). An expired record is never served.

    Examples:
        >>> from resilience_kit.caching import FailClosed, PolicyCache
        >>> async def is_member(key: tuple[str, str]) -> bool:
        ...     return True
        >>> cache = PolicyCache(is_member, ttl=900.0, policy=FailClosed())
    """

    __slots__ = ()
    name = "fail_closed"

    def __repr__(self) -> str:
        return "FailClosed()"

    def _on_failure(self, key: Any, record: CacheRecord[Any] | None, now: float) -> _Serve | None:
        return None

    def _retain_until(self, expires_at: float) -> float | None:
        return expires_at


class FailOpen(CachePolicy[T_co]):
    """When the loader fails, serve the last known good value, or else an allowed default.

    For availability decisions: the analysis' entitlements cache (1-hour ttl, "allow
    with warning", "fallback to last known good state" while Billing is down). The
    last known good value is served however old it is, unless ``max_stale`` bounds
    it. Every fail-open serve calls ``on_fallback`` with a `FallbackEvent` (or, without
    a callback, logs a warning on the ``resilience_kit`` logger) and is counted.

    Args:
        default: served when the loader fails and no value is known. Without a default
            (or ``default_factory``), such a failure is denied with `CacheLoadError`.
        default_factory: computes the default from the key instead.
        max_stale: the oldest (seconds past expiry) a last known good value may be; an
            older one is dropped and the default served.
        on_fallback: called with a `FallbackEvent` on every fail-open serve; its
            exceptions are logged and swallowed.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> from resilience_kit.caching import FailOpen
        >>> warnings = []
        >>> policy = FailOpen(default={"plan": "free"}, on_fallback=warnings.append)
        >>> policy.default
        {'plan': 'free'}
    """

    __slots__ = ("_default", "_factory", "max_stale", "on_fallback")
    name = "fail_open"

    @overload
    def __init__(
        self: FailOpen[Never],
        *,
        max_stale: float | None = None,
        on_fallback: Callable[[FallbackEvent], object] | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        default: T_co,
        *,
        max_stale: float | None = None,
        on_fallback: Callable[[FallbackEvent], object] | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        *,
        default_factory: Callable[[Any], T_co],
        max_stale: float | None = None,
        on_fallback: Callable[[FallbackEvent], object] | None = None,
    ) -> None: ...

    def __init__(
        self,
        default: Any = _MISSING,
        *,
        default_factory: Callable[[Any], T_co] | None = None,
        max_stale: float | None = None,
        on_fallback: Callable[[FallbackEvent], object] | None = None,
    ) -> None:
        if default is not _MISSING and default_factory is not None:
            raise ConfigurationError(
                "default_factory", "give default= or default_factory=, not both"
            )
        if default_factory is not None and not callable(default_factory):
            raise ConfigurationError(
                "default_factory", f"must be callable, got {default_factory!r}"
            )
        if on_fallback is not None and not callable(on_fallback):
            raise ConfigurationError("on_fallback", f"must be callable, got {on_fallback!r}")
        check_positive("max_stale", max_stale, allow_zero=True)
        self._default = default
        self._factory = default_factory
        self.max_stale = max_stale
        self.on_fallback = on_fallback

    def __repr__(self) -> str:
        default = "" if self._default is _MISSING else f"default={self._default!r}, "
        return f"FailOpen({default}max_stale={self.max_stale!r})"

    @property
    def default(self) -> T_co | None:
        """The fixed default, or ``None`` when there is none (or a factory computes it)."""
        return None if self._default is _MISSING else self._default

    @property
    def has_default(self) -> bool:
        """Whether a failure with nothing known serves a default rather than denying."""
        return self._default is not _MISSING or self._factory is not None

    def _on_failure(self, key: Any, record: CacheRecord[Any] | None, now: float) -> _Serve | None:
        if record is not None and (
            self.max_stale is None or now < record.expires_at + self.max_stale
        ):
            return _Serve(
                Served.FALLBACK, record.value, record, "loader failed; last known good value"
            )
        if self._factory is not None:
            return _Serve(Served.DEFAULT, self._factory(key), None, "loader failed; default")
        if self._default is not _MISSING:
            return _Serve(Served.DEFAULT, self._default, None, "loader failed; default")
        return None

    def _retain_until(self, expires_at: float) -> float | None:
        return None if self.max_stale is None else expires_at + self.max_stale


class ServeStale(CachePolicy[Never]):
    """Serve expired records for a while, as HTTP caches do under RFC 5861.

    - Within ``stale_while_revalidate`` seconds after expiry, the expired record is
      served at once while one refresh runs: in the background when the cache runs
      inside ``async with cache:``, else in the first caller's task (that caller waits
      for it; the others are served stale meanwhile).
    - Within ``stale_if_error`` seconds after expiry, the expired record is served when
      the loader fails.
    - Past both windows an expired record is a miss: the caller waits for the loader,
      and a failure is denied with `CacheLoadError`.

    Args:
        stale_while_revalidate: seconds, >= 0.
        stale_if_error: seconds, >= 0.

    Raises:
        ConfigurationError: for a negative or infinite window, or when both are 0 (that
            is `FailClosed`; for a last known good value of any age use `FailOpen`).

    Examples:
        >>> from resilience_kit.caching import ServeStale
        >>> ServeStale(stale_while_revalidate=30.0, stale_if_error=3600.0)
        ServeStale(stale_while_revalidate=30.0, stale_if_error=3600.0)
    """

    __slots__ = ("stale_if_error", "stale_while_revalidate")
    name = "serve_stale"

    def __init__(self, *, stale_while_revalidate: float = 0.0, stale_if_error: float = 0.0) -> None:
        check_positive("stale_while_revalidate", stale_while_revalidate, allow_zero=True)
        check_positive("stale_if_error", stale_if_error, allow_zero=True)
        if not (stale_while_revalidate or stale_if_error):
            raise ConfigurationError(
                "stale_while_revalidate",
                "give it or stale_if_error a value > 0 (with both 0, use FailClosed)",
            )
        self.stale_while_revalidate = float(stale_while_revalidate)
        self.stale_if_error = float(stale_if_error)

    def __repr__(self) -> str:
        return (
            f"ServeStale(stale_while_revalidate={self.stale_while_revalidate!r}, "
            f"stale_if_error={self.stale_if_error!r})"
        )

    def _on_failure(self, key: Any, record: CacheRecord[Any] | None, now: float) -> _Serve | None:
        # Within either window an expired record may be served: during stale-while-
        # revalidate the other callers are being served it anyway.
        window = max(self.stale_while_revalidate, self.stale_if_error)
        if record is not None and now < record.expires_at + window:
            return _Serve(Served.STALE, record.value, record, "loader failed; within stale windows")
        return None

    def _retain_until(self, expires_at: float) -> float | None:
        return expires_at + max(self.stale_while_revalidate, self.stale_if_error)
