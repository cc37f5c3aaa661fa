"""SQLiteStore: what the contract suites cannot see from outside a backend.

Schema migrations, the caller's transactions, threads and processes racing for rows,
lease expiry on the database's clock (``lease_for=0``: expired at once, no sleeping),
corrupted rows, and bad configuration.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from uuid import uuid4

import anyio
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from resilience_kit import Backoff
from resilience_kit.errors import (
    ConfigurationError,
    CorruptRecordError,
    StoreError,
    StoreSchemaError,
    StoreUnavailableError,
)
from resilience_kit.messaging import Event, Outbox, OutboxRelay
from resilience_kit.messaging._protocols import OutboxEntry
from resilience_kit.messaging._records import DeadLetter, DeadLetterFilter, OutboxMessage
from resilience_kit.stores.sqlite import SQLiteStore
from resilience_kit.stores.sqlite._schema import LATEST
from resilience_kit.testing import ChaosFault, ChaosPublisher, VirtualClock
from resilience_kit.transports import MemoryBus

HOUR = 3600.0
ROOT = Path(__file__).resolve().parents[1]


def entry(key: str = "k", n: int = 0, topic: str = "t") -> OutboxEntry:
    return OutboxEntry.of(topic, Event(type="test.happened", key=key, payload={"n": n}))


def ns(messages: list[OutboxMessage]) -> list[tuple[str, int]]:
    return [(m.key, m.event().payload["n"]) for m in messages]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def store(path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(path) as store:
        yield store


def add(store: SQLiteStore, *entries: OutboxEntry) -> None:
    connection = store.connect()
    try:
        with connection:
            store.outbox.add(connection, entries)
    finally:
        connection.close()


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run SQL on a plain connection (what an operator, or a bug, would do) and commit."""
    connection = sqlite3.connect(path)
    try:
        with connection:
            return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def letter(topic: str = "orgs", error: BaseException | None = None) -> DeadLetter:
    event = Event(type="org.created", key="org:1", payload={})
    return DeadLetter.create(
        source="outbox",
        topic=topic,
        data=event.to_json(),
        error=error or ConnectionError("down"),
        attempts=3,
    )


# -- construction and schema ---------------------------------------------------------------


def test_a_path_in_a_missing_directory_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist") as caught:
        SQLiteStore(tmp_path / "missing" / "app.db")
    assert caught.value.parameter == "path"


@pytest.mark.parametrize("bad", [":memory:", "", "file:app.db?mode=memory"])
def test_in_memory_and_uri_paths_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="database file"):
        SQLiteStore(bad)


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="directory"):
        SQLiteStore(tmp_path)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [("busy_timeout", -1.0), ("busy_timeout", float("nan")), ("max_connections", 0)],
)
def test_bad_parameters_are_refused(path: Path, parameter: str, value: float) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SQLiteStore(path, **{parameter: value})
    assert caught.value.parameter == parameter


