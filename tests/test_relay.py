"""OutboxRelay on the in-memory store and a virtual clock: order, retries, give-ups, fencing."""

from __future__ import annotations

import logging
import random
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from resilience_kit import Backoff, ConfigurationError, telemetry
from resilience_kit.messaging import (
    DeadLetterFilter,
    Event,
    Outbox,
    OutboxEntry,
    OutboxRelay,
    RelayReport,
)
from resilience_kit.stores.memory import MemoryStore
from resilience_kit.testing import ChaosFault, ChaosPublisher, VirtualClock
from resilience_kit.transports import MemoryBus
from tests.messaging_fakes import RecordingPublisher

pytestmark = pytest.mark.anyio


def event(key: str = "a", n: int = 0) -> Event:
    return Event(type="test.happened", key=key, payload={"n": n})


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=100.0)


@pytest.fixture
def store(clock: VirtualClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def add(store: MemoryStore, *events: Event, topic: str = "t") -> None:
    with store.transaction() as transaction:
        Outbox(store.outbox, topic=topic).add_many(transaction, events)


def relay(store: MemoryStore, publisher: Any, clock: VirtualClock, **options: Any) -> OutboxRelay:
    options.setdefault("backoff", Backoff.constant(10.0))
    return OutboxRelay(store.outbox, publisher, clock=clock, **options)


async def test_publishes_everything_in_order_per_key(
    store: MemoryStore, clock: VirtualClock
) -> None:
    add(store, *(event(f"k{n % 4}", n) for n in range(40)))
    publisher = RecordingPublisher()
    report = await relay(store, publisher, clock, batch_size=7).drain()
    assert report.published == 40
    assert report.claimed == 40
    for key, numbers in publisher.keys().items():
        assert numbers == sorted(numbers), key
    assert sum(len(v) for v in publisher.keys().values()) == 40
    status = await store.outbox.status()
    assert (status.backlog, status.published) == (0, 40)


async def test_a_failing_key_waits_while_others_flow(
    store: MemoryStore, clock: VirtualClock
) -> None:
    add(store, event("bad", 0), event("bad", 1), event("good", 0), event("good", 1))
    publisher = RecordingPublisher(
        fail=lambda _, e: ConnectionError("down") if e.key == "bad" else None
    )
    outbox_relay = relay(store, publisher, clock, max_attempts=3)
    first = await outbox_relay.drain()
    assert first == RelayReport(claimed=4, published=2, retried=1, released=1)
    assert publisher.keys() == {"good": [0, 1]}
    # Not due yet: the relay does not spin on it.
    assert (await outbox_relay.drain()).claimed == 0
    clock.advance(10)
    assert (await outbox_relay.drain()).retried == 1
    clock.advance(10)
    third = await outbox_relay.drain()
    assert third.dead_lettered == 1
    # The key moved on to its next row, which fails on its own account.
    assert third.retried == 1
    [letter] = await store.dead_letters.list(DeadLetterFilter(source="outbox"))
    assert letter.attempts == 3
    assert letter.event is not None
    assert (letter.event.key, letter.event.payload) == ("bad", {"n": 0})
    assert letter.source == "outbox"
    assert letter.topic == "t"
    assert letter.error_type == "builtins.ConnectionError"
    assert letter.error_message == "down"
    assert letter.first_failed_at < letter.last_failed_at


async def test_block_policy_holds_the_key_until_requeued(
    store: MemoryStore, clock: VirtualClock
) -> None:
    add(store, event("bad", 0), event("bad", 1), event("good", 0))
    failing = {"on": True}
    publisher = RecordingPublisher(
        fail=lambda _, e: OSError("no") if failing["on"] and e.key == "bad" else None
    )
    outbox_relay = relay(store, publisher, clock, max_attempts=1, on_exhausted="block")
    report = await outbox_relay.drain()
    assert report.blocked == 1
    assert report.published == 1
    clock.advance(1000)
    assert (await outbox_relay.drain()).claimed == 0  # blocked, not retried
    assert (await store.outbox.status()).blocked == 1
    assert await store.dead_letters.count(DeadLetterFilter()) == 0
    failing["on"] = False
    assert await store.outbox.requeue() == 1
    assert (await outbox_relay.drain()).published == 2
    assert publisher.keys()["bad"] == [0, 1]


async def test_a_corrupted_row_is_dead_lettered_without_retries(
    store: MemoryStore, clock: VirtualClock
) -> None:
    entry = OutboxEntry.of("t", event("a", 0))
    broken = OutboxEntry(entry.topic, entry.key, entry.event_id, entry.event_type, b"{garbage")
    store.outbox.add(None, [broken])
    add(store, event("a", 1))
    publisher = RecordingPublisher()
    report = await relay(store, publisher, clock, max_attempts=5).drain()
    assert report.dead_lettered == 1
    assert publisher.keys() == {"a": [1]}
    [letter] = await store.dead_letters.list(DeadLetterFilter())
    assert letter.data == b"{garbage"
    assert letter.error_type == "resilience_kit.errors.MalformedEventError"
    assert letter.attempts == 1


async def test_a_hanging_publish_times_out(store: MemoryStore, clock: VirtualClock) -> None:
    add(store, event("a", 0))

    class Hanging:
        async def publish(self, topic: str, event: Event) -> None:
            await clock.asleep(1_000)

    report = await relay(store, Hanging(), clock, publish_timeout=5, lease_for=10).drain()
    assert report.retried == 1
    assert clock.monotonic() == pytest.approx(105.0)


async def test_two_relays_publish_each_row_once(store: MemoryStore, clock: VirtualClock) -> None:
    add(store, *(event(f"k{n % 13}", n) for n in range(300)))
    publisher = RecordingPublisher()
    relays = [relay(store, publisher, clock, batch_size=16) for _ in range(2)]
    async with anyio.create_task_group() as group:
        for one in relays:
            group.start_soon(one.drain)
    assert len(publisher.published) == 300
    assert len({e.id for _, e in publisher.published}) == 300
    for numbers in publisher.keys().values():
        assert numbers == sorted(numbers)


async def test_a_relay_that_lost_its_lease_changes_nothing(
    store: MemoryStore, clock: VirtualClock
) -> None:
    add(store, event("a", 0))
    slow_publisher = RecordingPublisher()
    [claimed] = await store.outbox.claim(limit=1, lease_for=0)  # a relay that then stalled
    fast = await relay(store, slow_publisher, clock).drain()
    assert fast.published == 1
    assert await store.outbox.mark_published([claimed]) == 0
    assert (await store.outbox.status()).published == 1


async def test_run_waits_for_new_rows_and_stops_cleanly(store: MemoryStore) -> None:
    clock = VirtualClock(auto_advance=False)
    publisher = RecordingPublisher()
    outbox_relay = OutboxRelay(MemoryStore(clock=clock).outbox, publisher, clock=clock)
    outbox_store = outbox_relay.store
    async with anyio.create_task_group() as group:
        await group.start(outbox_relay.run)
        for n in range(3):
            outbox_store.add(None, [OutboxEntry.of("t", event("a", n))])
            with anyio.fail_after(5):
                while len(publisher.published) < n + 1:
                    await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    assert publisher.keys() == {"a": [0, 1, 2]}
    assert clock.monotonic() == 0.0  # woken by the adds, never by polling


async def test_rows_added_by_another_process_are_found_after_a_poll_of_virtual_time(
    tmp_path: Any,
) -> None:
    from resilience_kit.stores.sqlite import SQLiteStore  # noqa: PLC0415

    clock = VirtualClock(auto_advance=False)
    publisher = RecordingPublisher()
    path = tmp_path / "app.db"
    with SQLiteStore(path) as mine, SQLiteStore(path) as theirs:
        mine.migrate()
        outbox_relay = OutboxRelay(mine.outbox, publisher, poll_interval=30.0, clock=clock)
        async with clock.autojump(), anyio.create_task_group() as group:
            await group.start(outbox_relay.run)
            await clock.asleep(1.0)  # the relay is idle, waiting for rows
            # Another process's commit wakes nothing here: only the next poll finds it.
            await Outbox(theirs.outbox, topic="t").publish("t", event("a", 1))
            with anyio.fail_after(5):  # real seconds: SQLite's own wait is 30 of them
                while not publisher.published:
                    await clock.asleep(1.0)
            group.cancel_scope.cancel()
    assert publisher.keys() == {"a": [1]}
    assert 30.0 <= clock.monotonic() <= 33.0


async def test_run_survives_a_failing_store(
    store: MemoryStore, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    add(store, event("a", 0))
    publisher = RecordingPublisher()
    outbox_relay = relay(store, publisher, clock, poll_interval=1.0)
    real_claim = store.outbox.claim
    failures = {"left": 3}

    async def flaky_claim(**kwargs: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("database restarting")
        return await real_claim(**kwargs)

    store.outbox.claim = flaky_claim  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="resilience_kit.outbox"):
        async with anyio.create_task_group() as group:
            group.start_soon(outbox_relay.run)
            with anyio.fail_after(5):
                while not publisher.published:
                    await anyio.lowlevel.checkpoint()
            group.cancel_scope.cancel()
    assert publisher.keys() == {"a": [0]}
    assert (
        sum(
            "database restarting" in r.getMessage() or r.exc_info is not None
            for r in caplog.records
        )
        == 3
    )
    assert clock.sleeps[:3] == [2.0, 4.0, 8.0]


async def test_retention_purges_published_rows(store: MemoryStore, clock: VirtualClock) -> None:
    add(store, event("a", 0))
    outbox_relay = relay(store, RecordingPublisher(), clock, retention=60.0, purge_interval=1.0)
    await outbox_relay.drain()
    clock.advance(61)
    async with anyio.create_task_group() as group:
        group.start_soon(outbox_relay.run)
        with anyio.fail_after(5):
            while (await store.outbox.status()).published:
                await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()


async def test_backlog_and_lag_metrics(store: MemoryStore, clock: VirtualClock) -> None:
    reader = InMemoryMetricReader()
    telemetry.configure(meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        add(store, event("a", 0), event("b", 0))
        clock.advance(3)
        outbox_relay = relay(store, RecordingPublisher(), clock, name="orgs-relay")
        status = await outbox_relay.measure()
        assert status.backlog == 2
        assert status.oldest_pending_age == pytest.approx(3.0)
        await outbox_relay.drain()
        points = {
            (metric.name, tuple(sorted(point.attributes.items()))): point.value
            for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            for point in metric.data.data_points
        }
        assert (
            points[("resilience.outbox.backlog", (("relay", "orgs-relay"), ("state", "pending")))]
            == 2
        )
        assert points[("resilience.outbox.lag", (("relay", "orgs-relay"),))] == pytest.approx(3.0)
        assert (
            points[
                ("resilience.outbox.events", (("outcome", "published"), ("relay", "orgs-relay")))
            ]
            == 2
        )
    finally:
        telemetry.configure()


async def test_cancellation_mid_batch_records_what_was_published(
    store: MemoryStore, clock: VirtualClock
) -> None:
    add(store, event("a", 0), event("a", 1), event("a", 2))
    published = anyio.Event()

    class StopsAfterOne(RecordingPublisher):
        async def publish(self, topic: str, event: Event) -> None:
            if self.published:
                published.set()
                await anyio.sleep_forever()
            await super().publish(topic, event)

    outbox_relay = relay(store, StopsAfterOne(), clock)
    async with anyio.create_task_group() as group:
        group.start_soon(outbox_relay.run_once)
        await published.wait()
        group.cancel_scope.cancel()
    status = await store.outbox.status()
    assert status.published == 1  # the first row is not published again after a restart
    assert status.leased == 2  # the rest are reclaimed when their lease expires


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"lease_for": -1}, "lease_for"),
        ({"publish_timeout": 60, "lease_for": 30}, "publish_timeout"),
        ({"on_exhausted": "drop"}, "on_exhausted"),
        ({"backoff": 1.0}, "backoff"),
        ({"name": ""}, "name"),
        ({"retention": 0}, "retention"),
    ],
)
async def test_bad_configuration_names_the_parameter(
    store: MemoryStore, options: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        OutboxRelay(store.outbox, RecordingPublisher(), **options)
    assert caught.value.parameter == parameter


async def test_store_and_publisher_are_checked(store: MemoryStore) -> None:
    with pytest.raises(ConfigurationError, match="store"):
        OutboxRelay(object(), RecordingPublisher())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="publisher"):
        OutboxRelay(store.outbox, object())  # type: ignore[arg-type]


