"""RedisStreams: restarts, crashed consumers, trimmed entries, prompt cancellation and
configuration — what the transport contract suite does not cover."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from resilience_kit.errors import ConfigurationError
from resilience_kit.messaging import Event
from resilience_kit.messaging._protocols import Delivery, Publisher, Subscriber

redis = pytest.importorskip("redis", reason="the redis extra is not installed")

from resilience_kit.transports.redis import RedisStreams, RedisStreamSubscriber  # noqa: E402

pytestmark = pytest.mark.anyio


def event(key: str, n: int = 0) -> Event:
    return Event(type="test.happened", key=key, payload={"n": n})


def number(delivery: Delivery) -> int:
    return int(Event.from_json(delivery.data).payload["n"])


async def next_delivery(subscriber: RedisStreamSubscriber) -> Delivery:
    with anyio.fail_after(10):
        return await anext(aiter(subscriber))


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    """A plain redis-py client, to play a consumer that crashed."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def streams(redis_url: str, prefix: str) -> AsyncIterator[RedisStreams]:
    transport = RedisStreams(url=redis_url, prefix=prefix)
    yield transport
    await transport.aclose()


async def test_it_implements_the_protocols(streams: RedisStreams) -> None:
    assert isinstance(streams, Publisher)
    assert isinstance(streams.subscribe("t", group="g", consumer="c"), Subscriber)


async def test_an_entry_holds_the_events_json_key_and_id(streams: RedisStreams, raw: Any) -> None:
    sent = event("org:1")
    await streams.publish("orgs", sent)
    [(_, fields)] = raw.xrange(streams.stream("orgs"))
    assert fields == {b"data": sent.to_json(), b"key": b"org:1", b"event_id": str(sent.id).encode()}


async def test_a_restarted_consumer_gets_its_own_pending_entries_first(
    streams: RedisStreams, raw: Any
) -> None:
    for n in range(3):
        await streams.publish("orgs", event("a", n))
    raw.xgroup_create(streams.stream("orgs"), "g", id="0")
    raw.xreadgroup("g", "pod-1", {streams.stream("orgs"): ">"}, count=2)  # then it crashed
    await streams.publish("orgs", event("a", 3))
    async with streams.subscribe("orgs", group="g", consumer="pod-1", batch=1) as subscriber:
        deliveries = [await next_delivery(subscriber) for _ in range(4)]
        for delivery in deliveries:
            await subscriber.ack(delivery)
    assert [number(d) for d in deliveries] == [0, 1, 2, 3]
    assert [d.attempt for d in deliveries] == [2, 2, 1, 1]
    assert raw.xpending(streams.stream("orgs"), "g")["pending"] == 0


async def test_entries_of_a_crashed_consumer_are_reclaimed_once_idle(
    streams: RedisStreams, raw: Any
) -> None:
    await streams.publish("orgs", event("a", 0))
    raw.xgroup_create(streams.stream("orgs"), "g", id="0")
    raw.xreadgroup("g", "crashed", {streams.stream("orgs"): ">"})
    await streams.publish("orgs", event("a", 1))
    # Not idle long enough (30 s): only the new entry comes.
    async with streams.subscribe("orgs", group="g", consumer="patient") as patient:
        assert number(await next_delivery(patient)) == 1
    # Idle for >= 0 s: taken over, with its delivery count.
    async with streams.subscribe("orgs", group="g", consumer="eager", reclaim_idle=0) as eager:
        reclaimed = await next_delivery(eager)
        assert (number(reclaimed), reclaimed.attempt) == (0, 2)
        await eager.ack(reclaimed)
    consumers = {c["name"]: c["pending"] for c in raw.xinfo_consumers(streams.stream("orgs"), "g")}
    assert consumers[b"crashed"] == 0


async def test_a_reclaim_pass_does_not_hand_out_what_this_consumer_holds(
    streams: RedisStreams,
) -> None:
    await streams.publish("orgs", event("a", 0))
    async with streams.subscribe("orgs", group="g", consumer="c", reclaim_idle=0) as subscriber:
        first = await next_delivery(subscriber)  # held, not acknowledged
        await streams.publish("orgs", event("a", 1))
        subscriber._next_reclaim = -math.inf  # a reclaim pass is due: it claims `first` again
        second = await next_delivery(subscriber)
        assert [number(first), number(second)] == [0, 1]
        await subscriber.ack(first)
        await subscriber.ack(second)


