"""Inbox records in Redis: a sorted set per consumer, event ids scored by Redis's clock."""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn
from uuid import UUID

from resilience_kit import _telemetry
from resilience_kit._integrity import corrupt_record
from resilience_kit.errors import CorruptRecordError

if TYPE_CHECKING:
    from resilience_kit.stores.redis._client import RedisIO

__all__ = ("RedisInboxStore",)

_FOREVER = 1e12  # seconds (31,000 years): what an infinite age becomes

# Scores are Redis-server microseconds (exact in a double until the year 2255).
# A record is live while younger than the retention; older ones are absent for every
# script, and trimmed when their consumer records again (or by purge).
_PRELUDE = """
local function now_us()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function us(n)
    return string.format('%d', n)
end
local function live(key, member, cutoff)
    local score = redis.call('ZSCORE', key, member)
    return score ~= false and tonumber(score) > cutoff
end
-- Another type under a consumer's key: reported (a table reply), never overwritten.
local function wrongtype(key)
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'zset' and kind ~= 'none' then
        return {'wrongtype', kind}
    end
    return false
end
"""

# KEYS: the consumer's set, the consumer registry. ARGV: event id, retention (us),
# retention (ms), consumer. ZADD NX is the arbitration: 1 for the first record only.
_RECORD = (
    _PRELUDE
    + """
local wrong = wrongtype(KEYS[1])
if wrong then
    return wrong
end
local now = now_us()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', us(now - tonumber(ARGV[2])))
local added = redis.call('ZADD', KEYS[1], 'NX', us(now), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return added
"""
)

# KEYS: the consumer's set. ARGV: event id, retention (us).
_CONTAINS = (
    _PRELUDE
    + """
local wrong = wrongtype(KEYS[1])
if wrong then
    return wrong
end
if live(KEYS[1], ARGV[1], now_us() - tonumber(ARGV[2])) then
    return 1
end
return 0
"""
)

# KEYS: the consumer's set. ARGV: event id, retention (us).
_FORGET = (
    _PRELUDE
    + """
local wrong = wrongtype(KEYS[1])
if wrong then
    return wrong
end
local existed = live(KEYS[1], ARGV[1], now_us() - tonumber(ARGV[2]))
redis.call('ZREM', KEYS[1], ARGV[1])
if existed then
    return 1
end
return 0
"""
)

# KEYS: the consumer's set, the registry. ARGV: age (us), retention (us), consumer.
# Records past the retention were already absent: removed, but not counted.
_PURGE = (
    _PRELUDE
    + """
local wrong = wrongtype(KEYS[1])
if wrong then
    return wrong
end
local now = now_us()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', us(now - tonumber(ARGV[2])))
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', us(now - tonumber(ARGV[1])))
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('SREM', KEYS[2], ARGV[3])
end
return removed
"""
)


