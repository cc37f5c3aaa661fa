"""CircuitBreaker in action: opening on failure rate, probing, slow calls, operator controls.

    python examples/policies/circuit_breaker.py

Time is a VirtualClock, so the 30-second open interval passes instantly.
"""

from __future__ import annotations

import anyio

from resilience_kit import Backoff, CircuitBreaker, CircuitOpenError, Pipeline
from resilience_kit.stores.memory import MemoryBreakerStore
from resilience_kit.testing import ChaosFault, ChaosLatency, VirtualClock
from resilience_kit.typing import StateTransition

clock = VirtualClock()


def on_transition(change: StateTransition) -> None:
    print(
        f"  [t={clock.monotonic():5.1f}s] {change.breaker}: "
        f"{change.from_state} -> {change.to_state} ({change.reason})"
    )


def failure_rate() -> None:
    print("== billing fails: the breaker opens at a 50% failure rate, then probes")
    outage = ChaosFault(ConnectionError("billing unavailable"), enabled=False)
    breaker = CircuitBreaker(
        "billing",
        failure_rate_threshold=0.5,
        window=10,
        minimum_calls=4,
        open_for=30.0,
        half_open_calls=2,
        listeners=[on_transition],
        clock=clock,
    )
    charge = breaker.wrap(outage.wrap(lambda: "charged"))

    def attempt() -> str:
        try:
            return charge()
        except ConnectionError:
            return "failed"
        except CircuitOpenError as exc:
            return f"rejected, next probe in {exc.retry_after:.0f}s"

    print(f"  call 1: {attempt()}")
    outage.enabled = True
    for n in range(2, 6):
        print(f"  call {n}: {attempt()}")
    metrics = breaker.metrics()
    print(f"  metrics: {metrics.calls} calls, failure rate {metrics.failure_rate}")
    print(f"  rejected so far: {metrics.rejected_calls}")

    outage.enabled = False  # billing recovers
    clock.advance(30.0)
    for n in range(6, 8):
        print(f"  call {n}: {attempt()}")


def growing_interval() -> None:
    print("== a dependency that keeps failing is probed less and less often")
    breaker = CircuitBreaker(
        "ledger",
        window=4,
        minimum_calls=2,
        half_open_calls=1,
        open_for=Backoff.exponential(initial=10.0, maximum=60.0, jitter="none"),
        clock=clock,
    )
    down = breaker.wrap(ChaosFault(ConnectionError("ledger down")).wrap(lambda: None))
    for _ in range(7):
        try:
            down()
        except ConnectionError:
            pass
        except CircuitOpenError as exc:
            print(f"  open: next probe in {exc.retry_after:.0f}s")
            clock.advance(exc.retry_after or 0.0)


def slow_calls() -> None:
    print("== slow successes open the breaker too")
    breaker = CircuitBreaker(
        "search",
        window=10,
        minimum_calls=3,
        slow_call_duration=2.0,
        slow_call_rate_threshold=0.5,
        listeners=[on_transition],
        clock=clock,
    )
    search = Pipeline(breaker, ChaosLatency(3.0, clock=clock)).wrap(lambda: ["result"])
    for _ in range(3):
        search()
    print(f"  slow-call rate: {breaker.metrics().slow_call_rate}")


def operator_controls() -> None:
    print("== operator controls and a shared store")
    store = MemoryBreakerStore()
    worker_a = CircuitBreaker("partner-api", store=store, clock=clock)
    worker_b = CircuitBreaker("partner-api", store=store, clock=clock)
    worker_a.force_open()
    try:
        worker_b.call(lambda: "never runs")
    except CircuitOpenError as exc:
        print(f"  worker B rejects too: {exc} (retry_after={exc.retry_after})")
    worker_a.reset()
    print(f"  after reset: A is {worker_a.state}, B is {worker_b.state}")


async def asynchronous() -> str:
    breaker = CircuitBreaker("profile", window=4, minimum_calls=2, clock=VirtualClock())

    @breaker
    async def load_profile() -> None:
        raise ConnectionError("profile service unreachable")

    for _ in range(2):
        try:
            await load_profile()
        except ConnectionError:
            pass
    try:
        await load_profile()
    except CircuitOpenError as exc:
        return str(exc)
    return "admitted"


def main() -> None:
    failure_rate()
    growing_interval()
    slow_calls()
    operator_controls()
    print("== the same breaker type guards async code, on asyncio and on trio")
    for backend in ("asyncio", "trio"):
        print(f"  -> {backend}: {anyio.run(asynchronous, backend=backend)}")


if __name__ == "__main__":
    main()
