"""RedisBreakerStore: circuit-breaker state shared by every instance of a service."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from resilience_kit import _telemetry
from resilience_kit._checks import check_positive
from resilience_kit._integrity import corrupt_record
from resilience_kit.clock import SYSTEM_CLOCK, Clock
from resilience_kit.errors import ConfigurationError, CorruptRecordError
from resilience_kit.policies._breaker_store import (
    BreakerRecord,
    Subscribers,
    read_breaker_record,
)
from resilience_kit.stores.redis._client import redis_client

if TYPE_CHECKING:
    import redis as redis_lib

__all__ = ("RedisBreakerStore",)

# Compare-and-set: a write wins unless Redis already holds a newer version. Accepting
# "stored <= expected" (not only "==") lets an instance that kept going on its own during
# a Redis outage, or after Redis lost its data, write its state back on reconnect.
# A stored value whose version cannot be read (the one field the compare-and-set
# arbitrates on) is returned as it is, never overwritten: the store reports it as
# corrupt and leaves it for an operator. A readable version arbitrates as usual.
_CAS = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, decoded = pcall(cjson.decode, current)
    local version = ok and type(decoded) == 'table' and decoded['version']
    if type(version) ~= 'number' or version < 0 or version % 1 ~= 0 then
        return current
    end
    if version > tonumber(ARGV[1]) then
        return current
    end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return ARGV[2]
"""

_STOP = object()


