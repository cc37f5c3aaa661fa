"""Kafka as a transport, through aiokafka: partitions by key, commits only what was handled.

Needs the ``kafka`` extra (``pip install 'resilience-patterns[kafka]'``). aiokafka is an
asyncio library, so this transport runs on asyncio only: on trio its methods raise a
`RuntimeError` saying so (use `resilience_kit.transports.redis.RedisStreams` or the
`resilience_kit.transports.memory.MemoryBus` there).

Examples:
    <!-- not run: needs a Kafka broker, an event and your handle() -->
    ```python
    from resilience_kit.transports.kafka import KafkaTransport

    async with KafkaTransport("kafka-1:9092,kafka-2:9092") as kafka:
        await kafka.publish("orgs", event)
        async with kafka.subscribe("orgs", group="billing") as orgs:
            async for delivery in orgs:
                handle(Event.from_json(delivery.data))
                await orgs.ack(delivery)
    ```
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from resilience_kit._checks import check_name, check_topic
from resilience_kit.errors import ConfigurationError, TransportError, TransportUnavailableError
from resilience_kit.messaging._event import Event
from resilience_kit.messaging._protocols import Delivery
from resilience_kit.transports._checks import check_data, check_event, check_key
from resilience_kit.transports._closing import Closing
from resilience_kit.transports._offsets import PartitionOffsets

__all__ = ("KafkaSubscriber", "KafkaTransport")

logger = logging.getLogger("resilience_kit.transports")

Acks = Literal[0, 1, "all"]

_PRODUCER_MANAGED = frozenset({"bootstrap_servers", "acks", "enable_idempotence", "client_id"})
_CONSUMER_MANAGED = frozenset({"bootstrap_servers", "group_id", "enable_auto_commit", "client_id"})


def _aiokafka() -> Any:
    try:
        return importlib.import_module("aiokafka")
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "KafkaTransport needs aiokafka: pip install 'resilience-patterns[kafka]'"
        ) from exc


def _require_asyncio(owner: str) -> None:
    """Fail clearly on an event loop aiokafka cannot use (trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{owner} runs on asyncio only: aiokafka is built on asyncio, and this code "
            "runs on another event loop (trio?). On trio, use RedisStreams or MemoryBus."
        ) from None


# aiokafka's errors that mean "no broker answered", as opposed to "a broker said no".
_UNAVAILABLE = (
    "BrokerNotAvailableError",
    "KafkaConnectionError",
    "KafkaTimeoutError",
    "KafkaUnavailableError",
    "NoBrokersAvailable",
    "NodeNotReadyError",
    "RequestTimedOutError",
)

# How long `KafkaSubscriber.aclose` lets commits in flight finish before abandoning them.
_CLOSE_GRACE = 5.0

_IDEMPOTENCE_HINT = (
    "; if this broker does not support idempotent producers (Tansu, for one, answers "
    "InitProducerId with UnknownError), use KafkaTransport(..., idempotent=False)"
)


@contextmanager
def _broker_errors(kafka: Any, owner: object, doing: str, hint: str = "") -> Iterator[None]:
    """Raise aiokafka's failures as the library's `TransportError` family, chained.

    Callers catch one documented error tree instead of aiokafka's, and a retry policy
    can tell a broker that is away (`TransportUnavailableError`, a `ConnectionError`)
    from one that refuses (`TransportError`).
    """
    errors = kafka.errors
    try:
        yield
    except TransportError:
        raise
    except (OSError, asyncio.TimeoutError) as exc:
        raise TransportUnavailableError(
            f"{owner!r} could not {doing}: the broker is unreachable or did not answer "
            f"in time ({type(exc).__name__}: {exc})",
            transport=repr(owner),
        ) from exc
    except errors.KafkaError as exc:
        unavailable = tuple(getattr(errors, name) for name in _UNAVAILABLE)
        if isinstance(exc, unavailable):
            raise TransportUnavailableError(
                f"{owner!r} could not {doing}: the broker is unreachable or did not "
                f"answer in time ({type(exc).__name__}: {exc})",
                transport=repr(owner),
            ) from exc
        raise TransportError(
            f"{owner!r} could not {doing}: Kafka refused ({type(exc).__name__}: {exc}){hint}",
            transport=repr(owner),
        ) from exc


