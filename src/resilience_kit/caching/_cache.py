"""PolicyCache: a loading cache that knows what to serve when its source is down."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Hashable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
from opentelemetry import trace

from resilience_kit import _telemetry
from resilience_kit._checks import ExceptionFilter, check_positive, exception_matcher
from resilience_kit.caching import _metrics
from resilience_kit.caching._errors import CacheLoadError
from resilience_kit.caching._metrics import CacheStats
from resilience_kit.caching._policies import (
    CachePolicy,
    FailClosed,
    FailOpen,
    FallbackEvent,
    Served,
    _Serve,
)
from resilience_kit.caching._store import CacheRecord, CacheStore, MemoryCacheStore
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError

__all__ = ("CacheLookup", "PolicyCache")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_FRESH = "within ttl"
_LOADED_REASON = "loaded"

# What a load came to.
_PENDING, _LOADED, _FAILED, _RAISED, _ABANDONED = range(5)


class _Flight:
    """One load of one key, which every concurrent caller for that key waits on."""

    __slots__ = (
        "done",
        "epoch",
        "error",
        "generation",
        "outcome",
        "previous",
        "started",
        "traceback",
        "value",
    )

    def __init__(self, epoch: int, generation: int) -> None:
        self.done = anyio.Event()
        self.epoch = epoch
        self.generation = generation
        self.outcome = _PENDING
        self.started = 0.0
        self.value: Any = None
        self.error: BaseException | None = None
        self.traceback: TracebackType | None = None
        self.previous: CacheRecord[Any] | None = None


class _KeyState:
    """Per-key bookkeeping, kept only while some caller or load is busy with the key.

    ``epoch`` counts this process's invalidations of the key: anything read or loaded
    under an older epoch is never served. While ``invalidating``, the store may still
    hand out what is being invalidated, so nothing read is served until ``calm`` is set.
    """

    __slots__ = ("calm", "epoch", "flight", "invalidating", "refs")

    def __init__(self) -> None:
        self.epoch = 0
        self.flight: _Flight | None = None
        self.refs = 0
        self.invalidating = 0
        self.calm: anyio.Event | None = None


# The loads the current task is running (loader calls nest when loaders use caches):
# waiting on one of them would wait on ourselves.
_RUNNING: ContextVar[tuple[_Flight, ...]] = ContextVar("resilience_kit_cache_loads", default=())


@dataclass(frozen=True, slots=True)
class CacheLookup(Generic[V]):
    """A value from a `PolicyCache`, with where it came from and why.

    Attributes:
        value: the value.
        served: ``FRESH``, ``LOADED``, ``STALE``, ``FALLBACK`` or ``DEFAULT`` (`Served`).
        age: seconds since the load that produced the value began; ``None`` for a
            default.
        reason: why this was served, in a few words.
        error: the loader's exception, when a stale, fallback or default value was
            served because the loader failed.

    Examples:
        >>> import anyio
        >>> from resilience_kit.caching import PolicyCache
        >>> async def plan(org: str) -> str:
        ...     return "pro"
        >>> cache = PolicyCache(plan, ttl=3600.0)
        >>> async def main() -> None:
        ...     print((await cache.lookup("org-1")).served)
        ...     print((await cache.lookup("org-1")).served)
        >>> anyio.run(main)
        loaded
        fresh
    """

    value: V
    served: Served
    age: float | None
    reason: str
    error: BaseException | None = None


def _is_none(value: object) -> bool:
    return value is None


def _default_now() -> float:
    return resolve_clock(None).monotonic()


def _check_key(key: object) -> None:
    if key is None:
        raise TypeError("a cache key cannot be None")
    try:
        hash(key)
    except TypeError as exc:
        raise TypeError(f"a cache key must be hashable, got {type(key).__name__}") from exc
    if not key == key:  # noqa: PLR0124  (NaN-like keys never match: every get would miss)
        raise ValueError(f"a cache key must equal itself, got {key!r}")


def _span_event(name: str, cache: PolicyCache[Any, Any]) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        # No key: keys are user and organization ids, which traces should not collect.
        span.add_event(name, {"cache": cache.name, "policy": cache.policy.name})


class PolicyCache(Generic[K, V]):
    """A loading cache whose policy decides what to serve when the loader fails.

    ``await cache.get(key)`` returns a fresh value from the cache, or calls
    ``loader(key)``. When the loader fails, the ``policy`` decides: `FailClosed`
    denies with `CacheLoadError`, `FailOpen` serves the last known good value or a
    default, `ServeStale` serves an expired value within its windows (RFC 5861).
    ``await cache.lookup(key)`` returns the same value as a `CacheLookup` that says
    which of these happened.

    - **Single flight.** Concurrent misses for one key share one loader call. If the
      caller running it is cancelled, the load is cancelled with it and one of the
      waiting callers starts it again; the others keep waiting. Inside
      ``async with cache:`` loads run in the cache's task group instead, so a cancelled
      caller only stops waiting and the load completes for everyone else.
    - **Invalidation wins.** ``await cache.invalidate(key)`` drops the key and moves its
      epoch on: a load that began before can no longer store its result, and no call
      returns anything read or loaded before the invalidation (the MemberRemoved
      race); such calls load again.
    - **Bounded.** The default store keeps ``max_size`` records, least recently used
      out first.
    - **One event loop.** A cache serves the tasks of one event loop; it is not
      thread-safe.
    - **Negative caching.** A result for which ``is_negative`` holds (default: it is
      ``None``) is cached for ``negative_ttl`` seconds, or not at all when
      ``negative_ttl`` is ``None`` — then it also removes the key's previous record.

    The loader is an async function of the key (guard it with a `CircuitBreaker` so
    that a down dependency is not hammered: its `CircuitOpenError` is a loader failure
    like any other). A plain function is accepted too, and called in the event loop's
    thread, so it must not block; type checkers expect an async one. Exceptions not
    matched by ``on``, and cancellation, are not loader failures: they propagate to the
    callers unchanged and nothing is cached.

    Args:
        loader: ``async key -> value``.
        ttl: seconds a loaded value is fresh, counted from when its load began.
        policy: `FailClosed()` (the default), `FailOpen(...)` or `ServeStale(...)`.
        max_size: records kept by the default in-memory store (default 10 000). Give
            it to the store instead when you pass ``store``.
        negative_ttl: seconds to cache a negative result; ``None``: never cache one.
        is_negative: tells a negative result (default: ``value is None``).
        on: the loader exceptions the policy handles (default: any `Exception`).
        store: where records live (default: an `MemoryCacheStore`).
        clock: the clock (the virtual clock in tests).
        name: the name in errors, logs and metrics (default: the loader's ``__name__``,
            or its type's name).

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> import anyio
        >>> from resilience_kit.caching import CacheLoadError, FailClosed, PolicyCache
        >>> members = {("org-1", "ann")}
        >>> async def is_member(key: tuple[str, str]) -> bool:
        ...     return key in members
        >>> cache = PolicyCache(is_member, ttl=900.0, policy=FailClosed())
        >>> async def main() -> None:
        ...     print(await cache.get(("org-1", "ann")))
        ...     members.clear()  # MemberRemoved...
        ...     await cache.invalidate(("org-1", "ann"))  # ...and its event
        ...     print(await cache.get(("org-1", "ann")))
        >>> anyio.run(main)
        True
        False
    """

    __slots__ = (
        "__weakref__",
        "_calm_all",
        "_denials",
        "_fail_open_serves",
        "_generation",
        "_handles",
        "_hits",
        "_in_progress",
        "_invalidating_all",
        "_invalidations",
        "_is_negative",
        "_keys",
        "_load_failures",
        "_loader",
        "_loads",
        "_misses",
        "_now",
        "_peek",
        "_running",
        "_stale_serves",
        "_store",
        "_tg",
        "name",
        "negative_ttl",
        "policy",
        "ttl",
    )

    def __init__(
        self,
        loader: Callable[[K], Awaitable[V]],
        *,
        ttl: float,
        policy: CachePolicy[V] | None = None,
        max_size: int | None = None,
        negative_ttl: float | None = None,
        is_negative: Callable[[V], bool] | None = None,
        on: ExceptionFilter = Exception,
        store: CacheStore[K, V] | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(loader):
            raise ConfigurationError("loader", f"must be callable, got {loader!r}")
        if ttl is None:
            raise ConfigurationError("ttl", "is required")
        check_positive("ttl", ttl)
        check_positive("negative_ttl", negative_ttl)
        if policy is None:
            policy = FailClosed()
        elif not isinstance(policy, CachePolicy):
            raise ConfigurationError(
                "policy", f"must be FailClosed(), FailOpen(...) or ServeStale(...), got {policy!r}"
            )
        if is_negative is not None and not callable(is_negative):
            raise ConfigurationError("is_negative", f"must be callable, got {is_negative!r}")
        if store is None:
            store = MemoryCacheStore(10_000 if max_size is None else max_size)
        elif max_size is not None:
            raise ConfigurationError("max_size", "give max_size to the store you pass instead")
        elif not isinstance(store, CacheStore):
            raise ConfigurationError("store", f"must implement CacheStore, got {store!r}")
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError("clock", f"must implement Clock, got {clock!r}")
        if name is None:
            name = getattr(loader, "__name__", None) or type(loader).__name__
        elif not isinstance(name, str) or not name:
            raise ConfigurationError("name", f"must be a non-empty string, got {name!r}")

        self.name: str = name
        self.ttl = float(ttl)
        self.negative_ttl = None if negative_ttl is None else float(negative_ttl)
        self.policy: CachePolicy[V] = policy
        self._loader: Callable[[K], Any] = loader
        self._handles = exception_matcher(on, "on")
        self._is_negative: Callable[[V], bool] = is_negative or _is_none
        self._store: CacheStore[K, V] = store
        self._peek = store.peek
        self._now: Callable[[], float] = _default_now if clock is None else clock.monotonic
        self._keys: dict[K, _KeyState] = {}
        self._generation = 0
        self._calm_all: anyio.Event | None = None
        self._invalidating_all = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._running: dict[_Flight, tuple[K, _KeyState]] = {}
        self._hits = self._misses = self._loads = self._load_failures = 0
        self._stale_serves = self._fail_open_serves = self._denials = 0
        self._invalidations = self._in_progress = 0
        _metrics.track(self)

    def __repr__(self) -> str:
        return f"PolicyCache({self.name!r}, ttl={self.ttl!r}, policy={self.policy!r})"

    @property
    def store(self) -> CacheStore[K, V]:
        """Where the records live."""
        return self._store

    @property
    def policy_name(self) -> str:
        """The policy's name, as metrics label it."""
        return self.policy.name

    # -- reading ------------------------------------------------------------------------

    async def get(self, key: K) -> V:
        """Return the value for ``key``: fresh from the cache, loaded, or as the policy allows.

        Raises:
            CacheLoadError: the loader failed and the policy serves nothing.
            TypeError: ``key`` is ``None`` or not hashable.
            ValueError: ``key`` does not equal itself (a NaN).

        Examples:
            >>> import anyio
            >>> async def square(n: int) -> int:
            ...     return n * n
            >>> anyio.run(PolicyCache(square, ttl=60.0).get, 7)
            49
        """
        record = self._peek(key)
        if record is not None and self._now() < record.expires_at:
            self._hits += 1
            return record.value
        return (await self._miss(key)).value

    async def lookup(self, key: K) -> CacheLookup[V]:
        """Like `get`, but return a `CacheLookup`: the value, where it came from, and why.

        Examples:
            >>> import anyio
            >>> async def square(n: int) -> int:
            ...     return n * n
            >>> found = anyio.run(PolicyCache(square, ttl=60.0).lookup, 7)
            >>> found.value, found.served.value
            (49, 'loaded')
        """
        record = self._peek(key)
        if record is not None:
            now = self._now()
            if now < record.expires_at:
                self._hits += 1
                return CacheLookup(record.value, Served.FRESH, now - record.loaded_at, _FRESH)
        return await self._miss(key)

    async def _miss(self, key: K) -> CacheLookup[V]:
        _check_key(key)
        state = self._hold(key)
        try:
            while True:
                found = await self._attempt(key, state)
                if found is not None:
                    return found
        finally:
            self._release(key, state)

    def _release(self, key: K, state: _KeyState) -> None:
        state.refs -= 1
        if state.refs == 0 and self._keys.get(key) is state:
            del self._keys[key]

    def _current(self, state: _KeyState, epoch: int, generation: int) -> bool:
        """Whether nothing read under ``epoch`` and ``generation`` can have been invalidated."""
        return (
            state.epoch == epoch
            and self._generation == generation
            and not state.invalidating
            and self._calm_all is None
        )

    async def _until_calm(self, state: _KeyState) -> None:
        """Wait for the invalidations in progress that concern ``state``'s key."""
        if state.calm is not None:
            await state.calm.wait()
        if self._calm_all is not None:
            await self._calm_all.wait()

    async def _attempt(self, key: K, state: _KeyState) -> CacheLookup[V] | None:
        """One try at answering; ``None`` when an invalidation made it start over."""
        epoch, generation = state.epoch, self._generation
        record = await self._store.fetch(key, self._now())
        if not self._current(state, epoch, generation):
            await self._until_calm(state)
            return None  # invalidated while we were reading
        now = self._now()
        if record is not None and now < record.expires_at:
            self._hits += 1
            return CacheLookup(record.value, Served.FRESH, now - record.loaded_at, _FRESH)
        flight = state.flight
        in_background = self._tg is not None and not _RUNNING.get()
        window = self.policy.stale_while_revalidate
        if record is not None and window and now < record.expires_at + window:
            if flight is not None:
                return self._serve_stale(key, record, now, "expired; a refresh is in progress")
            if in_background:
                self._spawn(key, state, self._new_flight(state), refresh=True)
                return self._serve_stale(key, record, now, "expired; refreshing in the background")
            # Without a task group this caller refreshes; others are served stale meanwhile.
        if flight is None:
            flight = self._new_flight(state)
            if in_background:
                self._spawn(key, state, flight, refresh=False)
                await flight.done.wait()
            else:
                await self._load(key, state, flight)
        else:
            if flight in _RUNNING.get():
                raise RuntimeError(
                    f"cache {self.name!r}: the loader for {key!r} needs the value it is loading"
                )
            await flight.done.wait()
        return self._settle(key, state, flight)

    def _new_flight(self, state: _KeyState) -> _Flight:
        flight = _Flight(state.epoch, self._generation)
        state.flight = flight
        return flight

    def _settle(self, key: K, state: _KeyState, flight: _Flight) -> CacheLookup[V] | None:
        """What a caller of a finished load gets; ``None`` to start over."""
        outcome = flight.outcome
        if outcome == _ABANDONED or not self._current(state, flight.epoch, flight.generation):
            return None
        now = self._now()
        if outcome == _LOADED:
            self._misses += 1
            return CacheLookup(flight.value, Served.LOADED, now - flight.started, _LOADED_REASON)
        error = flight.error
        assert error is not None  # noqa: S101  (a failed or raising load recorded its exception)
        if outcome == _RAISED:
            self._misses += 1
            raise error.with_traceback(flight.traceback)
        return self._on_failure(key, flight.previous, now, error)

    def _serve_stale(
        self, key: K, record: CacheRecord[V], now: float, reason: str
    ) -> CacheLookup[V]:
        self._misses += 1
        self._stale_serves += 1
        _span_event("cache.stale_serves", self)
        return CacheLookup(record.value, Served.STALE, now - record.loaded_at, reason)

    def _on_failure(
        self, key: K, record: CacheRecord[V] | None, now: float, error: BaseException
    ) -> CacheLookup[V]:
        self._misses += 1
        decision: _Serve | None = self.policy._on_failure(key, record, now)
        if decision is None:
            self._denials += 1
            _span_event("cache.denials", self)
            raise CacheLoadError(self.name, key=key, policy=self.policy.name) from error
        served = decision.served
        age = None if decision.record is None else now - decision.record.loaded_at
        if served is Served.STALE:
            self._stale_serves += 1
            _span_event("cache.stale_serves", self)
        else:
            self._fail_open_serves += 1
            _span_event("cache.fail_open_serves", self)
            self._fell_back(key, served, age, error)
        return CacheLookup(decision.value, served, age, decision.reason, error)

    def _fell_back(self, key: K, served: Served, age: float | None, error: BaseException) -> None:
        policy = self.policy
        callback = policy.on_fallback if isinstance(policy, FailOpen) else None
        if callback is None:
            _telemetry.logger.warning(
                "cache %r: loading %r failed (%s); serving the %s value",
                self.name,
                key,
                type(error).__name__,
                "last known good" if served is Served.FALLBACK else "default",
            )
            return
        try:
            callback(FallbackEvent(self.name, key, served, age, error))
        except Exception:  # noqa: BLE001  (a broken callback must not break the get)
            _telemetry.logger.exception("cache %r: the on_fallback callback failed", self.name)

    # -- loading ------------------------------------------------------------------------

    def _record_for(self, value: V, started: float) -> CacheRecord[V] | None:
        if self._is_negative(value):
            if self.negative_ttl is None:
                return None
            expires_at = started + self.negative_ttl
        else:
            expires_at = started + self.ttl
        return CacheRecord(value, started, expires_at, self.policy._retain_until(expires_at))

    async def _load(self, key: K, state: _KeyState, flight: _Flight) -> None:
        """Run ``flight``: call the loader, store the result, record the outcome."""
        token = _RUNNING.set((*_RUNNING.get(), flight))
        store = self._store
        self._loads += 1
        self._in_progress += 1
        epoch: int | None = None
        try:
            try:
                with anyio.CancelScope(shield=True):  # a begun load is always ended
                    begun = epoch = await store.begin_load(key)
                flight.started = started = self._now()
                value = self._loader(key)
                if inspect.isawaitable(value):
                    value = await value
                record = self._record_for(value, started)
                epoch = None
                with anyio.CancelScope(shield=True):
                    stored = await store.complete_load(key, begun, record)
            except Exception as exc:  # noqa: BLE001  (the policy decides; `on` filters below)
                if epoch is not None:
                    store.abort_load(key, epoch)
                    epoch = None
                flight.error, flight.traceback = exc, exc.__traceback__
                if not self._handles(exc):
                    flight.outcome = _RAISED
                    return
                self._load_failures += 1
                if not isinstance(self.policy, FailClosed):  # it never falls back
                    flight.previous = await self._last_known(key)
                flight.outcome = _FAILED
                return
            flight.value = value
            flight.outcome = _LOADED if stored else _ABANDONED
        finally:
            if epoch is not None:
                store.abort_load(key, epoch)  # cancelled, or KeyboardInterrupt and the like
            if flight.outcome == _PENDING:
                flight.outcome = _ABANDONED
            self._in_progress -= 1
            if state.flight is flight:
                state.flight = None
            flight.done.set()
            _RUNNING.reset(token)

    async def _last_known(self, key: K) -> CacheRecord[V] | None:
        """The record a policy may fall back on after a failed load."""
        try:
            return await self._store.fetch(key, self._now())
        except Exception:  # noqa: BLE001  (a store that cannot answer has nothing to fall back on)
            _telemetry.logger.exception("cache %r: reading %r after a failed load", self.name, key)
            return None

    def _spawn(self, key: K, state: _KeyState, flight: _Flight, *, refresh: bool) -> None:
        tg = self._tg
        assert tg is not None  # noqa: S101  (only called inside `async with cache`)
        state.refs += 1  # the background load holds the key's state until it ends
        self._running[flight] = (key, state)
        tg.start_soon(self._background, key, state, flight, refresh)

    async def _background(self, key: K, state: _KeyState, flight: _Flight, refresh: bool) -> None:
        try:
            await self._load(key, state, flight)
        finally:
            self._running.pop(flight, None)
            self._release(key, state)
        if refresh and flight.outcome == _RAISED:
            _telemetry.logger.error(
                "cache %r: refreshing %r raised an exception the policy does not handle",
                self.name,
                key,
                exc_info=flight.error,
            )

    # -- writing ------------------------------------------------------------------------

    def _hold(self, key: K) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        state.refs += 1
        return state

    @staticmethod
    def _forget(state: _KeyState) -> None:
        """Make everything read or loaded for the key until now unservable here."""
        state.epoch += 1
        state.flight = None  # later callers start a new load rather than join this one

    async def _invalidate_in_store(self, key: K) -> None:
        """Invalidate ``key`` here at once and in the store, which may take a while.

        Until the store is done, what it returns for the key may predate the
        invalidation: nothing read meanwhile is served, and the epoch moves on again
        once it is done.
        """
        self._invalidations += 1
        state = self._hold(key)
        state.invalidating += 1
        if state.calm is None:
            state.calm = anyio.Event()
        self._forget(state)
        try:
            with anyio.CancelScope(shield=True):  # once begun, an invalidation completes
                await self._store.invalidate(key)
        finally:
            self._forget(state)
            state.invalidating -= 1
            if not state.invalidating and state.calm is not None:
                state.calm.set()
                state.calm = None
            self._release(key, state)

    async def invalidate(self, key: K) -> None:
        """Drop ``key``: the next get loads it again; loads already running cannot store.

        Call it from the event that makes the value wrong (MemberRemoved,
        EntitlementsChanged). From the moment it is called, no `get` returns a value
        read or loaded before it; a get waiting on such a load starts a new one. Once
        begun, it completes even if the caller is cancelled.

        Examples:
            >>> import anyio
            >>> calls = []
            >>> async def load(key: str) -> int:
            ...     calls.append(key)
            ...     return len(calls)
            >>> cache = PolicyCache(load, ttl=60.0)
            >>> async def main() -> None:
            ...     await cache.get("a")
            ...     await cache.invalidate("a")
            ...     print(await cache.get("a"))
            >>> anyio.run(main)
            2
        """
        await self._invalidate_in_store(key)

    def _forget_all(self) -> None:
        self._generation += 1
        for state in self._keys.values():
            state.flight = None

    async def invalidate_all(self) -> None:
        """Drop every key, as `invalidate` does for one.

        Examples:
            >>> import anyio
            >>> async def load(key: str) -> str:
            ...     return key
            >>> cache = PolicyCache(load, ttl=60.0)
            >>> anyio.run(cache.invalidate_all)
            >>> cache.stats().invalidations
            1
        """
        self._invalidations += 1
        calm = self._calm_all
        if calm is None:
            calm = self._calm_all = anyio.Event()
        self._invalidating_all += 1
        self._forget_all()
        try:
            with anyio.CancelScope(shield=True):
                await self._store.invalidate_all()
        finally:
            self._forget_all()
            self._invalidating_all -= 1
            if not self._invalidating_all:
                calm.set()
                self._calm_all = None

    async def put(self, key: K, value: V) -> None:
        """Store ``value`` for ``key`` as if just loaded; loads already running cannot store.

        For events that carry the new value. It counts as an invalidation.

        Examples:
            >>> import anyio
            >>> async def load(org: str) -> str:
            ...     return "free"
            >>> cache = PolicyCache(load, ttl=3600.0)
            >>> async def main() -> None:
            ...     await cache.put("org-1", "pro")  # from an EntitlementsChanged event
            ...     print(await cache.get("org-1"))
            >>> anyio.run(main)
            pro
        """
        _check_key(key)
        await self._invalidate_in_store(key)
        store = self._store
        with anyio.CancelScope(shield=True):
            epoch = await store.begin_load(key)
            record = self._record_for(value, self._now())
            await store.complete_load(key, epoch, record)

    # -- lifecycle and metrics ----------------------------------------------------------

    async def __aenter__(self) -> PolicyCache[K, V]:
        """Give the cache a task group: loads and refreshes run there, in the background."""
        if self._tg is not None:
            raise RuntimeError(f"cache {self.name!r} is already running a task group")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Cancel the loads still running in the background and wait for them to end.

        Callers still waiting on one of them start it again in their own task.
        """
        tg, self._tg = self._tg, None
        assert tg is not None  # noqa: S101  (entered before)
        tg.cancel_scope.cancel()
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            # A background load cancelled before it ever ran (asyncio can do that) left
            # its flight pending: settle it so that its waiters start over.
            for flight, (key, state) in list(self._running.items()):
                del self._running[flight]
                flight.outcome = _ABANDONED
                if state.flight is flight:
                    state.flight = None
                flight.done.set()
                self._release(key, state)

    def stats(self) -> CacheStats:
        """A snapshot of the counters (also reported to OpenTelemetry as ``resilience.cache.*``).

        Examples:
            >>> import anyio
            >>> async def load(key: str) -> str:
            ...     return key
            >>> cache = PolicyCache(load, ttl=60.0)
            >>> async def main() -> None:
            ...     for _ in range(3):
            ...         await cache.get("a")
            >>> anyio.run(main)
            >>> stats = cache.stats()
            >>> stats.hits, stats.misses, stats.loads
            (2, 1, 1)
        """
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            loads=self._loads,
            load_failures=self._load_failures,
            stale_serves=self._stale_serves,
            fail_open_serves=self._fail_open_serves,
            denials=self._denials,
            invalidations=self._invalidations,
            loads_in_progress=self._in_progress,
        )