@pytest.mark.parametrize("path", ["own", "reclaimed"])
async def test_a_pending_entry_deleted_from_the_stream_is_logged_and_acked(
    streams: RedisStreams, raw: Any, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    stream = streams.stream("orgs")
    await streams.publish("orgs", event("a", 0))
    await streams.publish("orgs", event("a", 1))
    raw.xgroup_create(stream, "g", id="0")
    [[_, [(first_id, _), _]]] = raw.xreadgroup("g", "pod-1", {stream: ">"})
    raw.xdel(stream, first_id)  # trimmed while pending
    consumer, reclaim_idle = ("pod-1", None) if path == "own" else ("pod-2", 0.0)
    with caplog.at_level(logging.WARNING, logger="resilience_kit.transports"):
        async with streams.subscribe(
            "orgs", group="g", consumer=consumer, reclaim_idle=reclaim_idle
        ) as subscriber:
            survivor = await next_delivery(subscriber)
            await subscriber.ack(survivor)
    assert number(survivor) == 1
    assert first_id.decode() in caplog.text
    assert "lost" in caplog.text
    assert raw.xpending(stream, "g")["pending"] == 0


async def test_maxlen_trims_the_stream(redis_url: str, prefix: str, raw: Any) -> None:
    async with RedisStreams(url=redis_url, prefix=prefix, maxlen=10) as streams:
        for n in range(300):
            await streams.publish("orgs", event("a", n))
        assert raw.xlen(streams.stream("orgs")) < 300


async def test_a_blocked_read_is_cancelled_promptly_and_the_reader_stays_usable(
    redis_url: str, prefix: str, raw: Any
) -> None:
    client = redis.Redis.from_url(redis_url)  # no socket timeout: reads block for 60 s
    streams = RedisStreams(client=client, prefix=prefix)
    subscriber = streams.subscribe("orgs", group="g", consumer="c", block=60.0)
    assert subscriber.block == 60.0
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(subscriber.__anext__)
        with anyio.fail_after(10):
            while subscriber._reading is None:  # the blocking read has started
                await anyio.wait_all_tasks_blocked()
        cancelled_at = anyio.current_time()
        tasks.cancel_scope.cancel()
    assert anyio.current_time() - cancelled_at < 3  # far below the 60 s block
    reader_id = subscriber._reader_id
    await streams.publish("orgs", event("a", 7))
    assert number(await next_delivery(subscriber)) == 7
    await streams.aclose()
    blocked = [c for c in raw.client_list() if int(c["id"]) == reader_id and "b" in c["flags"]]
    assert blocked == []
    assert client.ping()  # a client passed in is left open
    client.close()


async def test_a_blocking_read_stays_below_the_socket_timeout(streams: RedisStreams) -> None:
    # A client made from a URL has a 1 s socket timeout: a longer block would time out.
    assert streams.subscribe("orgs", group="g", consumer="c", block=30.0).block < 1.0


async def test_a_resp3_client_works(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url, protocol=3)
    async with RedisStreams(client=client, prefix=prefix) as streams:
        await streams.publish("orgs", event("a", 5))
        async with streams.subscribe("orgs", group="g", consumer="c") as subscriber:
            delivery = await next_delivery(subscriber)
            await subscriber.ack(delivery)
    client.close()
    assert (number(delivery), delivery.key) == (5, "a")


async def test_a_delivery_from_another_group_cannot_be_acked(streams: RedisStreams) -> None:
    await streams.publish("orgs", event("a"))
    async with (
        streams.subscribe("orgs", group="billing", consumer="c") as billing,
        streams.subscribe("orgs", group="audit", consumer="c") as audit,
    ):
        delivery = await next_delivery(billing)
        with pytest.raises(ValueError, match="another stream or group"):
            await audit.ack(delivery)
        await billing.ack(delivery)


async def test_a_closed_transport_refuses_work(redis_url: str, prefix: str) -> None:
    streams = RedisStreams(url=redis_url, prefix=prefix)
    await streams.aclose()
    await streams.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await streams.publish("orgs", event("a"))
    with pytest.raises(RuntimeError, match="closed"):
        streams.subscribe("orgs", group="g", consumer="c")


def test_a_decoding_client_is_refused(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError) as raised:
        RedisStreams(client=client)
    assert raised.value.parameter == "client"
    client.close()


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"prefix": 3}, "prefix"),
        ({"maxlen": 0}, "maxlen"),
        ({"url": "redis://localhost:6379/0", "client": "also"}, "client"),
        ({"url": None}, "client"),
    ],
)
def test_bad_transport_configuration_is_refused(kwargs: dict[str, Any], parameter: str) -> None:
    arguments = {"url": "redis://localhost:6379/0", **kwargs}
    with pytest.raises(ConfigurationError) as raised:
        RedisStreams(**arguments)
    assert raised.value.parameter == parameter


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"group": ""}, "group"),
        ({"consumer": ""}, "consumer"),
        ({"batch": 0}, "batch"),
        ({"batch": 1001}, "batch"),
        ({"block": 0}, "block"),
        ({"reclaim_idle": -1}, "reclaim_idle"),
        ({"topic": "bad\nname"}, "topic"),
    ],
)
def test_bad_subscription_configuration_is_refused(kwargs: dict[str, Any], parameter: str) -> None:
    streams = RedisStreams(url="redis://localhost:6379/0")
    arguments = {"topic": "orgs", "group": "g", "consumer": "c", **kwargs}
    topic = arguments.pop("topic")
    with pytest.raises(ConfigurationError) as raised:
        streams.subscribe(topic, **arguments)
    assert raised.value.parameter == parameter