def _check_servers(servers: object) -> str | list[str]:
    if isinstance(servers, str):
        if servers.strip():
            return servers
    elif (
        isinstance(servers, Sequence)
        and servers
        and all(isinstance(server, str) and server.strip() for server in servers)
    ):
        return list(servers)
    raise ConfigurationError(
        "bootstrap_servers",
        f"must be 'host:port', a comma-separated list of them, or a list; got {servers!r}",
    )


def _check_options(parameter: str, options: object, managed: frozenset[str]) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(name, str) for name in options):
        raise ConfigurationError(parameter, f"must be a mapping of option names, got {options!r}")
    clash = sorted(managed.intersection(options))
    if clash:
        raise ConfigurationError(
            parameter, f"{', '.join(clash)} is set by the transport, not in {parameter}"
        )
    return dict(options)


@dataclass(frozen=True, slots=True)
class _Ticket:
    """A Kafka delivery's handle: its subscriber, partition, offset and offset tracker."""

    subscriber: KafkaSubscriber
    partition: Any  # an aiokafka TopicPartition
    offset: int
    offsets: PartitionOffsets


class KafkaTransport(Closing):
    """Publish to and consume from Kafka with consumer groups (asyncio only).

    **Publishing.** `publish` sends the event's JSON with the event's key as the
    message key — Kafka's partitioner maps a key to one partition, which keeps a key's
    events in order — and headers ``event_id`` and ``event_type``. It returns once the
    broker has acknowledged the message: by default with ``acks="all"`` (every in-sync
    replica has it) and an idempotent producer (its retries never write a message
    twice). The producer starts on the first publish.

    **Consuming.** `subscribe` joins a consumer group; Kafka assigns each partition to
    one member of the group, so a key's messages reach one member, in order. A new
    group starts at the earliest retained offset. Offsets are committed by `ack`,
    never automatically, and only up to the first message not yet acknowledged in its
    partition: with several handlers in flight, a commit never skips a message still
    being handled, so a crash redelivers it instead of losing it.

    **Redelivery.** Messages after a partition's committed offset are delivered again
    when the partition moves to another member (a member closed, crashed or timed
    out) or the group restarts. Kafka does not count deliveries: `Delivery.attempt`
    is always 1. Retention is the topic's (``retention.ms``), regardless of groups.

    **Failures.** What Kafka or the network does wrong reaches you as the library's
    errors, never as aiokafka's (chained as ``__cause__``): `TransportUnavailableError`
    (also a `ConnectionError`) when no broker answers, `TransportError` when a broker
    refuses. Publishing, joining a group, fetching and committing raise them. A closed
    port fails at once; a broker that accepts connections but does not answer fails
    after ``request_timeout_ms`` (aiokafka's default: 40 s; set it in
    ``producer_options`` and ``consumer_options``, keeping the consumer's longer than a
    group join, which a broker may hold for seconds). A member that already joined its
    group keeps waiting for messages while its broker is away: aiokafka reconnects.

    Args:
        bootstrap_servers: ``"host:port"``, several separated by commas, or a list.
        client_id: the Kafka client id of the producer (and of consumers without a
            ``consumer`` name).
        acks: how many replicas must have a message before `publish` returns:
            ``"all"``, ``1`` (the leader) or ``0`` (none: messages can be lost).
        idempotent: let the broker de-duplicate the producer's retries (needs
            ``acks="all"``). On by default, as in Kafka's own clients since 3.0: a
            producer that retries a send whose acknowledgement was lost would otherwise
            write the message twice. Turn it off only for
            a broker without idempotent producers — Tansu, for one, refuses them, and
            the first `publish` then raises `TransportError` saying so.
        producer_options: more `aiokafka.AIOKafkaProducer` options (compression,
            security, timeouts).
        consumer_options: more `aiokafka.AIOKafkaConsumer` options (security,
            ``session_timeout_ms``, ``auto_offset_reset``...).

    Raises:
        ConfigurationError: for a bad parameter.
        ImportError: aiokafka is not installed.

    Examples:
        >>> kafka = KafkaTransport("localhost:9092", client_id="orgs-service")
        >>> kafka
        KafkaTransport('localhost:9092')

        With a Kafka broker, on asyncio:

        <!-- not run: a fragment; needs a Kafka broker -->
        ```python
        await kafka.publish("orgs", Event(type="org.created", key="org:1", payload={}))
        ```
    """

    __slots__ = (
        "_closed",
        "_consumer_options",
        "_kafka",
        "_producer",
        "_producer_lock",
        "_producer_options",
        "_subscribers",
        "acks",
        "bootstrap_servers",
        "client_id",
        "idempotent",
    )

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        client_id: str | None = None,
        acks: Acks = "all",
        idempotent: bool = True,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._kafka = _aiokafka()
        self.bootstrap_servers = _check_servers(bootstrap_servers)
        self.client_id = None if client_id is None else check_name("client_id", client_id)
        if acks not in (0, 1, "all") or isinstance(acks, bool):
            raise ConfigurationError("acks", f"must be 0, 1 or 'all', got {acks!r}")
        if not isinstance(idempotent, bool):
            raise ConfigurationError("idempotent", f"must be a bool, got {idempotent!r}")
        if idempotent and acks != "all":
            raise ConfigurationError(
                "idempotent", f"an idempotent producer needs acks='all', got acks={acks!r}"
            )
        self.acks: Acks = acks
        self.idempotent = idempotent
        self._producer_options = _check_options(
            "producer_options", producer_options, _PRODUCER_MANAGED
        )
        self._consumer_options = _check_options(
            "consumer_options", consumer_options, _CONSUMER_MANAGED
        )
        self._producer: Any = None
        self._producer_lock: anyio.Lock | None = None
        self._subscribers: set[KafkaSubscriber] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"KafkaTransport({self.bootstrap_servers!r})"

    async def publish(self, topic: str, event: Event) -> None:
        """Send ``event`` to ``topic``, keyed by ``event.key``; return once Kafka has it.

        Raises:
            EventTooLargeError: the event's JSON is larger than 1 MiB.
            TransportUnavailableError: no broker could be reached, or none answered in
                time (``request_timeout_ms``).
            TransportError: the broker refused the message (or the producer).
            RuntimeError: not on asyncio, or the transport is closed.
        """
        name = check_topic(topic)
        event = check_event(event)
        headers = [
            ("event_id", str(event.id).encode()),
            ("event_type", event.type.encode()),
        ]
        await self._send(name, event.to_json(), event.key.encode(), headers)

    async def publish_raw(self, topic: str, data: bytes, *, key: str | None = None) -> None:
        """Send ``data`` as it is (bytes that need not be an event: a poison message).

        Raises:
            TypeError: ``data`` is not bytes.
            ConfigurationError: ``key`` is not a valid key.
            TransportUnavailableError: no broker could be reached, or none answered in
                time.
            TransportError: the broker refused the message (or the producer).
            RuntimeError: not on asyncio, or the transport is closed.
        """
        name = check_topic(topic)
        payload = check_data(data)
        checked = check_key(key)
        await self._send(name, payload, None if checked is None else checked.encode(), [])

    async def _send(
        self, topic: str, data: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        self._check_open()
        _require_asyncio("KafkaTransport")
        producer = await self._start_producer()
        with _broker_errors(self._kafka, self, f"publish to {topic!r}"):
            await producer.send_and_wait(topic, value=data, key=key, headers=headers)

    async def _start_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        if self._producer_lock is None:
            self._producer_lock = anyio.Lock()
        async with self._producer_lock:
            if self._producer is None:
                options: dict[str, Any] = {
                    "bootstrap_servers": self.bootstrap_servers,
                    "acks": self.acks,
                    "enable_idempotence": self.idempotent,
                    **self._producer_options,
                }
                if self.client_id is not None:
                    options["client_id"] = self.client_id
                producer = self._kafka.AIOKafkaProducer(**options)
                hint = _IDEMPOTENCE_HINT if self.idempotent else ""
                with _broker_errors(self._kafka, self, "start its producer", hint):
                    try:
                        await producer.start()
                    except BaseException:
                        with anyio.CancelScope(shield=True):
                            await producer.stop()
                        raise
                self._producer = producer
        return self._producer

    def subscribe(self, topic: str, *, group: str, consumer: str | None = None) -> KafkaSubscriber:
        """Join consumer group ``group`` of ``topic``; nothing happens until iterated.

        Args:
            topic: the topic.
            group: the consumer group (Kafka's ``group.id``).
            consumer: this member's client id (default: the transport's).

        Raises:
            ConfigurationError: a name is empty, too long or not a string.
            RuntimeError: the transport is closed.

        Examples:
            >>> kafka = KafkaTransport("localhost:9092")
            >>> kafka.subscribe("orgs", group="billing", consumer="billing-1")
            KafkaSubscriber(topic='orgs', group='billing', consumer='billing-1')
        """
        name = check_topic(topic)
        check_name("group", group)
        if consumer is not None:
            check_name("consumer", consumer)
        self._check_open()
        subscriber = KafkaSubscriber(self, name, group, consumer)
        self._subscribers.add(subscriber)
        return subscriber

    async def aclose(self) -> None:
        """Close every subscriber (committing nothing more), then stop the producer."""
        if self._closed:
            return
        self._closed = True
        for subscriber in list(self._subscribers):
            await subscriber.aclose()
        producer, self._producer = self._producer, None
        if producer is not None:
            with anyio.CancelScope(shield=True):
                await producer.stop()


class KafkaSubscriber(Closing):
    """A member of a Kafka consumer group: iterate it for deliveries, ack each one.

    Get one from `KafkaTransport.subscribe`. The first iteration starts the consumer
    and joins the group: it raises `TransportUnavailableError` when no broker can be
    reached and `TransportError` when Kafka refuses; iterating again tries again.
    `ack` commits its partition's offset up to the first message not yet acknowledged;
    acknowledging a message of a partition this member has lost since (a rebalance)
    does nothing — its new owner receives it again. When partitions are revoked, what
    can be committed is committed first.

    Attributes:
        topic: the topic.
        group: the consumer group.
        consumer: this member's client id, or ``None`` for the transport's.

    Examples:
        <!-- not run: a fragment; needs a Kafka broker and your handle() -->
        ```python
        async with kafka.subscribe("orgs", group="billing") as orgs:
            async for delivery in orgs:
                await handle(delivery)
                await orgs.ack(delivery)
        ```
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_commit_lock",
        "_commits",
        "_consumer",
        "_offsets",
        "_transport",
        "_waiting",
        "consumer",
        "group",
        "topic",
    )

    def __init__(
        self, transport: KafkaTransport, topic: str, group: str, consumer: str | None
    ) -> None:
        self._transport = transport
        self.topic = topic
        self.group = group
        self.consumer = consumer
        self._consumer: Any = None
        self._offsets: dict[Any, PartitionOffsets] = {}  # by aiokafka TopicPartition
        self._commit_lock: anyio.Lock | None = None
        self._commits: set[anyio.CancelScope] = set()  # in flight; aclose cancels them
        self._waiting: anyio.CancelScope | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"KafkaSubscriber(topic={self.topic!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    def __aiter__(self) -> KafkaSubscriber:
        return self

    async def __anext__(self) -> Delivery:
        if self._closed:
            raise StopAsyncIteration
        _require_asyncio("KafkaSubscriber")
        kafka = self._transport._kafka
        record = None
        with anyio.CancelScope() as waiting:  # aclose cancels it: starting or waiting
            self._waiting = waiting
            try:
                consumer = self._consumer or await self._start()
                with _broker_errors(kafka, self, "fetch messages"):
                    record = await consumer.getone()
            except kafka.ConsumerStoppedError:
                if not self._closed:
                    raise
            finally:
                self._waiting = None
        if record is None or self._closed:
            await self._stop_consumer()  # a start that finished after aclose looked
            raise StopAsyncIteration
        partition = kafka.TopicPartition(record.topic, record.partition)
        offsets = self._offsets.get(partition)
        last = None if offsets is None else offsets.last_delivered
        if offsets is None or (last is not None and record.offset <= last):
            # New to this member, or rewound (a reset after lost offsets): start afresh.
            offsets = self._offsets[partition] = PartitionOffsets()
        offsets.delivered(record.offset)
        return Delivery(
            topic=self.topic,
            data=b"" if record.value is None else bytes(record.value),
            id=f"{record.partition}-{record.offset}",
            key=None if record.key is None else bytes(record.key).decode("utf-8", "replace"),
            attempt=1,
            handle=_Ticket(self, partition, record.offset, offsets),
        )

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge ``delivery``; commit its partition's offset if that moved it on.

        Acknowledging twice, after `aclose`, or after the partition moved to another
        member changes nothing (the message is then delivered again: at least once).

        Raises:
            ValueError: ``delivery`` came from another subscriber.
            TransportError: the commit failed for another reason than a rebalance
                (`TransportUnavailableError`: the broker is away); the message is
                delivered again if nothing commits later.
        """
        ticket = delivery.handle
        if not isinstance(ticket, _Ticket) or ticket.subscriber is not self:
            raise ValueError(f"{self!r} cannot acknowledge a delivery from another subscriber")
        if self._closed or self._offsets.get(ticket.partition) is not ticket.offsets:
            return
        if ticket.offsets.ack(ticket.offset):
            await self._commit({ticket.partition: ticket.offsets})

    async def aclose(self) -> None:
        """Stop iterating and leave the group (its partitions go to other members).

        Unacknowledged messages are not committed: whoever gets their partitions next
        receives them again. Commits already in flight (an `ack` racing the close) may
        finish first, for up to 5 seconds; past that they are abandoned and their `ack`
        returns (those messages may then be delivered again). Closing twice is fine.
        """
        if self._closed:
            return
        self._closed = True
        self._transport._subscribers.discard(self)
        if self._waiting is not None:
            self._waiting.cancel()
        try:
            if self._commits and self._commit_lock is not None:
                with anyio.move_on_after(_CLOSE_GRACE):
                    async with self._commit_lock:  # fair: after the commits queued before
                        pass
        finally:
            # aiokafka retries a commit forever once its consumer stopped: abandon them
            # before stopping it.
            for commit in list(self._commits):
                commit.cancel()
            await self._stop_consumer()

    async def _stop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with anyio.CancelScope(shield=True):
                await consumer.stop()

    async def _start(self) -> Any:
        transport = self._transport
        kafka = transport._kafka
        options: dict[str, Any] = {
            "bootstrap_servers": transport.bootstrap_servers,
            "group_id": self.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            **transport._consumer_options,
        }
        client_id = self.consumer or transport.client_id
        if client_id is not None:
            options["client_id"] = client_id
        consumer = kafka.AIOKafkaConsumer(**options)
        consumer.subscribe(topics=[self.topic], listener=self._listener(kafka))
        with _broker_errors(kafka, self, f"join group {self.group!r}"):
            try:
                await consumer.start()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await consumer.stop()
                raise
        self._consumer = consumer
        return consumer

    def _listener(self, kafka: Any) -> Any:
        """An aiokafka rebalance listener that commits what it can before a revocation."""

        async def on_partitions_revoked(_listener: object, revoked: Any) -> None:
            lost = {
                partition: offsets
                for partition in revoked
                if (offsets := self._offsets.pop(partition, None)) is not None
            }
            await self._commit(lost)

        async def on_partitions_assigned(_listener: object, assigned: Any) -> None:
            return

        listener_class = type(
            "_RebalanceListener",
            (kafka.ConsumerRebalanceListener,),
            {
                "on_partitions_revoked": on_partitions_revoked,
                "on_partitions_assigned": on_partitions_assigned,
            },
        )
        return listener_class()

    async def _commit(self, partitions: Mapping[Any, PartitionOffsets]) -> None:
        """Commit the positions that moved on, one commit at a time (never backwards).

        `aclose` cancels the commits that outlive its grace, waiting for the lock
        included: a cancelled commit returns, committing nothing.
        """
        if self._consumer is None:
            return
        if self._commit_lock is None:
            self._commit_lock = anyio.Lock()
        with anyio.CancelScope() as scope:
            self._commits.add(scope)
            try:
                async with self._commit_lock:
                    await self._commit_locked(partitions)
            finally:
                self._commits.discard(scope)

    async def _commit_locked(self, partitions: Mapping[Any, PartitionOffsets]) -> None:
        consumer = self._consumer
        if consumer is None:  # closed while this commit waited for the lock
            return
        kafka = self._transport._kafka
        # Positions are read under the lock: a commit waiting behind another sends
        # the latest position, and a later commit never carries an older one.
        due: dict[Any, int] = {}
        for partition, offsets in partitions.items():
            position = offsets.position
            if position is not None and offsets.needs_commit():
                due[partition] = position
        if not due:
            return
        with _broker_errors(kafka, self, "commit offsets"):
            try:
                await consumer.commit(due)
            except (kafka.errors.CommitFailedError, kafka.errors.IllegalStateError) as exc:
                logger.warning(
                    "%r: commit failed during a rebalance (%s); those messages are "
                    "delivered again to the partitions' next owner",
                    self,
                    exc,
                )
                return
        for partition, position in due.items():
            partitions[partition].mark_committed(position)
