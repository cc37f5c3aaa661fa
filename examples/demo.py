"""The primitives of resilience-kit under injected faults.

Each scene puts a policy in front of a fake dependency that the testing tools break on
purpose (ChaosFault, ChaosLatency), and prints what the policy did. Time is a
VirtualClock, so backoffs, open breakers and timeouts play out in simulated seconds and
the whole demo runs in about a second, with the same output every time. The messaging
scenes run on the embedded defaults: an outbox in a SQLite file (in a temporary
directory) and the in-memory bus, with a broker that drops and duplicates messages.

    python examples/demo.py                  # on asyncio
    python examples/demo.py --backend trio   # the same policies on trio
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import anyio

from resilience_kit import (
    Backoff,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Pipeline,
    RetryBudget,
    RetryPolicy,
    Timeout,
    TimeoutExceededError,
)
from resilience_kit.messaging import (
    DeadLetterFilter,
    DeadLetterQueue,
    Event,
    Inbox,
    Outbox,
    OutboxRelay,
    ResilientConsumer,
)
from resilience_kit.stores.sqlite import SQLiteStore
from resilience_kit.testing import ChaosFault, ChaosLatency, VirtualClock
from resilience_kit.transports import MemoryBus
from resilience_kit.typing import RetryEvent, StateTransition

clock = VirtualClock()


def say(message: str) -> None:
    print(f"  [t={clock.monotonic():7.2f}s] {message}")


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``3 attempts``, ``1 attempt``: numbers read as a person writes them."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def scene(title: str) -> None:
    print(f"\n== {title}")


def on_retry(event: RetryEvent) -> None:
    error = type(event.exception).__name__ if event.exception else "bad result"
    say(f"attempt {event.attempt} failed ({error}); retrying in {event.delay:.2f}s")


def on_transition(event: StateTransition) -> None:
    change = f"{event.from_state.value} -> {event.to_state.value}"
    say(f"breaker {event.breaker}: {change} ({event.reason})")


async def retry_scene() -> None:
    scene("RetryPolicy: the inventory service drops two connections, then answers")
    drops = ChaosFault(ConnectionResetError("connection reset"), schedule=[True, True])
    retry = RetryPolicy(
        attempts=4,
        on=ConnectionError,
        backoff=Backoff.exponential(initial=0.5, maximum=5.0, jitter="none"),
        before_sleep=on_retry,
        clock=clock,
        name="inventory",
    )

    @retry
    @drops
    async def stock(sku: str) -> int:
        return 42

    say(f"stock('A-1') = {await stock('A-1')} after {drops.injected} injected faults")

    scene("RetryPolicy: a throttled API says 'retry after 3 s'; the hint beats the backoff")

    class Throttled(Exception):
        retry_after = 3.0

    throttle = ChaosFault(Throttled("429 Too Many Requests"), schedule=[True])

    @RetryPolicy(
        attempts=3, on=Throttled, backoff=Backoff.constant(0.1), clock=clock, before_sleep=on_retry
    )
    @throttle
    async def search(query: str) -> list[str]:
        return [query.upper()]

    say(f"search('kafka') = {await search('kafka')}")


async def budget_scene() -> None:
    scene("RetryBudget: during an outage, retries stay capped at 20% of calls")
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, window=10.0, clock=clock)
    outage = ChaosFault(ConnectionError("database is down"))
    retry = RetryPolicy(
        attempts=3, on=ConnectionError, backoff=Backoff.none(), budget=budget, clock=clock
    )
    attempts = 0

    @retry
    @outage
    async def query() -> None:
        nonlocal attempts
        attempts += 1  # never reached: the outage answers first

    for _ in range(50):
        try:
            await query()
        except ConnectionError:
            pass
    calls, retries = budget.snapshot()
    say(f"{calls} calls, {retries} retries (without a budget: {calls * 2} retries)")


async def breaker_scene() -> None:
    scene("CircuitBreaker: billing goes down, the breaker opens, probes, and closes")
    outage = ChaosFault(ConnectionError("billing unreachable"))
    breaker = CircuitBreaker(
        "billing",
        window=10,
        minimum_calls=5,
        failure_rate_threshold=0.5,
        open_for=30.0,
        half_open_calls=2,
        listeners=[on_transition],
        clock=clock,
    )

    @breaker
    @outage
    async def charge(amount: int) -> str:
        return f"charged {amount}"

    failed = rejected = 0
    for _ in range(10):
        try:
            await charge(100)
        except ConnectionError:
            failed += 1
        except CircuitOpenError as exc:
            rejected += 1
            last = exc
        await clock.asleep(1.0)
    say(f"{failed} calls failed, then {rejected} were rejected without calling billing")
    say(f"the last rejection said: retry after {last.retry_after:.1f}s")
    outage.enabled = False  # billing recovers
    await clock.asleep(30.0)
    for _ in range(2):
        say(await charge(100))
    metrics = breaker.metrics()
    say(
        f"breaker {breaker.name} is {metrics.state.value}: {count(metrics.calls, 'call')} in its "
        f"window, {count(metrics.rejected_calls, 'call')} rejected while it was open"
    )


async def timeout_scene() -> None:
    scene("Timeout: a report query hangs for 10 s; the caller gives up after 2 s")
    hang = ChaosLatency(10.0, clock=clock)

    @Timeout(2.0, clock=clock, name="reports")
    @hang
    async def report() -> str:
        return "report"

    started = clock.monotonic()
    try:
        await report()
    except TimeoutExceededError as exc:
        say(f"{exc} — cancelled after {clock.monotonic() - started:.1f}s, not 10s")


async def bulkhead_scene() -> None:
    scene("Bulkhead: 6 concurrent exports, 2 may run and 2 may wait; the rest are refused")
    bulkhead = Bulkhead(max_concurrent=2, max_waiting=2, name="exports", clock=clock)
    release = anyio.Event()
    outcomes: list[str] = []

    @bulkhead
    async def export(n: int) -> None:
        await release.wait()
        outcomes.append(f"export {n} done")

    async def client(n: int) -> None:
        try:
            await export(n)
        except BulkheadFullError:
            outcomes.append(f"export {n} refused")

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(client, n)
        await anyio.wait_all_tasks_blocked()
        say(f"running: {bulkhead.active}, waiting: {bulkhead.waiting}")
        release.set()
    for line in sorted(outcomes, key=lambda s: ("refused" not in s, s)):
        say(line)


async def fallback_scene() -> None:
    scene("Fallback: entitlements are down; serve the free plan rather than an error")
    down = ChaosFault(ConnectionError("entitlements down"))

    @Fallback(value={"plan": "free", "seats": 1}, on=(ConnectionError, CircuitOpenError))
    @down
    async def entitlements(org: str) -> dict[str, object]:
        return {"plan": "pro", "seats": 50}

    say(f"entitlements('acme') = {await entitlements('acme')}")


async def pipeline_scene() -> None:
    scene(
        "Pipeline: 300 requests over 75 s to a service that fails 30% of the time, "
        "hangs 2% of the time, and is down from t+20s to t+40s"
    )
    rng = random.Random(7)
    faults = ChaosFault(ConnectionError("flaky"), rate=0.3, rand=rng.random)
    outage = ChaosFault(ConnectionError("down"), enabled=False)
    hangs = ChaosLatency(30.0, rate=0.02, rand=rng.random, clock=clock)
    opens = 0

    def count_opens(event: StateTransition) -> None:
        nonlocal opens
        opens += event.to_state == "open"

    breaker = CircuitBreaker(
        "profile",
        window=20,
        minimum_calls=10,
        failure_rate_threshold=0.8,
        open_for=5.0,
        half_open_calls=2,
        listeners=[count_opens],
        clock=clock,
    )
    retry = RetryPolicy(
        attempts=3,
        on=(ConnectionError, TimeoutError),
        backoff=Backoff.exponential(initial=0.05, maximum=1.0),
        rand=rng.random,
        clock=clock,
    )
    policy = Pipeline(
        Fallback(value="cached profile", on=(ConnectionError, TimeoutError, CircuitOpenError)),
        retry,
        Timeout(1.0, clock=clock),
        breaker,
    )

    @policy
    @outage
    @faults
    @hangs
    async def profile(user: int) -> str:
        return "fresh profile"

    start = clock.monotonic()
    results = []
    for n in range(300):
        outage.enabled = 20.0 <= clock.monotonic() - start < 40.0
        results.append(await profile(n))
        await clock.asleep(0.25)
    say(
        f"fresh: {results.count('fresh profile')}, from fallback: "
        f"{results.count('cached profile')}, errors seen by callers: 0"
    )
    say(
        f"injected: {faults.injected} faults, {hangs.injected} hangs, {outage.injected} calls "
        f"into the outage; the breaker opened {count(opens, 'time')} and turned away "
        f"{count(breaker.metrics().rejected_calls, 'call')}; now {breaker.state.value}"
    )


async def messaging_scene() -> None:
    scene(
        "Outbox, relay, inbox, dead letters: SQLite + in-memory bus; the broker fails 4 "
        "publishes and loses 2 acknowledgements, one event cannot be handled, one message "
        "is garbage"
    )
    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteStore(Path(directory) / "orgs.db")
        store.migrate()
        connection = store.connect()
        with connection:
            connection.execute("CREATE TABLE members (org TEXT, user TEXT)")
            connection.execute("CREATE TABLE welcome_mails (user TEXT)")
        outbox = Outbox(store.outbox, topic="members")
        for n, user in enumerate(["ann", "bob", "cid", "dee", "eve", "fay"]):
            try:
                with connection:  # the member and its event commit together, or neither
                    connection.execute("INSERT INTO members VALUES (?, ?)", (f"org{n % 2}", user))
                    outbox.add(
                        connection,
                        Event(type="member.added", key=f"org{n % 2}", payload={"user": user}),
                    )
                    if user == "dee":
                        raise RuntimeError("the request failed after the insert")
            except RuntimeError:
                say("dee's transaction rolled back: her event will never be published")
        bus = MemoryBus()
        bus.fail_next_publish(4, ConnectionError("broker unavailable"))
        bus.fail_next_publish(2, ConnectionError("ack lost"), stored=True)
        relay = OutboxRelay(store.outbox, bus, backoff=Backoff.none(), clock=clock)
        published = 0
        for _ in range(10):
            report = await relay.drain()
            published += report.published
            if report.retried:
                say(
                    f"relay: {count(report.retried, 'publish', 'publishes')} failed; "
                    "they will be retried"
                )
            if (await store.outbox.status()).backlog == 0:
                break
        say(f"relay: {published} events published, outbox backlog now 0")
        await bus.publish_raw("members", b"\x00\x01 not an event")

        inbox = Inbox(store.inbox, consumer="welcome")

        async def send_welcome(event: Event) -> None:
            if event.payload["user"] == "eve":
                raise ValueError("no e-mail address on file for eve")
            with connection:  # the mail record and the inbox mark commit together
                if inbox.mark(connection, event):
                    connection.execute(
                        "INSERT INTO welcome_mails VALUES (?)", (event.payload["user"],)
                    )

        subscription = bus.subscribe("members", group="welcome")
        consumer = ResilientConsumer(
            subscription,
            send_welcome,
            name="welcome",
            dead_letters=store.dead_letters,
            inbox=inbox,
            retry=RetryPolicy(
                attempts=3, on=ValueError, backoff=Backoff.constant(1.0), clock=clock
            ),
            clock=clock,
        )
        async with anyio.create_task_group() as group:
            await group.start(consumer.run)
            await bus.join("members", "welcome")  # every message handled and acknowledged
            group.cancel_scope.cancel()
        mails = [row[0] for row in connection.execute("SELECT user FROM welcome_mails")]
        tally = consumer.counts
        say(
            f"consumer: {tally['handled']} handled, {tally['duplicate']} duplicates skipped, "
            f"{tally['dead_lettered']} dead-lettered, {tally['poison']} poison, "
            f"{tally['unacked']} unacknowledged"
        )
        say(f"welcome mails sent once each: {sorted(mails)} (duplicates delivered: skipped)")
        queue = DeadLetterQueue(store.dead_letters)
        async for letter in queue.iterate():
            what = letter.event_type or f"{len(letter.data)} undecodable bytes"
            say(f"dead letter: {what}: {letter.error_type}, {count(letter.attempts, 'attempt')}")
        report = await queue.replay(DeadLetterFilter(event_type="member.added"), bus)
        say(f"after fixing eve's address: replayed {count(len(report.replayed), 'dead letter')}")
        connection.close()
        await subscription.aclose()
        await bus.aclose()
        store.close()


async def main() -> None:
    print("resilience-kit demo — primitives under injected faults (virtual time)")
    for run in (
        retry_scene,
        budget_scene,
        breaker_scene,
        timeout_scene,
        bulkhead_scene,
        fallback_scene,
        pipeline_scene,
        messaging_scene,
    ):
        await run()
    print("\nEvery fault above was injected on purpose; no caller saw an unexpected error.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    anyio.run(main, backend=parser.parse_args().backend)
