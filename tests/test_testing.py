from __future__ import annotations

import math
import random
import threading
import time
import traceback

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    RetryPolicy,
    Timeout,
    TimeoutExceededError,
    _config,
)
from resilience_kit.clock import Clock, SystemClock, TimerClock, get_clock
from resilience_kit.errors import InjectedFaultError
from resilience_kit.messaging import Event
from resilience_kit.testing import (
    ChaosFault,
    ChaosLatency,
    ChaosPublisher,
    ChaosResult,
    Switch,
    VirtualClock,
    no_wait,
    use_clock,
)
from resilience_kit.transports import MemoryBus

# -- VirtualClock ----------------------------------------------------------------------------


def test_virtual_clock_reads_and_sleeps() -> None:
    clock = VirtualClock(start=100.0, wall=1_000.0)
    assert isinstance(clock, Clock)
    assert isinstance(clock, TimerClock)
    assert (clock.monotonic(), clock.time()) == (100.0, 1_000.0)
    clock.sleep(5)
    clock.advance(1.5)
    clock.sleep(0)
    assert clock.monotonic() == 106.5
    assert clock.time() == 1_006.5
    assert clock.sleeps == [5, 0]
    assert repr(clock) == "VirtualClock(now=106.5)"


def test_virtual_clock_default_wall_time_is_a_fixed_date() -> None:
    assert VirtualClock().time() == 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert VirtualClock(start=10).time() == 1_767_225_600.0


@pytest.mark.anyio
async def test_asleep_advances_at_once_in_auto_mode() -> None:
    clock = VirtualClock()
    await clock.asleep(3)
    await clock.asleep(0.5)
    assert clock.monotonic() == 3.5
    assert clock.sleeps == [3, 0.5]


@pytest.mark.parametrize("bad", [-1, -1e-9, -math.inf, math.nan])
def test_time_never_goes_backwards(bad: float) -> None:
    clock = VirtualClock(start=5)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(bad)
    with pytest.raises(ValueError, match="negative"):
        clock.sleep(bad)
    assert clock.monotonic() == 5
    assert clock.sleeps == []


@pytest.mark.anyio
async def test_negative_async_sleep_is_refused() -> None:
    clock = VirtualClock()
    with pytest.raises(ValueError, match="negative"):
        await clock.asleep(-1)
    assert clock.monotonic() == 0


@pytest.mark.parametrize("kwargs", [{"start": -1}, {"wall": -5}, {"start": math.nan}])
def test_bad_start_is_a_configuration_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        VirtualClock(**kwargs)


def test_call_at_timers_fire_in_deadline_order_and_can_be_cancelled() -> None:
    clock = VirtualClock()
    fired: list[tuple[str, float]] = []

    def record(name: str) -> object:
        return lambda: fired.append((name, clock.monotonic()))

    clock.call_at(3, record("c"))
    clock.call_at(1, record("a"))
    cancelled = clock.call_at(2, record("cancelled"))
    clock.call_at(2, record("b"))
    clock.call_at(2, record("b2"))  # same deadline: in the order they were set
    cancelled.cancel()
    clock.advance(2.5)
    assert fired == [("a", 1.0), ("b", 2.0), ("b2", 2.0)]
    assert clock.monotonic() == 2.5
    clock.sleep(10)  # sync sleeps in auto mode fire timers too
    assert fired[-1] == ("c", 3.0)
    assert clock.monotonic() == 12.5
    cancelled.cancel()  # idempotent, and a no-op once the time has passed


def test_call_at_in_the_past_fires_at_once_without_moving_time() -> None:
    clock = VirtualClock(start=10)
    fired: list[float] = []
    clock.call_at(3, lambda: fired.append(clock.monotonic()))
    assert fired == [10.0]
    clock.call_at(10, lambda: fired.append(-1))
    assert fired == [10.0, -1]


def test_a_cancelled_timer_does_not_fire_later() -> None:
    clock = VirtualClock()
    fired: list[int] = []
    handle = clock.call_at(1, lambda: fired.append(1))
    handle.cancel()
    clock.advance(5)
    assert fired == []


