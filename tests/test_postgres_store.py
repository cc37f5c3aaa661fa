"""PostgresStore against a real PostgreSQL: what only this backend has to prove.

The store contracts run against PostgreSQL in tests/contract/; these tests cover
concurrency between relays and processes, the schema, LISTEN/NOTIFY, outages and
corrupted rows. Each test gets a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from resilience_kit.errors import (
    ConfigurationError,
    CorruptRecordError,
    StoreError,
    StoreUnavailableError,
    StoreURLError,
)
from resilience_kit.messaging import Outbox
from resilience_kit.messaging._event import Event
from resilience_kit.messaging._protocols import (
    DeadLetterStore,
    IdempotencyStore,
    InboxStore,
    OutboxEntry,
    OutboxStore,
)
from resilience_kit.messaging._records import DeadLetter, DeadLetterFilter, OutboxMessage
from tests.servers import free_port

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
psycopg_pool = pytest.importorskip("psycopg_pool", reason="the postgres extra is not installed")
from resilience_kit.stores.postgres import PostgresStore  # noqa: E402
from resilience_kit.stores.postgres import _outbox as _postgres_outbox  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def impatient(url: str) -> str:
    """``url`` whose sessions fail a lock wait after 5 s: a lock that should not be waited
    for turns into an error, not a hang (say, if a claim stopped skipping locked rows)."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-c%20lock_timeout%3D5s"


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = f"rk_pg_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(impatient(postgres_url), autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def store(postgres_url: str, schema: str) -> Iterator[PostgresStore]:
    with PostgresStore(impatient(postgres_url), schema=schema, max_size=4) as opened:
        opened.migrate()
        yield opened


def entry(key: str, n: int = 0, topic: str = "orders", **payload: Any) -> OutboxEntry:
    return OutboxEntry.of(topic, Event(type="order.placed", key=key, payload={"n": n, **payload}))


def add(url: str, store: PostgresStore, entries: Sequence[OutboxEntry]) -> None:
    """Add ``entries`` in a committed transaction of a connection of the test's own."""
    with psycopg.connect(url) as connection, connection.transaction():
        store.outbox.add(connection, entries)


def sql(url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


def keys_of(messages: Sequence[OutboxMessage]) -> list[str]:
    return [message.key for message in messages]


# -- construction ---------------------------------------------------------------------


def test_the_store_has_every_component_and_they_meet_the_protocols(store: PostgresStore) -> None:
    assert isinstance(store.outbox, OutboxStore)
    assert isinstance(store.dead_letters, DeadLetterStore)
    assert isinstance(store.inbox, InboxStore)
    assert isinstance(store.idempotency, IdempotencyStore)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({}, "url"),
        ({"url": "postgresql://localhost/app", "pool": "x"}, "url"),
        ({"url": "postgresql://localhost/app", "schema": "bad name"}, "schema"),
        ({"url": "postgresql://localhost/app", "schema": "1abc"}, "schema"),
        ({"url": "postgresql://localhost/app", "schema": ""}, "schema"),
        ({"url": "postgresql://localhost/app", "schema": "x" * 64}, "schema"),
        ({"url": "postgresql://localhost/app", "schema": 'a"; DROP TABLE t; --'}, "schema"),
        ({"url": "postgresql://localhost/app", "min_size": -1}, "min_size"),
        ({"url": "postgresql://localhost/app", "max_size": 0}, "max_size"),
        ({"url": "postgresql://localhost/app", "min_size": 5, "max_size": 2}, "max_size"),
        ({"url": "postgresql://localhost/app", "timeout": 0}, "timeout"),
        ({"pool": object()}, "pool"),
    ],
)
def test_misconfiguration_is_refused_at_construction(
    kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PostgresStore(**kwargs)
    assert caught.value.parameter == parameter


def test_a_63_character_schema_is_accepted() -> None:
    store = PostgresStore("postgresql://localhost/app", schema="s" * 63)
    try:
        assert store.schema == "s" * 63
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hunter2@db.internal:5432/app",
        "postgresql://app@db.internal/app?password=hunter2&sslmode=disable",
        "host=db.internal user=app password=hunter2 dbname=app",
        "host=db.internal user=app password='hunter2' dbname=app",
    ],
)
def test_the_password_never_shows_in_the_repr(url: str) -> None:
    with PostgresStore(url, schema="orders") as store:
        assert "hunter2" not in repr(store)
        assert "***" in repr(store)
        assert "hunter2" not in repr(store.outbox)
        assert repr(store).endswith("schema='orders')")


def test_a_malformed_url_is_a_store_url_error_without_the_password() -> None:
    with pytest.raises(StoreURLError) as caught:
        PostgresStore("host=db password=hunter2 this is not a conninfo")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in caught.value.url
    assert caught.value.parameter == "url"


