"""RedisBreakerStore against a real Redis: instances share one breaker, outages degrade."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
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
        assert not store.flush(0.5)  # the write stays queued for when Redis returns
        assert not store.healthy
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


# -- one breaker, whatever Redis does between calls ---------------------------------------


def test_re_reading_the_shared_record_does_not_reset_the_window(
    stores: tuple[RedisBreakerStore, RedisBreakerStore],
) -> None:
    clock = VirtualClock()
    store = stores[0]
    shared = CircuitBreaker("ledger", window=10, minimum_calls=10, store=store, clock=clock)
    for calls in range(1, 10):
        fail(shared, 1)
        clock.advance(0.15)
        assert store.sync(WAIT)  # a periodic re-read between every two failures
        assert shared.metrics().calls == calls
    fail(shared, 1)
    assert shared.state is CircuitState.OPEN


def test_re_reading_the_shared_record_does_not_hand_out_probe_slots_again(
    stores: tuple[RedisBreakerStore, RedisBreakerStore],
) -> None:
    clock = VirtualClock()
    store = stores[0]
    shared = CircuitBreaker(
        "ledger", window=2, minimum_calls=2, half_open_calls=2, store=store, clock=clock
    )
    fail(shared, 2)
    clock.advance(30.0)
    admitted: list[int] = []
    arrived = threading.Semaphore(0)
    release = threading.Event()

    def probe() -> None:
        admitted.append(1)
        arrived.release()
        release.wait(WAIT)

    def caller() -> None:
        try:
            shared.call(probe)
        except CircuitOpenError:
            arrived.release()

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(6)]
    for thread in threads:  # one caller after another, a re-read between each two
        thread.start()
        assert arrived.acquire(timeout=WAIT)
        assert store.sync(WAIT)
    release.set()
    for thread in threads:
        thread.join(WAIT)
    assert len(admitted) == 2


def test_a_redis_that_restarted_empty_gets_the_latest_state_back(
    redis_url: str, prefix: str, stores: tuple[RedisBreakerStore, RedisBreakerStore]
) -> None:
    clock = VirtualClock()
    old = breaker("billing", stores[0], clock)
    fail(old, 2)  # OPEN, then idle through the outage
    assert stores[0].flush(WAIT)
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{prefix}billing")  # what a restart without persistence leaves

    assert stores[0].sync(WAIT)
    assert b'"open"' in client.get(f"{prefix}billing")
    new = breaker("billing", stores[1], clock)
    assert stores[1].sync(WAIT)
    assert new.state is CircuitState.OPEN


def test_an_instance_started_after_the_restart_adopts_the_state_written_back(
    redis_url: str, prefix: str, stores: tuple[RedisBreakerStore, RedisBreakerStore]
) -> None:
    clock = VirtualClock()
    old = breaker("billing", stores[0], clock)
    fail(old, 2)
    assert stores[0].flush(WAIT)
    redis.Redis.from_url(redis_url).delete(f"{prefix}billing")

    new = breaker("billing", stores[1], clock)  # writes CLOSED v0 where nothing is
    assert stores[1].sync(WAIT)
    assert stores[0].sync(WAIT)  # the old instance finds an older state and writes back
    assert stores[1].sync(WAIT)
    assert new.state is CircuitState.OPEN
    assert old.state is CircuitState.OPEN


def test_creating_a_breaker_sends_nothing_to_redis_from_the_calling_thread() -> None:
    # A server that accepts connections and never answers: a client without timeouts
    # blocks forever on it.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        host, port = black_hole.getsockname()
        store = RedisBreakerStore(redis.Redis(host=host, port=port))
        created: list[CircuitBreaker] = []
        thread = threading.Thread(
            target=lambda: created.append(CircuitBreaker("billing", store=store)), daemon=True
        )
        thread.start()
        thread.join(WAIT)
        assert created, "creating the breaker waited on Redis"
        assert created[0].call(lambda: "answered") == "answered"
    store.close()  # the server is gone: the background threads fail and stop


@pytest.mark.anyio
async def test_a_breaker_is_created_inside_an_event_loop_without_waiting_on_redis() -> None:
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    host, port = black_hole.getsockname()
    store = RedisBreakerStore(redis.Redis(host=host, port=port))
    # Should creating the breaker block, closing the server ends the wait (the client
    # sees the connection reset) instead of hanging the suite.
    watchdog = threading.Timer(WAIT, black_hole.close)
    watchdog.start()
    started = time.monotonic()
    try:
        created = CircuitBreaker("billing", store=store)  # on the event loop's thread
        took = time.monotonic() - started
    finally:
        watchdog.cancel()
        black_hole.close()
        store.close()
    assert took < WAIT / 2, f"creating the breaker waited {took:.1f} s on Redis"
    assert created.state is CircuitState.CLOSED


def test_a_state_written_back_by_another_instance_keeps_the_window(
    redis_url: str, prefix: str, stores: tuple[RedisBreakerStore, RedisBreakerStore]
) -> None:
    clock = VirtualClock()
    a = breaker("billing", stores[0], clock)
    b = breaker("billing", stores[1], clock)
    assert stores[0].sync(WAIT)
    assert stores[1].sync(WAIT)
    fail(a, 1)
    fail(b, 1)
    redis.Redis.from_url(redis_url).delete(f"{prefix}billing")
    for store in (*stores, *stores):
        assert store.sync(WAIT)  # both write the same state back; one of them wins
    assert (a.state, b.state) == (CircuitState.CLOSED, CircuitState.CLOSED)
    assert (a.metrics().calls, b.metrics().calls) == (1, 1)


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
        assert store.sync(WAIT)  # the store reads the key (in the background) and reports it
        fail(local, 2)
        assert store.flush(WAIT)
    assert b'"open"' in client.get(key)  # an ordinary compare-and-set won
    assert any("cannot be read back" in r.getMessage() for r in caplog.records)
    client.close()
