"""One contract for every transport: what a Publisher and its Subscribers promise.

Runs against the in-memory bus always, Redis Streams through the ``redis_url`` fixture,
and Kafka when KAFKA_BOOTSTRAP_SERVERS names a broker (asyncio only: aiokafka;
``bash scripts/kafka_broker.sh start`` runs one). With RESILIENCE_KIT_REQUIRE_SERVERS=1
(CI), a missing broker fails the Kafka tests instead of skipping them. Each test gets
fresh topics (and, on Kafka, fresh consumer groups). Waiting is bounded by timeouts,
never by sleeping.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from resilience_kit.messaging import Event
from resilience_kit.messaging._protocols import Delivery, Publisher, Subscriber
from tests.servers import unavailable

pytestmark = pytest.mark.anyio

KAFKA_SERVERS = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
NO_KAFKA = (
    "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS=host:port to run the Kafka contract tests "
    "(bash scripts/kafka_broker.sh start runs one)"
)
# Tansu, the broker CI runs, refuses idempotent producers; against a real Kafka, set
# KAFKA_IDEMPOTENT=1 to run the contract with the transport's default producer.
KAFKA_IDEMPOTENT = os.environ.get("KAFKA_IDEMPOTENT") == "1"


@dataclass
class Transport:
    """A transport under test, and what it can promise beyond the contract's core."""

    name: str
    publisher: Any  # publish, publish_raw, subscribe, aclose
    subscribe: Callable[[str, str, str], Any]  # (topic, group, consumer) -> Subscriber
    counts_attempts: bool  # Delivery.attempt counts redeliveries (Kafka does not)
    exact: bool  # no duplicates while no member closes (Kafka rebalances redeliver)
    timeout: float = 10.0
    topics: list[str] = field(default_factory=list)
    new_topic_hook: Callable[[str], Any] | None = None

    async def topic(self, name: str) -> str:
        topic = f"{name}-{uuid.uuid4().hex[:10]}"
        if self.new_topic_hook is not None:
            await self.new_topic_hook(topic)
        self.topics.append(topic)
        return topic


async def _memory() -> AsyncIterator[Transport]:
    from resilience_kit.transports import MemoryBus  # noqa: PLC0415

    bus = MemoryBus()
    yield Transport(
        "memory",
        bus,
        lambda topic, group, consumer: bus.subscribe(topic, group=group, consumer=consumer),
        counts_attempts=True,
        exact=True,
    )
    await bus.aclose()


async def _redis(url: str) -> AsyncIterator[Transport]:
    import redis  # noqa: PLC0415

    from resilience_kit.transports import RedisStreams  # noqa: PLC0415

    prefix = f"t{uuid.uuid4().hex[:12]}:"
    streams = RedisStreams(url=url, prefix=prefix)
    try:
        yield Transport(
            "redis",
            streams,
            # batch=1: a member reads one entry at a time, so two members share the work.
            lambda topic, group, consumer: streams.subscribe(
                topic, group=group, consumer=consumer, batch=1
            ),
            counts_attempts=True,
            exact=True,
        )
    finally:
        await streams.aclose()
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


async def _kafka(servers: str) -> AsyncIterator[Transport]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    from resilience_kit.transports import KafkaTransport  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()

    async def create(topic: str) -> None:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])

    # A short session: a group join waits up to half of it on Tansu, and a member that
    # closed is only forgotten once it expires. Heartbeats keep members alive meanwhile.
    kafka = KafkaTransport(
        servers,
        idempotent=KAFKA_IDEMPOTENT,
        consumer_options={"session_timeout_ms": 3_000, "heartbeat_interval_ms": 500},
    )
    # Fresh groups: a group from an earlier test would make this one wait for its members.
    run = uuid.uuid4().hex[:10]
    transport = Transport(
        "kafka",
        kafka,
        lambda topic, group, consumer: kafka.subscribe(
            topic, group=f"{group}-{run}", consumer=consumer
        ),
        counts_attempts=False,
        exact=False,
        timeout=30.0,  # group joins and rebalances take seconds; the test's limit is 60 s
        new_topic_hook=create,
    )
    try:
        yield transport
    finally:
        await kafka.aclose()
        try:
            if transport.topics:
                await admin.delete_topics(transport.topics)
        finally:
            await admin.close()


