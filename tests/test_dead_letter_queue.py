"""DeadLetterQueue: filters, paging, replay (to a transport or back through the outbox), purge."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

from resilience_kit import ConfigurationError
from resilience_kit.messaging import (
    REPLAYS_HEADER,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterQueue,
    Event,
    Outbox,
)
from resilience_kit.stores.memory import MemoryStore
from resilience_kit.testing import VirtualClock
from tests.messaging_fakes import RecordingPublisher

pytestmark = pytest.mark.anyio


def letter(
    topic: str = "billing", data: bytes | None = None, replays: int = 0, **kw: Any
) -> DeadLetter:
    if data is None:
        data = Event(type="invoice.paid", key="inv:1", payload={"n": 1}).to_json()
    return DeadLetter.create(
        source="consumer:mailer",
        topic=topic,
        data=data,
        error=TimeoutError("smtp"),
        attempts=3,
        replays=replays,
        **kw,
    )


@pytest.fixture
def queue() -> DeadLetterQueue:
    return DeadLetterQueue(MemoryStore().dead_letters)


async def test_list_with_keywords_or_a_filter(queue: DeadLetterQueue) -> None:
    a, b = letter("a"), letter("b")
    await queue.put(a)
    await queue.put(b)
    assert [x.id for x in await queue.list(topic="a")] == [a.id]
    assert [x.id for x in await queue.list(DeadLetterFilter(topic="b"))] == [b.id]
    assert await queue.count() == 2
    assert await queue.show(a.id) == a
    with pytest.raises(ConfigurationError, match="not both"):
        await queue.list(DeadLetterFilter(), topic="a")
    with pytest.raises(ConfigurationError, match="since"):
        await queue.list(since=datetime(2026, 1, 1))  # naive
    with pytest.raises(ConfigurationError, match="limit"):
        await queue.list(limit=0)


async def test_iterate_pages_through_everything(queue: DeadLetterQueue) -> None:
    items = [
        letter(now=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=n))
        for n in range(450)
    ]
    for item in items:
        await queue.put(item)
    seen = [x.id async for x in queue.iterate()]
    assert seen == sorted(x.id for x in items)


async def test_replay_publishes_with_history_and_removes(queue: DeadLetterQueue) -> None:
    original = letter(replays=1)
    await queue.put(original)
    publisher = RecordingPublisher()
    report = await queue.replay(DeadLetterFilter(), publisher)
    assert report.replayed == (original.id,)
    [(topic, event)] = publisher.published
    assert topic == "billing"
    assert original.event is not None
    assert event.id == original.event.id  # consumers de-duplicate by it
    assert event.headers[REPLAYS_HEADER] == "2"
    assert await queue.count() == 0


async def test_replay_to_another_topic_skips_poison_and_keeps_failures(
    queue: DeadLetterQueue,
) -> None:
    good, poison, failing = letter(), letter(data=b"\x00"), letter(topic="fails")
    for item in (good, poison, failing):
        await queue.put(item)
    publisher = RecordingPublisher(
        fail=lambda _, e: (
            ConnectionError("broker down") if failing.event and e.id == failing.event.id else None
        )
    )
    report = await queue.replay(DeadLetterFilter(), publisher, topic="billing-retry")
    assert report.replayed == (good.id,)
    assert report.skipped == (poison.id,)
    assert [item_id for item_id, _ in report.failed] == [failing.id]
    assert "broker down" in report.failed[0][1]
    assert {x.id for x in await queue.list()} == {poison.id, failing.id}
    assert [t for t, _ in publisher.published] == ["billing-retry"]


async def test_replay_through_the_outbox() -> None:
    store = MemoryStore()
    queue = DeadLetterQueue(store.dead_letters)
    await queue.put(letter())
    report = await queue.replay(DeadLetterFilter(), Outbox(store.outbox))
    assert len(report.replayed) == 1
    [row] = await store.outbox.claim(limit=10, lease_for=60)
    assert row.topic == "billing"
    assert row.event().headers[REPLAYS_HEADER] == "1"


async def test_replay_is_paced_and_limited() -> None:
    clock = VirtualClock()
    queue = DeadLetterQueue(MemoryStore(clock=clock).dead_letters)
    for _ in range(5):
        await queue.put(letter())
    report = await queue.replay(
        DeadLetterFilter(), RecordingPublisher(), limit=3, per_second=2.0, clock=clock
    )
    assert len(report.replayed) == 3
    assert clock.sleeps == [0.5, 0.5]
    assert await queue.count() == 2


async def test_purge_refuses_an_empty_filter_unless_told(queue: DeadLetterQueue) -> None:
    await queue.put(letter("a"))
    await queue.put(letter("b"))
    with pytest.raises(ConfigurationError, match="everything=True"):
        await queue.purge(DeadLetterFilter())
    assert await queue.purge(DeadLetterFilter(topic="a")) == 1
    assert await queue.purge(DeadLetterFilter(), everything=True) == 1


async def test_bad_arguments(queue: DeadLetterQueue) -> None:
    with pytest.raises(ConfigurationError, match="store"):
        DeadLetterQueue(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="where"):
        await queue.replay({"topic": "a"}, RecordingPublisher())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="where"):
        await queue.purge("everything")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="per_second"):
        await queue.replay(DeadLetterFilter(), RecordingPublisher(), per_second=0)
    with pytest.raises(ConfigurationError, match="topic"):
        await queue.replay(DeadLetterFilter(), RecordingPublisher(), topic="")


async def test_replay_does_not_chase_letters_dead_lettered_during_it(
    queue: DeadLetterQueue,
) -> None:
    await queue.put(letter())

    class FailsAgainAtOnce(RecordingPublisher):
        async def publish(self, topic: str, event: Event) -> None:
            await super().publish(topic, event)
            # The consumer fails the replayed event at once: a new dead letter.
            await queue.put(letter())

    publisher = FailsAgainAtOnce()
    with anyio.fail_after(5):
        report = await queue.replay(DeadLetterFilter(), publisher)
    assert len(report.replayed) == 1
    assert await queue.count() == 1
