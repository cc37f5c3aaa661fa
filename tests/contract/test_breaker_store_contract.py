"""The BreakerStore contract, run against every breaker store (in memory, Redis).

Two instances of a service share one breaker through their stores: one in-memory store
shared in a process, or two Redis clients on one prefix (`SharedStores` in conftest.py).
Propagation through Redis is asynchronous, so a test waits for a transition to arrive
(`Watcher`) instead of expecting it at once; in memory it has arrived already.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from resilience_kit import CircuitBreaker, CircuitOpenError, CircuitState
from resilience_kit.policies import BreakerStore
from resilience_kit.testing import VirtualClock
from resilience_kit.typing import StateTransition
from tests.contract.conftest import SharedStores

WAIT = 10.0  # seconds; an upper bound on propagation through a local Redis, never reached


@pytest.fixture
def stores(breaker_stores: SharedStores) -> tuple[Any, Any]:
    """Two instances' stores, sharing one breaker state."""
    return breaker_stores.first, breaker_stores.second


class Watcher:
    """Collects a breaker's transitions; lets a test wait for one without sleeping."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.states: list[CircuitState] = []
        self._changed = threading.Condition()
        breaker.add_listener(self._on)

    def _on(self, event: StateTransition) -> None:
        with self._changed:
            self.states.append(event.to_state)
            self._changed.notify_all()

    def wait_for(self, state: CircuitState) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: state in self.states, timeout=WAIT)


def fail(breaker: CircuitBreaker, times: int) -> None:
    def broken() -> None:
        raise ConnectionError("down")

    for _ in range(times):
        with pytest.raises((ConnectionError, CircuitOpenError)):
            breaker.call(broken)


def breaker(name: str, store: Any, clock: VirtualClock) -> CircuitBreaker:
    return CircuitBreaker(
        name, window=4, minimum_calls=2, open_for=30.0, half_open_calls=1, store=store, clock=clock
    )


def test_every_store_implements_the_protocol(stores: tuple[Any, Any]) -> None:
    assert all(isinstance(store, BreakerStore) for store in stores)


def test_two_instances_open_and_close_together(
    stores: tuple[Any, Any],
) -> None:
    clock = VirtualClock()
    a = breaker("billing", stores[0], clock)
    b = breaker("billing", stores[1], clock)
    seen_by_b = Watcher(b)

    fail(a, 2)
    assert a.state is CircuitState.OPEN
    assert seen_by_b.wait_for(CircuitState.OPEN), "B never saw A open the breaker"
    with pytest.raises(CircuitOpenError) as rejected:
        b.call(lambda: "not called")
    assert rejected.value.retry_after == pytest.approx(30.0, abs=0.5)

    clock.advance(30.0)
    assert a.call(lambda: "probe ok") == "probe ok"  # half-open probe closes A
    assert a.state is CircuitState.CLOSED
    assert seen_by_b.wait_for(CircuitState.CLOSED), "B never saw A close the breaker"
    assert b.call(lambda: "through") == "through"


def test_operator_actions_propagate(stores: tuple[Any, Any]) -> None:
    clock = VirtualClock()
    a = breaker("search", stores[0], clock)
    b = breaker("search", stores[1], clock)
    seen_by_b = Watcher(b)
    a.force_open()
    assert seen_by_b.wait_for(CircuitState.FORCED_OPEN)
    with pytest.raises(CircuitOpenError) as rejected:
        b.call(lambda: None)
    assert rejected.value.retry_after is None
    a.reset()
    assert seen_by_b.wait_for(CircuitState.CLOSED)


def test_a_new_instance_starts_from_the_shared_state(
    breaker_stores: SharedStores, stores: tuple[Any, Any]
) -> None:
    clock = VirtualClock()
    a = breaker("profile", stores[0], clock)
    fail(a, 2)
    assert breaker_stores.flush(WAIT)
    late_store = breaker_stores.another()
    late = breaker("profile", late_store, clock)
    # A shared store adopts the state in the background (creating a breaker never
    # waits on the backend); its `sync` waits for that, where the store has one.
    sync = getattr(late_store, "sync", None)
    if sync is not None:
        assert sync(WAIT)
    assert late.state is CircuitState.OPEN


def test_racing_transitions_converge_on_one_winner(
    breaker_stores: SharedStores, stores: tuple[Any, Any]
) -> None:
    clock = VirtualClock()
    a = breaker("race", stores[0], clock)
    b = breaker("race", stores[1], clock)
    changed = threading.Condition()

    def notify(_: StateTransition) -> None:
        with changed:
            changed.notify_all()

    a.add_listener(notify)
    b.add_listener(notify)
    # Both move from the same version at the same time, to different states.
    a.force_open()
    b.disable()
    with changed:
        agreed = changed.wait_for(lambda: a.state is b.state, timeout=WAIT)
    assert agreed, (a.state, b.state)
    assert a.state in (CircuitState.FORCED_OPEN, CircuitState.DISABLED)
    assert breaker_stores.flush(WAIT)
    assert a.state is b.state
