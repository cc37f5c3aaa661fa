"""RedisBreakerStore: circuit-breaker state shared by every instance of a service."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from resilience_kit import _telemetry
from resilience_kit._checks import check_positive
from resilience_kit._integrity import corrupt_record
from resilience_kit.clock import SYSTEM_CLOCK, Clock
from resilience_kit.errors import ConfigurationError, CorruptRecordError
from resilience_kit.policies._breaker_store import BreakerRecord, Subscribers, read_breaker_record
from resilience_kit.stores.redis._client import redis_client

if TYPE_CHECKING:
    import redis as redis_lib

__all__ = ("RedisBreakerStore",)

# Compare-and-set: a write wins unless Redis already holds a record at least as new
# (ARGV[1] is the written version minus one). Accepting any older record, not only the
# one the transition started from, lets an instance that kept going on its own during a
# Redis outage, or after Redis lost its data, write its state back on reconnect.
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

    Every breaker keeps deciding from a local mirror, so neither a call nor creating a
    breaker ever waits on Redis: all Redis I/O happens on the store's background
    threads. Transitions are written with an atomic compare-and-set (a Lua script) and
    published; every store subscribes, and re-reads its records every ``sync_interval``
    seconds in case a message was missed. When a transition loses a race the winner's
    state is adopted. A new breaker starts CLOSED and adopts the shared state as soon
    as the background thread has read it (`sync` waits for that). When Redis is
    unreachable the breakers carry on as local breakers (a warning is logged once per
    outage); when it returns, or comes back empty, or holds an older state than this
    store's, the latest state is written back.

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
        store.sync()  # optional, at startup: wait until it has adopted the shared state
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
        # The JSON last seen in Redis (or written there) per name. Decoding converts wall
        # times with an offset measured at that moment, so two decodings of one record
        # never compare equal: a re-read is recognised by its text instead.
        self._raw: dict[str, str] = {}
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
        """Return the mirrored record; for a name not seen yet, ``None`` and a background read."""
        record = self._records.get(name)
        if record is None:
            with self._lock:
                self._idle.clear()
                self._writes.put(_Read(name))
        return record

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
            self._writes.put((name, record))
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

    def sync(self, timeout: float = 5.0) -> bool:
        """Write what is queued, re-read every known breaker now, and wait for both.

        Blocks the calling thread (call it off the event loop, for instance at startup
        so that new breakers start from the shared state). Changes it finds are applied
        to the breakers before it returns.

        Args:
            timeout: seconds to wait at most.

        Returns:
            ``True`` if the round trip completed; ``False`` if Redis did not answer in
            time (the breakers keep their local state).

        Examples:
            <!-- not run: needs a Redis server -->
            ```python
            store = RedisBreakerStore(url="redis://localhost:6379/0")
            billing = CircuitBreaker("billing", store=store)
            store.sync()  # billing now has the fleet's state (OPEN, say)
            ```
        """
        done = threading.Event()
        with self._lock:
            self._idle.clear()
            self._writes.put(done)
        return done.wait(timeout)

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
                "open_interval": record.open_interval,
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
            # Wall times become monotonic ones with an offset measured now; a re-read of
            # the same text is recognised before decoding (`_accept`), never by comparing
            # two decodings, which differ by that offset.
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

    def _accept(self, name: str, raw: bytes | str, pending: dict[str, BreakerRecord]) -> None:
        """Take a record read from Redis: adopt it if newer, write ours back if older.

        ``pending`` is the writer's queue of writes; ``None`` from the listener thread,
        which only adopts (the writer's next re-read writes back).
        """
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        with self._lock:
            if self._raw.get(name) == text:
                return  # a record this store has already seen or written
            record = self._decode(name, raw)
            if record is None:  # corrupt: nothing to adopt, and never written over
                return
            current = self._records.get(name)
            if current is not None and current.version > record.version:
                # Redis holds an older state (it restarted, or lost a write): ours wins.
                pending.setdefault(name, current)
                return
            self._raw[name] = text
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
        pending: dict[str, BreakerRecord] = {}
        reads: set[str] = set()
        waiting: list[threading.Event] = []
        while True:
            try:
                item = self._writes.get(timeout=self._sync_interval)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._push(pending)
                return
            resync = item is None
            if isinstance(item, threading.Event):
                waiting.append(item)
                resync = True
            elif isinstance(item, _Read):
                reads.add(item.name)
            elif item is not None:
                name, record = cast("tuple[str, BreakerRecord]", item)
                pending[name] = record  # coalesce: the newest record of a name is enough
            if not self._writes.empty():
                continue
            self._push(pending)
            if reads and self._read(sorted(reads), pending):
                reads.clear()
            if resync and not pending and self._read(list(self._records), pending):
                self._push(pending)  # the write-backs the re-read found necessary
                if not pending:
                    for done in waiting:
                        done.set()
                    waiting.clear()
            with self._lock:
                if not pending and not reads and not waiting and self._writes.empty():
                    self._idle.set()

    def _push(self, pending: dict[str, BreakerRecord]) -> None:
        for name in list(pending):
            record = pending[name]
            encoded = self._encode(record)
            with self._lock:
                self._raw[name] = encoded  # before the write: its own echo is then known
            try:
                # The mirror already judged the transition; Redis only refuses a record
                # older than the one it holds. A version-0 record (a new breaker) is
                # written only where there is none.
                raw = self._cas(
                    keys=[self._key(name)],
                    args=[record.version - 1, encoded, self._key(name)],
                )
            except Exception as exc:  # noqa: BLE001  (keep it queued; retry next round)
                self._unhealthy(exc)
                return
            self._recovered()
            del pending[name]
            self._accept(name, raw, pending)  # a lost race: adopt the winner

    def _read(self, names: list[str], pending: dict[str, BreakerRecord]) -> bool:
        """Re-read ``names`` from Redis; queue write-backs where Redis lost our state."""
        if not names:
            return True
        try:
            values = self._client.mget([self._key(name) for name in names])
        except Exception as exc:  # noqa: BLE001
            self._unhealthy(exc)
            return False
        self._recovered()
        for name, raw in zip(names, values, strict=True):
            if raw is not None:
                self._accept(name, raw, pending)
                continue
            current = self._records.get(name)
            if current is not None:
                pending.setdefault(name, current)  # Redis came back empty: write ours back
        return True

    def _listen_loop(self) -> None:
        ignored: dict[str, BreakerRecord] = {}  # write-backs are the writer's job
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
                    self._accept(name, message["data"], ignored)
                    ignored.clear()
                pubsub.close()
            except Exception as exc:  # noqa: BLE001  (reconnect after an outage)
                self._unhealthy(exc)
                self._closed.wait(min(self._sync_interval, 1.0))


@dataclass(frozen=True, slots=True)
class _Read:
    """A request to the writer thread: read ``name`` from Redis (a breaker just asked)."""

    name: str
