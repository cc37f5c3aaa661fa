from __future__ import annotations

import inspect
import math
import threading
import time
import types
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit import Bulkhead, BulkheadFullError, ConfigurationError, ResilienceError
from resilience_kit.policies import _bulkhead
from resilience_kit.testing import VirtualClock, use_clock


def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Yield to other threads until ``predicate()`` holds (a handshake, not a timer)."""
    give_up = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < give_up, "the other thread never got there"
        time.sleep(0)


# -- async -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_max_concurrent_is_enforced_and_the_rest_queue() -> None:
    bulkhead = Bulkhead(2, max_waiting=10)
    release = anyio.Event()
    running = 0
    peak = 0

    @bulkhead
    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(work)
        await anyio.wait_all_tasks_blocked()
        assert (bulkhead.active, bulkhead.waiting, running) == (2, 3, 2)
        release.set()
    assert peak == 2
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


@pytest.mark.anyio
async def test_waiters_get_slots_first_come_first_served() -> None:
    bulkhead = Bulkhead(1, max_waiting=3)
    releases = {name: anyio.Event() for name in ("holder", "a", "b", "c")}
    order: list[str] = []

    @bulkhead
    async def work(name: str) -> None:
        order.append(name)
        await releases[name].wait()

    async with anyio.create_task_group() as tg:
        for name in releases:
            tg.start_soon(work, name)
            await anyio.wait_all_tasks_blocked()  # fixes the arrival order
        assert bulkhead.waiting == 3
        for release in releases.values():
            release.set()
            await anyio.wait_all_tasks_blocked()
    assert order == ["holder", "a", "b", "c"]


@pytest.mark.anyio
async def test_a_newcomer_does_not_jump_the_queue() -> None:
    bulkhead = Bulkhead(1, max_waiting=2)
    release = anyio.Event()
    order: list[str] = []

    @bulkhead
    async def work(name: str) -> None:
        order.append(name)
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, "holder")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(work, "queued")
        await anyio.wait_all_tasks_blocked()
        release.set()  # the holder leaves: its slot goes straight to "queued"...
        tg.start_soon(work, "newcomer")  # ...not to a caller arriving meanwhile
    assert order == ["holder", "queued", "newcomer"]


@pytest.mark.anyio
async def test_rejects_when_every_slot_and_queue_place_is_taken() -> None:
    bulkhead = Bulkhead(1, max_waiting=1, name="db")
    release = anyio.Event()
    ran: list[int] = []

    @bulkhead
    async def work(n: int) -> None:
        ran.append(n)
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, 1)
        tg.start_soon(work, 2)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BulkheadFullError) as info:
            await work(3)
        release.set()
    assert sorted(ran) == [1, 2]
    err = info.value
    assert isinstance(err, ResilienceError)
    assert (err.name, err.max_concurrent, err.max_waiting) == ("db", 1, 1)
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


@pytest.mark.anyio
async def test_without_a_queue_a_second_call_is_rejected_at_once() -> None:
    bulkhead = Bulkhead(1)
    release = anyio.Event()

    @bulkhead
    async def work() -> None:
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BulkheadFullError):
            await work()
        assert bulkhead.waiting == 0
        release.set()
    assert bulkhead.active == 0


@pytest.mark.anyio
async def test_max_wait_expires_on_the_virtual_clock() -> None:
    clock = VirtualClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_waiting=1, max_wait=5, clock=clock)
    release = anyio.Event()
    rejected_at: list[float] = []

    @bulkhead
    async def work() -> None:
        await release.wait()

    async def waiter() -> None:
        try:
            await work()
        except BulkheadFullError:
            rejected_at.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.999)
        await anyio.wait_all_tasks_blocked()
        assert rejected_at == []
        assert bulkhead.waiting == 1
        clock.advance(0.001)
        await anyio.wait_all_tasks_blocked()
        assert rejected_at == [5.0]
        assert (bulkhead.active, bulkhead.waiting) == (1, 0)
        release.set()
    assert bulkhead.active == 0


@pytest.mark.anyio
async def test_max_wait_follows_the_default_clock_in_auto_mode() -> None:
    clock = VirtualClock()
    bulkhead = Bulkhead(1, max_waiting=1, max_wait=5)  # no clock: use_clock decides
    queued = anyio.Event()
    ran: list[str] = []
    rejected: list[str] = []

    @bulkhead
    async def slow(name: str) -> None:
        ran.append(name)
        await queued.wait()
        await clock.asleep(100)  # auto mode: jumps past the waiter's deadline at 5

    async def call(name: str) -> None:
        try:
            await slow(name)
        except BulkheadFullError:
            rejected.append(name)

    with use_clock(clock):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "holder")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(call, "waiter")
            await anyio.wait_all_tasks_blocked()
            assert bulkhead.waiting == 1
            queued.set()
    assert ran == ["holder"]
    assert rejected == ["waiter"]
    assert clock.monotonic() == 100.0
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


@pytest.mark.anyio
async def test_a_waiter_granted_at_its_deadline_keeps_the_slot() -> None:
    clock = VirtualClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_waiting=1, max_wait=5, clock=clock)
    go = anyio.Event()
    ran: list[str] = []

    @bulkhead
    async def work(name: str) -> None:
        ran.append(name)
        if name == "holder":
            await go.wait()
            # The waiter's max_wait runs out, and in the same step we hand it our slot.
            clock.advance(5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, "holder")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(work, "waiter")
        await anyio.wait_all_tasks_blocked()
        assert bulkhead.waiting == 1
        go.set()
    assert ran == ["holder", "waiter"]  # the slot it was handed was not thrown away
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    bulkhead = Bulkhead(1, max_waiting=2)
    release = anyio.Event()
    ran: list[str] = []
    scopes: dict[str, anyio.CancelScope] = {}

    @bulkhead
    async def work(name: str) -> None:
        ran.append(name)
        await release.wait()

    async def cancellable(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[name] = scope
            await work(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, "holder")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(cancellable, "cancelled")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(work, "next")
        await anyio.wait_all_tasks_blocked()
        assert bulkhead.waiting == 2
        scopes["cancelled"].cancel()
        await anyio.wait_all_tasks_blocked()
        assert (bulkhead.active, bulkhead.waiting) == (1, 1)
        release.set()
    assert scopes["cancelled"].cancelled_caught
    assert ran == ["holder", "next"]
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


@pytest.mark.anyio
async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    bulkhead = Bulkhead(1, max_waiting=2)
    release = anyio.Event()
    ran: list[str] = []
    scopes: dict[str, anyio.CancelScope] = {}

    @bulkhead
    async def work(name: str) -> None:
        ran.append(name)
        if name == "holder":
            await release.wait()
            # Cancel the first waiter in the very step that hands it our slot.
            scopes["unlucky"].cancel()
        else:
            await anyio.lowlevel.checkpoint()

    async def cancellable(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[name] = scope
            await work(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, "holder")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(cancellable, "unlucky")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(work, "next")
        await anyio.wait_all_tasks_blocked()
        assert (bulkhead.active, bulkhead.waiting) == (1, 2)
        release.set()
    assert "next" in ran  # the slot was not lost with the cancelled waiter
    assert ran[0] == "holder"
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


@pytest.mark.anyio
async def test_an_exception_in_the_call_releases_the_slot() -> None:
    bulkhead = Bulkhead(1)

    @bulkhead
    async def broken() -> None:
        raise ConnectionError("reset")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await broken()
    assert bulkhead.active == 0


@pytest.mark.anyio
async def test_an_exception_hands_the_slot_to_the_next_waiter() -> None:
    bulkhead = Bulkhead(1, max_waiting=1)
    release = anyio.Event()
    ran: list[str] = []

    @bulkhead
    async def work(name: str) -> None:
        ran.append(name)
        if name == "broken":
            await release.wait()
            raise ConnectionError("reset")

    async def broken() -> None:
        with pytest.raises(ConnectionError):
            await work("broken")

    async with anyio.create_task_group() as tg:
        tg.start_soon(broken)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(work, "next")
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert ran == ["broken", "next"]
    assert bulkhead.active == 0


@pytest.mark.anyio
async def test_acall_and_metadata() -> None:
    bulkhead = Bulkhead(3)

    async def fetch(user_id: int) -> int:
        """Fetch a user."""
        return bulkhead.active * 100 + user_id

    wrapped = bulkhead(fetch)
    assert inspect.iscoroutinefunction(wrapped)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == "Fetch a user."
    assert await wrapped(7) == 107
    assert await bulkhead.acall(fetch, 8) == 108
    assert bulkhead.active == 0


# -- sync (threads) ------------------------------------------------------------------------


def test_sync_call_runs_inside_a_slot() -> None:
    bulkhead = Bulkhead(10, max_waiting=20, max_wait=1.0, name="db")

    @bulkhead
    def query(x: int) -> tuple[int, int]:
        """Query."""
        return x, bulkhead.active

    assert query(5) == (5, 1)
    assert bulkhead.call(query, 6) == (6, 2)  # nested: the outer call holds a slot too
    assert query.__name__ == "query"
    assert bulkhead.active == 0


def test_sync_threads_are_limited_and_queue_in_order() -> None:
    bulkhead = Bulkhead(2, max_waiting=3)
    release = {n: threading.Event() for n in range(5)}
    started: list[int] = []
    errors: list[BaseException] = []

    @bulkhead
    def work(n: int) -> None:
        started.append(n)
        assert release[n].wait(10)

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = []
    for n in range(5):
        thread = threading.Thread(target=run, args=(n,))
        thread.start()
        threads.append(thread)
        # Wait for this thread to be running or queued, so arrival order is known.
        wait_until(lambda n=n: bulkhead.active + bulkhead.waiting == n + 1)
    assert sorted(started) == [0, 1]
    assert (bulkhead.active, bulkhead.waiting) == (2, 3)

    with pytest.raises(BulkheadFullError):
        work(99)  # no slot, queue full: rejected at once

    for n in range(5):
        release[n].set()
        if n < 3:  # each release hands a slot to the next queued thread
            wait_until(lambda n=n: len(started) == n + 3)
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert started == [0, 1, 2, 3, 4]
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


def test_sync_max_wait_rejects_a_thread_that_waited_too_long() -> None:
    bulkhead = Bulkhead(1, max_waiting=1, max_wait=0.01)  # a short real wait
    release = threading.Event()
    holder = threading.Thread(target=bulkhead(lambda: release.wait(10)))
    holder.start()
    wait_until(lambda: bulkhead.active == 1)
    try:
        with pytest.raises(BulkheadFullError):
            bulkhead.call(lambda: None)
        assert bulkhead.waiting == 0
    finally:
        release.set()
        holder.join(10)
    assert bulkhead.active == 0


def test_sync_exception_releases_the_slot() -> None:
    bulkhead = Bulkhead(1)

    @bulkhead
    def broken() -> None:
        raise ValueError("bad")

    for _ in range(3):
        with pytest.raises(ValueError, match="bad"):
            broken()
    assert bulkhead.active == 0


class _InterruptedEvent(threading.Event):
    """An event whose wait is interrupted (as by Ctrl-C), optionally after a hand-over."""

    before_interrupt: Callable[[], None] = staticmethod(lambda: None)

    def wait(self, timeout: float | None = None) -> bool:
        type(self).before_interrupt()
        raise KeyboardInterrupt


def _patch_events(monkeypatch: pytest.MonkeyPatch, before: Callable[[], None]) -> None:
    fake_threading = types.SimpleNamespace(
        Event=_InterruptedEvent, Lock=threading.Lock, get_ident=threading.get_ident
    )
    monkeypatch.setattr(_bulkhead, "threading", fake_threading)
    monkeypatch.setattr(_InterruptedEvent, "before_interrupt", staticmethod(before))


def test_sync_interrupted_waiter_leaves_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    bulkhead = Bulkhead(1, max_waiting=1)
    release = threading.Event()
    holder = threading.Thread(target=bulkhead(lambda: release.wait(10)))
    holder.start()
    wait_until(lambda: bulkhead.active == 1)
    _patch_events(monkeypatch, lambda: None)
    ran: list[int] = []
    try:
        with pytest.raises(KeyboardInterrupt):
            bulkhead.call(ran.append, 1)
        assert (bulkhead.active, bulkhead.waiting) == (1, 0)
    finally:
        release.set()
        holder.join(10)
    assert ran == []
    assert bulkhead.active == 0


def test_sync_slot_handed_to_an_interrupted_waiter_is_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bulkhead = Bulkhead(1, max_waiting=1)
    release = threading.Event()
    holder = threading.Thread(target=bulkhead(lambda: release.wait(10)))
    holder.start()
    wait_until(lambda: bulkhead.active == 1)

    def holder_leaves() -> None:
        release.set()
        holder.join(10)  # it hands its slot to our waiter, which is then interrupted

    _patch_events(monkeypatch, holder_leaves)
    ran: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        bulkhead.call(ran.append, 1)
    assert ran == []
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


# -- sync and async callers sharing one bulkhead -------------------------------------------


async def _wait_for(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(10):  # a guard only: the other thread gets there at once
        while not predicate():
            await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
@pytest.mark.parametrize("has_tokens", [True, False], ids=["anyio>=4.11", "older-anyio"])
async def test_a_worker_thread_leaving_wakes_a_waiting_task(
    has_tokens: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not has_tokens:  # only anyio's own worker threads can reach the loop then
        monkeypatch.setattr(_bulkhead, "_current_token", None)
    bulkhead = Bulkhead(1, max_waiting=1)
    release = threading.Event()
    ran: list[str] = []

    @bulkhead
    def blocking() -> None:
        ran.append("thread")
        assert release.wait(10)

    @bulkhead
    async def task() -> None:
        ran.append("task")

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, blocking)
        await _wait_for(lambda: bulkhead.active == 1)
        tg.start_soon(task)
        await anyio.wait_all_tasks_blocked()
        assert bulkhead.waiting == 1
        release.set()  # the thread leaves: it must wake the task through the event loop
    assert ran == ["thread", "task"]
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


@pytest.mark.anyio
async def test_a_foreign_thread_leaving_wakes_a_waiting_task() -> None:
    bulkhead = Bulkhead(1, max_waiting=1)
    release = threading.Event()
    ran: list[str] = []

    @bulkhead
    def blocking() -> None:
        ran.append("thread")
        assert release.wait(10)

    @bulkhead
    async def task() -> None:
        ran.append("task")

    thread = threading.Thread(target=blocking)  # not one of anyio's worker threads
    thread.start()
    try:
        await _wait_for(lambda: bulkhead.active == 1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(task)
            await anyio.wait_all_tasks_blocked()
            assert bulkhead.waiting == 1
            release.set()
    finally:
        release.set()
        await anyio.to_thread.run_sync(thread.join, 10)
    assert ran == ["thread", "task"]
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


def test_a_slot_handed_to_a_waiter_whose_loop_is_gone_is_passed_on() -> None:
    class Unreachable(_bulkhead._Waiter):
        __slots__ = ()

        def wake(self) -> None:
            raise RuntimeError("the event loop has finished")

    bulkhead = Bulkhead(1, max_waiting=2)
    assert bulkhead._enter(_bulkhead._Waiter.for_thread) is None  # we hold the slot
    dead = bulkhead._enter(lambda: Unreachable(threading.Event(), None))
    alive = bulkhead._enter(_bulkhead._Waiter.for_thread)
    assert dead is not None
    assert alive is not None
    bulkhead._leave()  # to `dead`, which cannot be woken: on to `alive`
    assert alive.granted
    assert alive.event.is_set()
    assert (bulkhead.active, bulkhead.waiting) == (1, 0)
    bulkhead._leave()
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": "1"}, "max_concurrent"),
        ({"max_concurrent": True}, "max_concurrent"),
        ({"max_concurrent": 1.5}, "max_concurrent"),
        ({"max_concurrent": 1, "max_waiting": -1}, "max_waiting"),
        ({"max_concurrent": 1, "max_wait": 0}, "max_wait"),
        ({"max_concurrent": 1, "max_wait": -1}, "max_wait"),
        ({"max_concurrent": 1, "max_wait": math.nan}, "max_wait"),
    ],
)
def test_bad_parameters_are_configuration_errors(kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Bulkhead(**kwargs)  # type: ignore[arg-type]
    assert info.value.parameter == parameter


def test_repr_and_attributes() -> None:
    bulkhead = Bulkhead(4, max_waiting=2, max_wait=1.5, name="db")
    assert repr(bulkhead) == "Bulkhead(name='db', max_concurrent=4, max_waiting=2)"
    assert (bulkhead.max_concurrent, bulkhead.max_waiting, bulkhead.max_wait) == (4, 2, 1.5)
    assert Bulkhead(1).name == "bulkhead"


# -- model-based property ------------------------------------------------------------------

MAX_CONCURRENT = 2
MAX_WAITING = 2
MAX_WAIT = 3.0

operations = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.just(0)),
        st.tuples(st.just("finish"), st.integers(0, 3)),
        st.tuples(st.just("cancel_running"), st.integers(0, 3)),
        st.tuples(st.just("cancel_waiting"), st.integers(0, 3)),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 3.0])),
    ),
    max_size=25,
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None)
@given(ops=operations)
def test_property_bulkhead_matches_a_fifo_model(backend: str, ops: list[tuple[str, float]]) -> None:
    async def scenario() -> None:
        clock = VirtualClock(auto_advance=False)
        bulkhead = Bulkhead(MAX_CONCURRENT, max_waiting=MAX_WAITING, max_wait=MAX_WAIT, clock=clock)
        releases: dict[int, anyio.Event] = {}
        scopes: dict[int, anyio.CancelScope] = {}
        status: dict[int, str] = {}
        # The model: who runs, and who waits since when, in arrival order.
        running: list[int] = []
        queue: list[tuple[int, float]] = []
        expected: dict[int, str] = {}

        @bulkhead
        async def work(n: int) -> None:
            status[n] = "running"
            await releases[n].wait()
            status[n] = "done"

        async def caller(n: int) -> None:
            with anyio.CancelScope() as scope:
                scopes[n] = scope
                status[n] = "waiting"
                try:
                    await work(n)
                except BulkheadFullError:
                    status[n] = "rejected"
                    return
            if scope.cancelled_caught:
                status[n] = "cancelled"

        def promote() -> None:
            if queue and len(running) < MAX_CONCURRENT:
                n, _ = queue.pop(0)
                running.append(n)
                expected[n] = "running"

        async with anyio.create_task_group() as tg:
            for op, arg in ops:
                if op == "start":
                    n = len(releases)
                    releases[n] = anyio.Event()
                    tg.start_soon(caller, n)
                    if len(running) < MAX_CONCURRENT and not queue:
                        running.append(n)
                        expected[n] = "running"
                    elif len(queue) < MAX_WAITING:
                        queue.append((n, clock.monotonic()))
                        expected[n] = "waiting"
                    else:
                        expected[n] = "rejected"
                elif op == "finish" and running:
                    n = running.pop(int(arg) % len(running))
                    releases[n].set()
                    expected[n] = "done"
                    promote()
                elif op == "cancel_running" and running:
                    n = running.pop(int(arg) % len(running))
                    scopes[n].cancel()
                    expected[n] = "cancelled"
                    promote()
                elif op == "cancel_waiting" and queue:
                    n, _ = queue.pop(int(arg) % len(queue))
                    scopes[n].cancel()
                    expected[n] = "cancelled"
                elif op == "advance":
                    clock.advance(arg)
                    now = clock.monotonic()
                    for n, since in list(queue):
                        if since + MAX_WAIT <= now:
                            queue.remove((n, since))
                            expected[n] = "rejected"
                await anyio.wait_all_tasks_blocked()
                assert status == expected
                assert bulkhead.active == len(running)
                assert bulkhead.waiting == len(queue)
            tg.cancel_scope.cancel()
        assert (bulkhead.active, bulkhead.waiting) == (0, 0)

    anyio.run(scenario, backend=backend)