# -- an unreachable server ------------------------------------------------------------


@pytest.mark.anyio
async def test_an_unreachable_server_is_a_typed_error_without_the_password() -> None:
    url = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/app"
    started = time.monotonic()
    with PostgresStore(url, timeout=2) as store:
        with pytest.raises(StoreUnavailableError) as caught:
            store.migrate()
        assert "hunter2" not in str(caught.value)
        assert "hunter2" not in caught.value.store
        assert isinstance(caught.value, ConnectionError)
        with pytest.raises(StoreUnavailableError):
            await store.outbox.claim(limit=10, lease_for=30)
        with pytest.raises(StoreUnavailableError):
            await store.idempotency.get("k")
        with pytest.raises(StoreUnavailableError):
            store.outbox.add(None, [entry("k")])
    assert time.monotonic() - started < 10  # refused at once, not waited for


@pytest.mark.anyio
async def test_wait_for_rows_falls_back_to_sleeping_when_it_cannot_listen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/app"
    with PostgresStore(url, timeout=2) as store:
        with caplog.at_level(logging.WARNING, logger="resilience_kit.stores.postgres"):
            await store.outbox.wait_for_rows(0)  # returns, and says why it cannot listen
    assert "polling only" in caplog.text
    assert "hunter2" not in caplog.text


# -- migrations -----------------------------------------------------------------------


def test_migrate_is_idempotent_and_versioned(postgres_url: str, store: PostgresStore) -> None:
    store.migrate()
    store.migrate()
    assert sql(postgres_url, f"SELECT version FROM {store.schema}.rk_schema_version") == [(1,)]
    tables = sql(
        postgres_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
        " ORDER BY table_name",
        (store.schema,),
    )
    assert [name for (name,) in tables] == [
        "rk_dead_letters",
        "rk_idempotency",
        "rk_inbox",
        "rk_outbox",
        "rk_schema_version",
    ]


def test_concurrent_migrations_from_many_stores_all_succeed(postgres_url: str, schema: str) -> None:
    stores = [PostgresStore(postgres_url, schema=schema, max_size=1) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def migrate(store: PostgresStore) -> None:
        barrier.wait()
        try:
            store.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == []
    assert sql(postgres_url, f"SELECT version FROM {schema}.rk_schema_version") == [(1,)]


def test_a_schema_newer_than_the_library_is_refused(
    postgres_url: str, store: PostgresStore
) -> None:
    sql(postgres_url, f"INSERT INTO {store.schema}.rk_schema_version (version) VALUES (99)")
    with (
        PostgresStore(postgres_url, schema=store.schema) as newer,
        pytest.raises(StoreError) as caught,
    ):
        newer.migrate()
    assert "version 99" in str(caught.value)


@pytest.mark.anyio
async def test_components_migrate_on_first_use(postgres_url: str, schema: str) -> None:
    with PostgresStore(postgres_url, schema=schema, max_size=2) as store:
        assert await store.outbox.claim(limit=1, lease_for=30) == []
        assert await store.inbox.record("billing", uuid.uuid4())
    assert sql(postgres_url, f"SELECT count(*) FROM {schema}.rk_inbox") == [(1,)]


def test_add_migrates_on_first_use(postgres_url: str, schema: str) -> None:
    with PostgresStore(postgres_url, schema=schema, max_size=1) as store:
        add(postgres_url, store, [entry("k")])
    assert sql(postgres_url, f"SELECT key FROM {schema}.rk_outbox") == [("k",)]


# -- the caller's transaction ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_rolled_back_transaction_leaves_no_outbox_row_and_no_inbox_mark(
    postgres_url: str, store: PostgresStore
) -> None:
    event_id = uuid.uuid4()
    with psycopg.connect(postgres_url) as connection:
        with pytest.raises(RuntimeError), connection.transaction():
            store.outbox.add(connection, [entry("k1"), entry("k2")])
            assert store.inbox.mark(connection, "billing", event_id)
            raise RuntimeError("the business write failed")
    assert await store.outbox.claim(limit=10, lease_for=30) == []
    assert (await store.outbox.status()).backlog == 0
    assert not await store.inbox.contains("billing", event_id)

    with psycopg.connect(postgres_url) as connection, connection.transaction():
        store.outbox.add(connection, [entry("k1")])
        assert store.inbox.mark(connection, "billing", event_id)
        assert not store.inbox.mark(connection, "billing", event_id)
    assert keys_of(await store.outbox.claim(limit=10, lease_for=30)) == ["k1"]
    assert await store.inbox.contains("billing", event_id)


