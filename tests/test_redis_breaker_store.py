"""RedisBreakerStore against a real Redis: instances share one breaker, outages degrade."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from resilience_kit import CircuitBreaker, CircuitOpenError, CircuitState, ConfigurationError
from resilience_kit.testing import VirtualClock
from resilience_kit.typing import StateTransition
from tests.servers import free_port, redis_server

redis = pytest.importorskip("redis", reason="the redis extra is not installed")
from resilience_kit.stores.redis import RedisBreakerStore  # noqa: E402

WAIT = 10.0  # seconds; an upper bound on propagation through a local Redis, never reached


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
def stores(redis_url: str, prefix: str) -> Iterator[tuple[RedisBreakerStore, RedisBreakerStore]]:
    first = RedisBreakerStore(url=redis_url, prefix=prefix, sync_interval=0.05)
    second = RedisBreakerStore(url=redis_url, prefix=prefix, sync_interval=0.05)
    yield first, second
    first.close()
    second.close()


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


def breaker(name: str, store: RedisBreakerStore, clock: VirtualClock) -> CircuitBreaker:
    return CircuitBreaker(
        name, window=4, minimum_calls=2, open_for=30.0, half_open_calls=1, store=store, clock=clock
    )


def test_redis_outage_degrades_to_a_local_breaker(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens here
    clock = VirtualClock()
    with RedisBreakerStore(url=f"redis://127.0.0.1:{port}/0", sync_interval=0.05) as store:
        local = breaker("billing", store, clock)
        assert local.call(lambda: 1) == 1
        fail(local, 2)
        assert local.state is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            local.call(lambda: 1)
        assert not store.healthy  # the first read at construction already failed
        assert not store.flush(0.05)  # the write stays queued for when Redis returns
    assert any("unreachable" in record.getMessage() for record in caplog.records)


def test_state_is_written_back_when_redis_returns(prefix: str) -> None:
    port = free_port()
    clock = VirtualClock()
    url = f"redis://127.0.0.1:{port}/0"
    with RedisBreakerStore(url=url, prefix=prefix, sync_interval=0.05) as store:
        local = breaker("billing", store, clock)
        fail(local, 2)  # opens while Redis is down
        assert local.state is CircuitState.OPEN
        with redis_server(port) as started:
            assert store.flush(WAIT)
            client = redis.Redis.from_url(started)
            assert b'"open"' in client.get(f"{prefix}billing")
            assert store.healthy


CHILD = """
import sys
from resilience_kit import CircuitBreaker
from resilience_kit.stores.redis import RedisBreakerStore
url, prefix = sys.argv[1], sys.argv[2]
with RedisBreakerStore(url=url, prefix=prefix) as store:
    breaker = CircuitBreaker("billing", window=4, minimum_calls=2, store=store)
    for _ in range(2):
        try:
            breaker.call(lambda: 1 / 0)
        except ZeroDivisionError:
            pass
    assert breaker.state.value == "open", breaker.state
    assert store.flush(10)
print("child opened the breaker")
"""


def test_a_breaker_opened_in_another_process_rejects_here(
    redis_url: str, prefix: str, stores: tuple[RedisBreakerStore, RedisBreakerStore]
) -> None:
    here = CircuitBreaker("billing", window=4, minimum_calls=2, store=stores[0])
    watcher = Watcher(here)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, redis_url, prefix],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert watcher.wait_for(CircuitState.OPEN)
    with pytest.raises(CircuitOpenError):
        here.call(lambda: None)


def test_configuration_errors(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="client"):
        RedisBreakerStore()
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisBreakerStore(url=redis_url, prefix="")
    with pytest.raises(ConfigurationError, match="sync_interval"):
        RedisBreakerStore(url=redis_url, sync_interval=0)


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json",
        b"[1, 2]",
        b'{"state": "closed", "version": -1, "changed_at": 0.0}',
        b'{"state": "closed", "version": 1.5, "changed_at": 0.0}',
        b'{"state": "closed", "changed_at": 0.0}',
    ],
)
def test_a_record_whose_version_is_unreadable_is_logged_and_never_written_over(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"{prefix}billing"
    client.set(key, garbage)
    clock = VirtualClock()
    with (
        caplog.at_level("WARNING", logger="resilience_kit"),
        RedisBreakerStore(url=redis_url, prefix=prefix, sync_interval=0.05) as store,
    ):
        local = breaker("billing", store, clock)  # decides locally
        assert local.call(lambda: 1) == 1
        fail(local, 2)
        assert local.state is CircuitState.OPEN
        assert store.flush(WAIT)
        assert store.healthy  # Redis answered: not an outage
    assert client.get(key) == garbage  # the compare-and-set cannot arbitrate against it
    warnings = [r.getMessage() for r in caplog.records if "breaker record" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per re-read
    assert key in warnings[0]
    client.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b'{"state": "ajar", "version": 0, "changed_at": 0.0}',
        b'{"state": "open", "version": 0, "changed_at": 0.0, "open_until": null}',
        b'{"state": "closed", "version": 0, "changed_at": "noon"}',
    ],
)
def test_a_corrupt_record_with_a_readable_version_is_replaced_by_the_next_transition(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"{prefix}billing"
    client.set(key, garbage)
    with (
        caplog.at_level("WARNING", logger="resilience_kit"),
        RedisBreakerStore(url=redis_url, prefix=prefix, sync_interval=0.05) as store,
    ):
        local = breaker("billing", store, VirtualClock())
        fail(local, 2)
        assert store.flush(WAIT)
    assert b'"open"' in client.get(key)  # an ordinary compare-and-set won
    assert any("cannot be read back" in r.getMessage() for r in caplog.records)
    client.close()