@settings(max_examples=60, deadline=None)
@given(
    deadlines=st.lists(st.floats(min_value=0, max_value=100), max_size=12),
    steps=st.lists(st.floats(min_value=0, max_value=30), min_size=1, max_size=6),
)
def test_property_timers_fire_once_in_order_at_their_deadline(
    deadlines: list[float], steps: list[float]
) -> None:
    clock = VirtualClock()
    fired: list[tuple[float, float]] = []
    for deadline in deadlines:
        clock.call_at(deadline, lambda d=deadline: fired.append((d, clock.monotonic())))
    for step in steps:
        clock.advance(step)
    due = sorted(d for d in deadlines if d <= clock.monotonic())
    assert [d for d, _ in fired] == due
    for deadline, at in fired:
        assert at == max(deadline, 0.0)


@pytest.mark.anyio
async def test_manual_mode_sleeper_wakes_when_another_task_advances() -> None:
    clock = VirtualClock(auto_advance=False)
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.asleep(seconds)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, 5)
        tg.start_soon(sleeper, 2)
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        clock.advance(1.9)
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        clock.advance(0.1)
        await anyio.wait_all_tasks_blocked()
        assert woke == [2.0]
        clock.advance(10)
    assert woke == [2.0, 12.0]
    assert clock.sleeps == [5, 2] or clock.sleeps == [2, 5]


@pytest.mark.anyio
async def test_manual_mode_zero_sleep_returns_at_once() -> None:
    clock = VirtualClock(auto_advance=False)
    with anyio.fail_after(5):  # a guard: it must not wait for an advance
        await clock.asleep(0)
    assert clock.monotonic() == 0


@pytest.mark.anyio
async def test_manual_mode_cancelled_sleeper_leaves_no_timer() -> None:
    clock = VirtualClock(auto_advance=False)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await clock.asleep(5)
    assert scope.cancelled_caught
    # The dead sleeper's timer is called off (the heap drops cancelled timers lazily).
    assert all(timer.cancelled for _, _, timer in clock._timers)
    clock.advance(20)
    assert clock._timers == []


def test_sync_manual_mode_with_a_thread() -> None:
    clock = VirtualClock(auto_advance=False)
    woke: list[float] = []
    thread = threading.Thread(target=lambda: (clock.sleep(5), woke.append(clock.monotonic())))
    thread.start()
    give_up = time.monotonic() + 10
    while not clock.sleeps:  # the thread has registered its sleep (a handshake)
        assert time.monotonic() < give_up
        time.sleep(0)
    clock.advance(4)
    thread.join(0.01)
    assert thread.is_alive()  # still asleep at 4
    clock.advance(1)
    thread.join(10)
    assert not thread.is_alive()
    assert woke == [5.0]


# -- switches --------------------------------------------------------------------------------


def test_no_wait_applies_at_once_and_restores_as_a_context_manager() -> None:
    assert _config.state.no_wait is False
    switch = no_wait()
    assert isinstance(switch, Switch)
    assert _config.state.no_wait is True  # applied without entering it
    with no_wait(False):
        assert _config.state.no_wait is False
    assert _config.state.no_wait is True  # the previous setting is back
    with switch:
        pass
    assert _config.state.no_wait is False


def test_no_wait_makes_retries_skip_their_sleeps() -> None:
    clock = VirtualClock()
    retry = RetryPolicy(attempts=3, on=KeyError, backoff=Backoff.constant(10), clock=clock)
    calls: list[int] = []

    def fail() -> None:
        calls.append(1)
        raise KeyError

    with no_wait(), pytest.raises(KeyError):
        retry.call(fail)
    assert len(calls) == 3
    assert clock.sleeps == []


def test_use_clock_applies_at_once_and_restores() -> None:
    first, second = VirtualClock(), VirtualClock()
    assert get_clock() is not first
    outer = use_clock(first)
    assert get_clock() is first
    with use_clock(second):
        assert get_clock() is second
        with use_clock(None):
            assert type(get_clock()).__name__ == "SystemClock"
        assert get_clock() is second
    assert get_clock() is first
    with outer:
        pass
    assert _config.state.clock is None


def test_use_clock_is_the_default_for_policies_built_without_one() -> None:
    clock = VirtualClock()
    retry = RetryPolicy(attempts=3, on=KeyError, backoff=Backoff.constant(2))
    with use_clock(clock), pytest.raises(KeyError):
        retry.call(lambda: {}["x"])
    assert clock.monotonic() == 4.0


