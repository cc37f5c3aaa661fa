"""Pipeline in action: Fallback, Timeout, RetryPolicy, CircuitBreaker and Bulkhead together.

    python examples/policies/pipeline.py

A fake "entitlements" service is broken on purpose by chaos policies: it is flaky, then
down, then slow, then back. Each request prints what the pipeline did. Time is a
VirtualClock, so the whole scenario takes a few virtual minutes and no real time.
"""

from __future__ import annotations

import anyio

from resilience_kit import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Pipeline,
    RetryPolicy,
    Timeout,
)
from resilience_kit.testing import ChaosFault, ChaosLatency, VirtualClock
from resilience_kit.typing import RetryEvent, StateTransition

clock = VirtualClock()


def say(message: str) -> None:
    print(f"  [t={clock.monotonic():6.1f}s] {message}")


def on_retry(event: RetryEvent) -> None:
    error = type(event.exception).__name__
    say(f"attempt {event.attempt} failed ({error}); retry in {event.delay:.1f}s")


def on_transition(change: StateTransition) -> None:
    say(f"breaker {change.from_state} -> {change.to_state} ({change.reason})")


def degraded(exc: BaseException | None) -> dict[str, int]:
    say(f"fallback after {type(exc).__name__}: serving the default plan")
    return {"seats": 1}


class Outage:
    """How many of the next calls fail: the schedule of the ChaosFault below."""

    def __init__(self) -> None:
        self.failures_left = 0

    def next_call_fails(self, call_number: int) -> bool:
        if self.failures_left > 0:
            self.failures_left -= 1
            return True
        return False


outage = Outage()
failures = ChaosFault(ConnectionError("entitlements unavailable"), schedule=outage.next_call_fails)
latency = ChaosLatency(10.0, enabled=False, clock=clock)
breaker = CircuitBreaker(
    "entitlements",
    window=10,
    minimum_calls=4,
    open_for=60.0,
    half_open_calls=1,
    listeners=[on_transition],
    clock=clock,
)

policy = Pipeline(
    Fallback(handler=degraded, on=(ConnectionError, TimeoutError, CircuitOpenError)),
    Timeout(5.0, name="request", clock=clock),
    RetryPolicy(
        attempts=3,
        on=(ConnectionError, TimeoutError),
        backoff=Backoff.exponential(initial=0.2, maximum=2.0, jitter="none"),
        before_sleep=on_retry,
        clock=clock,
    ),
    breaker,
    Timeout(1.0, name="attempt", clock=clock),
    Bulkhead(max_concurrent=10, name="entitlements"),
    latency,
    failures,
)


@policy
async def fetch_entitlements(org_id: str) -> dict[str, int]:
    return {"seats": 25}


async def request(label: str) -> None:
    print(f"-- {label}")
    result = await fetch_entitlements("acme")
    say(f"answer: {result}")


async def scenario() -> None:
    await request("healthy")
    outage.failures_left = 1
    await request("one transient error: retried")
    outage.failures_left = 1_000
    await request("the service goes down: the breaker opens, the fallback answers")
    await request("while open: rejected at once, the fallback answers")
    outage.failures_left = 0
    latency.enabled = True
    clock.advance(60.0)
    await request("a minute later it answers, but slowly: the probe times out")
    latency.enabled = False
    clock.advance(60.0)
    await request("recovered: the probe succeeds and the breaker closes")


def main() -> None:
    anyio.run(scenario)


if __name__ == "__main__":
    main()
