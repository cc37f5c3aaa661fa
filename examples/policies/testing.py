"""The testing tools in action: virtual time, switches and fault injection.

python examples/policies/testing.py
"""

from __future__ import annotations

import random
import time

import anyio

from resilience_kit import Backoff, CircuitBreaker, RetryPolicy
from resilience_kit.testing import (
    ChaosFault,
    ChaosLatency,
    ChaosResult,
    VirtualClock,
    no_wait,
    use_clock,
)


def down() -> None:
    raise ConnectionError("down")


def virtual_clock() -> None:
    print("== VirtualClock: waits are instant and recorded")
    clock = VirtualClock()
    retry = RetryPolicy(
        attempts=5,
        on=ConnectionError,
        backoff=Backoff.exponential(initial=1.0, maximum=30.0, jitter="none"),
        clock=clock,
    )
    started = time.perf_counter()
    try:
        retry.call(down)
    except ConnectionError:
        pass
    real = time.perf_counter() - started
    virtual = clock.monotonic()
    print(f"  sleeps: {clock.sleeps}: {virtual:.0f} virtual seconds in {real * 1000:.1f} ms")

    breaker = CircuitBreaker(
        "billing", window=2, minimum_calls=2, open_for=60.0, half_open_calls=1, clock=clock
    )
    for _ in range(2):
        try:
            breaker.call(down)
        except ConnectionError:
            pass
    print(f"  breaker: {breaker.state}; advancing the clock by 60 s")
    clock.advance(60.0)
    breaker.call(lambda: None)
    print(f"  breaker after a successful probe: {breaker.state}")


def switches() -> None:
    print("== use_clock and no_wait: for policies built where a test cannot reach")
    built_at_import_time = RetryPolicy(
        attempts=3, on=ConnectionError, backoff=Backoff.constant(10.0)
    )

    clock = VirtualClock()
    with use_clock(clock):
        try:
            built_at_import_time.call(down)
        except ConnectionError:
            pass
    print(f"  use_clock: the policy slept {clock.sleeps} on the virtual clock")

    started = time.perf_counter()
    with no_wait():
        try:
            built_at_import_time.call(down)
        except ConnectionError:
            pass
    print(f"  no_wait: 3 attempts, 20 s of backoff skipped in {time.perf_counter() - started:.3f}s")


def chaos() -> None:
    print("== fault injection: on a schedule, at a seeded rate, switchable at run time")
    scheduled = ChaosFault(ConnectionError("injected"), schedule=[True, False, True])
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append(scheduled.call(lambda: "ok"))
        except ConnectionError:
            outcomes.append("fault")
    print(f"  schedule [True, False, True]: {outcomes}")

    rng = random.Random(7)
    sometimes = ChaosFault(ConnectionError("injected"), rate=0.2, rand=rng.random)
    for _ in range(100):
        try:
            sometimes.call(lambda: None)
        except ConnectionError:
            pass
    print(f"  rate 0.2 over 100 calls (seeded): {sometimes.injected} faults")
    sometimes.enabled = False
    sometimes.call(lambda: None)
    print(f"  switched off: still {sometimes.injected} faults")

    clock = VirtualClock()
    slow = ChaosLatency(2.5, clock=clock)
    print(f"  ChaosLatency: {slow.call(lambda: 'done')!r} at t={clock.monotonic()}s")
    stale = ChaosResult(value={"plan": "free"})
    print(f"  ChaosResult: {stale.call(lambda: {'plan': 'pro'})}")


async def concurrent() -> list[str]:
    clock = VirtualClock(auto_advance=False)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.asleep(seconds)
        woke.append(f"{name}@{clock.monotonic():.0f}s")

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "slow", 5.0)
        tg.start_soon(sleeper, "fast", 1.0)
        await anyio.wait_all_tasks_blocked()
        clock.advance(1.0)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.0)
    return woke


def main() -> None:
    virtual_clock()
    switches()
    chaos()
    print("== auto_advance=False: concurrent sleepers wake in order as the test advances time")
    for backend in ("asyncio", "trio"):
        print(f"  {backend}: {anyio.run(concurrent, backend=backend)}")


if __name__ == "__main__":
    main()
