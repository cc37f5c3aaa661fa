"""Idempotency records in memory: the reference implementation of `IdempotencyStore`."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import anyio.lowlevel

from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.messaging._integrity import read_idempotency_record
from resilience_kit.messaging._records import IdempotencyRecord, IdempotencyStatus

__all__ = ("MemoryIdempotencyStore",)


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    status: IdempotencyStatus
    token: str
    result: bytes | None
    expires_at: float  # on the store's clock (monotonic)


class MemoryIdempotencyStore:
    """Idempotency records in a dict, expiring on the injected clock.

    Every method takes the lock, so a claim is one arbitrated step even across threads;
    each method yields to the scheduler *before* it changes anything, so a cancelled
    caller never leaves a change it did not see. A zero or negative duration expires at
    once (a claim that wins but holds nothing; a result that is discarded). Expired
    records are invisible at once and kept until `purge_expired` (or a new claim of
    their key) removes them.

    Args:
        clock: the clock records expire on (default: the one
            `resilience_kit.testing.use_clock` installed, else the system clock, looked
            up on every operation).

    Examples:
        >>> import anyio
        >>> from resilience_kit.testing import VirtualClock
        >>> clock = VirtualClock()
        >>> store = MemoryIdempotencyStore(clock)
        >>> async def main() -> None:
        ...     first = await store.claim("order-17", "f1", token="t1", lock_for=30.0)
        ...     again = await store.claim("order-17", "f1", token="t2", lock_for=30.0)
        ...     print(first.token, again.token, again.status)
        ...     await store.complete("order-17", token="t1", result=b"42", ttl=60.0)
        ...     print((await store.get("order-17")).result)
        ...     clock.advance(60.0)
        ...     print(await store.get("order-17"))
        >>> anyio.run(main)
        t1 t1 in_progress
        b'42'
        None
    """

    __slots__ = ("_clock", "_entries", "_lock")

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryIdempotencyStore({len(self._entries)} records)"

    def _now(self) -> float:
        return resolve_clock(self._clock).monotonic()

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        return None if entry is None or entry.expires_at <= now else entry

    def _record(self, key: str, entry: _Entry, now: float) -> IdempotencyRecord:
        return read_idempotency_record(
            store=repr(self),
            key=key,
            fields={
                "fingerprint": entry.fingerprint,
                "status": entry.status,
                "token": entry.token,
                "result": entry.result,
                "expires_in": entry.expires_at - now,
            },
        )

    def _owned(self, key: str, token: str, now: float) -> _Entry | None:
        entry = self._live(key, now)
        if entry is None or entry.status != "in_progress" or entry.token != token:
            return None
        return entry

    async def claim(
        self, key: str, fingerprint: str, *, token: str, lock_for: float
    ) -> IdempotencyRecord:
        """Claim ``key`` for the call ``token``, or return the live record that holds it."""
        await anyio.lowlevel.checkpoint()
        with self._lock:
            now = self._now()
            entry = self._live(key, now)
            if entry is None:
                entry = _Entry(fingerprint, "in_progress", token, None, now + lock_for)
                if lock_for > 0:
                    self._entries[key] = entry
                else:  # expired at once: nothing to keep, and nothing expired to keep either
                    self._entries.pop(key, None)
            return self._record(key, entry, now)

    async def complete(self, key: str, *, token: str, result: bytes, ttl: float) -> bool:
        """Store ``result`` for the in-progress call ``token`` owns; False when not owned."""
        await anyio.lowlevel.checkpoint()
        with self._lock:
            now = self._now()
            entry = self._owned(key, token, now)
            if entry is None:
                return False
            entry.status = "completed"
            entry.result = bytes(result)
            entry.expires_at = now + ttl
            if ttl <= 0:
                del self._entries[key]
            return True

    async def release(self, key: str, *, token: str) -> bool:
        """Delete the in-progress record ``token`` owns; False when not owned."""
        await anyio.lowlevel.checkpoint()
        with self._lock:
            if self._owned(key, token, self._now()) is None:
                return False
            del self._entries[key]
            return True

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``, or ``None``."""
        await anyio.lowlevel.checkpoint()
        with self._lock:
            now = self._now()
            entry = self._live(key, now)
            return None if entry is None else self._record(key, entry, now)

    async def purge_expired(self) -> int:
        """Delete expired records; return how many."""
        await anyio.lowlevel.checkpoint()
        with self._lock:
            now = self._now()
            expired = [key for key, entry in self._entries.items() if entry.expires_at <= now]
            for key in expired:
                del self._entries[key]
            return len(expired)