async def test_an_unsendable_row_neither_stalls_other_keys_nor_spins() -> None:
    clock = VirtualClock(auto_advance=False)
    store = MemoryStore(clock=clock)
    add(store, event("poison", 0))
    publisher = RecordingPublisher(
        fail=lambda _, e: ValueError("rejected by the broker") if e.key == "poison" else None
    )
    outbox_relay = relay(store, publisher, clock, max_attempts=1_000, poll_interval=1.0)
    real_claim = store.outbox.claim
    claims = {"count": 0}

    async def counting_claim(**kwargs: Any) -> Any:
        claims["count"] += 1
        return await real_claim(**kwargs)

    async def wait_all_tasks_blocked() -> None:
        for _ in range(30):  # enough turns for the relay to finish what it can do now
            await anyio.lowlevel.checkpoint()

    store.outbox.claim = counting_claim  # type: ignore[method-assign]
    async with anyio.create_task_group() as group:
        group.start_soon(outbox_relay.run)
        for second in range(1, 61):  # one virtual minute, a second at a time
            await wait_all_tasks_blocked()
            if second % 12 == 0:  # other keys keep flowing meanwhile
                store.outbox.add(None, [OutboxEntry.of("t", event(f"good{second}", second))])
                await wait_all_tasks_blocked()
            clock.advance(1.0)
        await wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    assert len([e for _, e in publisher.published if e.key.startswith("good")]) == 5
    # One claim per idle poll plus one per wake-up: not a busy loop.
    assert 55 <= claims["count"] <= 60 + 2 * 5 + 2
    # The failing row is tried once per backoff (10 s), not on every pass.
    attempts = [e for _, e in publisher.attempts if e.key == "poison"]
    assert 5 <= len(attempts) <= 7


