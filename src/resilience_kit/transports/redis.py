"""Redis Streams as a transport: consumer groups, and reclaim of a crashed consumer's messages.

Needs the ``redis`` extra (``pip install 'resilience-patterns[redis]'``). The synchronous
redis-py client runs on worker threads (``anyio.to_thread``), so the transport works on
asyncio and trio alike and never blocks the event loop.

Examples:
    <!-- not run: needs a Redis server, an event and your handle() -->
    ```python
    from resilience_kit.transports.redis import RedisStreams

    async with RedisStreams(url="redis://localhost:6379/0") as streams:
        await streams.publish("orgs", event)
        async with streams.subscribe("orgs", group="billing", consumer="billing-1") as orgs:
            async for delivery in orgs:
                handle(Event.from_json(delivery.data))
                await orgs.ack(delivery)
    ```
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.lowlevel import checkpoint

from resilience_kit._checks import check_int, check_name, check_positive, check_topic
from resilience_kit.errors import ConfigurationError
from resilience_kit.messaging._event import Event
from resilience_kit.messaging._protocols import Delivery
from resilience_kit.stores.redis._client import redis_client
from resilience_kit.transports._checks import check_data, check_event, check_key
from resilience_kit.transports._closing import Closing

if TYPE_CHECKING:
    import redis as redis_lib

__all__ = ("RedisStreamSubscriber", "RedisStreams")

logger = logging.getLogger("resilience_kit.transports")

# KEYS: the stream. ARGV: group, consumer, start ("-" or "(<id>": after <id>), count.
# This consumer's own pending entries (after a restart), claimed again so that their
# delivery counts go up; returns {id, fields or false (deleted), deliveries} for each.
_OWN_PENDING = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], '+', tonumber(ARGV[4]), ARGV[2])
local out = {}
if #pending == 0 then
    return out
end
local ids = {}
for i, entry in ipairs(pending) do
    ids[i] = entry[1]
end
local fields = {}
for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))) do
    if entry then
        fields[entry[1]] = entry[2]
    end
end
for i, entry in ipairs(pending) do
    out[i] = {entry[1], fields[entry[1]] or false, entry[4] + 1}
end
return out
"""

# KEYS: the stream. ARGV: group, consumer, min idle (ms), start, count. XAUTOCLAIM, with
# each claimed entry's delivery count; returns {next start, {{id, fields or false,
# deliveries}...}, {deleted ids}} (Redis 6.2 reports deleted entries without fields).
_RECLAIM = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
    'COUNT', ARGV[5])
