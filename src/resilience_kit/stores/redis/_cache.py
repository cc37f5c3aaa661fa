"""RedisCacheStore: a `PolicyCache`'s records and invalidation epochs, shared in Redis."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio.to_thread
import pydantic
import pydantic_core

from resilience_kit import _telemetry
from resilience_kit._checks import check_positive
from resilience_kit._codec import ValueCodec
from resilience_kit.caching._store import CacheRecord, read_cache_record
from resilience_kit.clock import SYSTEM_CLOCK, Clock
from resilience_kit.errors import (
    CacheSerializationError,
    CacheStoreError,
    CacheStoreUnavailableError,
    ConfigurationError,
)
from resilience_kit.stores.redis._client import redis_client

if TYPE_CHECKING:
    import redis as redis_lib

__all__ = ("RedisCacheStore",)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Epochs are Redis-server microsecond timestamps, or the previous epoch + 1 when the
# server clock has not moved on (or went back). So they only grow, and they keep growing
# even if Redis loses the counter: a load in flight across a data loss cannot slip under
# a later invalidation. Every load takes a new epoch, which also dates it for the
# invalidation window below.
_PRELUDE = """
local function now_us()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function bump(seq_key, now)
    local seq = tonumber(redis.call('GET', seq_key) or '0') or 0
    if now <= seq then
        now = seq + 1
    end
    local epoch = string.format('%d', now)
    redis.call('SET', seq_key, epoch)
    return epoch
end
"""

# KEYS: seq.
_BEGIN = _PRELUDE + "return bump(KEYS[1], now_us())\n"

# KEYS: cleared, tombstones, record. ARGV: epoch, window (us), payload, ttl (ms; '0'
# removes the record), the key. Returns 1 (stored), 0 (invalidated since the load
# began), -1 (the load began so long ago that its invalidations may be forgotten) or
# -2 (the cleared epoch is not a number: refusing every load would loop the cache).
_COMPLETE = (
    _PRELUDE
    + """
local epoch = tonumber(ARGV[1])
if epoch < now_us() - tonumber(ARGV[2]) then
    return -1
end
local cleared = redis.call('GET', KEYS[1])
if cleared and not tonumber(cleared) then
    return -2
end
if cleared and tonumber(cleared) > epoch then
    return 0
end
local invalidated = redis.call('ZSCORE', KEYS[2], ARGV[5])
if invalidated and tonumber(invalidated) > epoch then
    return 0
end
if ARGV[4] == '0' then
    redis.call('DEL', KEYS[3])
else
    redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
end
return 1
"""
)

# KEYS: seq, tombstones, record. ARGV: the key, window (us). A tombstone (the key, scored
# by the invalidation's epoch) outlives every load that may still complete; older ones
# are pruned here, so the set holds one window's worth of invalidations.
_INVALIDATE = (
    _PRELUDE
    + """
local now = now_us()
local epoch = bump(KEYS[1], now)
redis.call('ZADD', KEYS[2], epoch, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[2])))
redis.call('DEL', KEYS[3])
return epoch
"""
)

# KEYS: seq, cleared.
_INVALIDATE_ALL = (
    _PRELUDE
    + """
local epoch = bump(KEYS[1], now_us())
redis.call('SET', KEYS[2], epoch)
return epoch
"""
)

# KEYS: cleared, then records. Deletes those from before the last invalidate_all, and
# anything under a record key that is not a record.
_SWEEP = """
local cleared = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local removed = 0
for i = 2, #KEYS do
    local raw = redis.pcall('GET', KEYS[i])
    local epoch = nil
    if type(raw) == 'string' then
        epoch = tonumber(string.match(raw, '^rk1|(%d+)|'))
    end
    if raw ~= false and (epoch == nil or epoch < cleared) then
        redis.call('DEL', KEYS[i])
        removed = removed + 1
    end
