"""Fallback in action: graceful degradation with values, handlers and async handlers.

python examples/policies/fallback.py
"""

from __future__ import annotations

import anyio

from resilience_kit import CircuitBreaker, CircuitOpenError, Fallback, Pipeline
from resilience_kit.testing import ChaosFault, VirtualClock


def static_value() -> None:
    print("== a static substitute: no recommendations rather than an error page")

    @Fallback(value=[], on=(ConnectionError, CircuitOpenError))
    def recommendations(user_id: int) -> list[str]:
        raise ConnectionError("recommender unreachable")

    print(f"  -> {recommendations(7)!r}")


def last_known_good() -> None:
    print("== last known good: serve cached entitlements while billing is down")
    cache: dict[str, dict[str, int]] = {}
    billing_down = ChaosFault(ConnectionError("billing unavailable"), enabled=False)
    breaker = CircuitBreaker("billing", window=4, minimum_calls=2, clock=VirtualClock())

    def cached(exc: BaseException | None) -> dict[str, int]:
        print(f"  fallback: {type(exc).__name__}: {exc}; serving the cached copy")
        return cache["acme"]

    @Pipeline(
        Fallback(handler=cached, on=(ConnectionError, CircuitOpenError)), breaker, billing_down
    )
    def entitlements(org: str) -> dict[str, int]:
        fresh = {"seats": 25, "projects": 10}
        cache[org] = fresh
        return fresh

    print(f"  -> fresh: {entitlements('acme')}")
    billing_down.enabled = True
    for _ in range(3):
        print(f"  -> {entitlements('acme')} (breaker: {breaker.state})")


def not_every_error() -> None:
    print("== only the chosen exceptions fall back; bugs still surface")

    @Fallback(value=0, on=ConnectionError)
    def unread_count(user_id: int) -> int:
        raise ValueError("bad user id")

    try:
        unread_count(-1)
    except ValueError as exc:
        print(f"  -> ValueError propagated: {exc}")


def bad_results() -> None:
    print("== replacing a useless result")

    @Fallback(value={"plan": "free"}, on_result=lambda plan: plan is None)
    def current_plan(org: str) -> dict[str, str] | None:
        return None  # the read model has not caught up yet

    print(f"  -> {current_plan('acme')}")


async def async_handler() -> None:
    inbox: list[str] = []

    async def in_app(exc: BaseException | None) -> str:
        inbox.append("Your invoice is ready")
        return "in-app notification"

    @Fallback(handler=in_app, on=ConnectionError)
    async def send_email(to: str) -> str:
        raise ConnectionError("SMTP server unreachable")

    print(f"  -> sent as {await send_email('ada@example.com')!r}; in-app inbox: {inbox}")


def main() -> None:
    static_value()
    last_known_good()
    not_every_error()
    bad_results()
    print("== an async handler: e-mail is down, notify in the app instead")
    for backend in ("asyncio", "trio"):
        anyio.run(async_handler, backend=backend)


if __name__ == "__main__":
    main()
