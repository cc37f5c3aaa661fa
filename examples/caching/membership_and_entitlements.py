"""The Workflow service's two caches when things go wrong: memberships and entitlements.

- Memberships fail closed: a 15-minute ttl, "reject on cache miss", and invalidation on
  MemberRemoved - including the race where a slow load started before the removal.
- Entitlements fail open: a 1-hour ttl; while Billing is down a circuit breaker stops
  the calls and the cache serves the last known good entitlements (or a safe default),
  with a warning.

Time is a VirtualClock, so hours pass in an instant and the output is the same every run.

    python examples/caching/membership_and_entitlements.py
    python examples/caching/membership_and_entitlements.py --backend trio
"""

from __future__ import annotations

import argparse

import anyio

from resilience_kit import CircuitBreaker
from resilience_kit.caching import (
    CacheLoadError,
    CacheLookup,
    FailClosed,
    FailOpen,
    FallbackEvent,
    PolicyCache,
)
from resilience_kit.testing import VirtualClock
from resilience_kit.typing import StateTransition

clock = VirtualClock()


def say(message: str) -> None:
    print(f"  [t={clock.monotonic():8.1f}s] {message}")


def scene(title: str) -> None:
    print(f"\n== {title}")


def show(what: str, found: CacheLookup[object]) -> None:
    age = "-" if found.age is None else f"{found.age:.0f}s old"
    error = f"; loader error: {type(found.error).__name__}" if found.error else ""
    say(f"{what} -> {found.value!r} [{found.served}, {age}: {found.reason}{error}]")


class OrganizationService:
    """Answers membership checks; a check reads the database, then takes a while to return."""

    def __init__(self) -> None:
        self.members = {("acme", "ann"), ("acme", "bob")}
        self.up = True
        self.in_flight: list[anyio.Event] = []

    async def is_member(self, key: tuple[str, str]) -> bool:
        if not self.up:
            raise ConnectionError("organization service unreachable")
        answer = key in self.members  # the read happens now...
        done = anyio.Event()
        self.in_flight.append(done)
        await done.wait()  # ...the answer arrives when the test network lets it
        return answer

    def deliver(self) -> None:
        for done in self.in_flight:
            done.set()
        self.in_flight.clear()


async def member_removed_scene() -> None:
    scene("MemberRemoved arrives while a membership check is still loading")
    org = OrganizationService()
    memberships = PolicyCache(
        org.is_member, ttl=15 * 60, policy=FailClosed(), clock=clock, name="memberships"
    )
    naive: dict[tuple[str, str], bool] = {}  # what a plain dict-plus-ttl cache would do
    ann = ("acme", "ann")
    results: list[CacheLookup[bool]] = []

    async def check() -> None:
        results.append(await memberships.lookup(ann))

    async def naive_check() -> None:
        naive[ann] = await org.is_member(ann)

    async with anyio.create_task_group() as tg:
        tg.start_soon(check)
        tg.start_soon(naive_check)
        await anyio.wait_all_tasks_blocked()
        say("two checks of ann's membership are in flight; both read 'member'")
        org.members.discard(ann)
        say("ann is removed from acme; the MemberRemoved event invalidates the cache")
        await memberships.invalidate(ann)
        org.deliver()  # the stale answers arrive now
        await anyio.wait_all_tasks_blocked()
        say(f"the naive cache stored the stale answer: ann is member = {naive[ann]}")
        org.deliver()  # the PolicyCache's check loaded again after the invalidation
    show("PolicyCache: is ann a member?", results[0])
    async with anyio.create_task_group() as tg:
        tg.start_soon(check)
        await anyio.wait_all_tasks_blocked()
    show("asked again", results[1])

    scene("The organization service goes down: fresh answers only, then reject")
    async with anyio.create_task_group() as tg:
        tg.start_soon(memberships.lookup, ("acme", "bob"))
        await anyio.wait_all_tasks_blocked()
        org.deliver()
    org.up = False
    clock.advance(14 * 60)
    show("is bob a member? (cached 14 min ago)", await memberships.lookup(("acme", "bob")))
    clock.advance(60)
    try:
        await memberships.get(("acme", "bob"))
    except CacheLoadError as exc:
        say(f"15 min: expired, reload failed -> denied: {exc} (cause: {exc.__cause__!r})")
    stats = memberships.stats()
    say(f"memberships: {stats.hits} hits, {stats.misses} misses, {stats.denials} denial(s)")


async def billing_down_scene() -> None:
    scene("Billing goes down: entitlements fail open, the breaker spares Billing")
    billing_up = True
    billing_calls = 0

    async def fetch_entitlements(org: str) -> dict[str, int]:
        nonlocal billing_calls
        billing_calls += 1
        if not billing_up:
            raise ConnectionError("billing unreachable")
        return {"seats": 50, "workflows": 200}

    def on_transition(event: StateTransition) -> None:
        say(f"breaker {event.breaker!r}: {event.from_state} -> {event.to_state} ({event.reason})")

    def warn(event: FallbackEvent) -> None:
        age = "never loaded" if event.age is None else f"{event.age / 3600:.1f} h old"
        say(f"WARNING {event.cache}: serving {event.served} entitlements for {event.key!r} ({age})")

    breaker = CircuitBreaker(
        "billing",
        window=10,
        minimum_calls=3,
        open_for=60.0,
        listeners=[on_transition],
        clock=clock,
    )
    entitlements = PolicyCache(
        breaker(fetch_entitlements),
        ttl=3600,
        policy=FailOpen({"seats": 5, "workflows": 10}, on_fallback=warn),
        clock=clock,
        name="entitlements",
    )
    show("acme's entitlements", await entitlements.lookup("acme"))
    billing_up = False
    clock.advance(2 * 3600)
    say("two hours later Billing is down and acme's entitlements have expired")
    for attempt in range(4):
        show(f"request {attempt + 1} for acme", await entitlements.lookup("acme"))
    show("a new organization", await entitlements.lookup("newco"))
    say(f"Billing was called {billing_calls} times for 6 requests")
    billing_up = True
    clock.advance(60)
    say("Billing is back; the breaker's open interval has passed")
    show("acme's entitlements", await entitlements.lookup("acme"))
    stats = entitlements.stats()
    say(
        f"entitlements: {stats.loads} loads, {stats.load_failures} failed, "
        f"{stats.fail_open_serves} fail-open serves"
    )


async def main() -> None:
    await member_removed_scene()
    await billing_down_scene()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    anyio.run(main, backend=parser.parse_args().backend)