@pytest.fixture(params=["memory", "redis", "kafka"])
async def transport(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Transport]:
    """Each transport in turn, fresh for the test."""
    if request.param == "memory":
        source = _memory()
    elif request.param == "redis":
        source = _redis(request.getfixturevalue("redis_url"))
    else:
        if anyio_backend != "asyncio":
            pytest.skip("KafkaTransport runs on asyncio only (aiokafka is built on asyncio)")
        if KAFKA_SERVERS is None:
            unavailable(NO_KAFKA)
        if importlib.util.find_spec("aiokafka") is None:
            unavailable("aiokafka is not installed (the kafka extra)")
        source = _kafka(KAFKA_SERVERS)
    async for made in source:
        yield made


def event(key: str, n: int = 0) -> Event:
    return Event(type="contract.happened", key=key, payload={"n": n})


async def receive(transport: Transport, subscriber: Any, count: int) -> list[Delivery]:
    with anyio.fail_after(transport.timeout):
        return [await anext(aiter(subscriber)) for _ in range(count)]


async def test_published_events_arrive_exactly_as_sent(transport: Transport) -> None:
    topic = await transport.topic("roundtrip")
    sent = [
        event("org:1", 1).with_headers(traceparent="00-4bf92f35-00f067aa-01"),
        Event(type="org.renamed", key="org:2", payload={"name": "Ünïcode ✓", "n": [1, 2.5]}),
        event("org:1", 3),
    ]
    assert isinstance(transport.publisher, Publisher)
    for item in sent:
        await transport.publisher.publish(topic, item)
    async with transport.subscribe(topic, "g", "c1") as subscriber:
        assert isinstance(subscriber, Subscriber)
        deliveries = await receive(transport, subscriber, 3)
        for delivery in deliveries:
            await subscriber.ack(delivery)
    received = {Event.from_json(d.data).id: (Event.from_json(d.data), d) for d in deliveries}
    for item in sent:
        decoded, delivery = received[item.id]
        assert decoded == item
        assert delivery.data == item.to_json()
        assert (delivery.topic, delivery.key, delivery.attempt) == (topic, item.key, 1)
    assert len({d.id for d in deliveries}) == 3


async def test_events_of_one_key_arrive_in_order(transport: Transport) -> None:
    topic = await transport.topic("order")
    keys = ["a", "b", "c"]
    for n in range(30):
        await transport.publisher.publish(topic, event(keys[n % 3], n))
    async with transport.subscribe(topic, "g", "c1") as subscriber:
        deliveries = await receive(transport, subscriber, 30)
        for delivery in deliveries:
            await subscriber.ack(delivery)
    for key in keys:
        numbers = [Event.from_json(d.data).payload["n"] for d in deliveries if d.key == key]
        assert numbers == sorted(numbers)
        assert len(numbers) == 10


async def test_every_group_gets_every_message(transport: Transport) -> None:
    topic = await transport.topic("groups")
    sent = [event(f"k{n}", n) for n in range(5)]
    groups = {group: transport.subscribe(topic, group, f"{group}-1") for group in ("a", "b")}
    for item in sent:
        await transport.publisher.publish(topic, item)
    for subscriber in groups.values():  # one group at a time: each gets all five
        async with subscriber:
            deliveries = await receive(transport, subscriber, 5)
            for delivery in deliveries:
                await subscriber.ack(delivery)
        assert {Event.from_json(d.data).id for d in deliveries} == {e.id for e in sent}


