"""Idempotency records in Redis: one hash per key, claimed and fenced by Lua scripts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from resilience_kit._integrity import corrupt_record
from resilience_kit.errors import CorruptRecordError
from resilience_kit.messaging._integrity import read_idempotency_record
from resilience_kit.messaging._records import IdempotencyRecord

if TYPE_CHECKING:
    from resilience_kit.stores.redis._client import RedisIO

__all__ = ("RedisIdempotencyStore",)

# A record is a hash {fingerprint, status, token[, result]} whose Redis TTL is its expiry:
# Redis's clock decides, and an expired record is gone for every command at once.
# Replies: {'none'}, {'wrongtype', <type>} or {'held', pttl, fingerprint, status, token,
# result}; a missing field comes back as nil.
_READ = """
local function read(key)
    local kind = redis.call('TYPE', key)['ok']
    if kind == 'none' then
        return {'none'}
    end
    if kind ~= 'hash' then
        return {'wrongtype', kind}
    end
    local fields = redis.call('HMGET', key, 'fingerprint', 'status', 'token', 'result')
    return {'held', redis.call('PTTL', key), fields[1], fields[2], fields[3], fields[4]}
end
"""

# KEYS: record. ARGV: fingerprint, token, lock (ms). The one arbitrated step: Redis runs
# a script alone, so of any number of concurrent claims exactly one finds no record.
_CLAIM = (
    _READ
    + """
local found = read(KEYS[1])
if found[1] ~= 'none' then
    return found
end
local lock = tonumber(ARGV[3])
if lock > 0 then
    redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'status', 'in_progress', 'token', ARGV[2])
    redis.call('PEXPIRE', KEYS[1], lock)
end
return {'won'}
"""
)

_GET = _READ + "return read(KEYS[1])\n"

# The fence of complete and release: go on only for the in-progress record that the
# token (ARGV[1]) owns; anything else answers 0 and changes nothing.
_OWNED = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
    return 0
end
local fields = redis.call('HMGET', KEYS[1], 'status', 'token')
if fields[1] ~= 'in_progress' or fields[2] ~= ARGV[1] then
    return 0
end
"""

