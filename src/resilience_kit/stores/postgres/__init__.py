"""PostgreSQL backend for messaging: outbox, dead letters, inbox and idempotency records.

Needs the ``postgres`` extra (``pip install 'resilience-patterns[postgres]'``): psycopg 3
and psycopg_pool. The store runs psycopg's synchronous API on worker threads, so it
serves asyncio and trio alike; `Outbox.add` and `Inbox.mark` also take the caller's own
psycopg connection, so events and de-duplication records commit in the caller's
transaction.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from resilience_kit.stores.postgres._db import Database
from resilience_kit.stores.postgres._dead_letters import PostgresDeadLetterStore
from resilience_kit.stores.postgres._idempotency import PostgresIdempotencyStore
from resilience_kit.stores.postgres._inbox import PostgresInboxStore
from resilience_kit.stores.postgres._notify import Listener, channel_for
from resilience_kit.stores.postgres._outbox import PostgresOutboxStore
from resilience_kit.stores.postgres._schema import migrate

if TYPE_CHECKING:
    import psycopg_pool
    from typing_extensions import Self

__all__ = ("PostgresStore",)


class PostgresStore:
    """Messaging stores in one PostgreSQL schema, sharing one connection pool.

    The components are attributes: ``outbox`` (an `OutboxStore`), ``dead_letters``,
    ``inbox`` and ``idempotency``. Their tables (prefixed ``rk_``) are created in
    ``schema`` by `migrate`, or on first use; every statement names the schema, so the
    ``search_path`` of a connection passed to `Outbox.add` does not matter. Times
    (leases, retries, expiry) are measured by the database's clock.

    Args:
        url: a PostgreSQL URI or libpq connection string; or give ``pool``.
        pool: a `psycopg_pool.ConnectionPool` of your own, already open (it is left
            open by `close`).
        schema: the schema for the tables (created if missing): an identifier.
        min_size: connections the store's pool keeps open (with ``url``).
        max_size: connections the store's pool opens at most (with ``url``).
        notify: wake relays with LISTEN/NOTIFY when rows are added (one ``pg_notify``
            per adding transaction); without it relays only poll.
        timeout: seconds to wait for a connection before raising
            `StoreUnavailableError`.
        auto_migrate: create or upgrade the tables on first use. Off, the first use
            checks them (reading only) and a missing or outdated schema raises
            `StoreSchemaError` without creating anything (how the ``resilience-kit``
            command opens a store).

    Raises:
        ConfigurationError: not exactly one of ``url`` and ``pool``, a bad schema name
            or pool size (`StoreURLError` for a malformed URL).
        ImportError: the ``postgres`` extra is not installed.

    Examples:
        Nothing connects before first use, and the password never shows:

        >>> store = PostgresStore("postgresql://app:s3cret@db.internal/app", schema="orders")
        >>> store
        PostgresStore('postgresql://app:***@db.internal/app', schema='orders')
        >>> store.close()

        In a service, the event commits in the same transaction as your own change:

        <!-- needs: POSTGRES_URL -->
        ```python
        import os

        import anyio
        import psycopg

        from resilience_kit.messaging import Event, Outbox

        url = os.environ["POSTGRES_URL"]  # e.g. postgresql://app@db/app
        with PostgresStore(url, schema="shop") as store:
            store.migrate()
            outbox = Outbox(store.outbox, topic="orders")
            with psycopg.connect(url) as conn, conn.transaction():
                conn.execute("CREATE TABLE IF NOT EXISTS shop.orders (id text, state text)")
                conn.execute("UPDATE shop.orders SET state = 'paid' WHERE id = %s", ("o-17",))
                outbox.add(conn, Event(type="order.paid", key="o-17", payload={}))
            assert anyio.run(store.outbox.status).pending >= 1  # for the relay to publish
        ```
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        pool: psycopg_pool.ConnectionPool[Any] | None = None,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        notify: bool = True,
        timeout: float = 10.0,
        auto_migrate: bool = True,
    ) -> None:
        self._db = Database(
            url,
            pool,
            schema=schema,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            migrate=migrate,
            auto_migrate=bool(auto_migrate),
        )
        channel = channel_for(schema)
        self._listener = Listener(self._db, channel) if notify else None
        self.outbox = PostgresOutboxStore(self._db, listener=self._listener, channel=channel)
        self.dead_letters = PostgresDeadLetterStore(self._db)
        self.inbox = PostgresInboxStore(self._db)
        self.idempotency = PostgresIdempotencyStore(self._db)

    @property
    def schema(self) -> str:
        """The schema holding the tables.

        Examples:
            >>> store = PostgresStore("postgresql://localhost/app", schema="messaging")
            >>> store.schema
            'messaging'
            >>> store.close()
        """
        return self._db.schema

    def __repr__(self) -> str:
        return self._db.name

    def migrate(self) -> None:
        """Create or upgrade the tables now (idempotent; safe from concurrent processes).

        Blocking: call it at start-up, or from a worker thread. The components also
        migrate on first use, unless ``auto_migrate`` is off.

        Raises:
            StoreUnavailableError: the server cannot be reached.
            StoreSchemaError: the schema was created by a newer resilience-kit.

        Examples:
            <!-- needs: POSTGRES_URL -->
            ```python
            import os

            with PostgresStore(os.environ["POSTGRES_URL"], schema="messaging") as store:
                store.migrate()
            ```
        """
        self._db.migrate()

    def close(self) -> None:
        """Close the pool (unless it was given) and the notification listener.

        Examples:
            >>> PostgresStore("postgresql://localhost/app").close()
        """
        if self._listener is not None:
            self._listener.close()
        self._db.close()

    async def ping(self) -> None:
        """Check that the server answers ``SELECT 1``: what a health check asks a store.

        Runs on a worker thread that a cancelled caller (a health check's timeout)
        leaves behind, so the caller is never held up by a server that does not
        answer. `resilience_kit.health.store_check` calls it.

        Raises:
            StoreUnavailableError: the server cannot be reached (or the pool is closed).

        Examples:
            <!-- not run: needs a PostgreSQL server and an event loop -->
            ```python
            with PostgresStore("postgresql://app@db/app") as store:
                await store.ping()
            ```
        """

        def query() -> None:
            self._db.run_sync(lambda connection: connection.execute("SELECT 1"))

        await anyio.to_thread.run_sync(query, abandon_on_cancel=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