async def test_members_of_one_group_share_the_messages_and_lose_none(
    transport: Transport,
) -> None:
    topic = await transport.topic("split")
    count = 12
    sent = {e.id: e for e in (event(f"k{n}", n) for n in range(count))}
    members = {name: transport.subscribe(topic, "g", name) for name in ("m1", "m2")}
    received: list[tuple[str, Delivery]] = []
    complete = anyio.Event()

    def record(name: str, delivery: Delivery) -> None:
        received.append((name, delivery))
        if len({Event.from_json(d.data).id for _, d in received}) == count:
            complete.set()

    if transport.exact:
        for item in sent.values():
            await transport.publisher.publish(topic, item)
        # Each member takes one message and holds it: they must be different messages.
        for name, member in members.items():
            [delivery] = await receive(transport, member, 1)
            record(name, delivery)
        assert received[0][1].id != received[1][1].id
        for name, delivery in received:
            await members[name].ack(delivery)

    async def consume(name: str) -> None:
        member = members[name]
        async for delivery in member:
            record(name, delivery)
            await member.ack(delivery)

    async with anyio.create_task_group() as tasks:
        for name in members:
            tasks.start_soon(consume, name)
        if not transport.exact:
            for item in sent.values():
                await transport.publisher.publish(topic, item)
        with anyio.fail_after(transport.timeout):
            await complete.wait()
        for member in members.values():
            await member.aclose()
    assert {Event.from_json(d.data).id for _, d in received} == set(sent)
    if transport.exact:
        assert len(received) == count  # each message to one member only
        assert {name for name, _ in received} == set(members)


async def test_an_unacked_message_is_delivered_again_after_its_subscriber_closes(
    transport: Transport,
) -> None:
    topic = await transport.topic("redelivery")
    sent = event("org:1", 1)
    await transport.publisher.publish(topic, sent)
    async with transport.subscribe(topic, "g", "first") as first:
        [dropped] = await receive(transport, first, 1)  # the handler crashed: no ack
    async with transport.subscribe(topic, "g", "second") as second:
        [again] = await receive(transport, second, 1)
        await second.ack(again)
    assert Event.from_json(again.data) == sent
    assert again.id == dropped.id
    if transport.counts_attempts:
        assert (dropped.attempt, again.attempt) == (1, 2)


async def test_an_acked_message_is_never_delivered_again(transport: Transport) -> None:
    topic = await transport.topic("acked")
    done, fresh = event("org:1", 1), event("org:1", 2)
    await transport.publisher.publish(topic, done)
    async with transport.subscribe(topic, "g", "first") as first:
        [delivery] = await receive(transport, first, 1)
        await first.ack(delivery)
    await transport.publisher.publish(topic, fresh)
    async with transport.subscribe(topic, "g", "second") as second:
        [next_one] = await receive(transport, second, 1)
        await second.ack(next_one)
    assert Event.from_json(next_one.data) == fresh


async def test_poison_bytes_are_delivered_as_bytes(transport: Transport) -> None:
    topic = await transport.topic("poison")
    await transport.publisher.publish_raw(topic, b"\x00\xffnot json{", key="org:1")
    await transport.publisher.publish_raw(topic, b"")
    async with transport.subscribe(topic, "g", "c1") as subscriber:
        deliveries = await receive(transport, subscriber, 2)
        for delivery in deliveries:
            await subscriber.ack(delivery)
    received = {d.data: d.key for d in deliveries}
    assert received == {b"\x00\xffnot json{": "org:1", b"": None}


async def test_closing_ends_a_waiting_iteration_promptly(transport: Transport) -> None:
    topic = await transport.topic("close")
    subscriber = transport.subscribe(topic, "g", "c1")
    ended = anyio.Event()

    async def consume() -> None:
        async for _ in subscriber:
            pass  # nothing is published
        ended.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await subscriber.aclose()
            await ended.wait()
