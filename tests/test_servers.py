"""The test PostgreSQL server works, with the features the PostgreSQL backends rely on.

Each test gets a fresh schema (dropped afterwards) and connects with ``search_path`` set
to it, so tests never see each other's tables, even on a shared CI server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
from psycopg import sql  # noqa: E402


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = f"rk_test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        left = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,)
        ).fetchone()
        assert left == (0,)


def connect(url: str, schema: str) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection whose unqualified names live in ``schema``.

    ``lock_timeout`` turns a lock wait that should not happen into an error, not a hang.
    """
    return psycopg.connect(
        url, autocommit=True, options=f"-c search_path={schema} -c lock_timeout=5s"
    )


def test_connects_to_a_postgresql_server(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        assert conn.info.server_version >= 120000
        version = conn.execute("SELECT version()").fetchone()
        assert version is not None
        assert str(version[0]).startswith("PostgreSQL")


def test_a_table_in_a_fresh_schema_is_visible_to_other_connections(
    postgres_url: str, schema: str
) -> None:
    with connect(postgres_url, schema) as writer:
        writer.execute("CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL)")
        writer.execute("INSERT INTO items VALUES (1, 'one'), (2, 'two')")
    with connect(postgres_url, schema) as reader:
        rows = reader.execute("SELECT id, name FROM items ORDER BY id").fetchall()
        assert rows == [(1, "one"), (2, "two")]
        where = reader.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'items'"
            " AND table_schema = current_schema()"
        ).fetchall()
        assert where == [(schema,)]


def test_a_rolled_back_transaction_leaves_nothing(postgres_url: str, schema: str) -> None:
    with connect(postgres_url, schema) as conn, connect(postgres_url, schema) as other:
        conn.execute("CREATE TABLE kept (id integer PRIMARY KEY)")
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO kept VALUES (1), (2)")
            conn.execute("CREATE TABLE discarded (id integer)")
            # Uncommitted rows are invisible to everyone else (what an outbox relies on).
            assert other.execute("SELECT count(*) FROM kept").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
        # DDL is transactional too: the table created inside the transaction is gone.
        assert conn.execute("SELECT to_regclass('discarded')").fetchone() == (None,)

        with pytest.raises(RuntimeError, match="boom"), conn.transaction():
            conn.execute("INSERT INTO kept VALUES (3)")
            raise RuntimeError("boom")
        assert other.execute("SELECT count(*) FROM kept").fetchone() == (0,)


def test_skip_locked_lets_two_connections_claim_different_rows(
    postgres_url: str, schema: str
) -> None:
    claim = "SELECT id FROM jobs ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
    with connect(postgres_url, schema) as first, connect(postgres_url, schema) as second:
        first.execute("CREATE TABLE jobs (id integer PRIMARY KEY)")
        first.execute("INSERT INTO jobs SELECT generate_series(1, 3)")
        with first.transaction():
            assert first.execute(claim, (1,)).fetchall() == [(1,)]
            with second.transaction():
                # Row 1 is locked by `first`: skipped, not waited for.
                assert second.execute(claim, (3,)).fetchall() == [(2,), (3,)]
            with pytest.raises(psycopg.errors.LockNotAvailable), second.transaction():
                second.execute("SELECT id FROM jobs WHERE id = 1 FOR UPDATE NOWAIT")
        # `first` committed, so its lock is gone and every row can be claimed again.
        with second.transaction():
            assert second.execute(claim, (3,)).fetchall() == [(1,), (2,), (3,)]


@pytest.mark.timeout(15)
def test_listen_notify_delivers_committed_notifications_only(
    postgres_url: str, schema: str
) -> None:
    channel = schema  # unique per test, so a shared server cannot cross-talk
    with connect(postgres_url, schema) as listener, connect(postgres_url, schema) as notifier:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        with notifier.transaction(force_rollback=True):
            notifier.execute("SELECT pg_notify(%s, 'rolled back')", (channel,))
        notifier.execute("SELECT pg_notify(%s, 'committed')", (channel,))
        notifications = listener.notifies()
        try:
            notification = next(notifications)  # blocks until one arrives
        finally:
            notifications.close()
        assert notification.channel == channel
        assert notification.payload == "committed"
        assert notification.pid == notifier.info.backend_pid
