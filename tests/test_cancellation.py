"""Cancellation, KeyboardInterrupt and SystemExit pass through every policy untouched.

They are never retried, never counted by a breaker, never swallowed by a fallback, and
never leak a bulkhead slot.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from resilience_kit import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    Fallback,
    Pipeline,
    RetryPolicy,
    Timeout,
)
from resilience_kit.testing import ChaosFault, ChaosLatency, ChaosResult, VirtualClock
from resilience_kit.typing import Policy


def _everything_matches(exc: BaseException) -> bool:
    return True


def _make(name: str, clock: VirtualClock, sync: bool = False) -> list[Policy]:
    """The policy (or, for "pipeline", every policy in order) to test."""
    factories: dict[str, Callable[[], Policy]] = {
        # The broadest filters: even these must not catch a cancellation.
        "fallback": lambda: Fallback(value="swallowed", on=_everything_matches),
        "timeout": lambda: Timeout(10, clock=clock),
        "retry": lambda: RetryPolicy(
            attempts=5, on=_everything_matches, backoff=Backoff.constant(1), clock=clock
        ),
        "breaker": lambda: CircuitBreaker(f"cancel-{name}", window=1, minimum_calls=1, clock=clock),
        "bulkhead": lambda: Bulkhead(1),
        "chaos_latency": lambda: ChaosLatency(1, clock=clock),
        "chaos_fault": lambda: ChaosFault(rate=0.0),
        "chaos_result": lambda: ChaosResult("replaced", rate=0.0),
    }
    if name != "pipeline":
        return [factories[name]()]
    return [make() for key, make in factories.items() if not (sync and key == "timeout")]


POLICIES = [
    "fallback",
    "timeout",
    "retry",
    "breaker",
    "bulkhead",
    "chaos_latency",
    "chaos_fault",
    "chaos_result",
    "pipeline",
]


def _check_untouched(policies: list[Policy]) -> None:
    for policy in policies:
        if isinstance(policy, CircuitBreaker):
            metrics = policy.metrics()
            assert metrics.calls == 0  # not counted as a failure, nor as a success
            assert metrics.state is CircuitState.CLOSED
        if isinstance(policy, Bulkhead):
            assert (policy.active, policy.waiting) == (0, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("name", POLICIES)
async def test_outer_cancellation_propagates(name: str) -> None:
    clock = VirtualClock()
    policies = _make(name, clock)
    calls: list[int] = []

    @Pipeline(*policies)
    async def work() -> str:
        calls.append(1)
        outer.cancel()
        await anyio.sleep_forever()
        return "never"  # pragma: no cover

    with anyio.CancelScope() as outer:
        result = await work()
        pytest.fail(f"the cancellation was swallowed, got {result!r}")  # pragma: no cover
    assert outer.cancelled_caught
    assert calls == [1]  # not retried
    _check_untouched(policies)


@pytest.mark.anyio
@pytest.mark.parametrize("name", POLICIES)
async def test_task_group_cancellation_propagates(name: str) -> None:
    clock = VirtualClock()
    policies = _make(name, clock)
    started = anyio.Event()
    calls: list[int] = []
    outcome: list[str] = []

    @Pipeline(*policies)
    async def work() -> str:
        calls.append(1)
        started.set()
        await anyio.sleep_forever()
        return "never"  # pragma: no cover

    async def caller() -> None:
        try:
            outcome.append(await work())  # pragma: no cover - must not return
        finally:
            outcome.append("unwound")

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await started.wait()
        tg.cancel_scope.cancel()
    assert outcome == ["unwound"]
    assert calls == [1]
    _check_untouched(policies)


@pytest.mark.anyio
async def test_cancellation_during_a_retry_backoff_stops_the_retries() -> None:
    clock = VirtualClock(auto_advance=False)
    calls: list[int] = []

    @RetryPolicy(attempts=5, on=ConnectionError, backoff=Backoff.constant(10), clock=clock)
    async def flaky() -> None:
        calls.append(1)
        raise ConnectionError

    async with anyio.create_task_group() as tg:
        tg.start_soon(flaky)
        await anyio.wait_all_tasks_blocked()  # sleeping before attempt 2
        tg.cancel_scope.cancel()
    clock.advance(100)
    assert calls == [1]


@pytest.mark.anyio
async def test_a_cancelled_half_open_probe_gives_its_permit_back() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker(
        "probe", window=1, minimum_calls=1, half_open_calls=1, open_for=10, clock=clock
    )

    @breaker
    async def call(fail: bool, cancel: bool) -> str:
        if cancel:
            outer.cancel()
            await anyio.sleep_forever()
        if fail:
            raise ConnectionError
        return "ok"

    with pytest.raises(ConnectionError):
        await call(True, False)
    assert breaker.state is CircuitState.OPEN
    clock.advance(10)
    with anyio.CancelScope() as outer:
        await call(False, True)  # the only probe is cancelled: it decides nothing
    assert outer.cancelled_caught
    assert breaker.state is CircuitState.HALF_OPEN
    assert await call(False, False) == "ok"  # admitted: the permit came back
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("name", [name for name in POLICIES if name != "timeout"])
def test_sync_interrupts_propagate(name: str, interrupt: type[BaseException]) -> None:
    clock = VirtualClock()
    policies = _make(name, clock, sync=True)
    calls: list[int] = []

    @Pipeline(*policies)
    def work() -> str:
        calls.append(1)
        raise interrupt

    with pytest.raises(interrupt):
        work()
    assert calls == [1]
    assert clock.sleeps == ([1.0] if name in ("chaos_latency", "pipeline") else [])
    _check_untouched(policies)