class RedisBreakerStore:
    """A `BreakerStore` in Redis: breakers with one name, in any process, act as one.

    Every breaker keeps deciding from a local mirror, so a call never waits on Redis.
    Transitions are written with an atomic compare-and-set (a Lua script) and published;
    every store subscribes, and re-reads its records every ``sync_interval`` seconds in
    case a message was missed. When a transition loses a race the winner's state is
    adopted. When Redis is unreachable the breakers carry on as local breakers (a
    warning is logged once per outage) and their latest state is written back when it
    returns.

    Listeners of breakers using this store may be called from the store's background
    thread when the change came from another instance.

    Args:
        client: a `redis.Redis` client (sync); or give ``url``.
        url: a Redis URL such as ``redis://localhost:6379/0``.
        prefix: the key and channel prefix.
        sync_interval: seconds between full re-reads of the known breakers.
        clock: the clock of the breakers using this store (records hold its monotonic
            times; Redis holds wall times).

    Raises:
        ConfigurationError: for a bad parameter.

    Examples:
        <!-- not run: needs a Redis server -->
        ```python
        store = RedisBreakerStore(url="redis://localhost:6379/0")
        breaker = CircuitBreaker("billing", store=store)  # shared by every instance
        ```
    """

    def __init__(
        self,
        client: redis_lib.Redis | None = None,
        *,
        url: str | None = None,
        prefix: str = "resilience:breaker:",
        sync_interval: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        _, client = redis_client("RedisBreakerStore", client, url)
        if not prefix:
            raise ConfigurationError("prefix", "must not be empty")
        check_positive("sync_interval", sync_interval)
        self._client: redis_lib.Redis = client
        self._prefix = prefix
        self._sync_interval = float(sync_interval)
        self._clock = clock or SYSTEM_CLOCK
        self._records: dict[str, BreakerRecord] = {}
        self._reported: dict[str, bytes | str] = {}  # corrupt values already logged
        self._subscribers = Subscribers()
        self._lock = threading.Lock()
        self._writes: queue.Queue[object] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._healthy = True
        self._closed = threading.Event()
        self._cas = client.register_script(_CAS)
        self._writer = threading.Thread(target=self._write_loop, name="breaker-store", daemon=True)
        self._listener = threading.Thread(
            target=self._listen_loop, name="breaker-store-listen", daemon=True
        )
        self._writer.start()
        self._listener.start()

    # -- the BreakerStore protocol (never blocks on Redis) -------------------------------

    def load(self, name: str) -> BreakerRecord | None:
        """Return the mirrored record, reading Redis once for a name not seen yet."""
        record = self._records.get(name)
        if record is not None:
            return record
        try:
            raw = self._client.get(self._key(name))
        except Exception as exc:  # noqa: BLE001  (unreachable Redis: decide locally)
            self._unhealthy(exc)
            return None
        if raw is None:
            return None
        record = self._decode(name, raw)
        if record is None:
            return None
        with self._lock:
            self._records.setdefault(name, record)
            return self._records[name]

    def compare_and_set(
        self, name: str, expected_version: int, record: BreakerRecord
    ) -> BreakerRecord:
        """Apply ``record`` to the mirror if it is current, and queue the write to Redis."""
        with self._lock:
            current = self._records.get(name)
            if current is not None and current.version != expected_version:
                return current
            self._records[name] = record
            self._idle.clear()
            self._writes.put((name, expected_version, record))
        self._subscribers.notify(name, record)
        return record

    def subscribe(self, name: str, callback: Callable[[BreakerRecord], None]) -> Callable[[], None]:
        """Call ``callback`` with every new record for ``name``; returns an unsubscriber."""
        return self._subscribers.add(name, callback)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """``False`` while Redis is unreachable (breakers then decide locally)."""
        return self._healthy

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued writes reached Redis (or failed); ``True`` if none are left."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Stop the background threads (queued writes are attempted first)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._writes.put(_STOP)
        self._writer.join(timeout=5.0)
        self._listener.join(timeout=5.0)

    def __enter__(self) -> RedisBreakerStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- records <-> Redis ----------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _encode(self, record: BreakerRecord) -> str:
        offset = self._clock.time() - self._clock.monotonic()
        return json.dumps(
            {
                "state": record.state.value,
                "version": record.version,
                "changed_at": record.changed_at + offset,
                "open_until": None if record.open_until is None else record.open_until + offset,
                "consecutive_opens": record.consecutive_opens,
            }
        )

    def _decode(self, name: str, raw: bytes | str) -> BreakerRecord | None:
        """The record in ``raw``, or ``None`` (logged) when it is corrupt.

        A corrupt record is never raised into a breaker's call and never overwritten:
        breakers of that name decide locally, as during an outage, until an operator
        deletes the key.
        """
        store = f"RedisBreakerStore(prefix={self._prefix!r})"
        try:
            try:
                data = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise corrupt_record(
                    store=store, kind="breaker record", record=self._key(name), problem="not JSON"
                ) from exc
            if not isinstance(data, dict):
                raise corrupt_record(
                    store=store,
                    kind="breaker record",
                    record=self._key(name),
                    problem="not a JSON object",
                )
            offset = self._clock.monotonic() - self._clock.time()
            return read_breaker_record(
                store=store, name=self._key(name), fields=data, offset=offset
            )
        except CorruptRecordError as exc:
            if self._reported.get(name) != raw:  # once per value, not once per re-read
                self._reported[name] = raw
                _telemetry.logger.warning(
                    "breaker store: %s; breakers of %r decide locally", exc, name
                )
            return None

    def _accept(self, name: str, record: BreakerRecord) -> None:
        """Make an authoritative record from Redis current here, and tell the breakers."""
        with self._lock:
            current = self._records.get(name)
            if current is not None and (current.version > record.version or current == record):
                return
            self._records[name] = record
        self._subscribers.notify(name, record)

    def _unhealthy(self, exc: BaseException) -> None:
        if self._healthy:
            self._healthy = False
            _telemetry.logger.warning(
                "breaker store: Redis unreachable (%s); breakers continue locally", exc
            )

    def _recovered(self) -> None:
        if not self._healthy:
            self._healthy = True
            _telemetry.logger.warning("breaker store: Redis reachable again")

    # -- background threads ---------------------------------------------------------------

    def _write_loop(self) -> None:
        pending: dict[str, tuple[int, BreakerRecord]] = {}
        while True:
            try:
                item = self._writes.get(timeout=self._sync_interval)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._push(pending)
                return
            if item is not None:
                name, expected, record = cast("tuple[str, int, BreakerRecord]", item)
                earlier = pending.get(name)
                # Coalesce: keep the oldest expected version with the newest record.
                pending[name] = (earlier[0] if earlier else expected, record)
                if not self._writes.empty():
                    continue
            self._push(pending)
            if not pending:
                self._resync()
            with self._lock:
                if not pending and self._writes.empty():
                    self._idle.set()

    def _push(self, pending: dict[str, tuple[int, BreakerRecord]]) -> None:
        for name in list(pending):
            expected, record = pending[name]
            try:
                raw = self._cas(
                    keys=[self._key(name)],
                    args=[expected, self._encode(record), self._key(name)],
                )
            except Exception as exc:  # noqa: BLE001  (keep it queued; retry next round)
                self._unhealthy(exc)
                return
            self._recovered()
            del pending[name]
            stored = self._decode(name, raw)
            if stored is None:  # a corrupt value: not written over, and nothing to adopt
                continue
            if stored.version != record.version or stored.state is not record.state:
                self._accept(name, stored)  # lost the race: adopt the winner

    def _resync(self) -> None:
        names = list(self._records)
        if not names:
            return
        try:
            values = self._client.mget([self._key(name) for name in names])
        except Exception as exc:  # noqa: BLE001
            self._unhealthy(exc)
            return
        self._recovered()
        for name, raw in zip(names, values, strict=True):
            record = None if raw is None else self._decode(name, raw)
            if record is not None:
                self._accept(name, record)

    def _listen_loop(self) -> None:
        while not self._closed.is_set():
            try:
                # Typed in some redis-py releases and not in others: call it through Any.
                open_pubsub: Any = self._client.pubsub
                pubsub = open_pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(f"{self._prefix}*")
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is None or message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    name = channel[len(self._prefix) :]
                    record = self._decode(name, message["data"])
                    if record is not None:
                        self._accept(name, record)
                pubsub.close()
            except Exception as exc:  # noqa: BLE001  (reconnect after an outage)
                self._unhealthy(exc)
                self._closed.wait(min(self._sync_interval, 1.0))