class RedisInboxStore:
    """An `InboxStore` in Redis: which events each consumer processed, for ``ttl`` seconds.

    Each consumer has a sorted set of event ids scored by the Redis server's time of
    recording (``TIME``, microseconds). ``record`` is one Lua script around
    ``ZADD NX`` — the arbitration: of any number of concurrent records of one event,
    exactly one returns True. A record is kept ``ttl`` seconds (the store's
    ``inbox_ttl``): older ones count as absent everywhere and are trimmed on the
    consumer's next ``record``, and a consumer idle for ``ttl`` loses its whole set to
    Redis's own expiry. So an event delivered again more than ``ttl`` after it was first
    processed is processed again: choose a ``ttl`` longer than your transport can
    redeliver (its retention, and the time a dead letter may wait for a replay).

    ``purge(older_than=...)`` removes, for every consumer (listed in a registry set),
    the records made at least ``older_than`` seconds ago by Redis's clock, and returns
    how many.

    ``mark`` and ``amark`` raise `TypeError`: they record the event inside the
    caller's SQL transaction, which Redis cannot join. Use ``record`` (then the
    consumer's own writes and the record commit separately: a crash between them
    re-runs or skips the handler), or an inbox in the consumer's SQL database when
    they must commit together.

    Attributes:
        ttl: seconds a record is kept.

    Examples:
        <!-- not run: a fragment; needs a Redis server -->
        ```python
        if await store.inbox.record("billing", event.id):
            await handle(event)  # the first delivery of this event to "billing"
        ```
    """

    __slots__ = ("_contains", "_forget", "_io", "_purge", "_record", "ttl")

    def __init__(self, io: RedisIO, *, ttl: float) -> None:
        self._io = io
        self.ttl = ttl
        self._record = io.script(_RECORD)
        self._contains = io.script(_CONTAINS)
        self._forget = io.script(_FORGET)
        self._purge = io.script(_PURGE)

    def __repr__(self) -> str:
        return f"{self._io.name}.inbox"

    @property
    def _registry(self) -> str:
        return f"{self._io.prefix}inbox:consumers"

    def _set(self, consumer: str) -> str:
        return f"{self._io.prefix}inbox:c:{consumer}"

    def _retention_us(self) -> int:
        return math.ceil(self.ttl * 1_000_000)

    def mark(self, connection: Any, consumer: str, event_id: UUID) -> bool:
        """Refuse: Redis cannot record an event inside the caller's SQL transaction.

        Raises:
            TypeError: always; use ``record``, or a SQL store's inbox.
        """
        self._no_transactions("mark")

    async def amark(self, connection: Any, consumer: str, event_id: UUID) -> bool:
        """Refuse, as `mark` does.

        Raises:
            TypeError: always; use ``record``, or a SQL store's inbox.
        """
        self._no_transactions("amark")

    async def record(self, consumer: str, event_id: UUID) -> bool:
        """Record the event as processed by ``consumer``; True the first time only.

        Raises:
            CorruptRecordError: the consumer's key holds something other than its records.
            StoreUnavailableError: Redis cannot be reached; nothing was recorded.
        """
        keys = [self._set(consumer), self._registry]
        args = [str(event_id), self._retention_us(), math.ceil(self.ttl * 1000), consumer]
        reply = await self._io.run(lambda: self._record(keys=keys, args=args))
        return self._answer(keys[0], reply)

    async def contains(self, consumer: str, event_id: UUID) -> bool:
        """Whether ``consumer`` recorded the event within the last ``ttl`` seconds.

        Raises:
            CorruptRecordError: the consumer's key holds something other than its records.
        """
        key = self._set(consumer)
        args = [str(event_id), self._retention_us()]
        return self._answer(key, await self._io.run(lambda: self._contains(keys=[key], args=args)))

    async def forget(self, consumer: str, event_id: UUID) -> bool:
        """Remove the record (so a replay is processed again); True if it existed.

        Raises:
            CorruptRecordError: the consumer's key holds something other than its records.
        """
        key = self._set(consumer)
        args = [str(event_id), self._retention_us()]
        return self._answer(key, await self._io.run(lambda: self._forget(keys=[key], args=args)))

    def _answer(self, key: str | bytes, reply: Any) -> bool:
        """A script's 0 or 1, or `CorruptRecordError` for its ``wrongtype`` reply."""
        if isinstance(reply, list):
            raise self._corrupt(key, reply[1])
        return bool(reply)

    def _corrupt(self, key: str | bytes, kind: bytes) -> CorruptRecordError:
        name = key.decode(errors="replace") if isinstance(key, bytes) else key
        return corrupt_record(
            store=self._io.name,
            kind="inbox records",
            record=name,
            problem=f"the key holds a {kind.decode(errors='replace')}, not a sorted set",
        )

    async def purge(self, *, older_than: float) -> int:
        """Remove records made at least ``older_than`` seconds ago; return how many."""
        age = math.ceil(max(-_FOREVER, min(older_than, _FOREVER)) * 1_000_000)
        retention = self._retention_us()
        consumers: set[Any] = await self._io.run(lambda: self._io.client.smembers(self._registry))
        prefix = self._set("").encode()
        removed = 0
        for name in sorted(consumers):
            keys = [prefix + name, self._registry.encode()]
            reply = await self._io.run(partial(self._purge, keys=keys, args=[age, retention, name]))
            if isinstance(reply, list):  # the other consumers are still purged
                _telemetry.logger.warning("%s; skipping it", self._corrupt(keys[0], reply[1]))
                continue
            removed += int(reply)
        return removed

    def _no_transactions(self, method: str) -> NoReturn:
        raise TypeError(
            f"{self!r}.{method}() cannot record an event inside your database transaction:"
            " Redis cannot join it. Use `await inbox.record(consumer, event_id)` (committed"
            " on its own), or the inbox of a SQL store (SQLiteStore, PostgresStore) when the"
            " consumer's writes and its de-duplication must commit together"
        )
