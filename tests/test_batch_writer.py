"""BatchWriter: batches by size and age, back-pressure, retries without loss, closing."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from resilience_kit import Backoff, ConfigurationError, telemetry
from resilience_kit.health import HealthChecks, HealthStatus, batch_writer_check
from resilience_kit.messaging import BatchWriter, WriterStats
from resilience_kit.testing import VirtualClock


class Storage:
    """A write target that fails while ``down`` (or for the next ``fail_next`` calls)."""

    def __init__(self, clock: VirtualClock | None = None, cost: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.attempts = 0
        self.down = False
        self.fail_next = 0
        self.clock = clock
        self.cost = cost

    def _attempt(self, batch: list[Any]) -> None:
        self.attempts += 1
        if self.down or self.fail_next:
            self.fail_next = max(0, self.fail_next - 1)
            raise OSError("database or disk is full")
        self.batches.append(batch)

    async def write(self, batch: list[Any]) -> None:
        if self.clock is not None and self.cost:
            await self.clock.asleep(self.cost)
        self._attempt(batch)

    def write_sync(self, batch: list[Any]) -> None:
        self._attempt(batch)

    @property
    def items(self) -> list[Any]:
        return [item for batch in self.batches for item in batch]


def writer(storage: Storage, clock: VirtualClock, **options: Any) -> BatchWriter[Any]:
    options.setdefault("backoff", Backoff.constant(1.0))
    options.setdefault("name", "audit")
    return BatchWriter(storage.write, clock=clock, **options)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(auto_advance=False)


pytestmark = pytest.mark.anyio


async def test_a_full_batch_is_written_at_once_and_the_rest_after_max_delay(
    clock: VirtualClock,
) -> None:
    storage = Storage()
    times: list[float] = []
    batch_writer = writer(storage, clock, max_batch=4, max_delay=2.0)

    async def note(batch: list[int]) -> None:
        times.append(clock.monotonic())
        await storage.write(batch)

    batch_writer._write = note  # timing probe around the same storage
    async with clock.autojump(), batch_writer:
        for n in range(6):
            await batch_writer.put(n)
        await clock.asleep(5.0)
        assert storage.batches == [[0, 1, 2, 3], [4, 5]]
    assert times == [0.0, 2.0]


async def test_a_sync_write_runs_in_a_worker_thread(clock: VirtualClock) -> None:
    storage = Storage()
    async with (
        clock.autojump(),
        BatchWriter(storage.write_sync, name="sync", clock=clock, max_batch=3) as batch_writer,
    ):
        for n in range(7):
            await batch_writer.put(n)
    assert storage.batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_failed_batch_is_held_and_retried_until_written(clock: VirtualClock) -> None:
    storage = Storage()
    storage.fail_next = 3
    async with clock.autojump(), writer(storage, clock, max_batch=2, max_delay=0) as w:
        for n in range(5):
            await w.put(n)
        await w.flush()
        stats = w.stats
    assert storage.items == [0, 1, 2, 3, 4]
    assert storage.attempts == len(storage.batches) + 3
    assert stats.failures == 3
    assert stats.failing_since is None
    assert stats.last_error == "OSError: database or disk is full"


async def test_producers_wait_when_the_writer_is_full_and_memory_stays_bounded(
    clock: VirtualClock,
) -> None:
    storage = Storage()
    storage.down = True
    accepted: list[int] = []
    depths: list[int] = []
    async with clock.autojump(), writer(storage, clock, capacity=5, max_batch=2) as w:

        async def produce() -> None:
            for n in range(20):
                await w.put(n)
                accepted.append(n)
                depths.append(w.depth)

        async with anyio.create_task_group() as group:
            group.start_soon(produce)
            await clock.asleep(30.0)
            assert accepted == [0, 1, 2, 3, 4]  # the sixth put waits: back-pressure
            assert w.near_full
            assert w.failing
            storage.down = False
    assert storage.items == list(range(20))
    assert max(depths) <= 5


async def test_write_returns_once_the_item_is_written_and_callers_share_batches(
    clock: VirtualClock,
) -> None:
    storage = Storage(clock, cost=0.01)
    done: list[tuple[int, int]] = []
    async with clock.autojump(), writer(storage, clock, max_batch=10, max_delay=0.05) as w:

        async def one(n: int) -> None:
            await w.write(n)
            done.append((n, len(storage.items)))

        async with anyio.create_task_group() as group:
            for n in range(25):
                group.start_soon(one, n)
    assert sorted(storage.items) == list(range(25))
    assert len(storage.batches) == 3  # a group commit: 10 + 10 + 5
    assert all(n in storage.items[:written] for n, written in done)


async def test_flush_writes_what_is_queued_without_waiting_for_max_delay(
    clock: VirtualClock,
) -> None:
    storage = Storage()
    async with clock.autojump(), writer(storage, clock, max_batch=100, max_delay=60.0) as w:
        await w.put("a")
        await w.put("b")
        await w.flush()
        assert storage.batches == [["a", "b"]]
        assert clock.monotonic() == 0.0
        await w.flush()  # nothing queued: returns at once


async def test_closing_drains_and_then_refuses_new_items(clock: VirtualClock) -> None:
    storage = Storage()
    w = writer(storage, clock, max_delay=60.0)
    async with clock.autojump(), w:
        await w.put(1)
    assert storage.items == [1]
    with pytest.raises(anyio.ClosedResourceError):
        await w.put(2)


async def test_producers_waiting_for_room_are_refused_when_the_writer_closes(
    clock: VirtualClock,
) -> None:
    storage = Storage()
    storage.down = True
    refused: list[int] = []
    async with clock.autojump(), anyio.create_task_group() as outer:
        w = writer(storage, clock, capacity=2, max_batch=2)
        await outer.start(w.run)

        async def produce(n: int) -> None:
            try:
                await w.put(n)
            except anyio.ClosedResourceError:
                refused.append(n)

        async with anyio.create_task_group() as group:
            for n in range(4):
                group.start_soon(produce, n)
            await clock.asleep(5.0)
            w.close()
        storage.down = False
        await w.aclose()
    assert len(refused) == 2  # trio starts tasks in any order: which two is not fixed
    assert sorted(storage.items + refused) == [0, 1, 2, 3]


async def test_a_close_cut_short_leaves_the_unwritten_items_readable(
    clock: VirtualClock,
) -> None:
    storage = Storage()
    storage.down = True
    waiter_errors: list[BaseException] = []
    w = writer(storage, clock, max_batch=2, max_delay=0)

    async def wait_written() -> None:
        try:
            await w.write("c")
        except anyio.ClosedResourceError as exc:
            waiter_errors.append(exc)

    async with clock.autojump(), anyio.create_task_group() as outer:
        async with anyio.create_task_group() as group:
            await group.start(w.run)
            await w.put("a")
            await w.put("b")
            outer.start_soon(wait_written)
            with anyio.move_on_after(0.2):  # real seconds: the virtual clock jumps
                await clock.asleep(10.0)
                await w.aclose()
            group.cancel_scope.cancel()
    assert w.unwritten() == ["a", "b", "c"]
    assert len(waiter_errors) == 1
    with pytest.raises(RuntimeError, match="already running or has run"):
        await w.run()


async def test_the_near_full_hook_fires_once_per_crossing(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = Storage()
    storage.down = True
    calls: list[int] = []

    def hook(w: BatchWriter[Any]) -> None:
        calls.append(w.depth)
        raise RuntimeError("pager down")

    async with clock.autojump():
        w = writer(storage, clock, capacity=10, max_batch=5, near_full=0.5, on_near_full=hook)
        async with w:
            for n in range(8):
                await w.put(n)
            storage.down = False
            await w.flush()
            for n in range(5):
                await w.put(n)
    assert calls == [5, 5]
    assert "on_near_full failed" in caplog.text


async def test_the_health_check_degrades_when_near_full_and_fails_when_writes_fail(
    clock: VirtualClock,
) -> None:
    storage = Storage()
    storage.down = True
    async with clock.autojump():
        w = writer(storage, clock, capacity=10, max_batch=2)
        health = HealthChecks([batch_writer_check(w, fill_degraded_above=0.5)], clock=clock)
        assert (await health.run()).status is HealthStatus.HEALTHY
        for n in range(6):
            await w.put(n)
        report = (await health.run())["batch_writer"]
        assert report.status is HealthStatus.DEGRADED
        assert report.observed["fill"] == 0.6
        async with anyio.create_task_group() as group:
            await group.start(w.run)
            await clock.asleep(3.0)
            report = (await health.run())["batch_writer"]
            assert report.status is HealthStatus.UNHEALTHY
            assert "writes failing: OSError" in str(report.detail)
            assert (await health.run()).status is HealthStatus.DEGRADED  # non-critical
            storage.down = False
            await w.aclose()
        assert (await health.run()).status is HealthStatus.HEALTHY


async def test_metrics_report_depth_batches_items_sizes_and_durations(
    clock: VirtualClock,
) -> None:
    reader = InMemoryMetricReader()
    telemetry.configure(meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        storage = Storage(clock, cost=0.5)
        storage.fail_next = 1
        async with (
            clock.autojump(),
            writer(storage, clock, name="metered", max_batch=3, max_delay=0) as w,
        ):
            for n in range(3):
                await w.put(n)
            await w.flush()
        points: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        data = reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = (metric.name, tuple(sorted(point.attributes.items())))
                        points[key] = point
    finally:
        telemetry.configure()
    writer_label = (("writer", "metered"),)
    assert (
        points[("resilience.batch_writer.items", (("outcome", "written"), *writer_label))].value
        == 3
    )
    assert (
        points[("resilience.batch_writer.batches", (("outcome", "failed"), *writer_label))].value
        == 1
    )
    assert points[("resilience.batch_writer.depth", writer_label)].value == 0
    assert points[("resilience.batch_writer.batch_size", writer_label)].sum == 3
    assert points[("resilience.batch_writer.write_duration", writer_label)].max == 0.5


def test_stats_start_empty() -> None:
    w = BatchWriter(print, name="audit", capacity=3, max_batch=2)
    assert w.stats == WriterStats(capacity=3)
    assert repr(w) == "BatchWriter('audit', depth=0, capacity=3, max_batch=2)"


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"write": 3}, "write"),
        ({"name": ""}, "name"),
        ({"capacity": 0}, "capacity"),
        ({"max_batch": 0}, "max_batch"),
        ({"capacity": 5, "max_batch": 6}, "max_batch"),
        ({"max_delay": -1.0}, "max_delay"),
        ({"backoff": 1.0}, "backoff"),
        ({"near_full": 0.0}, "near_full"),
        ({"near_full": 1.5}, "near_full"),
        ({"on_near_full": "page"}, "on_near_full"),
        ({"clock": object()}, "clock"),
    ],
)
def test_misconfiguration_fails_at_construction_naming_the_parameter(
    options: dict[str, Any], parameter: str
) -> None:
    arguments: dict[str, Any] = {"write": print, "name": "audit", **options}
    with pytest.raises(ConfigurationError, match=parameter):
        BatchWriter(**arguments)


def test_the_health_check_refuses_what_is_not_a_writer() -> None:
    with pytest.raises(ConfigurationError, match="writer"):
        batch_writer_check(object())  # type: ignore[arg-type]
    w = BatchWriter(print, name="audit")
    with pytest.raises(ConfigurationError, match="failing_status"):
        batch_writer_check(w, failing_status="bad")  # type: ignore[arg-type]


# -- property: no item lost or duplicated, order kept, memory bounded --------------------

Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 6)),
        st.tuples(st.just("fail"), st.integers(1, 4)),
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("sleep"), st.integers(0, 30)),
    ),
    max_size=25,
)


def run_scenario(
    backend: str, plan: list[Step], capacity: int, max_batch: int, producers: int
) -> None:
    clock = VirtualClock(auto_advance=False)
    storage = Storage(clock, cost=0.2)
    depths: list[int] = []
    expected: list[tuple[int, int]] = []

    async def main() -> None:
        w = BatchWriter(
            storage.write,
            name="prop",
            capacity=capacity,
            max_batch=max_batch,
            max_delay=1.5,
            backoff=Backoff.exponential(initial=0.5, maximum=4.0),
            clock=clock,
        )
        async with clock.autojump(), w:

            async def producer(number: int) -> None:
                sequence = 0
                for action, amount in plan:
                    if action == "put":
                        for _ in range(amount):
                            item = (number, sequence)
                            sequence += 1
                            expected.append(item)
                            await w.put(item)
                            depths.append(w.depth)
                    elif action == "fail":
                        storage.fail_next += amount
                    elif action == "flush":
                        await w.flush()
                    else:
                        await clock.asleep(amount / 10)

            async with anyio.create_task_group() as group:
                for number in range(producers):
                    group.start_soon(producer, number)

    anyio.run(main, backend=backend)
    written = storage.items
    assert sorted(written) == sorted(expected)  # nothing lost, nothing twice
    for number in range(producers):  # each producer's items in its order
        mine = [item for item in written if item[0] == number]
        assert mine == sorted(mine)
    assert all(len(batch) <= max_batch for batch in storage.batches)
    assert max(depths, default=0) <= capacity


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HypothesisHealthCheck.too_slow])
@given(
    plan=steps,
    capacity=st.integers(1, 12),
    batch_fraction=st.floats(0.0, 1.0),
    producers=st.integers(1, 3),
)
def test_no_item_is_lost_or_duplicated_and_order_is_kept_under_any_interleaving(
    backend: str, plan: list[Step], capacity: int, batch_fraction: float, producers: int
) -> None:
    max_batch = max(1, round(capacity * batch_fraction))
    run_scenario(backend, plan, capacity, max_batch, producers)