@pytest.mark.anyio
async def test_nothing_is_visible_before_the_caller_commits(
    postgres_url: str, store: PostgresStore
) -> None:
    with psycopg.connect(postgres_url) as connection, connection.transaction():
        store.outbox.add(connection, [entry("k")])
        assert await store.outbox.claim(limit=10, lease_for=30) == []
    assert keys_of(await store.outbox.claim(limit=10, lease_for=30)) == ["k"]


@pytest.mark.anyio
async def test_the_callers_search_path_does_not_matter(
    postgres_url: str, store: PostgresStore
) -> None:
    with psycopg.connect(postgres_url, options="-c search_path=pg_catalog") as connection:
        with connection.transaction():
            store.outbox.add(connection, [entry("k")])
            assert store.inbox.mark(connection, "billing", uuid.uuid4())
    assert keys_of(await store.outbox.claim(limit=10, lease_for=30)) == ["k"]


def test_add_refuses_what_is_not_a_psycopg_connection(store: PostgresStore) -> None:
    with pytest.raises(TypeError, match=r"psycopg\.Connection"):
        store.outbox.add(sqlite3.connect(":memory:"), [entry("k")])
    with pytest.raises(TypeError, match=r"psycopg\.Connection"):
        store.inbox.mark(object(), "billing", uuid.uuid4())


@pytest.mark.anyio
async def test_add_without_a_connection_commits_on_its_own(store: PostgresStore) -> None:
    store.outbox.add(None, [entry("a")])
    await store.outbox.aadd(None, [entry("b"), entry("c")])
    await store.outbox.aadd(None, [])
    assert sorted(keys_of(await store.outbox.claim(limit=10, lease_for=30))) == ["a", "b", "c"]


@pytest.mark.anyio
async def test_aadd_with_a_sync_connection_uses_a_worker_thread(
    postgres_url: str, store: PostgresStore
) -> None:
    with psycopg.connect(postgres_url) as connection:
        with connection.transaction():
            await store.outbox.aadd(connection, [entry("k")])
            assert await store.inbox.amark(connection, "billing", uuid.uuid4())
    assert keys_of(await store.outbox.claim(limit=10, lease_for=30)) == ["k"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # psycopg's async API is asyncio-only
@pytest.mark.anyio
async def test_aadd_and_amark_in_an_async_connections_transaction(
    postgres_url: str, store: PostgresStore
) -> None:
    event_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(postgres_url) as connection:
        with pytest.raises(RuntimeError):
            async with connection.transaction():
                await store.outbox.aadd(connection, [entry("gone")])
                assert await store.inbox.amark(connection, "billing", event_id)
                raise RuntimeError("rolled back")
        async with connection.transaction():
            await store.outbox.aadd(connection, [entry("k1"), entry("k2")])
            assert await store.inbox.amark(connection, "billing", event_id)
            assert not await store.inbox.amark(connection, "billing", event_id)
        with pytest.raises(TypeError, match="aadd"):
            store.outbox.add(connection, [entry("k")])
    assert keys_of(await store.outbox.claim(limit=10, lease_for=30)) == ["k1", "k2"]


def _docs_block(page: str, heading: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "docs" / page).read_text()
    section = text[text.index(heading) :]
    return section[section.index("```python\n") + 10 : section.index("\n```\n")]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # psycopg's async API is asyncio-only
@pytest.mark.anyio
async def test_the_outbox_docs_async_transaction_example_commits_the_event_with_the_write(
    postgres_url: str, store: PostgresStore
) -> None:
    namespace: dict[str, Any] = {}
    exec(_docs_block("outbox.md", "### Inside an async transaction"), namespace)
    outbox = Outbox(store.outbox, topic="orgs")
    schema = store.schema
    async with await psycopg.AsyncConnection.connect(
        postgres_url, options=f"-c search_path={schema}"
    ) as conn:
        await conn.execute("CREATE TABLE members (org text, name text)")
        await conn.execute("INSERT INTO members VALUES ('acme', 'ann'), ('acme', 'bob')")
        await conn.commit()
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await namespace["remove_member"](outbox, conn, "bob")
                raise RuntimeError("rolled back: neither the delete nor the event")
        await namespace["remove_member"](outbox, conn, "ann")
        cursor = await conn.execute("SELECT name FROM members ORDER BY name")
        assert await cursor.fetchall() == [("bob",)]
    claimed = await store.outbox.claim(limit=10, lease_for=30)
    assert [message.event().payload for message in claimed] == [{"user": "ann"}]


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_an_async_connection_on_trio_is_a_clear_error(store: PostgresStore) -> None:
    # psycopg cannot open an AsyncConnection on trio; the check comes before any use.
    connection = object.__new__(psycopg.AsyncConnection)
    with pytest.raises(RuntimeError, match="asyncio only"):
        await store.outbox.aadd(connection, [entry("k")])
    with pytest.raises(RuntimeError, match="asyncio only"):
        await store.inbox.amark(connection, "billing", uuid.uuid4())


@pytest.mark.anyio
async def test_many_entries_keep_their_order_and_bytes(
    postgres_url: str, store: PostgresStore
) -> None:
    events = [
        Event(type="t", key="k", payload={"text": "nul \x00 inside", "n": n}) for n in range(5)
    ]
    add(postgres_url, store, [OutboxEntry.of("orders", event) for event in events])
    claimed = await store.outbox.claim(limit=10, lease_for=30)
    assert [message.event() for message in claimed] == events
    assert [message.position for message in claimed] == sorted(m.position for m in claimed)
    assert all(message.created_at.tzinfo == timezone.utc for message in claimed)


# -- claims ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_claim_leases_each_keys_prefix_and_nothing_after_it(
    postgres_url: str, store: PostgresStore
) -> None:
    add(postgres_url, store, [entry("a", 1), entry("b", 1), entry("a", 2), entry("a", 3)])
    first = await store.outbox.claim(limit=2, lease_for=30)
    # Heads first: one row of each key before a second row of any.
    assert sorted(keys_of(first)) == ["a", "b"]
    assert all(message.attempts == 1 for message in first)
    assert len({message.lease for message in first}) == 1
    # Key "a" is held by the first claim: its rows 2 and 3 are not claimable.
    assert await store.outbox.claim(limit=10, lease_for=30) == []
    assert await store.outbox.mark_published(first) == 2
    rest = await store.outbox.claim(limit=10, lease_for=30)
    assert [(m.key, m.event().payload["n"]) for m in rest] == [("a", 2), ("a", 3)]