# -- ChaosFault ------------------------------------------------------------------------------


def test_chaos_fault_default_raises_injected_fault_error() -> None:
    chaos = ChaosFault(name="db-chaos")
    called: list[int] = []
    with pytest.raises(InjectedFaultError, match="fault injected by db-chaos"):
        chaos.call(called.append, 1)
    assert called == []
    assert chaos.injected == 1
    assert ChaosFault().name == "ChaosFault"


def test_chaos_fault_with_a_type() -> None:
    chaos = ChaosFault(ConnectionError)
    with pytest.raises(ConnectionError):
        chaos.call(lambda: None)

    class MyFault(InjectedFaultError):
        pass

    with pytest.raises(MyFault, match="fault injected"):
        ChaosFault(MyFault).call(lambda: None)


def _raise_and_catch(chaos: ChaosFault) -> BaseException:
    try:
        chaos.call(lambda: None)
    except BaseException as exc:
        return exc
    raise AssertionError("nothing was injected")  # pragma: no cover


def test_chaos_fault_instance_is_copied_fresh_each_time() -> None:
    template = ConnectionError("injected")
    chaos = ChaosFault(template)
    caught = [_raise_and_catch(chaos) for _ in range(50)]
    assert all(type(exc) is ConnectionError and str(exc) == "injected" for exc in caught)
    assert len({id(exc) for exc in caught}) == 50
    assert all(exc is not template for exc in caught)
    assert template.__traceback__ is None  # the template itself is never raised
    depths = {len(traceback.extract_tb(exc.__traceback__)) for exc in caught}
    assert len(depths) == 1  # the traceback does not grow from one injection to the next
    assert chaos.injected == 50


def test_chaos_fault_copies_library_errors_with_keyword_only_arguments() -> None:
    chaos = ChaosFault(CircuitOpenError("billing", state="open", retry_after=3.0))
    first, second = _raise_and_catch(chaos), _raise_and_catch(chaos)
    assert isinstance(first, CircuitOpenError)
    assert first is not second
    assert (first.name, first.state, first.retry_after) == ("billing", "open", 3.0)
    timeout = _raise_and_catch(ChaosFault(TimeoutExceededError("db", seconds=2.0)))
    assert isinstance(timeout, TimeoutExceededError)
    assert timeout.seconds == 2.0


def test_chaos_fault_copies_do_not_share_notes() -> None:
    template = ValueError("x")
    template.add_note("from the template")
    chaos = ChaosFault(template)
    first = _raise_and_catch(chaos)
    first.add_note("added to one injection")
    second = _raise_and_catch(chaos)
    assert second.__notes__ == ["from the template"]
    assert template.__notes__ == ["from the template"]


def test_chaos_fault_refuses_an_instance_it_cannot_copy() -> None:
    class Uncopyable(Exception):
        def __init__(self, *, code: int) -> None:
            super().__init__(f"code {code}")

    with pytest.raises(ConfigurationError, match="factory") as info:
        ChaosFault(Uncopyable(code=3))
    assert info.value.parameter == "exception"


def test_chaos_fault_factory() -> None:
    made: list[BaseException] = []

    def factory() -> BaseException:
        made.append(OSError(len(made)))
        return made[-1]

    chaos = ChaosFault(factory)
    assert _raise_and_catch(chaos) is made[0]
    assert _raise_and_catch(chaos) is made[1]


