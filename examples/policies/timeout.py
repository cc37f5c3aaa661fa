"""Timeout in action: cancelling hung calls, per-attempt limits, refusing sync functions.

    python examples/policies/timeout.py

Time is a VirtualClock: a call that "hangs" for a minute is cancelled at the deadline
without any real waiting.
"""

from __future__ import annotations

import anyio

from resilience_kit import Backoff, Pipeline, RetryPolicy, Timeout, TimeoutExceededError
from resilience_kit.testing import ChaosLatency, VirtualClock


async def hung_call() -> None:
    print("== a hung call is cancelled at the deadline; its cleanup still runs")
    clock = VirtualClock()

    @Timeout(2.0, name="validate-token", clock=clock)
    async def validate_token() -> bool:
        try:
            await clock.asleep(60.0)  # the identity service never answers
            return True
        finally:
            print(f"  cleanup ran at t={clock.monotonic():.1f}s")

    try:
        await validate_token()
    except TimeoutExceededError as exc:
        print(f"  -> {exc}; it is a TimeoutError too: {isinstance(exc, TimeoutError)}")


async def per_attempt() -> None:
    print("== per-attempt timeout inside a retry, overall timeout outside it")
    clock = VirtualClock()
    first_attempt_hangs = ChaosLatency(30.0, schedule=[True], clock=clock)

    @Pipeline(
        Timeout(5.0, name="whole-operation", clock=clock),
        RetryPolicy(attempts=3, on=TimeoutError, backoff=Backoff.constant(0.5), clock=clock),
        Timeout(1.0, name="per-attempt", clock=clock),
        first_attempt_hangs,
    )
    async def lookup() -> str:
        return "org acme"

    result = await lookup()
    print(f"  -> {result!r} at t={clock.monotonic():.1f}s (1 s lost to the hung attempt)")


async def fast_enough() -> None:
    print("== a call that finishes in time is untouched")
    clock = VirtualClock()

    @Timeout(2.0, clock=clock)
    async def quick() -> str:
        await clock.asleep(0.5)
        return "done"

    print(f"  -> {await quick()!r} at t={clock.monotonic():.1f}s")


def sync_refused() -> None:
    print("== a synchronous function cannot be interrupted, so Timeout refuses it")

    def blocking() -> None:
        pass

    try:
        Timeout(1.0)(blocking)
    except TypeError as exc:
        print(f"  -> TypeError: {exc}")


async def scenes() -> None:
    await hung_call()
    await per_attempt()
    await fast_enough()


def main() -> None:
    for backend in ("asyncio", "trio"):
        print(f"######## on {backend}")
        anyio.run(scenes, backend=backend)
    sync_refused()


if __name__ == "__main__":
    main()