@pytest.mark.anyio
async def test_skip_locked_alone_would_let_a_second_relay_take_row_two(
    postgres_url: str, store: PostgresStore
) -> None:
    """Relay A is mid-claim and holds row 1 of key k locked: B must not lease row 2."""
    add(postgres_url, store, [entry("k", 1), entry("k", 2), entry("other")])
    with psycopg.connect(postgres_url, autocommit=True) as relay_a, relay_a.transaction():
        relay_a.execute(
            f"SELECT 1 FROM {store.schema}.rk_outbox WHERE key = 'k' AND position ="
            f" (SELECT min(position) FROM {store.schema}.rk_outbox WHERE key = 'k') FOR UPDATE"
        )
        assert keys_of(await store.outbox.claim(limit=10, lease_for=30)) == ["other"]
    claimed = await store.outbox.claim(limit=10, lease_for=30)
    assert [(m.key, m.event().payload["n"]) for m in claimed] == [("k", 1), ("k", 2)]


@pytest.mark.anyio
async def test_a_key_stays_held_while_any_of_its_rows_is_leased(
    postgres_url: str, store: PostgresStore
) -> None:
    add(postgres_url, store, [entry("k", 1), entry("k", 2), entry("k", 3)])
    head, *followers = await store.outbox.claim(limit=10, lease_for=30)
    assert await store.outbox.retry_later(head, error="broker down", delay=0)
    # The head is due again, but this relay still holds rows 2 and 3.
    assert await store.outbox.claim(limit=10, lease_for=30) == []
    assert await store.outbox.release(followers) == 2
    again = await store.outbox.claim(limit=10, lease_for=30)
    assert [(m.event().payload["n"], m.attempts) for m in again] == [(1, 2), (2, 1), (3, 1)]
    assert again[0].last_error == "broker down"
    assert again[0].first_failed_at is not None
    assert again[1].first_failed_at is None


@pytest.mark.anyio
async def test_concurrent_claimers_never_share_a_row_or_a_key(
    postgres_url: str, store: PostgresStore
) -> None:
    keys = [f"key-{n:02d}" for n in range(30)]
    add(postgres_url, store, [entry(key, n) for n in range(8) for key in keys])
    with PostgresStore(postgres_url, schema=store.schema, max_size=4) as other:
        for _ in range(3):  # rounds: claim everything claimable, then publish it
            claims: list[list[OutboxMessage]] = []

            async def claimer(outbox: Any) -> None:
                for _ in range(3):
                    got = await outbox.claim(limit=7, lease_for=60)
                    if got:
                        claims.append(got)  # noqa: B023 - the round's list, on purpose

            async with anyio.create_task_group() as group:
                for n in range(8):
                    group.start_soon(claimer, (store if n % 2 else other).outbox)
            # Racing claimers may skip rows the others hold locked for a moment: what is
            # left is served now (still never a leased key or row twice).
            while got := await store.outbox.claim(limit=7, lease_for=60):
                claims.append(got)

            unpublished = {
                key: [
                    n
                    for (n,) in sql(
                        postgres_url,
                        f"SELECT position FROM {store.schema}.rk_outbox"
                        " WHERE key = %s AND state <> 2 ORDER BY position",
                        (key,),
                    )
                ]
                for key in keys
            }
            owner: dict[str, int] = {}
            rows: set[int] = set()
            for index, claim in enumerate(claims):
                by_key: dict[str, list[int]] = {}
                for message in claim:
                    assert message.position not in rows
                    rows.add(message.position)
                    by_key.setdefault(message.key, []).append(message.position)
                for key, positions in by_key.items():
                    assert owner.setdefault(key, index) == index, f"{key} leased twice"
                    # A prefix of the key's unpublished rows, in order.
                    assert positions == unpublished[key][: len(positions)]
            assert len(owner) == len(keys)  # every key was served this round
            published = 0
            for claim in claims:
                published += await store.outbox.mark_published(claim)
            assert published == len(rows)
    status = await store.outbox.status()
    assert status.published > 0
    assert status.leased == 0