@pytest.mark.parametrize("bad", ["boom", 42, int])
def test_chaos_fault_rejects_what_is_not_an_exception(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        ChaosFault(bad)  # type: ignore[arg-type]
    assert info.value.parameter == "exception"


def test_chaos_fault_rate_with_a_seeded_random_source() -> None:
    def outcomes(seed: int) -> list[bool]:
        chaos = ChaosFault(rate=0.3, rand=random.Random(seed).random)
        result = []
        for _ in range(200):
            try:
                chaos.call(lambda: None)
            except InjectedFaultError:
                result.append(True)
            else:
                result.append(False)
        assert chaos.injected == sum(result)
        return result

    first = outcomes(7)
    assert first == outcomes(7)  # reproducible
    source = random.Random(7)
    assert first == [source.random() < 0.3 for _ in range(200)]  # one draw per call
    assert 30 <= sum(first) <= 90  # about 30 %


@pytest.mark.parametrize(("rate", "expected"), [(0.0, 0), (1.0, 10)])
def test_chaos_fault_rate_bounds(rate: float, expected: int) -> None:
    # The most tempting draws: 0.0 must not inject at rate 0, nor 0.999 skip at rate 1.
    chaos = ChaosFault(rate=rate, rand=lambda: 0.0 if rate == 0 else 0.999)
    for _ in range(10):
        try:
            chaos.call(lambda: None)
        except InjectedFaultError:
            pass
    assert chaos.injected == expected


@pytest.mark.parametrize("rate", [-0.1, 1.01, math.nan, "half"])
def test_rate_outside_zero_one_is_a_configuration_error(rate: object) -> None:
    for policy in (ChaosFault, lambda **kw: ChaosLatency(1, **kw), ChaosResult):
        with pytest.raises(ConfigurationError) as info:
            policy(rate=rate)  # type: ignore[operator]
        assert info.value.parameter == "rate"


def test_chaos_fault_schedule_list() -> None:
    chaos = ChaosFault(schedule=[True, False, True])
    outcomes = []
    for _ in range(5):  # exhausted after three calls: no more injections
        try:
            outcomes.append(chaos.call(lambda: "ok"))
        except InjectedFaultError:
            outcomes.append("fault")
    assert outcomes == ["fault", "ok", "fault", "ok", "ok"]
    assert chaos.injected == 2


def test_chaos_fault_schedule_callable_gets_the_call_number() -> None:
    seen: list[int] = []

    def every_third(n: int) -> bool:
        seen.append(n)
        return n % 3 == 0

    chaos = ChaosFault(schedule=every_third)
    outcomes = []
    for _ in range(6):
        try:
            outcomes.append(chaos.call(lambda: "ok"))
        except InjectedFaultError:
            outcomes.append("fault")
    assert outcomes == ["ok", "ok", "fault", "ok", "ok", "fault"]
    assert seen == [1, 2, 3, 4, 5, 6]


def test_chaos_switched_at_run_time() -> None:
    chaos = ChaosFault(enabled=False)

    @chaos
    def ping() -> str:
        return "pong"

    assert ping() == "pong"
    chaos.enabled = True
    with pytest.raises(InjectedFaultError):
        ping()
    chaos.enabled = False
    assert ping() == "pong"
    assert chaos.injected == 1


@pytest.mark.anyio
async def test_chaos_fault_async() -> None:
    chaos = ChaosFault(ConnectionError("down"), schedule=[True, False])

    @chaos
    async def ping() -> str:
        return "pong"

    with pytest.raises(ConnectionError, match="down"):
        await ping()
    assert await ping() == "pong"


@pytest.mark.anyio
async def test_chaos_fault_drives_a_retry_and_a_breaker() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker("chaos", window=4, minimum_calls=4, open_for=10, clock=clock)
    retry = RetryPolicy(attempts=4, on=ConnectionError, backoff=Backoff.constant(1), clock=clock)
    chaos = ChaosFault(ConnectionError("injected"), schedule=[True, True, True])

    @retry
    @breaker
    @chaos
    async def call() -> str:
        return "ok"

    assert await call() == "ok"
    assert chaos.injected == 3
    assert clock.monotonic() == 3.0
    assert breaker.metrics().failed_calls == 3


# -- ChaosLatency ----------------------------------------------------------------------------


def test_chaos_latency_moves_virtual_time() -> None:
    clock = VirtualClock()
    slow = ChaosLatency(2.0, schedule=[True, False, True], clock=clock)
    assert slow.call(lambda: "done") == "done"
    assert clock.monotonic() == 2.0
    assert slow.call(lambda: "done") == "done"
    assert clock.monotonic() == 2.0
    slow.call(lambda: None)
    assert clock.monotonic() == 4.0
    assert slow.injected == 2
    assert slow.seconds == 2.0


def test_chaos_latency_uses_the_default_clock() -> None:
    clock = VirtualClock()
    with use_clock(clock):
        ChaosLatency(7).call(lambda: None)
    assert clock.sleeps == [7.0]


@pytest.mark.anyio
async def test_chaos_latency_async_trips_a_timeout_on_the_same_clock() -> None:
    clock = VirtualClock()
    reached: list[int] = []

    @Timeout(1, clock=clock)
    @ChaosLatency(5, clock=clock)
    async def call() -> str:
        reached.append(1)  # pragma: no cover - the latency is cut short
        return "ok"  # pragma: no cover

    with pytest.raises(TimeoutExceededError):
        await call()
    assert clock.monotonic() == 1.0
    assert reached == []


@pytest.mark.anyio
async def test_chaos_latency_async_within_the_limit() -> None:
    clock = VirtualClock()
    latency = ChaosLatency(0.5, clock=clock)
    assert await Timeout(1, clock=clock).acall(latency.acall, anyio.lowlevel.checkpoint) is None
    assert clock.monotonic() == 0.5


@pytest.mark.parametrize("seconds", [0, -1, math.inf])
def test_chaos_latency_bad_seconds(seconds: float) -> None:
    with pytest.raises(ConfigurationError) as info:
        ChaosLatency(seconds)
    assert info.value.parameter == "seconds"


# -- ChaosResult -----------------------------------------------------------------------------


def test_chaos_result_value() -> None:
    stale = ChaosResult(value={"plan": "free"}, schedule=[True, False])
    assert stale.call(lambda: {"plan": "pro"}) == {"plan": "free"}
    assert stale.call(lambda: {"plan": "pro"}) == {"plan": "pro"}
    assert stale.injected == 1


@pytest.mark.anyio
async def test_chaos_result_factory_async() -> None:
    counter = iter(range(100))
    chaos = ChaosResult(factory=lambda: next(counter))

    @chaos
    async def real() -> int:  # pragma: no cover - always replaced
        return -1

    assert [await real(), await real()] == [0, 1]


def test_chaos_result_refuses_both_value_and_factory() -> None:
    with pytest.raises(ConfigurationError) as info:
        ChaosResult(value=1, factory=lambda: 2)
    assert info.value.parameter == "factory"
    with pytest.raises(ConfigurationError):
        ChaosResult(factory=3)  # type: ignore[arg-type]


# -- the real clock --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_system_clock() -> None:
    clock = SystemClock()
    assert repr(clock) == "SystemClock()"
    assert isinstance(clock, Clock)
    assert not isinstance(clock, TimerClock)  # the event loop enforces its deadlines
    before = clock.monotonic()
    clock.sleep(0)
    await clock.asleep(0)
    assert clock.monotonic() >= before
    assert clock.time() > 1_600_000_000
    assert get_clock() is get_clock()  # one shared instance by default
    assert isinstance(get_clock(), SystemClock)


# -- autojump ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_autojump_wakes_concurrent_sleepers_in_deadline_order() -> None:
    clock = VirtualClock(auto_advance=False)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.asleep(seconds)
        woke.append((name, clock.monotonic()))

    async with clock.autojump(), anyio.create_task_group() as group:
        for name, seconds in [("c", 30.0), ("a", 1.0), ("b", 7.5)]:
            group.start_soon(sleeper, name, seconds)
    assert woke == [("a", 1.0), ("b", 7.5), ("c", 30.0)]


@pytest.mark.anyio
async def test_autojump_fires_a_timeout_at_its_virtual_instant() -> None:
    clock = VirtualClock(auto_advance=False)

    async def hang() -> None:
        await clock.asleep(3600.0)

    async with clock.autojump():
        with pytest.raises(TimeoutError):
            await Timeout(2.0, clock=clock).acall(hang)
    assert clock.monotonic() == 2.0


@pytest.mark.anyio
async def test_autojump_never_jumps_while_a_worker_thread_is_busy() -> None:
    clock = VirtualClock(auto_advance=False)
    seen: list[float] = []

    def slow_database_call() -> float:
        time.sleep(0.05)  # real work in a thread: virtual time must stand still meanwhile
        return clock.monotonic()

    async def query() -> None:
        seen.append(await anyio.to_thread.run_sync(slow_database_call))

    async def timer() -> None:
        await clock.asleep(1.0)

    async with clock.autojump(), anyio.create_task_group() as group:
        group.start_soon(timer)
        await Timeout(0.5, clock=clock).acall(query)  # would time out if time jumped
    assert seen == [0.0]
    assert clock.monotonic() == 1.0


@pytest.mark.anyio
async def test_autojump_never_jumps_while_the_clock_is_held() -> None:
    clock = VirtualClock(auto_advance=False)
    seen: list[float] = []

    def woken_elsewhere() -> float:
        time.sleep(0.05)  # a thread autojump cannot see (a limiter of its own)
        return clock.monotonic()

    async def wait_for_the_wake_up() -> None:
        hold = clock.hold()  # taken where the wake-up starts
        try:
            seen.append(
                await anyio.to_thread.run_sync(woken_elsewhere, limiter=anyio.CapacityLimiter(1))
            )
        finally:
            hold.release()  # released where the woken task resumes
        hold.release()  # twice is once

    async def timer() -> None:
        await clock.asleep(1.0)

    async with clock.autojump(), anyio.create_task_group() as group:
        group.start_soon(timer)
        await Timeout(0.5, clock=clock).acall(wait_for_the_wake_up)  # no jump: no timeout
    assert seen == [0.0]
    assert clock.monotonic() == 1.0
    assert not clock.held


@pytest.mark.anyio
async def test_autojump_waits_for_the_outside_world_when_no_timer_is_pending() -> None:
    clock = VirtualClock(auto_advance=False)
    async with clock.autojump(idle_poll=0.001):
        await anyio.sleep(0.01)  # real time; nothing virtual is pending
    assert clock.monotonic() == 0.0


def test_autojump_refuses_an_auto_advancing_clock() -> None:
    async def main() -> None:
        async with VirtualClock().autojump():
            pass  # pragma: no cover - refused on entry

    with pytest.raises(ConfigurationError) as info:
        anyio.run(main)
    assert info.value.parameter == "auto_advance"


def test_autojump_refuses_a_non_positive_idle_poll() -> None:
    async def main() -> None:
        async with VirtualClock(auto_advance=False).autojump(idle_poll=0):
            pass  # pragma: no cover - refused on entry

    with pytest.raises(ConfigurationError) as info:
        anyio.run(main)
    assert info.value.parameter == "idle_poll"


def test_next_deadline_skips_cancelled_timers() -> None:
    clock = VirtualClock(auto_advance=False)
    assert clock.next_deadline() is None
    early = clock.call_at(5.0, lambda: None)
    clock.call_at(9.0, lambda: None)
    early.cancel()
    assert clock.next_deadline() == 9.0


# -- ChaosPublisher ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_chaos_publisher_fails_matching_publishes_only_while_switched_on() -> None:

    clock = VirtualClock()
    bus = MemoryBus()
    outage = ChaosFault(ConnectionError("partition offline"), enabled=False)
    chaos = ChaosPublisher(
        bus, outage, where=lambda topic, event: event.key == "org:2", clock=clock
    )
    one = Event(type="org.created", key="org:1", payload={})
    two = Event(type="org.created", key="org:2", payload={})
    await chaos.publish("orgs", two)
    outage.enabled = True
    clock.advance(5.0)
    await chaos.publish("orgs", one)
    with pytest.raises(ConnectionError, match="partition offline"):
        await chaos.publish("orgs", two)
    assert [(a.at, a.key, a.injected) for a in chaos.attempts] == [
        (0.0, "org:2", False),
        (5.0, "org:1", False),
        (5.0, "org:2", True),
    ]
    assert chaos.attempts[-1].event_id == str(two.id)
    assert bus.retained("orgs") == 2
    assert "ChaosPublisher(MemoryBus" in repr(chaos)


@pytest.mark.anyio
async def test_a_chaos_publisher_without_where_applies_to_every_publish() -> None:

    bus = MemoryBus()
    chaos = ChaosPublisher(bus, ChaosFault(schedule=[True, False]))
    event = Event(type="org.created", key="org:1", payload={})
    with pytest.raises(InjectedFaultError):
        await chaos.publish("orgs", event)
    await chaos.publish("orgs", event)
    assert [a.injected for a in chaos.attempts] == [True, False]
    assert bus.retained("orgs") == 1


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [({"faults": object()}, "faults"), ({"where": 3}, "where")],
)
def test_a_misconfigured_chaos_publisher_names_the_parameter(
    kwargs: dict[str, object], parameter: str
) -> None:

    arguments: dict[str, object] = {"faults": ChaosFault(), **kwargs}
    with pytest.raises(ConfigurationError, match=parameter):
        ChaosPublisher(MemoryBus(), **arguments)  # type: ignore[arg-type]