class TestOnTheSystemClock:
    """The relay's own loop on the real clock (one cancel scope per key run)."""

    async def test_runs_publish_in_order_and_stop_at_a_failure(self) -> None:
        store = MemoryStore()
        add(store, *(event("a", n) for n in range(4)), event("b", 0))
        publisher = RecordingPublisher(
            fail=lambda _, e: OSError("refused") if (e.key, e.payload["n"]) == ("a", 2) else None
        )
        report = await OutboxRelay(store.outbox, publisher).run_once()
        assert report == RelayReport(claimed=5, published=3, retried=1, released=1)
        assert publisher.keys() == {"a": [0, 1], "b": [0]}

    async def test_a_corrupted_row_is_given_up_at_once(self) -> None:
        store = MemoryStore()
        entry = OutboxEntry.of("t", event("a", 0))
        store.outbox.add(
            None, [OutboxEntry(entry.topic, entry.key, entry.event_id, entry.event_type, b"[")]
        )
        add(store, event("a", 1))
        report = await OutboxRelay(store.outbox, RecordingPublisher()).run_once()
        assert (report.dead_lettered, report.released) == (1, 1)

    async def test_a_publish_past_its_timeout_fails_the_row(self) -> None:
        store = MemoryStore()
        add(store, event("a", 0), event("a", 1))

        class Hangs:
            async def publish(self, topic: str, event: Event) -> None:
                await anyio.sleep_forever()

        with anyio.fail_after(10):
            report = await OutboxRelay(
                store.outbox, Hangs(), publish_timeout=0.01, lease_for=5, backoff=Backoff.none()
            ).run_once()
        assert (report.retried, report.released) == (1, 1)
        first, second = await store.outbox.claim(limit=10, lease_for=5)
        assert first.last_error is not None
        assert "publish_timeout" in first.last_error
        assert (first.attempts, second.attempts) == (2, 1)  # the second was released

    async def test_after_a_timeout_the_worker_goes_on_with_other_keys(self) -> None:
        store = MemoryStore()
        add(store, event("slow", 0), event("fast", 0), event("fast", 1))
        published: list[str] = []

        class SlowForOneKey:
            async def publish(self, topic: str, event: Event) -> None:
                if event.key == "slow":
                    await anyio.sleep_forever()
                published.append(f"{event.key}{event.payload['n']}")

        relay_ = OutboxRelay(
            store.outbox, SlowForOneKey(), concurrency=1, publish_timeout=0.01, lease_for=5
        )
        with anyio.fail_after(10):
            report = await relay_.run_once()
        assert (report.published, report.retried) == (2, 1)
        assert published == ["fast0", "fast1"]


