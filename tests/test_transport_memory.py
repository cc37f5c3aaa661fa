"""MemoryBus: what the transport contract suite does not cover — key affinity between
members, fault injection, retention, join, and the group bookkeeping under any schedule."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit.errors import ConfigurationError, InjectedFaultError
from resilience_kit.messaging import Event
from resilience_kit.messaging._protocols import Delivery, Publisher, Subscriber
from resilience_kit.testing import ChaosFault
from resilience_kit.transports import MemoryBus, MemorySubscriber
from resilience_kit.transports._memory_log import Topic

pytestmark = pytest.mark.anyio


def event(key: str, n: int = 0) -> Event:
    return Event(type="test.happened", key=key, payload={"n": n})


async def next_delivery(subscriber: MemorySubscriber) -> Delivery:
    with anyio.fail_after(5):
        return await anext(aiter(subscriber))


async def nothing_ready(subscriber: MemorySubscriber) -> bool:
    """True if the subscriber has nothing to deliver now (a read would wait)."""
    got: list[Delivery] = []

    async def read() -> None:
        got.append(await anext(aiter(subscriber)))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read)
        await anyio.wait_all_tasks_blocked()
        tasks.cancel_scope.cancel()
    return not got


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [Event.from_json(delivery.data).payload["n"] for delivery in deliveries]


async def test_it_implements_the_protocols() -> None:
    bus = MemoryBus()
    subscriber = bus.subscribe("orgs", group="g")
    assert isinstance(bus, Publisher)
    assert isinstance(subscriber, Subscriber)
    await bus.aclose()


async def test_delivery_carries_the_events_json_and_key() -> None:
    bus = MemoryBus()
    sent = event("org:1", 7).with_headers(traceparent="00-ab-cd-01")
    await bus.publish("orgs", sent)
    async with bus.subscribe("orgs", group="g") as subscriber:
        delivery = await next_delivery(subscriber)
    assert delivery.data == sent.to_json()
    assert (delivery.topic, delivery.key, delivery.id, delivery.attempt) == (
        "orgs",
        "org:1",
        "0",
        1,
    )


async def test_a_key_held_by_one_member_is_not_handed_to_another() -> None:
    bus = MemoryBus()
    first = bus.subscribe("orgs", group="g", consumer="first")
    second = bus.subscribe("orgs", group="g", consumer="second")
    for n, key in enumerate(["a", "a", "b", "a"]):
        await bus.publish("orgs", event(key, n))
    a0 = await next_delivery(first)
    b2 = await next_delivery(second)  # skips a1: "a" is held by `first`
    assert numbers([a0, b2]) == [0, 2]
    assert await nothing_ready(second)  # only "a" messages left, and `first` holds "a"
    a1 = await next_delivery(first)  # the holder may take the key's next ones, in order
    assert numbers([a1]) == [1]
    await first.ack(a0)
    await first.ack(a1)
    await second.ack(b2)
    a3 = await next_delivery(second)  # "a" is free again
    assert numbers([a3]) == [3]
    await bus.aclose()


async def test_a_closed_members_messages_come_back_first_and_in_order() -> None:
    bus = MemoryBus()
    first = bus.subscribe("orgs", group="g")
    for n in range(3):
        await bus.publish("orgs", event("a", n))
    held = [await next_delivery(first), await next_delivery(first)]
    await first.ack(held[1])  # acknowledged out of order: only 0 goes back
    await first.aclose()
    async with bus.subscribe("orgs", group="g") as second:
        again = await next_delivery(second)
        later = await next_delivery(second)
    assert (numbers([again]), again.attempt, again.id) == ([0], 2, held[0].id)
    assert (numbers([later]), later.attempt) == ([2], 1)


async def test_any_member_may_ack_and_acking_twice_changes_nothing() -> None:
    bus = MemoryBus()
    first = bus.subscribe("orgs", group="g")
    second = bus.subscribe("orgs", group="g")
    await bus.publish("orgs", event("a"))
    delivery = await next_delivery(first)
    await second.ack(delivery)
    await second.ack(delivery)
    assert bus.backlog("orgs", "g") == 0
    await first.aclose()  # nothing held any more: nothing comes back
    assert await nothing_ready(second)
    await bus.aclose()


async def test_ack_after_close_still_counts_until_redelivered() -> None:
    bus = MemoryBus()
    first = bus.subscribe("orgs", group="g")
    await bus.publish("orgs", event("a"))
    delivery = await next_delivery(first)
    await first.aclose()
    await first.ack(delivery)
    assert bus.backlog("orgs", "g") == 0


async def test_a_delivery_from_another_group_cannot_be_acked() -> None:
    bus = MemoryBus()
    billing = bus.subscribe("orgs", group="billing")
    audit = bus.subscribe("orgs", group="audit")
    await bus.publish("orgs", event("a"))
    delivery = await next_delivery(billing)
    with pytest.raises(ValueError, match="another topic or group"):
        await audit.ack(delivery)
    foreign = Delivery(topic="orgs", data=b"{}", id="0")
    with pytest.raises(ValueError, match="another topic or group"):
        await billing.ack(foreign)
    await bus.aclose()


async def test_fail_next_publish_fails_that_many_publishes_and_stores_nothing() -> None:
    bus = MemoryBus()
    bus.fail_next_publish(2, ConnectionError("broker down"))
    bus.fail_next_publish(1)  # queued after the first two
    for expected in (ConnectionError, ConnectionError, InjectedFaultError):
        with pytest.raises(expected):
            await bus.publish("orgs", event("a"))
    await bus.publish("orgs", event("a", 1))
    async with bus.subscribe("orgs", group="g") as subscriber:
        assert numbers([await next_delivery(subscriber)]) == [1]
        assert await nothing_ready(subscriber)


async def test_a_lost_acknowledgement_stores_the_message_and_raises() -> None:
    bus = MemoryBus()
    bus.fail_next_publish(1, TimeoutError, stored=True)
    sent = event("a")
    with pytest.raises(TimeoutError):
        await bus.publish("orgs", sent)
    await bus.publish("orgs", sent)  # the publisher's retry: a duplicate
    async with bus.subscribe("orgs", group="g") as subscriber:
        deliveries = [await next_delivery(subscriber), await next_delivery(subscriber)]
    assert {Event.from_json(d.data).id for d in deliveries} == {sent.id}
    assert deliveries[0].id != deliveries[1].id


async def test_faults_policy_wraps_every_publish() -> None:
    chaos = ChaosFault(ConnectionError("flaky"), schedule=[True, False, True])
    bus = MemoryBus(faults=chaos)
    outcomes = []
    for n in range(4):
        try:
            await bus.publish("orgs", event("a", n))
            outcomes.append("ok")
        except ConnectionError:
            outcomes.append("failed")
    assert outcomes == ["failed", "ok", "failed", "ok"]
    assert bus.retained("orgs") == 2


def test_faults_must_be_a_policy() -> None:
    with pytest.raises(ConfigurationError) as raised:
        MemoryBus(faults=ConnectionError())  # type: ignore[arg-type]
    assert raised.value.parameter == "faults"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"topic": "", "group": "g"}, "topic"),
        ({"topic": "t", "group": ""}, "group"),
        ({"topic": "t", "group": "g", "consumer": "x" * 256}, "consumer"),
        ({"topic": "t", "group": 3}, "group"),
    ],
)
def test_bad_names_are_refused(kwargs: dict[str, object], parameter: str) -> None:
    topic = kwargs.pop("topic")
    with pytest.raises(ConfigurationError) as raised:
        MemoryBus().subscribe(topic, **kwargs)  # type: ignore[arg-type]
    assert raised.value.parameter == parameter


async def test_bad_publish_arguments_are_refused() -> None:
    bus = MemoryBus()
    with pytest.raises(TypeError, match="must be an Event"):
        await bus.publish("orgs", {"type": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be bytes"):
        await bus.publish_raw("orgs", "text")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as raised:
        await bus.publish_raw("orgs", b"x", key="")
    assert raised.value.parameter == "key"
    with pytest.raises(ConfigurationError) as raised:
        bus.fail_next_publish(0)
    assert raised.value.parameter == "count"
    assert bus.retained("orgs") == 0


async def test_messages_are_dropped_once_every_group_acked_them() -> None:
    bus = MemoryBus()
    for n in range(3):
        await bus.publish("orgs", event("a", n))
    assert bus.retained("orgs") == 3  # no group yet: kept for the first one
    billing = bus.subscribe("orgs", group="billing")
    audit = bus.subscribe("orgs", group="audit")
    for _ in range(3):
        await billing.ack(await next_delivery(billing))
    assert bus.retained("orgs") == 3  # audit has not read them
    first = await next_delivery(audit)
    second = await next_delivery(audit)
    await audit.ack(second)
    assert bus.retained("orgs") == 3  # the oldest is still unacknowledged
    await audit.ack(first)
    assert bus.retained("orgs") == 1
    await audit.ack(await next_delivery(audit))
    assert bus.retained("orgs") == 0
    late = bus.subscribe("orgs", group="late")  # starts at the oldest retained: nothing
    assert await nothing_ready(late)
    assert bus.backlog("orgs", "late") == 0
    await bus.aclose()


async def test_join_waits_until_the_group_acked_everything() -> None:
    bus = MemoryBus()
    subscriber = bus.subscribe("orgs", group="g")
    handled: list[int] = []

    async def consume() -> None:
        async for delivery in subscriber:
            handled.extend(numbers([delivery]))
            await subscriber.ack(delivery)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(consume)
        for n in range(50):
            await bus.publish("orgs", event(f"k{n % 7}", n))
        with anyio.fail_after(5):
            await bus.join("orgs", "g")
        assert sorted(handled) == list(range(50))
        await subscriber.aclose()  # ends the consumer


async def test_backlog_and_join_need_a_known_group() -> None:
    bus = MemoryBus()
    with pytest.raises(LookupError):
        bus.backlog("orgs", "g")
    with pytest.raises(LookupError):
        await bus.join("orgs", "g")


async def test_closing_the_bus_ends_iteration_and_refuses_work() -> None:
    bus = MemoryBus()
    subscriber = bus.subscribe("orgs", group="g")
    ended = anyio.Event()

    async def consume() -> None:
        async for _ in subscriber:
            pass
        ended.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        await bus.aclose()
        with anyio.fail_after(5):
            await ended.wait()
    with pytest.raises(RuntimeError, match="closed"):
        await bus.publish("orgs", event("a"))
    with pytest.raises(RuntimeError, match="closed"):
        bus.subscribe("orgs", group="g")
    await bus.aclose()  # twice is fine


async def test_a_cancelled_wait_loses_nothing() -> None:
    bus = MemoryBus()
    subscriber = bus.subscribe("orgs", group="g")
    assert await nothing_ready(subscriber)  # a read cancelled while waiting
    await bus.publish("orgs", event("a", 1))
    assert numbers([await next_delivery(subscriber)]) == [1]
    await bus.aclose()


# -- the group bookkeeping under any schedule (pure, synchronous) --------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(["a", "b", "c", None])),
        st.tuples(st.just("take"), st.integers(0, 2)),
        st.tuples(st.just("ack"), st.integers(0, 50)),
        st.tuples(st.just("close"), st.integers(0, 2)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_group_bookkeeping_keeps_keys_in_order_and_loses_nothing(
    ops: list[tuple[str, object]],
) -> None:
    topic = Topic("t")
    group = topic.group("g")
    members = [object(), object(), object()]
    keys: dict[int, str | None] = {}
    acked: set[int] = set()
    held: dict[int, object] = {}  # offset -> member, per the test's own model
    handed: list[int] = []

    def take(member: object) -> None:
        taken = group.take(member)
        if taken is None:
            return
        message, _ = taken
        offset = message.offset
        assert offset not in acked
        assert offset not in held
        key = keys[offset]
        if key is not None:
            earlier = [o for o in keys if o < offset and keys[o] == key and o not in acked]
            # every earlier message of its key is done, or held by the same member
            assert all(held.get(o) is member for o in earlier)
            assert all(held[o] is member for o in held if keys[o] == key)
        held[offset] = member
        handed.append(offset)

    for op, arg in ops:
        if op == "publish":
            keys[topic.end] = arg  # type: ignore[assignment]
            topic.append(b"x", arg)  # type: ignore[arg-type]
        elif op == "take":
            take(members[arg])  # type: ignore[index]
        elif op == "ack" and held:
            offset = sorted(held)[arg % len(held)]  # type: ignore[operator]
            del held[offset]
            acked.add(offset)
            group.ack(offset)
        elif op == "close":
            member = members[arg]  # type: ignore[index]
            released = [o for o, m in held.items() if m is member]
            assert group.release(member) == len(released)
            for offset in released:
                del held[offset]
        assert group.backlog == len(keys) - len(acked)
        assert set(keys) - acked <= set(topic.log)  # nothing unacknowledged is dropped
    # Drain: one member takes and acks everything left; each message acked exactly once.
    for member in members:
        group.release(member)
    held.clear()
    while (taken := group.take(members[0])) is not None:
        offset = taken[0].offset
        assert offset not in acked
        acked.add(offset)
        group.ack(offset)
    assert acked == set(keys)
    assert group.backlog == 0
    assert len(topic.log) == 0