def test_migration_is_idempotent_and_recorded(store: SQLiteStore, path: Path) -> None:
    store.migrate()
    store.migrate()
    assert raw(path, "SELECT version FROM rk_schema_version") == [
        (v,) for v in range(1, LATEST + 1)
    ]
    tables = {name for (name,) in raw(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {
        "rk_schema_version",
        "rk_outbox",
        "rk_dead_letters",
        "rk_inbox",
        "rk_idempotency",
        "rk_projection_versions",
        "rk_projection_rows",
        "rk_projection_applied",
        "rk_projection_log",
        "sqlite_sequence",  # AUTOINCREMENT: outbox positions are never reused
    }


def test_concurrent_migrations_apply_each_step_once(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def migrate(store: SQLiteStore) -> None:
        try:
            store.migrate()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    for attempt in range(20):  # a new file each time: the race is in creating it
        path = tmp_path / f"app{attempt}.db"
        stores = [SQLiteStore(path) for _ in range(4)]
        threads = [threading.Thread(target=migrate, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for store in stores:
            store.close()
        assert errors == []
        assert raw(path, "SELECT count(*) FROM rk_schema_version") == [(LATEST,)]


def test_a_schema_from_a_newer_library_is_refused(store: SQLiteStore, path: Path) -> None:
    store.migrate()
    raw(path, "INSERT INTO rk_schema_version VALUES (?, 0)", (LATEST + 1,))
    with SQLiteStore(path) as newer, pytest.raises(StoreError, match="newer"):
        newer.migrate()


@pytest.mark.anyio
async def test_components_migrate_on_first_use(store: SQLiteStore, path: Path) -> None:
    assert await store.inbox.record("billing", uuid4())
    assert raw(path, "SELECT count(*) FROM rk_schema_version") == [(LATEST,)]


def test_connect_configures_the_connection(store: SQLiteStore) -> None:
    connection = store.connect()
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA busy_timeout").fetchone() == (5000,)
        assert connection.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert connection.isolation_level is not None  # `with connection:` is a transaction
    finally:
        connection.close()


def test_a_file_that_is_not_a_database_is_a_store_error(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite database, just some text" * 100)
    with SQLiteStore(path) as store, pytest.raises(StoreError, match="not a database") as caught:
        store.migrate()
    assert not isinstance(caught.value, StoreUnavailableError)
    assert caught.value.store == repr(store)


@pytest.mark.anyio
async def test_a_closed_store_refuses_work(path: Path) -> None:
    store = SQLiteStore(path)
    store.close()
    with pytest.raises(StoreUnavailableError, match="closed"):
        await store.inbox.record("billing", uuid4())
    with pytest.raises(StoreUnavailableError, match="closed"):
        store.connect()


# -- the caller's transactions ------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_rolled_back_transaction_leaves_no_row_and_no_mark(store: SQLiteStore) -> None:
    store.migrate()
    event_id = uuid4()
    connection = store.connect()
    try:
        with pytest.raises(RuntimeError), connection:
            connection.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
            connection.execute("INSERT INTO orders DEFAULT VALUES")
            store.outbox.add(connection, [entry("a", 0), entry("a", 1)])
            assert store.inbox.mark(connection, "billing", event_id)
            raise RuntimeError("the business write failed")
        assert connection.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    finally:
        connection.close()
    assert await store.outbox.claim(limit=10, lease_for=HOUR) == []
    assert not await store.inbox.contains("billing", event_id)
    assert (await store.outbox.status()).backlog == 0


@pytest.mark.anyio
async def test_a_committed_transaction_is_visible(store: SQLiteStore) -> None:
    event_id = uuid4()
    connection = store.connect()
    try:
        with connection:
            store.outbox.add(connection, [entry("a", 0)])
            assert store.inbox.mark(connection, "billing", event_id)
            assert not store.inbox.mark(connection, "billing", event_id)  # a duplicate
    finally:
        connection.close()
    assert ns(await store.outbox.claim(limit=10, lease_for=HOUR)) == [("a", 0)]
    assert await store.inbox.contains("billing", event_id)


def test_add_runs_one_statement_and_never_commits(store: SQLiteStore) -> None:
    store.migrate()
    connection = store.connect()
    statements: list[str] = []
    try:
        connection.set_trace_callback(statements.append)
        store.outbox.add(connection, [entry("a", 0)])
        store.outbox.add(connection, [entry("a", 1), entry("a", 2)])
        connection.set_trace_callback(None)
        assert connection.in_transaction
        connection.rollback()
    finally:
        connection.close()
    inserts = [s for s in statements if s.startswith("INSERT INTO rk_outbox")]
    assert len(inserts) == 3  # executemany traces each row
    assert [s for s in statements if not s.startswith("INSERT")] == ["BEGIN DEFERRED"]


def test_add_on_an_unmigrated_database_migrates_outside_a_transaction(path: Path) -> None:
    with SQLiteStore(path) as store:
        add(store, entry())
    assert raw(path, "SELECT count(*) FROM rk_outbox") == [(1,)]


def test_add_inside_a_transaction_on_an_unmigrated_database_asks_for_migrate(path: Path) -> None:
    with SQLiteStore(path) as store:
        connection = store.connect()
        try:
            connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
            connection.execute("INSERT INTO orders DEFAULT VALUES")  # a transaction is open
            with pytest.raises(StoreError, match="migrate"):
                store.outbox.add(connection, [entry()])
            with pytest.raises(StoreError, match="migrate"):
                store.inbox.mark(connection, "billing", uuid4())
            connection.rollback()
        finally:
            connection.close()


@pytest.mark.anyio
async def test_an_idle_claim_does_not_wait_for_the_callers_lock(path: Path) -> None:
    with SQLiteStore(path, busy_timeout=0) as store:
        store.migrate()
        connection = store.connect()
        try:
            store.outbox.add(connection, [entry()])  # holds the write lock, uncommitted
            assert await store.outbox.claim(limit=10, lease_for=HOUR) == []
            connection.commit()
        finally:
            connection.close()
        assert len(await store.outbox.claim(limit=10, lease_for=HOUR)) == 1


@pytest.mark.anyio
async def test_a_lock_held_past_busy_timeout_is_store_unavailable(path: Path) -> None:
    with SQLiteStore(path, busy_timeout=0) as store:
        add(store, entry("a", 0))
        connection = store.connect()
        try:
            store.outbox.add(connection, [entry("b", 0)])  # holds the write lock
            with pytest.raises(StoreUnavailableError, match="locked"):
                await store.outbox.claim(limit=10, lease_for=HOUR)
            with pytest.raises(StoreUnavailableError):
                await store.inbox.record("billing", uuid4())
            connection.rollback()
        finally:
            connection.close()
        assert ns(await store.outbox.claim(limit=10, lease_for=HOUR)) == [("a", 0)]


@pytest.mark.anyio
async def test_a_cancelled_caller_starts_nothing(store: SQLiteStore) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.idempotency.claim("k", "f", token="t1", lock_for=HOUR)
    assert await store.idempotency.get("k") is None


@pytest.mark.anyio
async def test_a_caller_cancelled_mid_transaction_still_sees_its_outcome(
    store: SQLiteStore,
) -> None:
    store.migrate()
    seen = []

    async def claim() -> None:
        seen.append(await store.idempotency.claim("k", "f", token="t1", lock_for=HOUR))
        await anyio.sleep(HOUR)  # the cancellation arrives here, after the result

    connection = store.connect()
    try:
        connection.execute("INSERT INTO rk_inbox (consumer, event_id) VALUES ('x', x'00')")
        async with anyio.create_task_group() as group:
            group.start_soon(claim)
            await anyio.wait_all_tasks_blocked()  # the claim waits for our write lock
            group.cancel_scope.cancel()
            connection.rollback()  # the lock is free: the claim goes through
    finally:
        connection.close()
    [record] = seen
    assert record.token == "t1"


# -- claims, order and leases ----------------------------------------------------------------


@pytest.mark.anyio
async def test_each_key_contributes_a_prefix_in_position_order(store: SQLiteStore) -> None:
    add(store, entry("a", 0), entry("b", 0), entry("a", 1), entry("c", 0), entry("a", 2))
    first = await store.outbox.claim(limit=4, lease_for=HOUR)
    assert ns(first) == [("a", 0), ("b", 0), ("a", 1), ("c", 0)]
    assert [m.position for m in first] == sorted(m.position for m in first)
    # a's last row waits: its key is leased to the first claim.
    assert await store.outbox.claim(limit=10, lease_for=HOUR) == []
    assert await store.outbox.mark_published(first) == 4
    assert ns(await store.outbox.claim(limit=10, lease_for=HOUR)) == [("a", 2)]


@pytest.mark.anyio
async def test_a_key_is_not_claimed_while_a_later_row_is_still_leased(store: SQLiteStore) -> None:
    add(store, entry("a", 0), entry("a", 1))
    head, second = await store.outbox.claim(limit=10, lease_for=HOUR)
    assert await store.outbox.retry_later(head, error="down", delay=0)
    # a/0 is due again, but a/1 is still leased to the first claim: the key waits.
    assert await store.outbox.claim(limit=10, lease_for=HOUR) == []
    assert await store.outbox.release([second]) == 1
    assert ns(await store.outbox.claim(limit=10, lease_for=HOUR)) == [("a", 0), ("a", 1)]


@pytest.mark.anyio
async def test_a_blocked_head_holds_back_a_long_key_but_not_the_others(store: SQLiteStore) -> None:
    # More rows than one scan chunk, so skipping the blocked key must carry across chunks.
    add(store, *(entry("a", n) for n in range(700)), entry("b", 0))
    [head] = await store.outbox.claim(limit=1, lease_for=HOUR)
    assert await store.outbox.block(head, error="unsendable")
    assert ns(await store.outbox.claim(limit=5, lease_for=HOUR)) == [("b", 0)]
    status = await store.outbox.status()
    assert (status.pending, status.leased, status.blocked) == (699, 1, 1)
    assert await store.outbox.requeue() == 1
    assert ns(await store.outbox.claim(limit=2, lease_for=HOUR)) == [("a", 0), ("a", 1)]


@pytest.mark.anyio
async def test_an_expired_lease_moves_to_the_next_claim_and_fences_the_old_one(
    store: SQLiteStore,
) -> None:
    add(store, entry("a", 0), entry("b", 0))
    stale = await store.outbox.claim(limit=10, lease_for=0)  # expired at once
    fresh = await store.outbox.claim(limit=10, lease_for=HOUR)
    assert [m.position for m in fresh] == [m.position for m in stale]
    assert [m.attempts for m in fresh] == [2, 2]
    assert {m.lease for m in fresh}.isdisjoint({m.lease for m in stale})
    # Every write under the old lease changes nothing.
    assert await store.outbox.mark_published(stale) == 0
    assert not await store.outbox.retry_later(stale[0], error="late", delay=0)
    assert await store.outbox.release(stale) == 0
    assert not await store.outbox.block(stale[0], error="late")
    assert not await store.outbox.dead_letter(stale[1], letter())
    assert await store.dead_letters.count(DeadLetterFilter()) == 0
    status = await store.outbox.status()
    assert (status.leased, status.pending, status.blocked) == (2, 0, 0)
    assert await store.outbox.mark_published(fresh) == 2


@pytest.mark.anyio
async def test_an_expired_lease_counts_as_pending_until_reclaimed(store: SQLiteStore) -> None:
    add(store, entry("a", 0))
    await store.outbox.claim(limit=10, lease_for=0)
    status = await store.outbox.status()
    assert (status.pending, status.leased) == (1, 0)


@pytest.mark.anyio
async def test_dead_letter_moves_the_row_in_one_transaction(store: SQLiteStore, path: Path) -> None:
    add(store, entry("a", 0), entry("a", 1))
    [head, _] = await store.outbox.claim(limit=10, lease_for=HOUR)
    parked = letter()
    assert await store.outbox.dead_letter(head, parked)
    assert await store.dead_letters.get(parked.id) == parked
    assert raw(path, "SELECT position FROM rk_outbox") == [(head.position + 1,)]


@pytest.mark.anyio
async def test_positions_are_never_reused(store: SQLiteStore) -> None:
    add(store, entry("a", 0))
    [newest] = await store.outbox.claim(limit=10, lease_for=HOUR)
    assert await store.outbox.dead_letter(newest, letter())
    add(store, entry("a", 1))
    [after] = await store.outbox.claim(limit=10, lease_for=HOUR)
    assert after.position > newest.position


@pytest.mark.anyio
async def test_retry_later_keeps_the_first_failure_and_delays_the_row(
    store: SQLiteStore, path: Path
) -> None:
    add(store, entry("a", 0))
    [first] = await store.outbox.claim(limit=10, lease_for=HOUR)
    assert first.first_failed_at is None
    assert await store.outbox.retry_later(first, error="down", delay=0)
    [(failed_at,)] = raw(path, "SELECT first_failed_at FROM rk_outbox")
    assert isinstance(failed_at, float)
    raw(path, "UPDATE rk_outbox SET first_failed_at = 1000.0")  # long ago, unmistakably
    [second] = await store.outbox.claim(limit=10, lease_for=HOUR)
    assert (second.attempts, second.last_error) == (2, "down")
    assert second.first_failed_at == datetime.fromtimestamp(1000.0, timezone.utc)
    assert await store.outbox.retry_later(second, error="still down", delay=HOUR)
    assert raw(path, "SELECT first_failed_at, last_error FROM rk_outbox") == [
        (1000.0, "still down")
    ]
    assert await store.outbox.claim(limit=10, lease_for=HOUR) == []  # not yet due
    assert (await store.outbox.status()).pending == 1
    assert await store.outbox.requeue(positions=[first.position]) == 0  # pending: untouched


@pytest.mark.anyio
async def test_purge_removes_only_old_published_rows(store: SQLiteStore) -> None:
    add(store, entry("a", 0), entry("b", 0))
    claimed = await store.outbox.claim(limit=1, lease_for=HOUR)
    await store.outbox.mark_published(claimed)
    assert await store.outbox.purge_published(older_than=HOUR) == 0
    assert await store.outbox.purge_published(older_than=0) == 1
    status = await store.outbox.status()
    assert (status.published, status.pending) == (0, 1)


@pytest.mark.anyio
async def test_wait_for_rows_wakes_when_this_store_adds_rows(store: SQLiteStore) -> None:
    store.migrate()
    with anyio.fail_after(10):  # the wait itself is an hour: only the wake-up ends it
        async with anyio.create_task_group() as group:
            group.start_soon(store.outbox.wait_for_rows, HOUR)
            await anyio.wait_all_tasks_blocked()
            await store.outbox.aadd(None, [entry()])
    assert len(await store.outbox.claim(limit=10, lease_for=HOUR)) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["with", "commit"])
async def test_wait_for_rows_wakes_when_a_store_connection_commits_in_any_thread(
    store: SQLiteStore, how: str
) -> None:
    store.migrate()

    def business_transaction() -> None:
        connection = store.connect()
        try:
            if how == "with":
                with connection:
                    store.outbox.add(connection, [entry()])
            else:
                store.outbox.add(connection, [entry()])
                connection.commit()
        finally:
            connection.close()

    with anyio.fail_after(10):  # the wait itself is an hour: only the wake-up ends it
        async with anyio.create_task_group() as group:
            group.start_soon(store.outbox.wait_for_rows, HOUR)
            await anyio.wait_all_tasks_blocked()
            thread = threading.Thread(target=business_transaction)
            thread.start()
    thread.join()
    assert len(await store.outbox.claim(limit=10, lease_for=HOUR)) == 1


def test_only_commits_that_wrote_something_notify(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.migrate()
    notified: list[None] = []
    monkeypatch.setattr(store._db, "notify", lambda: notified.append(None))
    connection = store.connect()
    try:
        with pytest.raises(RuntimeError), connection:
            store.outbox.add(connection, [entry()])
            raise RuntimeError("rolled back")
        with connection:
            connection.execute("SELECT count(*) FROM rk_outbox").fetchone()
        assert notified == []
        with connection:
            store.outbox.add(connection, [entry()])
        assert len(notified) == 1
    finally:
        connection.close()


@pytest.mark.anyio
async def test_wait_for_rows_returns_after_the_timeout_or_when_cancelled(
    store: SQLiteStore,
) -> None:
    with anyio.fail_after(5):
        await store.outbox.wait_for_rows(0)
        await store.outbox.wait_for_rows(0.001)
        with anyio.move_on_after(0.001):
            await store.outbox.wait_for_rows(HOUR)


# -- concurrency: threads, tasks and processes -------------------------------------------------


def test_threads_with_their_own_stores_never_claim_the_same_row(path: Path) -> None:
    with SQLiteStore(path) as store:
        add(store, *(entry(f"k{n % 40}", n) for n in range(400)))
    claimed: list[list[int]] = []

    def relay() -> None:
        mine: list[int] = []
        with SQLiteStore(path) as own:

            async def drain() -> None:
                while messages := await own.outbox.claim(limit=7, lease_for=HOUR):
                    mine.extend(m.position for m in messages)
                    await own.outbox.mark_published(messages)

            anyio.run(drain)
        claimed.append(mine)

    threads = [threading.Thread(target=relay) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [position for mine in claimed for position in mine]
    assert len(every) == len(set(every)) == 400


@pytest.mark.anyio
async def test_concurrent_tasks_on_one_store_never_claim_the_same_row(store: SQLiteStore) -> None:
    add(store, *(entry(f"k{n}", n) for n in range(100)))
    results: list[list[OutboxMessage]] = []

    async def claim() -> None:
        results.append(await store.outbox.claim(limit=10, lease_for=HOUR))

    async with anyio.create_task_group() as group:
        for _ in range(15):
            group.start_soon(claim)
    positions = [m.position for messages in results for m in messages]
    assert len(positions) == len(set(positions)) == 100


def test_concurrent_idempotency_claims_from_threads_have_one_winner(store: SQLiteStore) -> None:
    store.migrate()
    start = threading.Barrier(16)
    winners: list[str] = []

    def call(token: str) -> None:
        start.wait()
        record = anyio.run(
            lambda: store.idempotency.claim("order-1", "f", token=token, lock_for=HOUR)
        )
        if record.token == token:
            winners.append(token)

    threads = [threading.Thread(target=call, args=(f"t{n}",)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


@pytest.mark.anyio
async def test_concurrent_idempotency_claims_from_tasks_have_one_winner(store: SQLiteStore) -> None:
    winners: list[str] = []

    async def call(token: str) -> None:
        record = await store.idempotency.claim("k", "f", token=token, lock_for=HOUR)
        if record.token == token:
            winners.append(token)

    async with anyio.create_task_group() as group:
        for n in range(50):
            group.start_soon(call, f"t{n}")
    assert len(winners) == 1


@pytest.mark.anyio
async def test_an_expired_idempotency_claim_is_taken_over_and_fenced(store: SQLiteStore) -> None:
    first = await store.idempotency.claim("k", "f1", token="t1", lock_for=0)
    assert first.token == "t1"
    assert first.expires_in <= 0
    assert await store.idempotency.get("k") is None  # expired: absent
    second = await store.idempotency.claim("k", "f2", token="t2", lock_for=HOUR)
    assert (second.token, second.fingerprint) == ("t2", "f2")
    assert not await store.idempotency.complete("k", token="t1", result=b"late", ttl=HOUR)
    assert not await store.idempotency.release("k", token="t1")
    assert await store.idempotency.complete("k", token="t2", result=b"ok", ttl=HOUR)
    done = await store.idempotency.get("k")
    assert done is not None
    assert (done.status, done.result) == ("completed", b"ok")


_CHILD = textwrap.dedent(
    """
    import json, sys
    import anyio
    from resilience_kit.stores.sqlite import SQLiteStore

    async def main():
        claimed = []
        with SQLiteStore(sys.argv[1]) as store:
            while messages := await store.outbox.claim(limit=5, lease_for=3600):
                claimed += [m.position for m in messages]
                await store.outbox.mark_published(messages)
        print(json.dumps(claimed))

    anyio.run(main)
    """
)


def child(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, cwd=ROOT
    )


def test_another_process_sees_exactly_the_committed_rows(path: Path) -> None:
    with SQLiteStore(path) as store:
        add(store, *(entry(f"k{n % 10}", n) for n in range(20)))
        connection = store.connect()
        try:
            store.outbox.add(connection, [entry("uncommitted")])
            connection.rollback()  # never committed: nobody may publish it
        finally:
            connection.close()
    process = child(path)
    out, _ = process.communicate(timeout=50)
    assert process.returncode == 0
    assert sorted(json.loads(out)) == list(range(1, 21))


def test_two_processes_draining_one_outbox_never_claim_the_same_row(path: Path) -> None:
    with SQLiteStore(path) as store:
        add(store, *(entry(f"k{n % 10}", n) for n in range(1000)))
        process = child(path)
        ours: list[int] = []

        async def drain() -> None:
            while messages := await store.outbox.claim(limit=5, lease_for=HOUR):
                ours.extend(m.position for m in messages)
                await store.outbox.mark_published(messages)

        anyio.run(drain)
        out, _ = process.communicate(timeout=50)
    assert process.returncode == 0
    theirs = json.loads(out)
    assert set(ours).isdisjoint(theirs)
    assert sorted(ours + theirs) == list(range(1, 1001))


_FORKING_PARENT = textwrap.dedent(
    """
    import json, os, sys
    import anyio
    from resilience_kit.messaging import Event
    from resilience_kit.messaging._protocols import OutboxEntry
    from resilience_kit.stores.sqlite import SQLiteStore

    store = SQLiteStore(sys.argv[1])
    store.migrate()  # no threads yet: the pool now holds the parent's connection
    parents = list(store._db._idle)
    connection = store.connect()
    with connection:
        event = Event(type="test.happened", key="a", payload={})
        store.outbox.add(connection, [OutboxEntry.of("t", event)])
    connection.close()
    pid = os.fork()
    if pid == 0:
        claimed = anyio.run(lambda: store.outbox.claim(limit=10, lease_for=3600))
        fresh = all(c not in parents for c in store._db._idle)
        print(json.dumps([len(claimed), fresh]), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    print(json.dumps(store._db._idle == parents), flush=True)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connections(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FORKING_PARENT, str(path)],
        capture_output=True,
        cwd=ROOT,
        timeout=50,
        check=True,
    )
    child, parent = (json.loads(line) for line in result.stdout.splitlines())
    assert child == [1, True]  # the child claimed through connections of its own
    assert parent is True  # and left the parent's pool alone


# -- corrupted rows -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_corrupted_dead_letter_is_reported_by_get_and_skipped_by_list(
    store: SQLiteStore, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    letters = [letter(topic=f"t{n}") for n in range(3)]
    for each in letters:
        await store.dead_letters.put(each)
    raw(path, "UPDATE rk_dead_letters SET attempts = 'many' WHERE id = ?", (str(letters[1].id),))
    with pytest.raises(CorruptRecordError) as caught:
        await store.dead_letters.get(letters[1].id)
    assert caught.value.record == str(letters[1].id)
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        listed = await store.dead_letters.list(DeadLetterFilter(), limit=10)
    assert listed == [letters[0], letters[2]]
    assert str(letters[1].id) in caplog.text
    assert raw(path, "SELECT count(*) FROM rk_dead_letters") == [(3,)]  # nothing deleted


@pytest.mark.anyio
async def test_list_pages_past_corrupted_rows_to_fill_the_limit(
    store: SQLiteStore, path: Path
) -> None:
    letters = [letter() for _ in range(4)]
    for each in letters:
        await store.dead_letters.put(each)
    raw(
        path, "UPDATE rk_dead_letters SET first_failed_at = 'x' WHERE id = ?", (str(letters[0].id),)
    )
    assert await store.dead_letters.list(DeadLetterFilter(), limit=2) == letters[1:3]
    assert await store.dead_letters.list(DeadLetterFilter(), after=letters[2].id) == letters[3:]


@pytest.mark.anyio
async def test_dead_letters_filter_like_the_reference(store: SQLiteStore) -> None:
    class Oddly_NamedError(Exception):  # an underscore: a LIKE wildcard
        pass

    letters = [letter(error=ValueError("x")), letter(error=Oddly_NamedError("y")), letter()]
    poison = DeadLetter.create(
        source="consumer:mail", topic="orgs", data=b"\xff", error=ValueError("z"), attempts=1
    )
    for each in [*letters, poison]:
        await store.dead_letters.put(each)
    every = [*letters, poison]
    filters = [
        DeadLetterFilter(error_type="ValueError"),
        DeadLetterFilter(error_type="builtins.ValueError"),
        DeadLetterFilter(error_type="Oddly_NamedError"),
        DeadLetterFilter(error_type="OddlyXNamedError"),
        DeadLetterFilter(error_type="test_sqlite_store.Oddly_NamedError"),
        DeadLetterFilter(event_type="org.created"),
        DeadLetterFilter(source="consumer:mail"),
        DeadLetterFilter(ids=(letters[0].id, poison.id)),
        DeadLetterFilter(ids=()),
        DeadLetterFilter(since=letters[1].dead_lettered_at, until=poison.dead_lettered_at),
    ]
    for where in filters:
        expected = [each for each in every if where.matches(each)]
        assert await store.dead_letters.list(where) == expected, where
        assert await store.dead_letters.count(where) == len(expected), where


@pytest.mark.anyio
async def test_a_corrupted_idempotency_record_is_a_typed_error(
    store: SQLiteStore, path: Path
) -> None:
    await store.idempotency.claim("k", "f", token="t1", lock_for=HOUR)
    raw(path, "UPDATE rk_idempotency SET expires_at = 'soon' WHERE key = 'k'")
    with pytest.raises(CorruptRecordError) as caught:
        await store.idempotency.get("k")
    assert caught.value.record == "k"
    with pytest.raises(CorruptRecordError):
        await store.idempotency.claim("k", "f", token="t2", lock_for=HOUR)
    assert await store.idempotency.purge_expired() == 0  # not deleted
    assert raw(path, "SELECT token FROM rk_idempotency") == [("t1",)]


@pytest.mark.anyio
async def test_an_inbox_record_with_an_unreadable_time_still_counts_and_purge_keeps_it(
    store: SQLiteStore, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    undated, old = uuid4(), uuid4()
    assert await store.inbox.record("billing", undated)
    assert await store.inbox.record("billing", old)
    raw(path, "UPDATE rk_inbox SET processed_at = 'soon' WHERE event_id = ?", (undated.bytes,))
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        assert await store.inbox.purge(older_than=-1) == 1  # the dated one goes
    assert f"the inbox record 'billing/{undated}' cannot be read back" in caplog.text
    assert await store.inbox.contains("billing", undated)  # processed: never run twice
    assert not await store.inbox.record("billing", undated)
    assert raw(path, "SELECT processed_at FROM rk_inbox") == [("soon",)]


@pytest.mark.anyio
async def test_a_corrupted_outbox_row_is_blocked_and_the_rest_flows(
    store: SQLiteStore, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add(store, entry("a", 0), entry("a", 1), entry("b", 0))
    raw(path, "UPDATE rk_outbox SET created_at = 'yesterday' WHERE position = 1")
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        claimed = await store.outbox.claim(limit=10, lease_for=HOUR)
    assert ns(claimed) == [("b", 0)]  # a/1 waits behind its corrupted head
    assert "the outbox row '1' cannot be read back" in caplog.text
    status = await store.outbox.status()
    assert (status.blocked, status.pending, status.leased) == (1, 1, 1)
    # Repaired by an operator and requeued, the row flows again, in order.
    raw(path, "UPDATE rk_outbox SET created_at = 0 WHERE position = 1")
    assert await store.outbox.requeue(positions=[1]) == 1
    assert ns(await store.outbox.claim(limit=10, lease_for=HOUR)) == [("a", 0), ("a", 1)]


@pytest.mark.anyio
async def test_a_corrupted_availability_time_blocks_only_its_key(
    store: SQLiteStore, path: Path
) -> None:
    add(store, entry("a", 0), entry("b", 0))
    raw(path, "UPDATE rk_outbox SET available_at = 'soon' WHERE position = 1")
    assert ns(await store.outbox.claim(limit=10, lease_for=HOUR)) == [("b", 0)]
    assert (await store.outbox.status()).blocked == 1
    assert raw(path, "SELECT count(*) FROM rk_outbox") == [(2,)]


# -- claims against the reference semantics, under random operations ---------------------------


class ClaimMachine(RuleBasedStateMachine):
    """Random adds, claims and lease outcomes; every claim is checked against a snapshot.

    Delays and lease times are 0 (due or expired at once) or an hour (certainly not
    due), so the snapshot taken just before a claim decides what the claim may return.
    """

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name) / "app.db"
        self.store = SQLiteStore(self.path)
        self.store.migrate()
        self.connection = self.store.connect()
        self.held: list[OutboxMessage] = []
        self.latest = 0
        self.n = 0

    def teardown(self) -> None:
        self.connection.close()
        self.store.close()
        self.directory.cleanup()

    @rule(keys=st.lists(st.sampled_from("abc"), min_size=1, max_size=4))
    def add_rows(self, keys: list[str]) -> None:
        self.n += 1
        with self.connection:
            self.store.outbox.add(self.connection, [entry(key, self.n) for key in keys])

    @rule(limit=st.integers(1, 5), lease_for=st.sampled_from([0.0, HOUR]))
    def claim(self, limit: int, lease_for: float) -> None:
        prefixes = self.claimable_prefixes()
        claimed = anyio.run(lambda: self.store.outbox.claim(limit=limit, lease_for=lease_for))
        everything = [position for prefix in prefixes.values() for position in prefix]
        assert len(claimed) == min(limit, len(everything))
        by_key: dict[str, list[int]] = {}
        for message in claimed:
            by_key.setdefault(message.key, []).append(message.position)
        for key, positions in by_key.items():
            assert positions == prefixes.get(key, [])[: len(positions)], (key, positions)
        self.held, self.latest = claimed + self.held[:10], len(claimed)

    @rule(
        data=st.data(),
        outcome=st.sampled_from(["publish", "retry", "retry later", "release", "block", "dead"]),
        fresh=st.booleans(),
    )
    def finish(self, data: st.DataObject, outcome: str, fresh: bool) -> None:
        """Settle a message of the latest claim, or any held one (perhaps a stale lease)."""
        candidates = self.held[: self.latest] if fresh else self.held
        if not candidates:
            return
        message = data.draw(st.sampled_from(candidates))
        outbox = self.store.outbox
        if outcome == "publish":
            anyio.run(outbox.mark_published, [message])
        elif outcome.startswith("retry"):
            delay = HOUR if outcome == "retry later" else 0.0
            anyio.run(lambda: outbox.retry_later(message, error="down", delay=delay))
        elif outcome == "release":
            anyio.run(outbox.release, [message])
        elif outcome == "block":
            anyio.run(lambda: outbox.block(message, error="unsendable"))
        else:
            anyio.run(outbox.dead_letter, message, letter())

    @rule()
    def requeue(self) -> None:
        anyio.run(self.store.outbox.requeue)

    def claimable_prefixes(self) -> dict[str, list[int]]:
        """Per key not under a live lease: its claimable rows up to the first that is not."""
        rows = self.connection.execute(
            "SELECT position, key, state, available_at,"
            " (julianday('now') - 2440587.5) * 86400.0 FROM rk_outbox"
            " WHERE state != 'published' ORDER BY position",
        ).fetchall()
        live = {key for _, key, state, at, now in rows if state == "leased" and at > now}
        prefixes: dict[str, list[int]] = {}
        closed = set(live)
        for position, key, state, at, now in rows:
            if key in closed:
                continue
            if state == "blocked" or at > now:
                closed.add(key)
                continue
            prefixes.setdefault(str(key), []).append(int(position))
        return prefixes

    @invariant()
    def no_key_is_leased_to_two_claims(self) -> None:
        rows = self.connection.execute(
            "SELECT key, count(DISTINCT lease) FROM rk_outbox WHERE state = 'leased'"
            " AND available_at > (julianday('now') - 2440587.5) * 86400.0 GROUP BY key",
        ).fetchall()
        assert all(count == 1 for _, count in rows), rows


ClaimMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None, database=None
)
test_claims_follow_the_reference_semantics = ClaimMachine.TestCase


@pytest.mark.parametrize("connection", [None, "app.db"])
def test_a_connection_of_another_kind_is_a_type_error(
    store: SQLiteStore, connection: object
) -> None:
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        store.outbox.add(connection, [entry()])
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        store.inbox.mark(connection, "billing", uuid4())
    add(store, entry())  # after the schema check ran once, still a clear TypeError
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        store.outbox.add(connection, [entry()])
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        store.inbox.mark(connection, "billing", uuid4())


def test_without_auto_migrate_a_current_schema_is_used_and_a_newer_one_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    with SQLiteStore(path) as store:
        store.migrate()
    with SQLiteStore(path, auto_migrate=False) as store:
        assert anyio.run(store.outbox.status).pending == 0
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("INSERT INTO rk_schema_version VALUES (99, 0)")
    connection.close()
    before = path.read_bytes()
    with SQLiteStore(path, auto_migrate=False) as store:
        with pytest.raises(StoreSchemaError, match="newer than this resilience-kit"):
            anyio.run(store.outbox.status)
    assert path.read_bytes() == before


# -- a store on an injected clock -----------------------------------------------------------


@pytest.mark.anyio
async def test_a_store_on_a_virtual_clock_runs_a_relays_backoff_in_virtual_time(
    tmp_path: Path,
) -> None:
    clock = VirtualClock(auto_advance=False)
    store = SQLiteStore(tmp_path / "app.db", clock=clock)
    bus = MemoryBus()
    outage = ChaosFault(ConnectionError("bus down"), schedule=[True, True])
    chaos = ChaosPublisher(bus, outage, clock=clock)
    relay = OutboxRelay(
        store.outbox,
        chaos,
        backoff=Backoff.constant(10.0),
        poll_interval=5.0,
        clock=clock,
    )
    connection = store.connect()
    with connection:
        Outbox(store.outbox, topic="orgs").add(
            connection, Event(type="org.created", key="org:1", payload={})
        )
    connection.close()
    try:
        async with clock.autojump(), anyio.create_task_group() as group:
            await group.start(relay.run)
            while not bus.retained("orgs"):
                await clock.asleep(1.0)
            group.cancel_scope.cancel()
    finally:
        store.close()
    # Retried 10 s after each failure, as seen by polls every 5 s of virtual time (a
    # store on the database's clock would make both real seconds).
    assert [(a.at, a.injected) for a in chaos.attempts] == [
        (0.0, True),
        (10.0, True),
        (20.0, False),
    ]


def test_a_store_refuses_a_clock_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="clock"):
        SQLiteStore(tmp_path / "app.db", clock="now")  # type: ignore[arg-type]


def test_a_clocked_store_stamps_outbox_rows_with_its_clock_and_checks_the_connection(
    tmp_path: Path,
) -> None:
    clock = VirtualClock(start=0.0, wall=1_000_000.0)
    with SQLiteStore(tmp_path / "app.db", clock=clock) as store:
        store.migrate()
        connection = store.connect()
        with connection:
            store.outbox.add(connection, [entry()])
        assert connection.execute("SELECT created_at FROM rk_outbox").fetchone() == (1_000_000.0,)
        connection.close()
        with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
            store.outbox.add("not a connection", [entry()])  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_commit_holds_a_virtual_clock_until_the_woken_waiter_resumes(
    tmp_path: Path,
) -> None:
    clock = VirtualClock(auto_advance=False)
    store = SQLiteStore(tmp_path / "app.db", clock=clock)
    store.migrate()
    woken = anyio.Event()

    async def waiter() -> None:
        await store.outbox.wait_for_rows(30.0)
        woken.set()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            connection = store.connect()
            with connection:
                store.outbox.add(connection, [entry()])  # commits and wakes the waiter
            connection.close()
            # Until the waiter runs again, autojump must not move time past it.
            assert clock.held
            await woken.wait()
            await anyio.wait_all_tasks_blocked()
            assert not clock.held
            assert clock.monotonic() == 0.0
    finally:
        store.close()
