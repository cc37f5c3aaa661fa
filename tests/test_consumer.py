"""ResilientConsumer: poison, duplicates, retries, dead letters, per-key order, acks."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from resilience_kit import Backoff, ConfigurationError, RetryPolicy
from resilience_kit.messaging import (
    REPLAYS_HEADER,
    DeadLetterFilter,
    Delivery,
    Event,
    Inbox,
    ResilientConsumer,
)
from resilience_kit.stores.memory import MemoryStore
from resilience_kit.testing import VirtualClock
from tests.messaging_fakes import ListSubscriber

pytestmark = pytest.mark.anyio


def event(key: str = "a", n: int = 0, **headers: str) -> Event:
    return Event(type="test.happened", key=key, payload={"n": n}, headers=headers)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=50.0)


@pytest.fixture
def store(clock: VirtualClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def consumer(
    store: MemoryStore,
    subscriber: ListSubscriber,
    handler: Any,
    clock: VirtualClock,
    **options: Any,
) -> ResilientConsumer:
    options.setdefault(
        "retry",
        RetryPolicy(attempts=3, on=Exception, backoff=Backoff.constant(1.0), clock=clock),
    )
    return ResilientConsumer(
        subscriber,
        handler,
        name="billing",
        dead_letters=store.dead_letters,
        clock=clock,
        **options,
    )


async def test_handles_and_acks_every_message(store: MemoryStore, clock: VirtualClock) -> None:
    events = [event("a", n) for n in range(5)]
    subscriber = ListSubscriber.of(*events)
    handled: list[int] = []

    async def handler(e: Event) -> None:
        handled.append(e.payload["n"])

    await consumer(store, subscriber, handler, clock).run()
    assert handled == [0, 1, 2, 3, 4]
    assert subscriber.acked == ["0", "1", "2", "3", "4"]


async def test_poison_goes_straight_to_dead_letters(
    store: MemoryStore, clock: VirtualClock
) -> None:
    subscriber = ListSubscriber.of(b"\xff not an event", event("a", 1))
    calls: list[Event] = []

    async def handler(e: Event) -> None:
        calls.append(e)

    resilient = consumer(store, subscriber, handler, clock)
    await resilient.run()
    assert [e.payload["n"] for e in calls] == [1]  # the next message was not blocked
    assert subscriber.acked == ["0", "1"]
    [letter] = await store.dead_letters.list(DeadLetterFilter())
    assert letter.data == b"\xff not an event"
    assert letter.source == "consumer:billing"
    assert letter.error_type == "resilience_kit.errors.MalformedEventError"
    assert letter.attempts == 0
    assert resilient.counts["poison"] == 1
    assert clock.sleeps == []  # never retried


async def test_retries_then_dead_letters_and_moves_on(
    store: MemoryStore, clock: VirtualClock
) -> None:
    subscriber = ListSubscriber.of(event("a", 0, **{REPLAYS_HEADER: "2"}), event("b", 1))
    attempts: list[int] = []

    async def handler(e: Event) -> None:
        attempts.append(e.payload["n"])
        if e.payload["n"] == 0:
            raise TimeoutError("smtp timed out")

    await consumer(store, subscriber, handler, clock).run()
    assert attempts == [0, 0, 0, 1]
    assert clock.sleeps == [1.0, 1.0]
    [letter] = await store.dead_letters.list(DeadLetterFilter())
    assert letter.attempts == 3
    assert letter.error_type == "builtins.TimeoutError"
    assert letter.error_message == "smtp timed out"
    assert "smtp timed out" in letter.traceback
    assert letter.replays == 2
    assert letter.key == "a"
    assert letter.first_failed_at < letter.last_failed_at
    assert subscriber.acked == ["0", "1"]


async def test_a_transient_failure_is_retried_to_success(
    store: MemoryStore, clock: VirtualClock
) -> None:
    subscriber = ListSubscriber.of(event("a", 0))
    failures = [ConnectionError("once")]

    async def handler(e: Event) -> None:
        if failures:
            raise failures.pop()

    resilient = consumer(store, subscriber, handler, clock)
    await resilient.run()
    assert resilient.counts["handled"] == 1
    assert await store.dead_letters.count(DeadLetterFilter()) == 0


async def test_duplicates_are_skipped_through_the_inbox(
    store: MemoryStore, clock: VirtualClock
) -> None:
    one = event("a", 0)
    subscriber = ListSubscriber.of(one, one, event("a", 1), one)
    handled: list[int] = []

    async def handler(e: Event) -> None:
        handled.append(e.payload["n"])

    resilient = consumer(
        store, subscriber, handler, clock, inbox=Inbox(store.inbox, consumer="billing")
    )
    await resilient.run()
    assert handled == [0, 1]
    assert resilient.counts["duplicate"] == 2
    assert subscriber.acked == ["0", "1", "2", "3"]


async def test_a_failed_message_is_not_recorded_in_the_inbox(
    store: MemoryStore, clock: VirtualClock
) -> None:
    failing = event("a", 0)
    inbox = Inbox(store.inbox, consumer="billing")

    async def handler(e: Event) -> None:
        raise ValueError("bad")

    await consumer(store, ListSubscriber.of(failing), handler, clock, inbox=inbox).run()
    assert not await inbox.seen(failing)  # a replay from dead letters will run it


async def test_a_broken_dead_letter_store_leaves_the_message_unacked(
    store: MemoryStore, clock: VirtualClock
) -> None:
    subscriber = ListSubscriber.of(b"poison", event("a", 1))

    async def broken_put(letter: Any) -> None:
        raise ConnectionError("dead-letter database down")

    store.dead_letters.put = broken_put  # type: ignore[method-assign]

    async def handler(e: Event) -> None:
        pass

    resilient = consumer(store, subscriber, handler, clock)
    await resilient.run()
    assert subscriber.acked == ["1"]  # the poison will be delivered again
    assert resilient.counts["unacked"] == 1


async def test_concurrency_keeps_order_per_key(store: MemoryStore, clock: VirtualClock) -> None:
    events = [event(f"k{n % 5}", n) for n in range(100)]
    subscriber = ListSubscriber.of(*events)
    handled: dict[str, list[int]] = {}
    active = {"now": 0, "max": 0}

    async def handler(e: Event) -> None:
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        for _ in range(20):  # long enough for the dispatcher to feed other lanes
            await anyio.lowlevel.checkpoint()
        handled.setdefault(e.key, []).append(e.payload["n"])
        active["now"] -= 1

    await consumer(store, subscriber, handler, clock, concurrency=4).run()
    assert sum(len(v) for v in handled.values()) == 100
    for numbers in handled.values():
        assert numbers == sorted(numbers)
    assert active["max"] > 1
    assert sorted(subscriber.acked, key=int) == [str(n) for n in range(100)]


async def test_concurrent_lanes_send_poison_to_dead_letters(
    store: MemoryStore, clock: VirtualClock
) -> None:
    subscriber = ListSubscriber.of(b"{", event("a", 0), b"[]")

    async def handler(e: Event) -> None:
        pass

    resilient = consumer(store, subscriber, handler, clock, concurrency=3)
    await resilient.run()
    assert resilient.counts["poison"] == 2
    assert resilient.counts["handled"] == 1


async def test_handle_one_delivery(store: MemoryStore, clock: VirtualClock) -> None:
    subscriber = ListSubscriber([])

    async def handler(e: Event) -> None:
        pass

    resilient = consumer(store, subscriber, handler, clock)
    delivery = Delivery(topic="t", data=event().to_json(), id="x")
    assert await resilient.handle(delivery) == "handled"
    assert subscriber.acked == ["x"]


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"name": ""}, "name"),
        ({"retry": 3}, "retry"),
        ({"inbox": object()}, "inbox"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"dead_letters": object()}, "dead_letters"),
        ({"subscriber": object()}, "subscriber"),
        ({"handler": 42}, "handler"),
    ],
)
async def test_bad_configuration_names_the_parameter(
    store: MemoryStore, options: dict[str, Any], parameter: str
) -> None:
    async def handler(e: Event) -> None:
        pass

    arguments: dict[str, Any] = {
        "subscriber": ListSubscriber([]),
        "handler": handler,
        "name": "billing",
        "dead_letters": store.dead_letters,
    }
    arguments.update(options)
    subscriber = arguments.pop("subscriber")
    handler_arg = arguments.pop("handler")
    with pytest.raises(ConfigurationError) as caught:
        ResilientConsumer(subscriber, handler_arg, **arguments)
    assert caught.value.parameter == parameter
