"""One instance of a service with a Redis-shared breaker, run in its own process.

The model test (tests/test_redis_breaker_model.py) starts a few of these and drives them
over stdin/stdout, one JSON command per line, in lockstep with in-memory breakers. Each
instance has its own `VirtualClock`; the test moves every clock by the same amounts.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from typing import Any

from resilience_kit import Backoff, CircuitBreaker, CircuitOpenError
from resilience_kit.testing import VirtualClock

SYNC_WAIT = 10.0  # seconds; an upper bound on a round trip to a local Redis


class Boom(Exception):
    """A recorded failure."""


class Ignored(Exception):
    """In ignore_on: counts as nothing."""


BAD_RESULT = "bad"


class ReadAtAnInstant:
    """The breaker's virtual clock as a store sees a real one: wall time read a moment apart.

    A store converts between monotonic and wall time with ``time() - monotonic()``; on a
    real clock the two readings are never taken at once, so the offset differs a little
    from one conversion to the next. The model must not depend on it being exact.
    """

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self._draws = random.Random()

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def time(self) -> float:
        return self._clock.time() + self._draws.uniform(0.0, 1e-4)

    def sleep(self, seconds: float) -> None:
        self._clock.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await self._clock.asleep(seconds)


def make_breaker(
    name: str, config: dict[str, Any], clock: VirtualClock, **extra: Any
) -> CircuitBreaker:
    """The breaker under test, built the same way here and in the test process."""
    open_for: float | Backoff = (
        Backoff.linear(initial=3.0, step=2.0, maximum=8.0, jitter="none")
        if config["growing"]
        else 5.0
    )
    return CircuitBreaker(
        name,
        window=config["window"],
        minimum_calls=config["minimum_calls"],
        failure_rate_threshold=config["threshold"],
        slow_call_duration=config["slow_after"],
        half_open_calls=config["half_open_calls"],
        open_for=open_for,
        record_on=Boom,
        ignore_on=Ignored,
        record_result=(lambda result: result == BAD_RESULT) if config["judge_results"] else None,
        clock=clock,
        **extra,
    )


def run_call(breaker: CircuitBreaker, clock: VirtualClock, kind: str, duration: float) -> Any:
    """Make one call; describe what happened as plain data."""

    def target() -> str:
        if duration:
            clock.sleep(duration)
        if kind == "fail":
            raise Boom
        if kind == "ignored":
            raise Ignored
        return BAD_RESULT if kind == "bad_result" else "good"

    try:
        breaker.call(target)
    except CircuitOpenError as rejected:
        return ["rejected", rejected.state, rejected.retry_after]
    except (Boom, Ignored) as error:
        return ["raised", type(error).__name__]
    return ["returned"]


def snapshot(breaker: CircuitBreaker) -> dict[str, Any]:
    metrics = breaker.metrics()
    return {
        "state": metrics.state.value,
        "calls": metrics.calls,
        "failed": metrics.failed_calls,
        "slow": metrics.slow_calls,
        "rejected": metrics.rejected_calls,
        "open_until": metrics.open_until,
    }


def serve() -> None:  # pragma: no cover - runs in the child processes
    from resilience_kit.stores.redis import RedisBreakerStore  # noqa: PLC0415

    store: RedisBreakerStore | None = None
    breaker: CircuitBreaker | None = None
    clock = VirtualClock()
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        reply: Any = None
        if op == "new":
            if store is not None:
                store.close()
            clock = VirtualClock(start=100.0)
            # Re-reads come only from `sync` commands: the test decides when they happen.
            store = RedisBreakerStore(
                url=command["url"],
                prefix=command["prefix"],
                sync_interval=600.0,
                clock=ReadAtAnInstant(clock),
            )
            breaker = make_breaker(command["name"], command["config"], clock, store=store)
            reply = store.sync(SYNC_WAIT)
        elif op == "quit":
            break
        else:
            assert store is not None
            assert breaker is not None
            if op == "call":
                reply = run_call(breaker, clock, command["kind"], command["duration"])
            elif op == "operate":
                getattr(breaker, command["command"])()
            elif op == "advance":
                clock.advance(command["seconds"])
            if op != "sync":
                assert store.flush(SYNC_WAIT)
            else:
                reply = store.sync(SYNC_WAIT)
        sys.stdout.write(json.dumps({"reply": reply, "snapshot": breaker and snapshot(breaker)}))
        sys.stdout.write("\n")
        sys.stdout.flush()
    if store is not None:
        store.close()


class Instance:
    """The test's handle on one child process."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.breaker_fleet"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, **command: Any) -> tuple[Any, dict[str, Any]]:
        """Send one command; return its reply and the breaker's snapshot afterwards."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        assert line, "the instance died (its stderr is in the test output)"
        answer = json.loads(line)
        return answer["reply"], answer["snapshot"]

    def close(self) -> None:
        try:
            self.send(op="quit")
        except (AssertionError, OSError, ValueError):
            pass
        try:
            self._process.wait(timeout=SYNC_WAIT)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck child
            self._process.kill()
            self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()


if __name__ == "__main__":
    serve()