@pytest.mark.anyio
async def test_leases_expire_by_the_database_clock_and_the_old_lease_is_fenced(
    postgres_url: str, store: PostgresStore
) -> None:
    add(postgres_url, store, [entry("k")])
    (old,) = await store.outbox.claim(limit=1, lease_for=0)  # expires at once
    (new,) = await store.outbox.claim(limit=1, lease_for=-5)
    assert (new.position, new.attempts, old.attempts) == (old.position, 2, 1)
    assert new.lease != old.lease
    letter = DeadLetter.create(
        source="outbox", topic="orders", data=old.data, error=ValueError("x"), attempts=1
    )
    assert await store.outbox.mark_published([old]) == 0
    assert await store.outbox.release([old]) == 0
    assert not await store.outbox.retry_later(old, error="late", delay=60)
    assert not await store.outbox.block(old, error="late")
    assert not await store.outbox.dead_letter(old, letter)
    assert await store.dead_letters.get(letter.id) is None
    (current,) = await store.outbox.claim(limit=1, lease_for=30)
    assert (current.attempts, current.last_error) == (3, None)
    assert await store.outbox.mark_published([current]) == 1
    assert await store.outbox.mark_published([current]) == 0  # already published


@pytest.mark.anyio
async def test_retry_later_release_block_and_requeue(
    postgres_url: str, store: PostgresStore
) -> None:
    add(postgres_url, store, [entry("a", 1), entry("a", 2), entry("b", 1)])
    claimed = {m.key: m for m in await store.outbox.claim(limit=2, lease_for=30)}
    assert set(claimed) == {"a", "b"}
    assert await store.outbox.retry_later(claimed["b"], error="later", delay=3600)
    assert await store.outbox.block(claimed["a"], error="poison")
    status = await store.outbox.status()
    assert (status.pending, status.leased, status.blocked, status.published) == (2, 0, 1, 0)
    # a is blocked (its row 2 waits behind it); b waits an hour.
    assert await store.outbox.claim(limit=10, lease_for=30) == []
    assert await store.outbox.requeue() == 1
    again = await store.outbox.claim(limit=10, lease_for=30)
    # Requeued: attempts and errors start over.
    assert [(m.key, m.attempts, m.last_error, m.first_failed_at) for m in again] == [
        ("a", 1, None, None),
        ("a", 1, None, None),
    ]
    assert await store.outbox.release(again) == 2
    assert [m.attempts for m in await store.outbox.claim(limit=10, lease_for=30)] == [1, 1]


@pytest.mark.anyio
async def test_requeue_replays_published_rows_by_position(
    postgres_url: str, store: PostgresStore
) -> None:
    add(postgres_url, store, [entry("a"), entry("b")])
    claimed = await store.outbox.claim(limit=10, lease_for=30)
    assert await store.outbox.mark_published(claimed) == 2
    assert await store.outbox.requeue(positions=[claimed[0].position], blocked=False) == 1
    (replayed,) = await store.outbox.claim(limit=10, lease_for=30)
    assert (replayed.position, replayed.attempts) == (claimed[0].position, 1)
    assert await store.outbox.requeue(positions=[]) == 0


@pytest.mark.anyio
async def test_dead_letter_moves_the_row_in_one_transaction(
    postgres_url: str, store: PostgresStore
) -> None:
    add(postgres_url, store, [entry("k", 1), entry("k", 2)])
    (head, second) = await store.outbox.claim(limit=10, lease_for=30)
    letter = DeadLetter.create(
        source="outbox",
        topic=head.topic,
        data=head.data,
        error=ConnectionError("nul \x00 and a lone surrogate \udcff"),
        attempts=head.attempts,
    )
    assert await store.outbox.dead_letter(head, letter)
    assert await store.dead_letters.get(letter.id) == letter
    assert sql(
        postgres_url,
        f"SELECT count(*) FROM {store.schema}.rk_outbox WHERE position = %s",
        (head.position,),
    ) == [(0,)]
    # The key continues with its next row, still held by the same relay.
    assert await store.outbox.mark_published([second]) == 1


