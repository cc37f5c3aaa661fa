"""RetryPolicy in action: backoff, give-ups, Retry-After, result predicates, budgets.

    python examples/policies/retry.py

Time is a VirtualClock: every wait is instant and recorded, so the script runs in
milliseconds and prints the same thing every time.
"""

from __future__ import annotations

import anyio

from resilience_kit import Backoff, RetryBudget, RetryExhaustedError, RetryPolicy
from resilience_kit.testing import ChaosFault, VirtualClock
from resilience_kit.typing import RetryEvent


def report(event: RetryEvent) -> None:
    cause = type(event.exception).__name__ if event.exception else f"result {event.result!r}"
    print(f"  attempt {event.attempt} failed ({cause}); waiting {event.delay:.2f}s")


def transient_failures() -> None:
    print("== a flaky dependency: two failures, then success")
    clock = VirtualClock()
    flaky = ChaosFault(ConnectionError("connection reset"), schedule=[True, True])
    retry = RetryPolicy(
        attempts=4,
        on=ConnectionError,
        backoff=Backoff.exponential(initial=0.5, maximum=4.0, jitter="none"),
        before_sleep=report,
        clock=clock,
    )
    result = retry.call(flaky.wrap(lambda: "profile loaded"))
    print(f"  -> {result!r} after {clock.monotonic():.2f} virtual seconds")


def giving_up() -> None:
    print("== attempts run out: the last exception propagates unchanged")
    retry = RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none(), before_sleep=report)
    calls = 0

    def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"refused (call {calls})")

    try:
        retry.call(down)
    except ConnectionError as exc:
        print(f"  -> caught ConnectionError: {exc}")

    print("== a non-retryable error is not retried at all")
    try:
        retry.call(int, "not a number")
    except ValueError as exc:
        print(f"  -> ValueError at once: {exc}")


class Throttled(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429 Too Many Requests (Retry-After: {retry_after})")
        self.retry_after = retry_after


def retry_after() -> None:
    print("== the server says when to come back: Retry-After is honoured")
    clock = VirtualClock()
    replies = iter([Throttled(5.0), "accepted"])

    def submit() -> str:
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    retry = RetryPolicy(
        attempts=3, on=Throttled, backoff=Backoff.constant(0.1), before_sleep=report, clock=clock
    )
    print(f"  -> {retry.call(submit)!r}; waits: {clock.sleeps}")


def result_predicate() -> None:
    print("== retrying on a result: RetryExhaustedError only when results run out")
    retry = RetryPolicy(
        attempts=3, retry_if_result=lambda status: status >= 500, backoff=Backoff.none()
    )
    try:
        retry.call(lambda: 503)
    except RetryExhaustedError as exc:
        print(f"  -> {exc}")


def budget() -> None:
    print("== a shared retry budget stops a retry storm")
    clock = VirtualClock()
    shared = RetryBudget(ratio=0.1, min_retries_per_second=0.0, clock=clock)
    outage = ChaosFault(ConnectionError("database down"))
    policies = [
        RetryPolicy(
            attempts=5, on=ConnectionError, backoff=Backoff.none(), budget=shared, clock=clock
        )
        for _ in range(3)
    ]
    for _ in range(10):
        for policy in policies:
            try:
                policy.call(outage.wrap(lambda: None))
            except ConnectionError:
                pass
    calls, retries = shared.snapshot()
    print(f"  -> {calls} calls, {retries} retries allowed ({outage.injected} attempts, not 150)")


def block_of_code() -> None:
    print("== retrying a block of code")
    retry = RetryPolicy(attempts=3, on=KeyError, backoff=Backoff.none())
    warm: dict[str, str] = {}
    for attempt in retry.attempts():
        with attempt:
            print(f"  attempt {attempt.number}")
            if attempt.number == 1:
                warm["token"] = "abc"
                raise KeyError("cache not warm yet")
            value = warm["token"]
    print(f"  -> got {value!r}")


async def asynchronous() -> str:
    clock = VirtualClock()
    flaky = ChaosFault(TimeoutError("slow upstream"), schedule=[True])

    @RetryPolicy(attempts=3, on=TimeoutError, backoff=Backoff.constant(1.0), clock=clock)
    @flaky
    async def fetch() -> str:
        return "fetched"

    return f"{await fetch()} after {clock.monotonic():.1f}s"


def main() -> None:
    transient_failures()
    giving_up()
    retry_after()
    result_predicate()
    budget()
    block_of_code()
    print("== the same policy on async code, on asyncio and on trio")
    for backend in ("asyncio", "trio"):
        print(f"  -> {backend}: {anyio.run(asynchronous, backend=backend)}")


if __name__ == "__main__":
    main()
