"""KafkaTransport without a broker: the offset tracker (pure), the trio refusal, the
configuration, and the transport's use of aiokafka against an in-memory fake of it.

The contract suite (tests/contract/test_transport_contract.py) runs the transport
against a real broker when KAFKA_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import logging
import socket
import zlib
from collections import namedtuple
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit.errors import ConfigurationError, TransportError, TransportUnavailableError
from resilience_kit.messaging import Event
from resilience_kit.messaging._protocols import Delivery, Publisher, Subscriber
from resilience_kit.transports import kafka as kafka_module
from resilience_kit.transports._offsets import PartitionOffsets
from resilience_kit.transports.kafka import KafkaSubscriber, KafkaTransport
from tests.servers import free_port

kafka_errors = pytest.importorskip("aiokafka.errors", reason="the kafka extra is not installed")


def event(key: str, n: int = 0) -> Event:
    return Event(type="test.happened", key=key, payload={"n": n})


def number(delivery: Delivery) -> int:
    return int(Event.from_json(delivery.data).payload["n"])


# -- the offset tracker ----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 3), min_size=1, max_size=40),
    data=st.data(),
)
def test_the_position_is_the_smallest_unacked_offset_whatever_the_ack_order(
    gaps: list[int], data: st.DataObject
) -> None:
    offsets = PartitionOffsets()
    delivered = []
    offset = data.draw(st.integers(0, 1000))
    for gap in gaps:  # increasing, with gaps (compaction, transaction markers)
        offsets.delivered(offset)
        delivered.append(offset)
        offset += gap
    order = data.draw(st.permutations(delivered))
    repeats = data.draw(st.lists(st.sampled_from(delivered), max_size=5))
    acked: set[int] = set()
    previous = offsets.position
    assert previous == delivered[0]
    for ack in [*order[: len(order) // 2], *repeats, *order[len(order) // 2 :]]:
        before = offsets.position
        moved = offsets.ack(ack)
        acked.add(ack)
        unacked = [o for o in delivered if o not in acked]
        expected = unacked[0] if unacked else delivered[-1] + 1
        assert offsets.position == expected
        assert moved == (offsets.position != before)
        assert offsets.position is not None
        assert previous is not None
        assert offsets.position >= previous  # never backwards
        assert offsets.pending == len(unacked)
        previous = offsets.position


def test_offsets_must_increase_and_strays_are_ignored() -> None:
    offsets = PartitionOffsets()
    assert offsets.position is None
    assert not offsets.needs_commit()
    offsets.delivered(10)
    with pytest.raises(ValueError, match="must increase"):
        offsets.delivered(10)
    assert not offsets.ack(11)  # never delivered
    assert not offsets.ack(9)
    assert offsets.ack(10)
    assert not offsets.ack(10)  # twice
    assert (offsets.position, offsets.needs_commit()) == (11, True)
    offsets.mark_committed(11)
    assert not offsets.needs_commit()
    assert repr(offsets) == "PartitionOffsets(position=11, pending=0)"


# -- trio and configuration --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_it_refuses_to_run_on_trio() -> None:
    kafka = KafkaTransport("localhost:9092")
    with pytest.raises(RuntimeError, match="asyncio only"):
        await kafka.publish("orgs", event("a"))
    with pytest.raises(RuntimeError, match="asyncio only"):
        await anext(aiter(kafka.subscribe("orgs", group="g")))
    await kafka.aclose()


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"bootstrap_servers": ""}, "bootstrap_servers"),
        ({"bootstrap_servers": []}, "bootstrap_servers"),
        ({"bootstrap_servers": ["a:9092", " "]}, "bootstrap_servers"),
        ({"bootstrap_servers": 9092}, "bootstrap_servers"),
        ({"acks": 2}, "acks"),
        ({"acks": True}, "acks"),
        ({"acks": 1}, "idempotent"),
        ({"idempotent": "yes"}, "idempotent"),
        ({"client_id": ""}, "client_id"),
        ({"producer_options": {"acks": 1}}, "producer_options"),
        ({"producer_options": ["linger_ms"]}, "producer_options"),
        ({"consumer_options": {"enable_auto_commit": True}}, "consumer_options"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], parameter: str) -> None:
    arguments = {"bootstrap_servers": "localhost:9092", **kwargs}
    servers = arguments.pop("bootstrap_servers")
    with pytest.raises(ConfigurationError) as raised:
        KafkaTransport(servers, **arguments)
    assert raised.value.parameter == parameter


def test_acks_one_without_idempotence_is_allowed() -> None:
    kafka = KafkaTransport(["a:9092", "b:9092"], acks=1, idempotent=False)
    assert (kafka.acks, kafka.bootstrap_servers) == (1, ["a:9092", "b:9092"])
    with pytest.raises(ConfigurationError) as raised:
        kafka.subscribe("orgs", group="")
    assert raised.value.parameter == "group"


# -- against a fake aiokafka ---------------------------------------------------------------

TopicPartition = namedtuple("TopicPartition", ["topic", "partition"])
Record = namedtuple("Record", ["topic", "partition", "offset", "key", "value", "headers"])


ConsumerStoppedError = kafka_errors.ConsumerStoppedError
CommitFailedError = kafka_errors.CommitFailedError


class ConsumerRebalanceListener:
    async def on_partitions_revoked(self, revoked: Any) -> None:
        raise NotImplementedError

    async def on_partitions_assigned(self, assigned: Any) -> None:
        raise NotImplementedError


class FakeBroker:
    """Topics of three partitions, committed offsets per group; one member per group."""

    partitions = 3

    def __init__(self) -> None:
        self.logs: dict[TopicPartition, list[Record]] = {}
        self.committed: dict[tuple[str, TopicPartition], int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.producers: list[FakeProducer] = []
        self.consumers: list[FakeConsumer] = []
        self.fail_commits = False
        # An operation ("producer.start", "send", "consumer.start", "getone", "commit")
        # raises the exception set here, as aiokafka does when the broker fails.
        self.failures: dict[str, BaseException] = {}
        self.hold_commits: anyio.Event | None = None  # commits wait for it while set
        self.changed: anyio.Event | None = None

    def notify(self) -> None:
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    def check(self, operation: str) -> None:
        failure = self.failures.get(operation)
        if failure is not None:
            raise failure

    async def wait(self) -> None:
        if self.changed is None:
            self.changed = anyio.Event()
        await self.changed.wait()

    def module(self) -> Any:
        broker = self
        return SimpleNamespace(
            AIOKafkaProducer=lambda **options: FakeProducer(broker, options),
            AIOKafkaConsumer=lambda **options: FakeConsumer(broker, options),
            ConsumerRebalanceListener=ConsumerRebalanceListener,
            TopicPartition=TopicPartition,
            ConsumerStoppedError=ConsumerStoppedError,
            errors=kafka_errors,
        )


class FakeProducer:
    def __init__(self, broker: FakeBroker, options: dict[str, Any]) -> None:
        self.broker, self.options = broker, options
        self.started = self.stopped = False
        broker.producers.append(self)

    async def start(self) -> None:
        await anyio.lowlevel.checkpoint()  # let a concurrent publish race for the start
        self.broker.check("producer.start")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send_and_wait(
        self, topic: str, *, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        assert self.started
        assert not self.stopped
        self.broker.check("send")
        partition = 0 if key is None else zlib.crc32(key) % self.broker.partitions
        log = self.broker.logs.setdefault(TopicPartition(topic, partition), [])
        log.append(Record(topic, partition, len(log), key, value, headers))
        self.broker.notify()


class FakeConsumer:
    def __init__(self, broker: FakeBroker, options: dict[str, Any]) -> None:
        self.broker, self.options = broker, options
        self.group = options["group_id"]
        self.listener: Any = None
        self.positions: dict[TopicPartition, int] = {}
        self.stopped = False
        broker.consumers.append(self)

    def subscribe(self, *, topics: list[str], listener: Any) -> None:
        assert isinstance(listener, ConsumerRebalanceListener)
        self.topics, self.listener = topics, listener

    def _assign(self) -> list[TopicPartition]:
        assigned = [
            TopicPartition(t, p) for t in self.topics for p in range(self.broker.partitions)
        ]
        self.positions = {tp: self.broker.committed.get((self.group, tp), 0) for tp in assigned}
        return assigned

    async def start(self) -> None:
        self.broker.check("consumer.start")
        await self.listener.on_partitions_assigned(self._assign())

    async def rebalance(self) -> None:
        """An eager rebalance that gives this member its partitions back."""
        await self.listener.on_partitions_revoked(list(self.positions))
        await self.listener.on_partitions_assigned(self._assign())

    async def getone(self) -> Record:
        self.broker.check("getone")
        while True:
            if self.stopped:
                raise ConsumerStoppedError
            for tp, position in self.positions.items():
                log = self.broker.logs.get(tp, [])
                if position < len(log):
                    self.positions[tp] = position + 1
                    return log[position]
            await self.broker.wait()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.broker.hold_commits is not None:
            await self.broker.hold_commits.wait()
        # aiokafka would retry a commit on a stopped consumer forever.
        assert not self.stopped
        if self.broker.fail_commits:
            raise CommitFailedError("rebalancing")
        self.broker.check("commit")
        self.broker.commits.append(dict(offsets))
        for tp, position in offsets.items():
            self.broker.committed[(self.group, tp)] = position

    async def stop(self) -> None:
        self.stopped = True
        self.broker.notify()


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBroker]:
    fake = FakeBroker()
    monkeypatch.setattr(kafka_module, "_aiokafka", fake.module)
    yield fake
    assert all(producer.stopped for producer in fake.producers if producer.started)


async def next_delivery(subscriber: KafkaSubscriber) -> Delivery:
    with anyio.fail_after(5):
        return await anext(aiter(subscriber))


asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.mark.anyio
@asyncio_only
async def test_publish_sends_key_json_and_headers_with_safe_defaults(broker: FakeBroker) -> None:
    sent = event("org:1", 3)
    async with KafkaTransport("k:9092", client_id="orgs") as kafka:
        assert isinstance(kafka, Publisher)
        async with anyio.create_task_group() as tasks:  # two publishes race to start it
            tasks.start_soon(kafka.publish, "orgs", sent)
            tasks.start_soon(kafka.publish_raw, "orgs", b"\xff")
    [producer] = broker.producers
    assert producer.options == {
        "bootstrap_servers": "k:9092",
        "acks": "all",
        "enable_idempotence": True,
        "client_id": "orgs",
    }
    records = sorted((r for log in broker.logs.values() for r in log), key=lambda r: r.value)
    assert [(r.key, r.value) for r in records] == [(b"org:1", sent.to_json()), (None, b"\xff")]
    assert dict(records[0].headers) == {
        "event_id": str(sent.id).encode(),
        "event_type": b"test.happened",
    }
    with pytest.raises(RuntimeError, match="closed"):
        await kafka.publish("orgs", sent)


@pytest.mark.anyio
@asyncio_only
async def test_ack_commits_only_the_handled_prefix(broker: FakeBroker) -> None:
    async with KafkaTransport("k:9092") as kafka:
        for n in range(3):
            await kafka.publish("orgs", event("a", n))
        subscriber = kafka.subscribe("orgs", group="g", consumer="c1")
        assert isinstance(subscriber, Subscriber)
        first, second, third = [await next_delivery(subscriber) for _ in range(3)]
        assert [number(d) for d in (first, second, third)] == [0, 1, 2]
        assert (first.key, first.attempt) == ("a", 1)
        [consumer] = broker.consumers
        assert consumer.options["enable_auto_commit"] is False
        assert consumer.options["client_id"] == "c1"
        await subscriber.ack(second)
        assert broker.commits == []  # `first` is still being handled
        await subscriber.ack(first)
        await subscriber.ack(first)
        await subscriber.ack(third)
        partition = TopicPartition("orgs", int(first.id.split("-")[0]))
        assert broker.commits == [{partition: 2}, {partition: 3}]


@pytest.mark.anyio
@asyncio_only
async def test_unacked_messages_come_back_to_the_next_member(broker: FakeBroker) -> None:
    async with KafkaTransport("k:9092") as kafka:
        for n in range(3):
            await kafka.publish("orgs", event("a", n))
        async with kafka.subscribe("orgs", group="g") as first:
            handled = await next_delivery(first)
            await first.ack(handled)
            await next_delivery(first)  # never acknowledged
        async with kafka.subscribe("orgs", group="g") as second:
            assert [number(await next_delivery(second)) for _ in range(2)] == [1, 2]


@pytest.mark.anyio
@asyncio_only
async def test_a_rebalance_commits_the_prefix_and_later_acks_do_nothing(
    broker: FakeBroker,
) -> None:
    async with KafkaTransport("k:9092") as kafka:
        for n in range(3):
            await kafka.publish("orgs", event("a", n))
        async with kafka.subscribe("orgs", group="g") as subscriber:
            deliveries = [await next_delivery(subscriber) for _ in range(3)]
            await subscriber.ack(deliveries[1])
            broker.fail_commits = True
            await subscriber.ack(deliveries[0])  # the commit fails: logged, not raised
            broker.fail_commits = False
            [consumer] = broker.consumers
            await consumer.rebalance()  # revoked: the acked prefix is committed first
            partition = TopicPartition("orgs", int(deliveries[0].id.split("-")[0]))
            assert broker.commits == [{partition: 2}]
            await subscriber.ack(deliveries[2])  # from before the rebalance: ignored
            assert broker.commits == [{partition: 2}]
            again = await next_delivery(subscriber)
            assert (number(again), again.id) == (2, deliveries[2].id)
            await subscriber.ack(again)
            assert broker.commits == [{partition: 2}, {partition: 3}]


@pytest.mark.anyio
@asyncio_only
async def test_a_failed_commit_is_logged(
    broker: FakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    async with KafkaTransport("k:9092") as kafka:
        await kafka.publish("orgs", event("a"))
        async with kafka.subscribe("orgs", group="g") as subscriber:
            delivery = await next_delivery(subscriber)
            broker.fail_commits = True
            with caplog.at_level(logging.WARNING, logger="resilience_kit.transports"):
                await subscriber.ack(delivery)
    assert "commit failed during a rebalance" in caplog.text
    assert broker.commits == []


@pytest.mark.anyio
@asyncio_only
async def test_closing_ends_a_waiting_iteration_promptly(broker: FakeBroker) -> None:
    kafka = KafkaTransport("k:9092")
    subscriber = kafka.subscribe("orgs", group="g")
    ended = anyio.Event()

    async def consume() -> None:
        async for _ in subscriber:
            pass
        ended.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        await kafka.aclose()  # closes the subscriber
        with anyio.fail_after(5):
            await ended.wait()
    assert broker.consumers[0].stopped
    with pytest.raises(StopAsyncIteration):
        await anext(aiter(subscriber))


@pytest.mark.anyio
@asyncio_only
async def test_closing_lets_the_commits_in_flight_finish(broker: FakeBroker) -> None:
    async with KafkaTransport("k:9092") as kafka:
        for n in range(2):
            await kafka.publish("orgs", event("a", n))
        subscriber = kafka.subscribe("orgs", group="g")
        first, second = [await next_delivery(subscriber) for _ in range(2)]
        broker.hold_commits = held = anyio.Event()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(subscriber.ack, first)  # committing
                await anyio.wait_all_tasks_blocked()
                tasks.start_soon(subscriber.ack, second)  # waiting for the first commit
                await anyio.wait_all_tasks_blocked()
                tasks.start_soon(subscriber.aclose)
                await anyio.wait_all_tasks_blocked()
                assert not broker.consumers[0].stopped
                held.set()  # the broker answers
        await subscriber.ack(second)  # after the close: changes nothing
    partition = TopicPartition("orgs", int(first.id.split("-")[0]))
    assert broker.commits == [{partition: 1}, {partition: 2}]
    assert broker.consumers[0].stopped


@pytest.mark.anyio
@asyncio_only
async def test_closing_abandons_the_commits_a_silent_broker_holds(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_module, "_CLOSE_GRACE", 0.05)
    async with KafkaTransport("k:9092") as kafka:
        for n in range(2):
            await kafka.publish("orgs", event("a", n))
        subscriber = kafka.subscribe("orgs", group="g")
        first, second = [await next_delivery(subscriber) for _ in range(2)]
        broker.hold_commits = anyio.Event()  # the broker never answers
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(subscriber.ack, first)
                await anyio.wait_all_tasks_blocked()
                tasks.start_soon(subscriber.ack, second)
                await anyio.wait_all_tasks_blocked()
                await subscriber.aclose()  # the acks return: the task group ends
    assert broker.commits == []
    assert broker.consumers[0].stopped


@pytest.mark.anyio
@asyncio_only
async def test_a_delivery_from_another_subscriber_cannot_be_acked(broker: FakeBroker) -> None:
    async with KafkaTransport("k:9092") as kafka:
        await kafka.publish("orgs", event("a"))
        async with (
            kafka.subscribe("orgs", group="billing") as billing,
            kafka.subscribe("orgs", group="audit") as audit,
        ):
            delivery = await next_delivery(billing)
            with pytest.raises(ValueError, match="another subscriber"):
                await audit.ack(delivery)


# -- broker failures become the library's errors -------------------------------------------


async def fail_at(kafka: KafkaTransport, broker: FakeBroker, operation: str) -> None:
    """Run what reaches ``operation`` in the fake: a publish, a first delivery or an ack."""
    if operation in ("producer.start", "send"):
        await kafka.publish("orgs", event("a"))
        return
    if operation == "commit":
        await kafka.publish("orgs", event("a"))
        async with kafka.subscribe("orgs", group="g") as subscriber:
            delivery = await next_delivery(subscriber)
            broker.failures["commit"] = broker.failures.pop("pending")
            await subscriber.ack(delivery)
        return
    async with kafka.subscribe("orgs", group="g") as subscriber:
        await next_delivery(subscriber)


OPERATIONS = ["producer.start", "send", "consumer.start", "getone", "commit"]


@pytest.mark.anyio
@asyncio_only
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    "failure",
    [
        kafka_errors.KafkaConnectionError("Unable to bootstrap from [('k', 9092)]"),
        kafka_errors.KafkaTimeoutError(),
        kafka_errors.RequestTimedOutError(),
        kafka_errors.NodeNotReadyError(),
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
    ],
    ids=lambda failure: type(failure).__name__,
)
async def test_a_broker_that_does_not_answer_raises_transport_unavailable(
    broker: FakeBroker, operation: str, failure: BaseException
) -> None:
    broker.failures["pending" if operation == "commit" else operation] = failure
    async with KafkaTransport("k:9092") as kafka:
        with pytest.raises(TransportUnavailableError) as raised:
            await fail_at(kafka, broker, operation)
    assert isinstance(raised.value, ConnectionError)
    assert raised.value.__cause__ is failure
    assert raised.value.transport.startswith(("KafkaTransport(", "KafkaSubscriber("))
    assert "unreachable or did not answer in time" in str(raised.value)


@pytest.mark.anyio
@asyncio_only
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_broker_that_refuses_raises_transport_error(
    broker: FakeBroker, operation: str
) -> None:
    failure = kafka_errors.TopicAuthorizationFailedError()
    broker.failures["pending" if operation == "commit" else operation] = failure
    async with KafkaTransport("k:9092", idempotent=False) as kafka:
        with pytest.raises(TransportError) as raised:
            await fail_at(kafka, broker, operation)
    assert not isinstance(raised.value, TransportUnavailableError)
    assert raised.value.__cause__ is failure
    assert "Kafka refused (TopicAuthorizationFailedError" in str(raised.value)
    assert "idempotent=False" not in str(raised.value)


@pytest.mark.anyio
@asyncio_only
async def test_a_broker_refusing_an_idempotent_producer_says_how_to_turn_it_off(
    broker: FakeBroker,
) -> None:
    broker.failures["producer.start"] = kafka_errors.UnknownError()
    async with KafkaTransport("k:9092") as kafka:
        with pytest.raises(TransportError, match=r"idempotent=False"):
            await kafka.publish("orgs", event("a"))
        del broker.failures["producer.start"]
        await kafka.publish("orgs", event("a"))  # the next publish starts a new producer
    assert [producer.started for producer in broker.producers] == [False, True]
    assert all(producer.stopped for producer in broker.producers)


@pytest.mark.anyio
@asyncio_only
async def test_a_subscriber_that_could_not_join_can_be_iterated_again(broker: FakeBroker) -> None:
    async with KafkaTransport("k:9092") as kafka:
        await kafka.publish("orgs", event("a", 7))
        async with kafka.subscribe("orgs", group="g") as subscriber:
            broker.failures["consumer.start"] = kafka_errors.KafkaConnectionError()
            with pytest.raises(TransportUnavailableError):
                await next_delivery(subscriber)
            del broker.failures["consumer.start"]
            assert number(await next_delivery(subscriber)) == 7
    first, second = broker.consumers
    assert (first.stopped, second.stopped) == (True, True)


# -- against real aiokafka, with no broker --------------------------------------------------


@pytest.mark.anyio
@asyncio_only
async def test_a_closed_port_fails_publish_and_subscribe_at_once() -> None:
    port = free_port()  # nothing listens there
    with anyio.fail_after(10):  # aiokafka fails the bootstrap at the first refusal
        async with KafkaTransport(f"127.0.0.1:{port}") as kafka:
            with pytest.raises(TransportUnavailableError, match="Unable to bootstrap"):
                await kafka.publish("orgs", event("a"))
            with pytest.raises(TransportUnavailableError, match="join group 'g'"):
                await anext(aiter(kafka.subscribe("orgs", group="g")))
            with pytest.raises(ConnectionError):  # what a RetryPolicy(on=ConnectionError) sees
                await kafka.publish_raw("orgs", b"x")


@pytest.mark.anyio
@asyncio_only
async def test_a_broker_that_never_answers_fails_after_the_request_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        servers = f"127.0.0.1:{silent.getsockname()[1]}"
        options = {"request_timeout_ms": 300}
        kafka = KafkaTransport(servers, producer_options=options, consumer_options=options)
        with anyio.fail_after(10):
            async with kafka:
                with pytest.raises(TransportUnavailableError):
                    await kafka.publish("orgs", event("a"))
                with pytest.raises(TransportUnavailableError):
                    await anext(aiter(kafka.subscribe("orgs", group="g")))