@pytest.mark.anyio
async def test_a_seeded_relay_retries_at_the_same_jittered_times() -> None:
    async def retry_times(seed: int) -> list[float]:
        clock = VirtualClock(auto_advance=False)
        store = MemoryStore(clock=clock)
        with store.transaction() as transaction:
            Outbox(store.outbox, topic="orgs").add(
                transaction, Event(type="org.created", key="org:1", payload={})
            )
        outage = ChaosFault(ConnectionError("bus down"), schedule=[True, True, True])
        bus = MemoryBus()
        chaos = ChaosPublisher(bus, outage, clock=clock)
        relay = OutboxRelay(
            store.outbox,
            chaos,
            backoff=Backoff.exponential(initial=1.0, maximum=60.0, jitter="full"),
            poll_interval=0.5,
            clock=clock,
            rand=random.Random(seed).random,
        )
        async with clock.autojump(), anyio.create_task_group() as group:
            await group.start(relay.run)
            while not bus.retained("orgs"):
                await clock.asleep(0.5)
            group.cancel_scope.cancel()
        return [attempt.at for attempt in chaos.attempts]

    first, again, other = await retry_times(7), await retry_times(7), await retry_times(8)
    assert len(first) == 4
    assert first == again
    assert first != other


def test_a_relay_refuses_a_rand_that_is_not_callable() -> None:
    with pytest.raises(ConfigurationError, match="rand"):
        OutboxRelay(MemoryStore().outbox, MemoryBus(), rand=0.5)  # type: ignore[arg-type]