@pytest.mark.anyio
async def test_purge_published_and_status(postgres_url: str, store: PostgresStore) -> None:
    add(postgres_url, store, [entry("a"), entry("b"), entry("c")])
    claimed = await store.outbox.claim(limit=2, lease_for=30)
    assert await store.outbox.mark_published(claimed[:1]) == 1
    status = await store.outbox.status()
    assert (status.pending, status.leased, status.blocked, status.published) == (1, 1, 0, 1)
    assert status.oldest_pending_age >= 0
    assert await store.outbox.purge_published(older_than=3600) == 0
    assert await store.outbox.purge_published(older_than=0) == 1
    assert (await store.outbox.status()).published == 0


@pytest.mark.anyio
async def test_a_blocked_key_with_a_deep_queue_does_not_stall_other_keys(
    postgres_url: str, store: PostgresStore
) -> None:
    add(postgres_url, store, [entry("stuck", n) for n in range(2_000)])
    (head,) = await store.outbox.claim(limit=1, lease_for=30)
    assert await store.outbox.block(head, error="poison")
    add(postgres_url, store, [entry(f"fresh-{n}") for n in range(3)])
    claimed = await store.outbox.claim(limit=10, lease_for=30)
    assert sorted(keys_of(claimed)) == ["fresh-0", "fresh-1", "fresh-2"]


@pytest.mark.anyio
async def test_the_walk_over_keys_resumes_where_it_stopped_and_wraps_around(
    postgres_url: str, store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_postgres_outbox, "_WALK", 1)  # with limit=1: 4 keys per claim
    add(postgres_url, store, [entry(f"k{n}") for n in range(10)])
    waiting = await store.outbox.claim(limit=10, lease_for=30)
    for message in waiting[:9]:
        assert await store.outbox.retry_later(message, error="later", delay=3600)
    assert await store.outbox.release(waiting[9:]) == 1  # only k9 is claimable
    # Four keys per claim: k0-k3, k4-k7, then k8-k9.
    found = [keys_of(await store.outbox.claim(limit=1, lease_for=30)) for _ in range(3)]
    assert found == [[], [], ["k9"]]
    add(postgres_url, store, [entry("a")])  # sorts first: found after wrapping around
    assert keys_of(await store.outbox.claim(limit=1, lease_for=30)) == ["a"]


# -- LISTEN/NOTIFY --------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_commit_wakes_wait_for_rows_promptly(
    postgres_url: str, store: PostgresStore
) -> None:
    await store.outbox.wait_for_rows(0)  # listening from now on
    woke_after: list[float] = []

    async def relay() -> None:
        started = time.monotonic()
        await store.outbox.wait_for_rows(30)
        woke_after.append(time.monotonic() - started)

    async with anyio.create_task_group() as group:
        group.start_soon(relay)
        await anyio.to_thread.run_sync(add, postgres_url, store, [entry("k")])
    assert woke_after[0] < 5  # woken by the commit, long before the timeout


@pytest.mark.anyio
async def test_a_notification_that_came_before_the_wait_is_not_lost(
    postgres_url: str, store: PostgresStore
) -> None:
    await store.outbox.wait_for_rows(0)
    add(postgres_url, store, [entry("k")])
    started = time.monotonic()
    with anyio.fail_after(5):
        await store.outbox.wait_for_rows(30)
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_cancelling_wait_for_rows_is_prompt_and_frees_the_listener(
    store: PostgresStore,
) -> None:
    started = time.monotonic()
    with anyio.move_on_after(0.2) as scope:
        await store.outbox.wait_for_rows(30)
    assert scope.cancelled_caught
    assert time.monotonic() - started < 3
    started = time.monotonic()
    await store.outbox.wait_for_rows(0)  # the listener is not held by the abandoned wait
    assert time.monotonic() - started < 3


@pytest.mark.anyio
async def test_without_notify_add_sends_nothing_and_wait_sleeps(
    postgres_url: str, schema: str
) -> None:
    with PostgresStore(postgres_url, schema=schema, notify=False, max_size=1) as store:
        store.migrate()
        with psycopg.connect(postgres_url, autocommit=True) as listener:
            listener.execute(f'LISTEN "rk_outbox_{schema}"')
            add(postgres_url, store, [entry("k")])
            assert list(listener.notifies(timeout=0)) == []
        await store.outbox.wait_for_rows(0)


