"""Breakers sharing a RedisBreakerStore, in separate processes, against in-memory ones.

A shared breaker must behave like the in-memory breaker it replaces: for one instance,
exactly like a lone `CircuitBreaker`; for several, exactly like breakers sharing an
`MemoryBreakerStore` in one process (the state is shared, each instance keeps its own
window and probe count). Hypothesis generates calls, time and operator commands; every
step goes to a real process (and, through Redis, to the others) and to the reference,
and then everything observable must agree. Between two steps each instance re-reads
Redis (`sync`), which is what `sync_interval` does in the background; it is also what
the old store got wrong (a re-read reset the window and handed out probe slots again).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit.stores.memory import MemoryBreakerStore
from resilience_kit.testing import VirtualClock
from tests.breaker_fleet import Instance, make_breaker, run_call, snapshot

redis = pytest.importorskip("redis", reason="the redis extra is not installed")

INSTANCES = 2


@pytest.fixture(scope="module")
def fleet() -> Iterator[list[Instance]]:
    instances = [Instance() for _ in range(INSTANCES)]
    yield instances
    for instance in instances:
        instance.close()


configs = st.fixed_dictionaries(
    {
        "window": st.integers(1, 4),
        "threshold": st.sampled_from([0.25, 0.5, 0.75, 1.0]),
        "half_open_calls": st.integers(1, 3),
        "slow_after": st.sampled_from([None, 2.0]),
        "growing": st.booleans(),
        "judge_results": st.booleans(),
    }
).flatmap(
    lambda config: st.integers(1, config["window"]).map(
        lambda minimum: {**config, "minimum_calls": minimum}
    )
)

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("call"),
            st.integers(0, INSTANCES - 1),
            st.sampled_from(["ok", "fail", "fail", "ignored", "bad_result"]),
            st.sampled_from([0.0, 0.0, 3.0]),
        ),
        st.tuples(st.just("advance"), st.sampled_from([1.0, 3.0, 5.0, 8.0])),
        # Redis restarts without persistence: the key is gone, the instances write it back.
        st.tuples(st.just("restart")),
        st.tuples(
            st.just("operate"),
            st.integers(0, INSTANCES - 1),
            st.sampled_from(["force_open", "disable", "metrics_only", "reset"]),
        ),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None)
@given(config=configs, steps=steps)
def test_redis_shared_breakers_in_separate_processes_match_in_memory_ones(
    fleet: list[Instance], redis_url: str, config: dict[str, Any], steps: list[Any]
) -> None:
    name = f"model-{uuid.uuid4().hex}"
    prefix = f"test:{uuid.uuid4().hex}:"
    for instance in fleet:
        synced, _ = instance.send(op="new", url=redis_url, prefix=prefix, name=name, config=config)
        assert synced
    clock = VirtualClock(start=100.0)
    store = MemoryBreakerStore()
    reference = [make_breaker(name, config, clock, store=store) for _ in fleet]

    for step in steps:
        if step[0] == "call":
            _, index, kind, duration = step
            reply, _ = fleet[index].send(op="call", kind=kind, duration=duration)
            expected = run_call(reference[index], clock, kind, duration)
            # The other instances' clocks move as the reference clock did.
            for other, instance in enumerate(fleet):
                if other != index and duration and expected[0] != "rejected":
                    instance.send(op="advance", seconds=duration)
            assert reply[:2] == expected[:2], (step, reply, expected)
            if expected[0] == "rejected" and expected[2] is not None:
                assert reply[2] == pytest.approx(expected[2], abs=1e-3)
        elif step[0] == "restart":
            redis.Redis.from_url(redis_url).delete(f"{prefix}{name}")
        elif step[0] == "advance":
            for instance in fleet:
                instance.send(op="advance", seconds=step[1])
            clock.advance(step[1])
        else:
            _, index, command = step
            fleet[index].send(op="operate", command=command)
            getattr(reference[index], command)()
        for index, instance in enumerate(fleet):
            synced, seen = instance.send(op="sync")
            assert synced
            wanted = snapshot(reference[index])
            if wanted["open_until"] is not None:
                assert seen.pop("open_until") == pytest.approx(wanted.pop("open_until"), abs=1e-3)
            assert seen == wanted, (index, step)
