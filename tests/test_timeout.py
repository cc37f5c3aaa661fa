from __future__ import annotations

import inspect
import math

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit import (
    ConfigurationError,
    Pipeline,
    ResilienceError,
    RetryPolicy,
    Timeout,
    TimeoutExceededError,
)
from resilience_kit.clock import SystemClock
from resilience_kit.testing import VirtualClock, use_clock

pytestmark = pytest.mark.anyio


async def test_expiry_raises_timeout_exceeded_error_at_the_virtual_deadline() -> None:
    clock = VirtualClock()
    cleaned_up_at: list[float] = []

    @Timeout(2, name="db", clock=clock)
    async def slow() -> str:
        try:
            await clock.asleep(10)
        finally:
            cleaned_up_at.append(clock.monotonic())
        return "finished"  # pragma: no cover - the sleep is cancelled

    with pytest.raises(TimeoutExceededError) as info:
        await slow()
    assert clock.monotonic() == 2.0
    assert cleaned_up_at == [2.0]  # the finally block ran, at the deadline
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, ResilienceError)
    assert (err.name, err.seconds) == ("db", 2.0)
    assert "'db' timed out after 2.0s" in str(err)


async def test_the_default_name() -> None:
    clock = VirtualClock()
    with pytest.raises(TimeoutExceededError) as info:
        await Timeout(1, clock=clock).acall(clock.asleep, 5)
    assert info.value.name == "timeout"
    assert info.value.seconds == 1.0


async def test_a_fast_call_returns_its_value_and_keeps_its_arguments() -> None:
    clock = VirtualClock()

    @Timeout(2, clock=clock)
    async def add(a: int, b: int, *, scale: int = 1) -> int:
        await clock.asleep(1.5)
        return (a + b) * scale

    assert await add(1, 2, scale=10) == 30
    assert clock.monotonic() == 1.5


async def test_each_call_has_its_own_deadline_and_a_finished_call_leaves_no_timer() -> None:
    clock = VirtualClock()
    timeout = Timeout(2, clock=clock)

    @timeout
    async def quick() -> None:
        await clock.asleep(1)

    for _ in range(3):
        await quick()  # 1s each: three calls take 3s but none reaches its own deadline
    assert clock.monotonic() == 3.0
    # Sleeping past the old deadlines outside the Timeout cancels nothing.
    await clock.asleep(10)
    assert clock.monotonic() == 13.0