def test_the_notification_is_sent_once_per_transaction(
    postgres_url: str, store: PostgresStore
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as listener:
        listener.execute(f'LISTEN "rk_outbox_{store.schema}"')
        with psycopg.connect(postgres_url) as connection, connection.transaction():
            for n in range(5):
                store.outbox.add(connection, [entry("k", n)])
            store.outbox.add(connection, [entry("j", 1), entry("j", 2)])
        notifications = list(listener.notifies(timeout=5, stop_after=1))
        notifications += list(listener.notifies(timeout=0))
    assert len(notifications) == 1


# -- a store on the caller's pool -----------------------------------------------------


@pytest.mark.anyio
async def test_a_callers_pool_is_used_and_left_open(postgres_url: str, schema: str) -> None:
    pool = psycopg_pool.ConnectionPool(postgres_url, min_size=1, max_size=2, open=True)
    try:
        with PostgresStore(pool=pool, schema=schema) as store:
            assert "pool=" in repr(store)
            store.migrate()
            store.outbox.add(None, [entry("k")])
            claimed = await store.outbox.claim(limit=10, lease_for=30)
            assert await store.outbox.mark_published(claimed) == 1
            record = await store.idempotency.claim("key", "fp", token="t", lock_for=30)
            assert record.token == "t"
        assert not pool.closed
        with pool.connection() as connection:
            row = connection.execute(f"SELECT state FROM {schema}.rk_outbox".encode()).fetchone()
            assert row == (2,)
    finally:
        pool.close()


# -- dead letters ---------------------------------------------------------------------


def letters() -> list[DeadLetter]:
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    made = []
    for n, (topic, error, data) in enumerate(
        [
            (
                "orders",
                ValueError("bad"),
                Event(type="order.placed", key="o1", payload={}).to_json(),
            ),
            ("orders", ConnectionError("down"), b"\xff poison"),
            ("billing", KeyError("id"), Event(type="invoice.sent", key="i1", payload={}).to_json()),
            (
                "billing",
                ValueError("worse"),
                Event(type="order.placed", key="o2", payload={}).to_json(),
            ),
        ]
    ):
        made.append(
            DeadLetter.create(
                source="outbox" if n % 2 else "consumer:billing",
                topic=topic,
                data=data,
                error=error,
                attempts=n + 1,
                now=base + timedelta(minutes=n),
            )
        )
    return made


@pytest.mark.anyio
async def test_dead_letter_filters_match_the_reference_semantics(store: PostgresStore) -> None:
    made = letters()
    for letter in made:
        await store.dead_letters.put(letter)
        await store.dead_letters.put(letter)  # idempotent
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    filters = [
        DeadLetterFilter(),
        DeadLetterFilter(topic="orders"),
        DeadLetterFilter(source="outbox"),
        DeadLetterFilter(event_type="order.placed"),
        DeadLetterFilter(error_type="ValueError"),
        DeadLetterFilter(error_type="builtins.ConnectionError"),
        DeadLetterFilter(error_type="Error"),
        DeadLetterFilter(since=base + timedelta(minutes=1), until=base + timedelta(minutes=3)),
        DeadLetterFilter(ids=(made[0].id, made[3].id)),
        DeadLetterFilter(ids=()),
        DeadLetterFilter(topic="billing", error_type="ValueError"),
    ]
    for where in filters:
        expected = [letter for letter in made if where.matches(letter)]
        assert await store.dead_letters.list(where) == expected, where
        assert await store.dead_letters.count(where) == len(expected), where
    pages = [await store.dead_letters.list(DeadLetterFilter(), limit=3)]
    pages.append(await store.dead_letters.list(DeadLetterFilter(), limit=3, after=pages[0][-1].id))
    assert [len(page) for page in pages] == [3, 1]
    assert pages[0] + pages[1] == made
    assert await store.dead_letters.purge(DeadLetterFilter(topic="billing")) == 2
    assert await store.dead_letters.delete([made[0].id, uuid.uuid4()]) == 1
    assert await store.dead_letters.list(DeadLetterFilter()) == [made[1]]


@pytest.mark.anyio
async def test_a_corrupted_dead_letter_is_skipped_by_list_and_raised_by_get(
    postgres_url: str, store: PostgresStore, caplog: pytest.LogCaptureFixture
) -> None:
    made = letters()
    for letter in made:
        await store.dead_letters.put(letter)
    sql(
        postgres_url,
        f"UPDATE {store.schema}.rk_dead_letters SET error_message = '\\xff'::bytea WHERE id = %s",
        (made[1].id,),
    )
    with caplog.at_level(logging.WARNING, logger="resilience_kit.stores.postgres"):
        listed = await store.dead_letters.list(DeadLetterFilter(), limit=3)
    assert listed == [made[0], made[2], made[3]]  # the limit is filled past the bad row
    assert str(made[1].id) in caplog.text
    with pytest.raises(CorruptRecordError) as caught:
        await store.dead_letters.get(made[1].id)
    assert caught.value.record == str(made[1].id)
    assert await store.dead_letters.count(DeadLetterFilter()) == 4  # nothing was deleted


# -- inbox ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_inbox_record_contains_forget_and_purge(store: PostgresStore) -> None:
    event_id = uuid.uuid4()
    assert await store.inbox.record("billing", event_id)
    assert not await store.inbox.record("billing", event_id)
    assert await store.inbox.record("shipping", event_id)  # per consumer
    assert await store.inbox.contains("billing", event_id)
    assert await store.inbox.forget("billing", event_id)
    assert not await store.inbox.forget("billing", event_id)
    assert not await store.inbox.contains("billing", event_id)
    assert await store.inbox.purge(older_than=3600) == 0
    assert await store.inbox.purge(older_than=0) == 1


def test_a_concurrent_duplicate_mark_waits_for_the_first_transaction(
    postgres_url: str, store: PostgresStore
) -> None:
    event_id = uuid.uuid4()
    results: list[bool] = []
    with psycopg.connect(postgres_url) as first, first.transaction():
        assert store.inbox.mark(first, "billing", event_id)

        def second() -> None:
            with psycopg.connect(postgres_url) as connection, connection.transaction():
                results.append(store.inbox.mark(connection, "billing", event_id))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=0.3)
        assert thread.is_alive()  # blocked on the first transaction's row
    thread.join()
    assert results == [False]