local out = {}
for _, entry in ipairs(claimed[2]) do
    if entry then
        local id = entry[1]
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
        local deliveries = 1
        if pending[1] then
            deliveries = pending[1][4]
        end
        out[#out + 1] = {id, entry[2] or false, deliveries}
    end
end
return {claimed[1], out, claimed[3] or {}}
"""

_RELEASED_IDLE_MS = 10 * 365 * 86_400_000  # "idle for ten years": past any reclaim_idle
_MAX_BATCH = 1000  # ids per Lua unpack() stay far below its limit
_MIN_RECLAIM_EVERY = 0.1  # seconds between reclaim passes, at most this often
_BLOCK_SHARE = 0.8  # of the client's socket timeout, at most, per blocking read


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(raw: Any) -> dict[bytes, bytes]:
    """An entry's fields: a dict from redis-py, or a flat list from a Lua script."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


def _read_entries(response: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of an XREADGROUP reply, RESP2 (a list) or RESP3 (a dict)."""
    if not response:
        return []
    streams = response.items() if isinstance(response, dict) else response
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    for _, found in streams:
        if found and isinstance(found[0], list):
            found = found[0]  # noqa: PLW2901 - RESP3 nests the entries once more
        entries.extend((entry_id, _fields(fields)) for entry_id, fields in found)
    return entries


@dataclass(frozen=True, slots=True)
class _Ticket:
    """A Redis delivery's handle: which stream and group can acknowledge it."""

    stream: str
    group: str


class RedisStreams(Closing):
    """Publish to and consume from Redis Streams, with consumer groups.

    A topic is the stream ``prefix + topic``. `publish` appends an entry (``XADD``) with
    the fields ``data`` (the event's JSON), ``key`` and ``event_id``; `publish_raw`
    appends any bytes as ``data``.

    **Groups.** `subscribe` creates the consumer group if it does not exist, from the
    start of the stream (``XGROUP CREATE ... 0 MKSTREAM``): a new group receives every
    entry the stream still holds, including those published before it existed. Every
    group receives every entry; within a group, each entry goes to one consumer.

    **Redelivery.** An entry stays pending in its group until acknowledged
    (``XACK``). A consumer that restarts under the same name first receives its own
    pending entries again. Entries pending with any consumer for longer than
    ``reclaim_idle`` seconds are taken over (``XAUTOCLAIM``): that is how the entries
    of a crashed consumer are delivered to the others. A subscriber that closes
    cleanly marks what it holds unacknowledged as idle for years, so the next reclaim
    pass of any consumer of the group takes it over at once. `Delivery.attempt` is
    Redis's delivery count.

    **Order.** A stream is one log: a single consumer receives entries in publish order,
    so per key as well. Consumers of one group read in parallel, so two entries of one
    key can be handled at the same time by two consumers, and a reclaimed entry arrives
    after later ones: for strict order per key, consume each group with one consumer
    (a standby with the same group takes over a crashed one's entries).

    **Retention.** Redis keeps every entry until it is deleted, acknowledged or not.
    With ``maxlen``, every ``XADD`` trims the stream to about that many entries (the
    oldest go first, whether or not every group has acknowledged them; an entry trimmed
    while pending is logged as lost and acknowledged). Size ``maxlen`` well above the
    largest backlog, or trim by other means.

    **Threads.** Every Redis call runs on a worker thread. Each subscriber takes one
    connection from the client's pool for its blocking reads; a blocked read is
    interrupted with ``CLIENT UNBLOCK`` when its task is cancelled or the subscriber
    closes, so cancelling and closing are prompt. A blocking read waits at most
    ``block`` seconds, and less than the client's socket timeout (1 s for a client
    made from ``url``). Redis errors propagate from every method unchanged.

    Args:
        url: a Redis URL such as ``redis://localhost:6379/0``; or give ``client``.
        client: a synchronous ``redis.Redis`` client that does not decode responses;
            closing the transport leaves it open.
        prefix: prepended to each topic to name its stream.
        maxlen: trim each stream to about this many entries on publish; ``None``
            never trims.

    Raises:
        ConfigurationError: for a bad parameter.
        ImportError: redis-py is not installed.

    Examples:
        >>> streams = RedisStreams(url="redis://localhost:6379/0", prefix="app:")
        >>> streams.stream("orgs")
        'app:orgs'

        With a Redis server:

        <!-- not run: a fragment; needs a Redis server -->
        ```python
        await streams.publish("orgs", Event(type="org.created", key="org:1", payload={}))
        ```
    """

    __slots__ = (
        "_client",
        "_closed",
        "_errors",
        "_own_pending_script",
        "_owns_client",
        "_reclaim_script",
        "_subscribers",
        "maxlen",
        "prefix",
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis_lib.Redis | None = None,
        prefix: str = "rk:stream:",
        maxlen: int | None = None,
    ) -> None:
        owns_client = client is None
        redis, client = redis_client("RedisStreams", client, url)
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "client", "must not decode responses (decode_responses=False): messages are bytes"
            )
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix", f"must be a str, got {type(prefix).__name__}")
        if maxlen is not None:
            check_int("maxlen", maxlen, minimum=1)
        self._client: redis_lib.Redis = client
        self._owns_client = owns_client
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.prefix = prefix
        self.maxlen = maxlen
        self._own_pending_script = client.register_script(_OWN_PENDING)
        self._reclaim_script = client.register_script(_RECLAIM)
        self._subscribers: set[RedisStreamSubscriber] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisStreams(prefix={self.prefix!r})"

    def stream(self, topic: str) -> str:
        """The Redis key of ``topic``'s stream.

        Examples:
            >>> RedisStreams(url="redis://localhost:6379/0").stream("orgs")
            'rk:stream:orgs'
        """
        return self.prefix + check_topic(topic)

    async def publish(self, topic: str, event: Event) -> None:
        """Append ``event`` to ``topic``'s stream; return once Redis has stored it.

        Raises:
            EventTooLargeError: the event's JSON is larger than 1 MiB.
            redis.RedisError: Redis refused or could not be reached.
            RuntimeError: the transport is closed.
        """
        stream = self.stream(topic)
        event = check_event(event)
        fields: dict[Any, Any] = {
            b"data": event.to_json(),
            b"key": event.key.encode(),
            b"event_id": str(event.id).encode(),
        }
        await self._add(stream, fields)

    async def publish_raw(self, topic: str, data: bytes, *, key: str | None = None) -> None:
        """Append ``data`` as it is (bytes that need not be an event: a poison message).

        Raises:
            TypeError: ``data`` is not bytes.
            ConfigurationError: ``key`` is not a valid key.
            redis.RedisError: Redis refused or could not be reached.
            RuntimeError: the transport is closed.
        """
        stream = self.stream(topic)
        fields: dict[Any, Any] = {b"data": check_data(data)}
        checked = check_key(key)
        if checked is not None:
            fields[b"key"] = checked.encode()
        await self._add(stream, fields)

    async def _add(self, stream: str, fields: dict[Any, Any]) -> None:
        self._check_open()
        add = functools.partial(
            self._client.xadd, stream, fields, maxlen=self.maxlen, approximate=True
        )
        await anyio.to_thread.run_sync(add)

    def subscribe(
        self,
        topic: str,
        *,
        group: str,
        consumer: str,
        batch: int = 100,
        block: float = 5.0,
        reclaim_idle: float | None = 30.0,
    ) -> RedisStreamSubscriber:
        """Consume ``topic`` as ``consumer`` in ``group`` (the group is created if new).

        Nothing is read until the first iteration.

        Args:
            topic: the topic.
            group: the consumer group; each group receives every entry.
            consumer: this consumer's name in the group. Keep it stable across restarts
                (a host or pod name): a consumer restarted under its name receives its
                pending entries first. Two live subscribers must not share a name.
            batch: entries read per Redis call (1 to 1000).
            block: seconds a read waits for new entries before looking for entries to
                reclaim (and capped below the client's socket timeout).
            reclaim_idle: take over entries pending with any consumer of the group for
                this many seconds (a consumer that crashed); ``None`` never does. Longer
                than the slowest handler, or a slow handler's entry is delivered twice.

        Raises:
            ConfigurationError: for a bad parameter.
            RuntimeError: the transport is closed.

        Examples:
            >>> streams = RedisStreams(url="redis://localhost:6379/0")
            >>> streams.subscribe("orgs", group="billing", consumer="pod-1")
            RedisStreamSubscriber(stream='rk:stream:orgs', group='billing', consumer='pod-1')
        """
        stream = self.stream(topic)
        check_name("group", group)
        check_name("consumer", consumer)
        check_int("batch", batch, minimum=1)
        if batch > _MAX_BATCH:
            raise ConfigurationError("batch", f"must be <= {_MAX_BATCH}, got {batch}")
        check_positive("block", block)
        check_positive("reclaim_idle", reclaim_idle, allow_zero=True)
        self._check_open()
        subscriber = RedisStreamSubscriber(
            self,
            topic,
            stream,
            group,
            consumer,
            batch=batch,
            block=float(block),
            reclaim_idle=None if reclaim_idle is None else float(reclaim_idle),
        )
        self._subscribers.add(subscriber)
        return subscriber

    async def aclose(self) -> None:
        """Close every subscriber, then the client if the transport made it from ``url``."""
        if self._closed:
            return
        self._closed = True
        for subscriber in list(self._subscribers):
            await subscriber.aclose()
        if self._owns_client:
            await anyio.to_thread.run_sync(self._client.close)


class RedisStreamSubscriber(Closing):
    """One consumer of a Redis consumer group: iterate it for deliveries, ack each one.

    Get one from `RedisStreams.subscribe`. The first iteration creates the group if
    needed; then the subscriber delivers, in this order: its own pending entries (left
    by an earlier run under the same consumer name), entries reclaimed from consumers
    idle longer than ``reclaim_idle`` (checked at least every ``reclaim_idle / 2``
    seconds), and new entries. Breaking out of an ``async for`` does not close it;
    `aclose` (or leaving an ``async with`` block) does.

    Attributes:
        topic: the topic.
        stream: its Redis key.
        group: the consumer group.
        consumer: this consumer's name.
        batch: entries read per Redis call.
        block: seconds one blocking read waits at most.
        reclaim_idle: seconds after which other consumers' pending entries are taken
            over, or ``None``.

    Examples:
        <!-- not run: a fragment; needs a Redis server and your handle() -->
        ```python
        async with streams.subscribe("orgs", group="billing", consumer="pod-1") as orgs:
            async for delivery in orgs:
                await handle(delivery)
                await orgs.ack(delivery)
        ```
    """

    __slots__ = (
        "__weakref__",
        "_buffer",
        "_closed",
        "_group_ready",
        "_in_flight",
        "_limiter",
        "_next_reclaim",
        "_own_cursor",
        "_reader",
        "_reader_id",
        "_reading",
        "_reclaim_cursor",
        "_step_lock",
        "_ticket",
        "_transport",
        "batch",
        "block",
        "consumer",
        "group",
        "reclaim_idle",
        "stream",
        "topic",
    )

    def __init__(
        self,
        transport: RedisStreams,
        topic: str,
        stream: str,
        group: str,
        consumer: str,
        *,
        batch: int,
        block: float,
        reclaim_idle: float | None,
    ) -> None:
        self._transport = transport
        self.topic = topic
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.batch = batch
        timeout = transport._client.connection_pool.connection_kwargs.get("socket_timeout")
        self.block = block if timeout is None else min(block, float(timeout) * _BLOCK_SHARE)
        self.reclaim_idle = reclaim_idle
        self._ticket = _Ticket(stream, group)
        self._buffer: deque[Delivery] = deque()  # read, not yet handed out
        self._in_flight: set[str] = set()  # handed out, not yet acknowledged
        self._group_ready = False
        self._own_cursor: str | None = "-"  # None once the own pending entries are read
        self._reclaim_cursor = "0-0"
        self._next_reclaim = -math.inf
        self._reader: redis_lib.Redis | None = None  # a connection of its own, for blocking
        self._reader_id: int | None = None  # its CLIENT ID, to unblock it
        self._reading: threading.Event | None = None  # set when the blocking read ended
        self._limiter: anyio.CapacityLimiter | None = None
        self._step_lock = anyio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"RedisStreamSubscriber(stream={self.stream!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    def __aiter__(self) -> RedisStreamSubscriber:
        return self

    async def __anext__(self) -> Delivery:
        await checkpoint()
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._buffer:
                delivery = self._buffer.popleft()
                self._in_flight.add(delivery.id)
                return delivery
            async with self._step_lock:
                if not self._closed:
                    await self._step()

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge ``delivery`` (``XACK``): the group will not see it again.

        Any consumer of the group may acknowledge it, and acknowledging twice changes
        nothing.

        Raises:
            ValueError: ``delivery`` came from another stream or group.
            redis.RedisError: Redis could not be reached (the entry stays pending).
        """
        if delivery.handle != self._ticket:
            raise ValueError(f"{self!r} cannot acknowledge a delivery from another stream or group")
        client = self._transport._client
        await anyio.to_thread.run_sync(client.xack, self.stream, self.group, delivery.id)
        self._in_flight.discard(delivery.id)

    async def aclose(self) -> None:
        """Stop iterating, release what this consumer holds unacknowledged, free its connection.

        Unacknowledged entries stay pending under this consumer's name, marked idle so
        that any consumer of the group reclaims them on its next pass (or this consumer
        on its next start). Closing twice is fine.
        """
        if self._closed:
            return
        self._closed = True
        self._transport._subscribers.discard(self)
        with anyio.CancelScope(shield=True):
            reading = self._reading
            if reading is not None:
                await anyio.to_thread.run_sync(self._interrupt, reading)
            async with self._step_lock:
                held = [*self._in_flight, *(delivery.id for delivery in self._buffer)]
                self._buffer.clear()
                await anyio.to_thread.run_sync(self._shut_down, held)

    # -- one step of reading, on the event loop ------------------------------------------

    async def _step(self) -> None:
        """Fill the buffer by one Redis call (or find nothing)."""
        if not self._group_ready:
            await anyio.to_thread.run_sync(self._create_group)
            self._group_ready = True
        elif self._own_cursor is not None:
            await anyio.to_thread.run_sync(self._read_own)
        elif self.reclaim_idle is not None and anyio.current_time() >= self._next_reclaim:
            more = await anyio.to_thread.run_sync(self._reclaim)
            every = max(self.reclaim_idle / 2, _MIN_RECLAIM_EVERY)
            self._next_reclaim = anyio.current_time() + (0.0 if more else every)
        else:
            wait = self.block
            if self.reclaim_idle is not None:
                wait = min(wait, self._next_reclaim - anyio.current_time())
            await self._read_new(max(1, math.ceil(wait * 1000)))

    async def _read_new(self, block_ms: int) -> None:
        if self._limiter is None:
            # Its own limiter: blocked reads must not starve anyio's default thread pool.
            self._limiter = anyio.CapacityLimiter(1)
        done = threading.Event()
        self._reading = done
        try:
            await anyio.to_thread.run_sync(
                self._read_new_blocking,
                block_ms,
                done,
                abandon_on_cancel=True,
                limiter=self._limiter,
            )
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._interrupt, done)
            raise
        finally:
            self._reading = None

    # -- Redis calls, on worker threads --------------------------------------------------

    def _create_group(self) -> None:
        client = self._transport._client
        try:
            client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except self._transport._errors as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read_own(self) -> None:
        script = self._transport._own_pending_script
        assert self._own_cursor is not None  # noqa: S101 - _step checks it
        rows = script(
            keys=[self.stream], args=[self.group, self.consumer, self._own_cursor, self.batch]
        )
        if not rows:
            self._own_cursor = None
            return
        self._own_cursor = "(" + _text(rows[-1][0])
        self._take(rows, skip=())

    def _reclaim(self) -> bool:
        """One XAUTOCLAIM call; True if the scan of the pending entries is not finished."""
        assert self.reclaim_idle is not None  # noqa: S101 - _step checks it
        script = self._transport._reclaim_script
        cursor, rows, deleted = script(
            keys=[self.stream],
            args=[
                self.group,
                self.consumer,
                round(self.reclaim_idle * 1000),
                self._reclaim_cursor,
                self.batch,
            ],
        )
        self._reclaim_cursor = _text(cursor)
        self._lost([_text(entry_id) for entry_id in deleted])
        # An entry of our own that a slow handler still holds is claimed again (its idle
        # time restarts); it must not be handed out a second time.
        self._take(rows, skip=self._in_flight)
        return self._reclaim_cursor != "0-0"

    def _take(self, rows: Sequence[Any], *, skip: Iterable[str] | set[str]) -> None:
        lost = []
        for raw_id, fields, deliveries in rows:
            entry_id = _text(raw_id)
            if fields is None:
                lost.append(entry_id)
            elif entry_id not in skip:
                self._buffer.append(self._delivery(entry_id, _fields(fields), int(deliveries)))
        self._lost(lost)

    def _read_new_blocking(self, block_ms: int, done: threading.Event) -> None:
        try:
            reader = self._reader
            if reader is None:
                reader = self._reader = self._open_reader()
            response = reader.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=block_ms
            )
            for entry_id, fields in _read_entries(response):
                self._buffer.append(self._delivery(_text(entry_id), fields, 1))
        finally:
            done.set()

    def _open_reader(self) -> redis_lib.Redis:
        """A client holding one connection of the pool for itself, and its CLIENT ID."""
        reader = type(self._transport._client)(
            connection_pool=self._transport._client.connection_pool,
            single_connection_client=True,
        )
        connection: Any = reader.connection
        assert connection is not None  # noqa: S101 - a single-connection client has one
        # Reconnects (after an error) get a new id; keep it current for CLIENT UNBLOCK.
        connection.register_connect_callback(self._on_reader_connect)
        self._reader_id = int(reader.client_id())
        return reader

    def _on_reader_connect(self, connection: Any) -> None:
        connection.send_command("CLIENT", "ID")
        self._reader_id = int(connection.read_response())

    def _interrupt(self, done: threading.Event) -> None:
        """Unblock the blocking read, again and again until it has ended.

        A read not yet blocked when one CLIENT UNBLOCK arrives is unblocked by the next.
        """
        client = self._transport._client
        while not done.is_set():
            reader_id = self._reader_id
            if reader_id is not None:
                try:
                    client.client_unblock(reader_id)
                except self._transport._errors as exc:
                    logger.debug("%r: CLIENT UNBLOCK failed: %s", self, exc)
            done.wait(0.05)

    def _shut_down(self, held: list[str]) -> None:
        client = self._transport._client
        ids: list[Any] = list(held)
        try:
            for start in range(0, len(ids), _MAX_BATCH):
                client.xclaim(
                    self.stream,
                    self.group,
                    self.consumer,
                    0,
                    ids[start : start + _MAX_BATCH],
                    idle=_RELEASED_IDLE_MS,
                    justid=True,
                )
        except self._transport._errors as exc:
            logger.warning(
                "%r: could not release %d unacknowledged entries (%s); they are reclaimed "
                "after reclaim_idle, or when %r restarts",
                self,
                len(held),
                exc,
                self.consumer,
            )
        finally:
            reader, self._reader = self._reader, None
            if reader is not None:
                connection: Any = reader.connection
                if connection is not None:
                    connection.deregister_connect_callback(self._on_reader_connect)
                reader.close()

    def _lost(self, entry_ids: list[str]) -> None:
        """Acknowledge pending entries the stream no longer holds (trimmed), loudly."""
        if not entry_ids:
            return
        logger.warning(
            "%r: %d pending entries were deleted from the stream before being "
            "acknowledged (trimmed by maxlen?); they are lost: %s",
            self,
            len(entry_ids),
            ", ".join(entry_ids[:10]),
        )
        client = self._transport._client
        client.xack(self.stream, self.group, *entry_ids)

    def _delivery(self, entry_id: str, fields: dict[bytes, bytes], attempt: int) -> Delivery:
        key = fields.get(b"key")
        return Delivery(
            topic=self.topic,
            data=fields.get(b"data", b""),
            id=entry_id,
            key=None if key is None else key.decode("utf-8", "replace"),
            attempt=attempt,
            handle=self._ticket,
        )