end
return removed
"""

_MAGIC = b"rk1"
_SWEEP_BATCH = 500


class RedisCacheStore(Generic[K, V]):
    """A `CacheStore` in Redis: every instance of a service shares one cache, and its invalidations.

    Give each cache its own ``prefix`` and pass the store to the `PolicyCache` of every
    instance (every pod): a value loaded by one instance is served by all, and
    ``invalidate(key)`` or ``invalidate_all()`` on any instance is seen by all from the
    moment it returns. Atomic Lua scripts do what `MemoryCacheStore` does in memory:
    an invalidation deletes the record, moves the epoch on and leaves a tombstone, and
    a load (which takes its epoch before calling the loader) stores its result only if
    no invalidation of its key, or of everything, happened since — on any instance.
    So the MemberRemoved race is closed across instances: a slow load on one pod can
    neither store nor serve a membership another pod has invalidated (refused, the
    load's callers load again).

    **Nothing is mirrored locally.** `peek` always answers ``None``, so every `get` is
    a Redis round trip: that is what makes a remote invalidation visible at once, with
    no pub/sub message to miss. A `PolicyCache` keeps nothing between calls; while a
    load runs it keeps the load (callers join it, and it stores nothing if invalidated
    meanwhile) and the epochs of its *own* invalidations, which only make it more
    careful. A get that read Redis just before another instance's invalidation may
    still return what it read: the read came first.

    **Threads, not asyncio.** redis-py's asyncio client runs on asyncio only; this store
    calls the synchronous client through ``anyio.to_thread.run_sync`` (anyio's default
    limiter, 40 threads), so it works on asyncio and trio alike, as `RedisBreakerStore`
    does. The hop has a price: on a shared 2-core machine with a local Redis, a bare
    ``GET`` took 0.2 ms, through a thread 0.4 ms, and a cache hit 0.5 ms — on both
    backends. Beside a network round trip to Redis, acceptable for one portable store.

    **Values** are serialised with pydantic: with ``value_type``, a
    ``pydantic.TypeAdapter(value_type)`` writes and validates them (models, dataclasses,
    tuples, datetimes...); without, they must be plain JSON (dicts with string keys,
    lists, strings, numbers, booleans, ``None``) and must come back equal, so a tuple
    or a set is refused rather than stored as something else. A value that cannot be
    stored raises `CacheSerializationError` naming the key. Keys are written as JSON by
    default (strings, numbers, UUIDs, ``None`` and tuples of them: what every process
    writes the same way), or by ``key_serializer``.

    **Size and expiry.** Every record carries a Redis TTL: until the time its policy
    could last serve it (``retain_until``), or, for records the policy keeps
    indefinitely (a `FailOpen` cache's last known good value), ``retention`` seconds
    past their expiry. There is no
    ``max_size``: bound the memory with Redis's ``maxmemory`` and
    ``maxmemory-policy volatile-lru`` (or ``volatile-ttl``), which evict only keys with
    a TTL, that is records, never the epoch keys. Under ``noeviction`` (Redis's default)
    a full Redis refuses writes: loads then fail and the policy decides.

    **Outages.** When Redis cannot be reached, `fetch` reports a miss and logs a
    warning (once per outage), and `begin_load`, `complete_load` and the invalidations
    raise `CacheStoreUnavailableError`: the cache's policy then decides — `FailClosed`
    denies (without calling the loader: an instance that cannot see invalidations does
    not let anyone in), `FailOpen` serves its default. A failed ``invalidate`` did not
    happen: retry it (an event consumer should not acknowledge its event). Every
    operation waits at most the client's socket timeouts: 1 s for a client made from
    ``url``; give a client you pass ``socket_timeout`` and ``socket_connect_timeout``,
    since the cache shields loads and invalidations from cancellation. A record that
    cannot be read back (corrupt bytes, a wrong type under its key) is logged and
    reported as a miss.

    **Limits.** Redis replication is asynchronous: a failover can lose the last
    writes, an acknowledged invalidation among them, and with it the record it deleted
    may come back. (Losing the epoch counter is harmless: epochs are Redis-server
    microsecond timestamps, so they keep growing.) Invalidations are remembered for
    ``invalidation_ttl`` seconds: storing the result of a load that ran longer fails
    with `CacheStoreError`, and the policy decides. Freshness is judged on each
    instance's wall clock, so clock skew between instances shifts it. On Redis
    Cluster, put a hash tag in the prefix (``"{members}:"``): the scripts use several
    keys.

    Args:
        client: a synchronous ``redis.Redis`` client; or give ``url``.
        url: a Redis URL such as ``redis://localhost:6379/0``.
        prefix: the prefix of this cache's keys, one per cache (``":"`` is appended if
            it does not end with one).
        value_type: the type of the cached values, for pydantic; ``None``: plain JSON.
        key_serializer: turns a key into the string in Redis (default: JSON).
        retention: seconds Redis keeps a record its policy keeps indefinitely, once
            it has expired.
        invalidation_ttl: seconds an invalidation is remembered, longer than any load.
        clock: the clock of the caches using this store (records hold its monotonic
            times; Redis holds wall times).

    Raises:
        ConfigurationError: for a bad parameter.

    Examples:
        <!-- not run: needs a Redis server and your is_member -->
        ```python
        store = RedisCacheStore(url="redis://redis:6379/0", prefix="memberships")
        memberships = PolicyCache(is_member, ttl=900, policy=FailClosed(), store=store)
        ```
    """

    __slots__ = (
        "_begin",
        "_clear",
        "_client",
        "_clock",
        "_complete",
        "_healthy",
        "_invalidate",
        "_key_serializer",
        "_owns_client",
        "_redis_errors",
        "_sweep",
        "_unavailable",
        "_values",
        "_window_us",
        "invalidation_ttl",
        "prefix",
        "retention",
    )

    def __init__(
        self,
        client: redis_lib.Redis | None = None,
        *,
        url: str | None = None,
        prefix: str,
        value_type: Any = None,
        key_serializer: Callable[[K], str] | None = None,
        retention: float = 86_400.0,
        invalidation_ttl: float = 3_600.0,
        clock: Clock | None = None,
    ) -> None:
        owns_client = client is None
        redis, client = redis_client("RedisCacheStore", client, url)
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError("prefix", f"must be a non-empty string, got {prefix!r}")
        check_positive("retention", retention)
        check_positive("invalidation_ttl", invalidation_ttl)
        if key_serializer is not None and not callable(key_serializer):
            raise ConfigurationError("key_serializer", f"must be callable, got {key_serializer!r}")
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError("clock", f"must implement Clock, got {clock!r}")
        try:
            values = ValueCodec() if value_type is None else ValueCodec.for_type(value_type)
        except pydantic.PydanticUserError as exc:
            raise ConfigurationError("value_type", f"pydantic cannot use it: {exc}") from exc
        self._owns_client = owns_client
        self._client: redis_lib.Redis = client
        self.prefix = prefix if prefix.endswith(":") else prefix + ":"
        self.retention = float(retention)
        self.invalidation_ttl = float(invalidation_ttl)
        self._window_us = max(1, round(self.invalidation_ttl * 1_000_000))
        self._values = values
        self._key_serializer = key_serializer
        self._clock = clock or SYSTEM_CLOCK
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        # Errors that mean "cannot reach a writable Redis" (READONLY: a demoted primary
        # during a failover); any other Redis error is a refusal of the operation.
        self._unavailable: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            redis.exceptions.ReadOnlyError,
            OSError,
        )
        self._healthy = True
        self._begin = client.register_script(_BEGIN)
        self._complete = client.register_script(_COMPLETE)
        self._invalidate = client.register_script(_INVALIDATE)
        self._clear = client.register_script(_INVALIDATE_ALL)
        self._sweep = client.register_script(_SWEEP)

    def __repr__(self) -> str:
        return f"RedisCacheStore(prefix={self.prefix!r})"

    @property
    def healthy(self) -> bool:
        """``False`` from a failed Redis operation until one succeeds again."""
        return self._healthy

    def close(self) -> None:
        """Close the connections of a client this store made from ``url``."""
        if self._owns_client:
            self._client.close()

    # -- the CacheStore protocol ----------------------------------------------------------

    def peek(self, key: K) -> CacheRecord[V] | None:
        """Return ``None``: nothing is mirrored here, so every read asks Redis (`fetch`)."""
        return None

    async def fetch(self, key: K, now: float) -> CacheRecord[V] | None:
        """Read ``key``'s record from Redis; ``None`` if absent, unreadable, or Redis is down."""
        record_key = self._record_key(key)
        try:
            raw, cleared = await anyio.to_thread.run_sync(self._fetch_sync, record_key)
        except self._redis_errors as exc:
            self._failed(exc)
            return None
        self._succeeded()
        if raw is None:
            return None
        record = self._decode(key, raw, cleared)
        if record is None or (record.retain_until is not None and now >= record.retain_until):
            return None
        return record

    async def begin_load(self, key: K) -> int:
        """Take a new epoch in Redis for a load of ``key``.

        Raises:
            CacheStoreUnavailableError: Redis cannot be reached.
        """
        self._record_key(key)  # an unserialisable key fails before the loader runs
        reply = await self._run(key, self._begin, [self._seq_key], [])
        return int(reply)

    async def complete_load(self, key: K, epoch: int, record: CacheRecord[V] | None) -> bool:
        """Store ``record`` (``None``: remove the key) unless ``key`` was invalidated since.

        Raises:
            CacheSerializationError: the value cannot be serialised; nothing was stored.
            CacheStoreUnavailableError: Redis cannot be reached.
            CacheStoreError: the load began more than ``invalidation_ttl`` seconds ago.
        """
        key_text = self._key_text(key)
        payload = b""
        ttl_ms = 0
        if record is not None:
            payload = self._encode(key, epoch, record)
            if record.retain_until is None:
                until = record.expires_at + self.retention
            else:
                until = record.retain_until
            ttl_ms = max(0, math.ceil((until - self._clock.monotonic()) * 1000))
        keys = [self._cleared_key, self._tombstones_key, self.prefix + "rec:" + key_text]
        args = [epoch, self._window_us, payload, ttl_ms, key_text]
        outcome = int(await self._run(key, self._complete, keys, args))
        if outcome == -1:
            raise CacheStoreError(
                f"{self!r}: the load of {key!r} began more than invalidation_ttl="
                f"{self.invalidation_ttl:g}s ago, so invalidations since cannot be ruled out;"
                " its result was not stored",
                store=repr(self),
                key=key,
            )
        if outcome == -2:
            raise CacheStoreError(
                f"{self!r}: the epoch in {self._cleared_key!r} is corrupt; delete that key"
                " (every record from before it goes with it: run invalidate_all)",
                store=repr(self),
                key=key,
            )
        return outcome == 1

    def abort_load(self, key: K, epoch: int) -> None:
        """Do nothing: epochs in Redis need no bookkeeping per load."""

    async def invalidate(self, key: K) -> None:
        """Drop ``key``'s record in Redis; no load of it begun before, on any instance, can store.

        Raises:
            CacheStoreUnavailableError: Redis cannot be reached; the invalidation did not
                happen, so retry it.
        """
        key_text = self._key_text(key)
        keys = [self._seq_key, self._tombstones_key, self.prefix + "rec:" + key_text]
        await self._run(key, self._invalidate, keys, [key_text, self._window_us])

    async def invalidate_all(self) -> None:
        """Drop every record of this prefix; no load begun before, on any instance, can store.

        The epoch moves on atomically; the records from before are then deleted in
        batches (until then they are never returned).

        Raises:
            CacheStoreUnavailableError: Redis cannot be reached; nothing was invalidated.
        """
        await self._run(None, self._clear, [self._seq_key, self._cleared_key], [])
        try:
            await anyio.to_thread.run_sync(self._sweep_sync)
        except self._redis_errors as exc:  # the epoch already hides them; TTLs remove them
            self._failed(exc)

    # -- Redis I/O (on worker threads) ----------------------------------------------------

    @property
    def _seq_key(self) -> str:
        return self.prefix + "seq"

    @property
    def _cleared_key(self) -> str:
        return self.prefix + "cleared"

    @property
    def _tombstones_key(self) -> str:
        return self.prefix + "invalidated"

    def _fetch_sync(self, record_key: str) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        pipe.get(record_key)
        pipe.get(self._cleared_key)
        # A key of the wrong type comes back as an error in place, not raised.
        return pipe.execute(raise_on_error=False)

    def _sweep_sync(self) -> None:
        pattern = _glob_escape(self.prefix + "rec:") + "*"
        batch: list[Any] = []
        for record_key in self._client.scan_iter(match=pattern, count=_SWEEP_BATCH):
            batch.append(record_key)
            if len(batch) == _SWEEP_BATCH:
                self._sweep(keys=[self._cleared_key, *batch])
                batch.clear()
        if batch:
            self._sweep(keys=[self._cleared_key, *batch])

    async def _run(self, key: K | None, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` on a worker thread; Redis errors become `CacheStoreError`."""
        try:
            reply = await anyio.to_thread.run_sync(lambda: script(keys=keys, args=args))
        except self._unavailable as exc:
            self._failed(exc)
            raise CacheStoreUnavailableError(
                f"{self!r}: Redis is unreachable ({type(exc).__name__}: {exc})",
                store=repr(self),
                key=key,
            ) from exc
        except self._redis_errors as exc:
            raise CacheStoreError(
                f"{self!r}: Redis refused the operation: {exc}", store=repr(self), key=key
            ) from exc
        self._succeeded()
        return reply

    def _failed(self, exc: BaseException) -> None:
        if self._healthy:
            self._healthy = False
            _telemetry.logger.warning(
                "%r: Redis unreachable (%s: %s); reads miss and loads fail until it is back",
                self,
                type(exc).__name__,
                exc,
            )

    def _succeeded(self) -> None:
        if not self._healthy:
            self._healthy = True
            _telemetry.logger.warning("%r: Redis reachable again", self)

    # -- keys and records <-> bytes -------------------------------------------------------

    def _key_text(self, key: K) -> str:
        serializer = self._key_serializer
        try:
            text: object = _json_key(key) if serializer is None else serializer(key)
        except Exception as exc:
            raise CacheSerializationError(
                f"{self!r}: cannot serialise the key {key!r}: {exc}", store=repr(self), key=key
            ) from exc
        if not isinstance(text, str):
            raise CacheSerializationError(
                f"{self!r}: key_serializer returned {type(text).__name__} for {key!r}, not str",
                store=repr(self),
                key=key,
            )
        return text

    def _record_key(self, key: K) -> str:
        return self.prefix + "rec:" + self._key_text(key)

    def _encode(self, key: K, epoch: int, record: CacheRecord[V]) -> bytes:
        value = self._dump(key, record.value)
        offset = self._clock.time() - self._clock.monotonic()
        retain = "" if record.retain_until is None else repr(record.retain_until + offset)
        header = f"{epoch}|{record.loaded_at + offset!r}|{record.expires_at + offset!r}|{retain}|"
        return _MAGIC + b"|" + header.encode() + value

    def _dump(self, key: K, value: V) -> bytes:
        try:
            payload = self._values.dump(value)
            same = self._values.survives(value, payload)  # what cannot be read back is not stored
        except (ValueError, TypeError) as exc:  # pydantic's errors are ValueErrors
            raise CacheSerializationError(
                f"{self!r}: cannot serialise the value for {key!r}: {exc}",
                store=repr(self),
                key=key,
            ) from exc
        if not same:
            raise CacheSerializationError(
                f"{self!r}: the value for {key!r} ({type(value).__name__}) does not survive a"
                " JSON round trip unchanged; give the store a value_type",
                store=repr(self),
                key=key,
            )
        return payload

    def _decode(self, key: K, raw: Any, cleared: Any) -> CacheRecord[V] | None:
        """The record in ``raw``, or ``None`` (logged) if it is not one or predates ``cleared``."""
        try:
            if isinstance(raw, BaseException):
                raise raw  # noqa: TRY301  (a wrong-type key: report it like garbage)
            magic, epoch, loaded, expires, retain, value = raw.split(b"|", 5)
            if magic != _MAGIC:
                raise ValueError("not a record")  # noqa: TRY301
            if cleared is not None and int(cleared) > int(epoch):
                return None  # from before an invalidate_all not yet swept
            offset = self._clock.monotonic() - self._clock.time()
            times = {
                "loaded_at": _number(loaded),
                "expires_at": _number(expires),
                "retain_until": _number(retain) if retain else None,
            }
            return read_cache_record(
                store=repr(self),
                key=key,
                value=self._values.load(value),
                fields=times,
                offset=offset,
            )
        except Exception as exc:  # noqa: BLE001  (garbage in Redis is a miss, not a crash)
            _telemetry.logger.warning(
                "%r: the record for %r in Redis is unreadable (%s: %s); treating it as a miss",
                self,
                key,
                type(exc).__name__,
                exc,
            )
            return None


def _number(text: bytes) -> object:
    """A time in a record's header as a float; unparsable text is left for the rule to report."""
    try:
        return float(text)
    except ValueError:
        return text


def _plain(key: object) -> bool:
    if isinstance(key, tuple):
        return all(_plain(part) for part in key)
    return key is None or isinstance(key, (str, int, float, uuid.UUID))


def _json_key(key: object) -> str:
    """A key as JSON: the same text for equal keys in every process."""
    if not _plain(key):
        # A set, say, would serialise in an order that differs between processes.
        raise TypeError(
            "the default key serializer takes str, int, float, UUID, None and tuples of"
            f" them, not {type(key).__name__}: give the store a key_serializer"
        )
    return pydantic_core.to_json(key).decode()


def _glob_escape(text: str) -> str:
    """Escape the characters Redis's SCAN MATCH treats as a pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


# Reprs and docs name the public home (resilience_kit.stores.redis re-exports it).
RedisCacheStore.__module__ = "resilience_kit.stores.redis"