async def test_system_clock_fast_path_returns_the_value() -> None:
    @Timeout(60)
    async def quick(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x * 2

    assert await quick(21) == 42


async def test_system_clock_expiry() -> None:
    # A microsecond limit: the deadline passes at once, no real waiting.
    @Timeout(1e-6, name="tiny")
    async def forever() -> None:
        await anyio.sleep_forever()

    with pytest.raises(TimeoutExceededError) as info:
        await forever()
    assert info.value.name == "tiny"
    assert info.value.seconds == 1e-6


async def test_explicit_system_clock_is_accepted() -> None:
    @Timeout(1e-6, clock=SystemClock())
    async def forever() -> None:
        await anyio.sleep_forever()

    with pytest.raises(TimeoutExceededError):
        await forever()


async def test_a_system_clock_subclass_uses_the_event_loop_deadline() -> None:
    class NamedClock(SystemClock):
        def __repr__(self) -> str:
            return "NamedClock()"

    timeout = Timeout(1e-6, clock=NamedClock())  # accepted here, so it must work below
    with pytest.raises(TimeoutExceededError):
        await timeout.acall(anyio.sleep_forever)


async def test_default_clock_override_is_followed() -> None:
    clock = VirtualClock()
    timeout = Timeout(3)  # built without a clock: use_clock decides at call time

    with use_clock(clock), pytest.raises(TimeoutExceededError):
        await timeout.acall(clock.asleep, 100)
    assert clock.monotonic() == 3.0


async def test_a_default_clock_without_timers_is_refused_at_call_time() -> None:
    class PlainClock:
        def monotonic(self) -> float:
            return 0.0

        def time(self) -> float:
            return 0.0

        def sleep(self, seconds: float) -> None:
            pass

        async def asleep(self, seconds: float) -> None:
            pass

    with use_clock(PlainClock()), pytest.raises(TypeError, match="call_at"):
        await Timeout(1).acall(anyio.lowlevel.checkpoint)


async def test_outer_cancellation_propagates_as_cancellation() -> None:
    clock = VirtualClock()
    finished: list[str] = []

    @Timeout(5, clock=clock)
    async def work() -> None:
        try:
            outer.cancel()
            await clock.asleep(1)
        finally:
            finished.append("cleanup")

    with anyio.CancelScope() as outer:
        await work()
        pytest.fail("the outer scope was cancelled")  # pragma: no cover
    assert outer.cancelled_caught  # it was a cancellation, not TimeoutExceededError
    assert finished == ["cleanup"]


async def test_outer_cancellation_at_the_same_instant_as_the_deadline_stays_cancellation() -> None:
    clock = VirtualClock(auto_advance=False)
    outcome: list[object] = []
    scopes: list[anyio.CancelScope] = []

    @Timeout(2, clock=clock)
    async def slow() -> None:
        await clock.asleep(10)

    async def caller() -> None:
        with anyio.CancelScope() as outer:
            scopes.append(outer)
            try:
                await slow()
            except TimeoutExceededError as exc:  # pragma: no cover - the bug this guards
                outcome.append(exc)
        outcome.append(outer.cancelled_caught)

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        clock.advance(2)  # the Timeout's deadline...
        scopes[0].cancel()  # ...and the outer cancellation, before the task runs again
    assert outcome == [True]


async def test_manual_clock_deadline_fires_when_another_task_advances_time() -> None:
    clock = VirtualClock(auto_advance=False)
    results: list[object] = []

    @Timeout(2, clock=clock)
    async def slow() -> None:
        await clock.asleep(10)

    async def caller() -> None:
        try:
            await slow()
        except TimeoutExceededError as exc:
            results.append((clock.monotonic(), exc.seconds))

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        clock.advance(1.5)
        await anyio.wait_all_tasks_blocked()
        assert results == []  # not yet
        clock.advance(0.5)
    assert results == [(2.0, 2.0)]


async def test_exceptions_of_the_call_propagate_unchanged() -> None:
    clock = VirtualClock()
    error = ConnectionError("reset")

    @Timeout(2, clock=clock)
    async def broken() -> None:
        raise error

    with pytest.raises(ConnectionError) as info:
        await broken()
    assert info.value is error


async def test_nested_timeouts_the_shorter_one_wins() -> None:
    clock = VirtualClock()

    @Timeout(10, name="outer", clock=clock)
    @Timeout(3, name="inner", clock=clock)
    async def slow() -> None:
        await clock.asleep(100)

    with pytest.raises(TimeoutExceededError) as info:
        await slow()
    assert info.value.name == "inner"
    assert clock.monotonic() == 3.0

    @Timeout(2, name="outer", clock=clock)
    @Timeout(30, name="inner", clock=clock)
    async def slower() -> None:
        await clock.asleep(100)

    with pytest.raises(TimeoutExceededError) as info:
        await slower()
    assert info.value.name == "outer"
    assert clock.monotonic() == 5.0


async def test_timeout_inside_a_retry_is_retried_as_a_timeout_error() -> None:
    clock = VirtualClock()
    calls: list[float] = []

    @RetryPolicy(attempts=3, on=TimeoutError, clock=clock)
    @Timeout(1, clock=clock)
    async def slow_then_fast() -> str:
        calls.append(clock.monotonic())
        if len(calls) < 3:
            await clock.asleep(5)
        return "ok"

    assert await slow_then_fast() == "ok"
    assert len(calls) == 3


async def test_decorated_function_keeps_metadata_and_is_a_coroutine_function() -> None:
    async def fetch(user_id: int) -> str:
        """Fetch a user."""
        return str(user_id)

    wrapped = Timeout(1)(fetch)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == "Fetch a user."
    assert wrapped.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(wrapped)
    assert inspect.signature(wrapped) == inspect.signature(fetch)


def test_decorating_a_sync_function_raises_type_error_at_decoration() -> None:
    def blocking() -> None:  # pragma: no cover - never called
        pass

    with pytest.raises(TypeError, match="cannot interrupt the synchronous function"):
        Timeout(1)(blocking)


def test_decorating_a_sync_function_inside_a_pipeline_raises_type_error() -> None:
    def blocking() -> None:  # pragma: no cover - never called
        pass

    with pytest.raises(TypeError, match="cannot interrupt"):
        Pipeline(RetryPolicy(attempts=2), Timeout(1))(blocking)


def test_call_on_a_sync_function_raises_type_error() -> None:
    called: list[int] = []
    with pytest.raises(TypeError, match="cannot interrupt"):
        Timeout(1).call(lambda: called.append(1))
    assert called == []


def test_call_on_an_async_function_points_to_acall() -> None:
    async def work() -> None:  # pragma: no cover - never awaited
        pass

    with pytest.raises(TypeError, match="acall"):
        Timeout(1).call(work)


@pytest.mark.parametrize("seconds", [0, -1, -0.5, math.nan, math.inf, "1", None, True])
def test_bad_seconds_are_a_configuration_error(seconds: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Timeout(seconds)  # type: ignore[arg-type]
    assert info.value.parameter == "seconds"


def test_a_clock_without_timers_is_a_configuration_error() -> None:
    class PlainClock:
        def monotonic(self) -> float:  # pragma: no cover
            return 0.0

    with pytest.raises(ConfigurationError) as info:
        Timeout(1, clock=PlainClock())  # type: ignore[arg-type]
    assert info.value.parameter == "clock"


def test_repr_and_attributes() -> None:
    timeout = Timeout(2, name="db")
    assert timeout.seconds == 2.0
    assert isinstance(timeout.seconds, float)
    assert timeout.name == "db"
    assert repr(timeout) == "Timeout(2.0, name='db')"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None)
@given(
    limit=st.floats(min_value=0.001, max_value=1e4),
    duration=st.floats(min_value=0, max_value=1e4),
)
def test_property_the_call_ends_at_the_earlier_of_its_duration_and_the_limit(
    backend: str, limit: float, duration: float
) -> None:
    async def scenario() -> bool:
        clock = VirtualClock()
        try:
            await Timeout(limit, clock=clock).acall(clock.asleep, duration)
        except TimeoutExceededError:
            assert clock.monotonic() == limit
            return True
        assert clock.monotonic() == duration
        return False

    timed_out = anyio.run(scenario, backend=backend)
    assert timed_out == (duration >= limit)
