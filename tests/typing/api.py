"""Type checks of the public API: mypy runs this file (see pyproject's [tool.mypy] files).

Nothing here runs at test time; the assertions are for the type checker.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from typing_extensions import assert_type

from resilience_kit import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Fallback,
    Pipeline,
    RetryPolicy,
    Timeout,
)
from resilience_kit.testing import ChaosFault, VirtualClock

retry = RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.exponential())
breaker = CircuitBreaker("billing")


@retry
def read_config(path: str, *, strict: bool = False) -> bytes:
    return path.encode()


@retry
async def fetch(org_id: str) -> dict[str, int]:
    return {org_id: 1}


assert_type(read_config("x", strict=True), bytes)


async def use_fetch() -> None:
    assert_type(await fetch("org"), dict[str, int])
    pending: Coroutine[Any, Any, dict[str, int]] = fetch("org")
    pending.close()
    assert_type(await charge(1), str)
    assert_type(await names(), list[str])
    assert_type(await retry.acall(fetch, "org"), dict[str, int])


@Pipeline(Timeout(2.0), retry, breaker, Bulkhead(4))
async def charge(amount: int) -> str:
    return str(amount)


@Fallback(value=None, on=CircuitOpenError)
def price(sku: str) -> float:
    return 1.0


assert_type(price("a"), float | None)


@Fallback(handler=lambda exc: [], on=ConnectionError)
async def names() -> list[str]:
    return ["a"]


assert_type(retry.call(read_config, "p"), bytes)
assert_type(breaker.state, CircuitState)
assert_type(VirtualClock().monotonic(), float)


@ChaosFault(ConnectionError("x"), rate=0.5)
def ping() -> str:
    return "pong"


assert_type(ping(), str)


async def use_attempts() -> int:
    async for attempt in retry.attempts():
        with attempt:
            return attempt.number
    return 0


class Service:
    @breaker
    def method(self, x: int) -> int:
        return x


assert_type(Service().method(1), int)