# -- idempotency ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_exactly_one_of_many_concurrent_claims_wins(
    postgres_url: str, store: PostgresStore
) -> None:
    winners: list[str] = []
    seen: set[str] = set()
    with PostgresStore(postgres_url, schema=store.schema, max_size=4) as other:

        async def claim(n: int) -> None:
            token = f"t{n}"
            target = store if n % 2 else other
            record = await target.idempotency.claim("order-1", "fp", token=token, lock_for=30)
            seen.add(record.token)
            if record.token == token:
                winners.append(token)

        async with anyio.create_task_group() as group:
            for n in range(40):
                group.start_soon(claim, n)
    assert len(winners) == 1
    assert seen == set(winners)


@pytest.mark.anyio
async def test_idempotency_expiry_is_by_the_database_clock_and_writes_are_fenced(
    store: PostgresStore,
) -> None:
    first = await store.idempotency.claim("k", "fp", token="t1", lock_for=0)
    assert (first.status, first.token) == ("in_progress", "t1")
    assert await store.idempotency.get("k") is None  # expired at once
    second = await store.idempotency.claim("k", "fp2", token="t2", lock_for=30)
    assert (second.token, second.fingerprint) == ("t2", "fp2")
    assert 0 < second.expires_in <= 30
    assert not await store.idempotency.complete("k", token="t1", result=b"late", ttl=60)
    assert not await store.idempotency.release("k", token="t1")
    assert await store.idempotency.complete("k", token="t2", result=b"\x00ok", ttl=60)
    record = await store.idempotency.get("k")
    assert record is not None
    assert (record.status, record.result, record.token) == ("completed", b"\x00ok", "t2")
    duplicate = await store.idempotency.claim("k", "fp2", token="t3", lock_for=30)
    assert (duplicate.token, duplicate.result) == ("t2", b"\x00ok")
    assert not await store.idempotency.release("k", token="t2")  # completed: not released
    await store.idempotency.claim("gone", "fp", token="t", lock_for=-1)
    assert await store.idempotency.purge_expired() == 1
    assert await store.idempotency.release("k2", token="x") is False
    await store.idempotency.claim("k2", "fp", token="x", lock_for=30)
    assert await store.idempotency.release("k2", token="x")
    assert await store.idempotency.get("k2") is None


@pytest.mark.anyio
async def test_a_corrupted_idempotency_record_is_a_typed_error_and_is_kept(
    postgres_url: str, store: PostgresStore
) -> None:
    sql(
        postgres_url,
        f"INSERT INTO {store.schema}.rk_idempotency VALUES"
        " ('k', 'fp', 'bogus', 't', NULL, now() + interval '1 hour')",
    )
    with pytest.raises(CorruptRecordError) as caught:
        await store.idempotency.get("k")
    assert caught.value.record == "k"
    with pytest.raises(CorruptRecordError):
        await store.idempotency.claim("k", "fp", token="t2", lock_for=30)
    assert sql(postgres_url, f"SELECT status FROM {store.schema}.rk_idempotency") == [("bogus",)]