# KEYS: record. ARGV: token, result, ttl (ms). Fenced: only the in-progress record the
# token owns is completed; a zero ttl stores a result that has already expired.
_COMPLETE = (
    _OWNED
    + """
local ttl = tonumber(ARGV[3])
if ttl <= 0 then
    redis.call('DEL', KEYS[1])
    return 1
end
redis.call('HSET', KEYS[1], 'status', 'completed', 'result', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""
)

# KEYS: record. ARGV: token.
_RELEASE = _OWNED + "return redis.call('DEL', KEYS[1])\n"

_FOREVER = 1e12  # seconds (31,000 years): what an infinite duration becomes


def _milliseconds(seconds: float) -> int:
    """Whole milliseconds for PEXPIRE, rounded up so that a positive duration stays positive."""
    return math.ceil(max(-_FOREVER, min(seconds, _FOREVER)) * 1000)


class RedisIdempotencyStore:
    """An `IdempotencyStore` in Redis: a hash per key whose Redis TTL is its expiry.

    ``claim`` is one Lua script: the record is created only if the key holds none, so
    exactly one of any number of concurrent claims (in any process) wins. The record's
    lock, then its result's time to live, is a ``PEXPIRE`` — Redis's clock — and
    ``expires_in`` comes from ``PTTL``. ``complete`` and ``release`` are scripts fenced
    by the claim token: a call whose claim expired (and was perhaps claimed again)
    changes nothing. Results are stored as raw bytes in a hash field (binary safe).

    Expired records are removed by Redis itself, so ``purge_expired`` has nothing to do
    and returns 0.

    A value under a record's key that is not such a hash (tampered with, or written by
    something else sharing the prefix) raises `CorruptRecordError` from ``get`` and
    ``claim``, and is left in place.

    Durations are seconds, rounded up to whole milliseconds; a zero or negative one
    means "expired at once": such a claim wins and stores nothing, such a result is
    discarded.

    Examples:
        <!-- not run: a fragment; needs a Redis server -->
        ```python
        record = await store.idempotency.claim("t1:order-17", digest, token=token, lock_for=30)
        if record.token == token:  # won: run the call, then store its result
            await store.idempotency.complete("t1:order-17", token=token, result=data, ttl=86_400)
        ```
    """

    __slots__ = ("_claim", "_complete", "_get", "_io", "_release")

    def __init__(self, io: RedisIO) -> None:
        self._io = io
        self._claim = io.script(_CLAIM)
        self._get = io.script(_GET)
        self._complete = io.script(_COMPLETE)
        self._release = io.script(_RELEASE)

    def __repr__(self) -> str:
        return f"{self._io.name}.idempotency"

    def _key(self, key: str) -> str:
        return f"{self._io.prefix}idem:{key}"

    async def claim(
        self, key: str, fingerprint: str, *, token: str, lock_for: float
    ) -> IdempotencyRecord:
        """Atomically claim ``key`` for a new call, or return the live record that holds it.

        Raises:
            CorruptRecordError: the key holds something that is not a record.
            StoreUnavailableError: Redis cannot be reached.
        """
        lock = _milliseconds(lock_for)
        reply = await self._io.run(
            lambda: self._claim(keys=[self._key(key)], args=[fingerprint, token, lock])
        )
        if reply[0] == b"won":
            return IdempotencyRecord(
                key=key,
                fingerprint=fingerprint,
                status="in_progress",
                token=token,
                result=None,
                expires_in=lock / 1000,
            )
        return self._record(key, reply)

    async def complete(self, key: str, *, token: str, result: bytes, ttl: float) -> bool:
        """Store ``result`` for the call ``token`` owns; False (no change) when not owned.

        Raises:
            StoreUnavailableError: Redis cannot be reached; nothing was stored.
        """
        data = bytes(result)
        args = [token, data, _milliseconds(ttl)]
        reply = await self._io.run(lambda: self._complete(keys=[self._key(key)], args=args))
        return bool(reply)

    async def release(self, key: str, *, token: str) -> bool:
        """Delete the in-progress record ``token`` owns; False when not owned.

        Raises:
            StoreUnavailableError: Redis cannot be reached; nothing was deleted.
        """
        reply = await self._io.run(lambda: self._release(keys=[self._key(key)], args=[token]))
        return bool(reply)

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``, or ``None``.

        Raises:
            CorruptRecordError: the key holds something that is not a record.
            StoreUnavailableError: Redis cannot be reached.
        """
        reply = await self._io.run(lambda: self._get(keys=[self._key(key)]))
        if reply[0] == b"none":
            return None
        return self._record(key, reply)

    async def purge_expired(self) -> int:
        """Return 0: Redis deletes expired records itself (they carry a TTL)."""
        return 0

    def _record(self, key: str, reply: list[Any]) -> IdempotencyRecord:
        """The record in a ``held`` (or ``wrongtype``) reply of the scripts."""
        if reply[0] != b"held":
            kind = bytes(reply[1]).decode(errors="replace")
            raise self._corrupt(key, f"the key holds a {kind}, not a hash")
        pttl, fingerprint, status, token, result = reply[1:6]
        return read_idempotency_record(
            store=self._io.name,
            key=key,
            record=self._key(key),
            fields={
                "fingerprint": fingerprint,
                "status": status,
                "token": token,
                "result": result,
                "expires_in": math.inf if pttl < 0 else pttl / 1000,  # -1: no TTL (by hand)
            },
        )

    def _corrupt(self, key: str, problem: str) -> CorruptRecordError:
        return corrupt_record(
            store=self._io.name, kind="idempotency record", record=self._key(key), problem=problem
        )
