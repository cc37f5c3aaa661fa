"""The SQLite backend, the embedded default: every messaging store in one database file.

Standard-library `sqlite3` only. The outbox and the inbox write on the application's
own `sqlite3` connection, inside its transaction, so an event is stored exactly when the
business change that caused it commits. Blocking database work runs on worker threads
(`anyio.to_thread`), so the stores serve async code on asyncio and trio alike.

Examples:
    >>> import os, tempfile
    >>> from resilience_kit.stores.sqlite import SQLiteStore
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     with SQLiteStore(os.path.join(directory, "app.db")) as store:
    ...         store.migrate()
    ...         sorted(name for name in vars(store) if not name.startswith("_"))
    ['dead_letters', 'idempotency', 'inbox', 'outbox', 'projections']
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from types import TracebackType

import anyio.to_thread

from resilience_kit._checks import check_int, check_positive
from resilience_kit.clock import Clock
from resilience_kit.errors import ConfigurationError, StoreError, StoreUnavailableError
from resilience_kit.stores.sqlite._database import Database
from resilience_kit.stores.sqlite._dead_letters import SQLiteDeadLetterStore
from resilience_kit.stores.sqlite._idempotency import SQLiteIdempotencyStore
from resilience_kit.stores.sqlite._inbox import SQLiteInboxStore
from resilience_kit.stores.sqlite._outbox import SQLiteOutboxStore
from resilience_kit.stores.sqlite._projection import SQLiteProjectionStore

__all__ = ("SQLiteStore",)

_MINIMUM_VERSION = (3, 24, 0)  # INSERT ... ON CONFLICT DO UPDATE


def _check_path(path: str) -> None:
    if path in ("", ":memory:") or path.startswith("file:"):
        raise ConfigurationError(
            "path",
            f"must name a database file, got {path!r}: every connection to an in-memory"
            " or URI database would see a database of its own (use MemoryStore in tests)",
        )
    file = Path(path)
    if file.is_dir():
        raise ConfigurationError("path", f"{path!r} is a directory, not a database file")
    directory = file.parent
    if not directory.is_dir():
        raise ConfigurationError(
            "path", f"the directory {str(directory)!r} of {path!r} does not exist"
        )


class SQLiteStore:
    """Outbox, dead letters, inbox and idempotency records in one SQLite database file.

    The components are attributes: ``outbox`` (an `OutboxStore`), ``dead_letters``
    (a `DeadLetterStore`), ``inbox`` (an `InboxStore`) and ``idempotency`` (an
    `IdempotencyStore`) and ``projections`` (a `ProjectionStore`, for
    `resilience_kit.messaging.Projection`). Their tables are prefixed ``rk_`` and can live in the
    application's own database. The library owns the schema: `migrate` creates or
    upgrades it (the components also run it on first use, unless ``auto_migrate`` is
    off). The database runs in WAL
    mode, so readers never wait for the writer; writers take turns, each waiting up to
    ``busy_timeout`` for the lock before `StoreUnavailableError` is raised.

    Leases, retry times and expiries are measured by the database's clock, which every
    process using the file shares. A corrupted row is never deleted: dead letters and
    idempotency records raise `CorruptRecordError` from ``get`` (``list`` skips and logs
    them). An outbox row whose event cannot be decoded goes to the relay's
    ``on_exhausted`` policy (dead letters by default); one whose other columns cannot be
    read is blocked and logged, so its key waits for an operator (fix it, then
    ``requeue``) while the other keys flow.

    Args:
        path: the database file (created if missing; its directory must exist).
        busy_timeout: seconds a statement waits for another connection's write lock.
        max_connections: connections the store's own operations use at most.
        auto_migrate: create or upgrade the schema on first use. Off, the first use
            checks it on a read-only connection instead, and a missing or outdated
            schema raises `StoreSchemaError` without changing the file (how the
            ``resilience-kit`` command opens a store).
        clock: where the store reads "now" for leases, retry times and expiries
            (default: the database's clock). Pass a test's `VirtualClock` so that a
            relay's backoff and leases run in virtual time; in production every
            process using the file must read the same clock, so leave it out.

    Raises:
        ConfigurationError: for a bad parameter, such as a path whose directory does
            not exist.
        StoreError: Python's SQLite library is older than 3.24.

    Examples:
        >>> import os, tempfile
        >>> directory = tempfile.TemporaryDirectory()
        >>> store = SQLiteStore(os.path.join(directory.name, "app.db"), busy_timeout=2.0)
        >>> store.migrate()
        >>> store.close()
        >>> directory.cleanup()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        max_connections: int = 4,
        auto_migrate: bool = True,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigurationError("path", f"must be a str or a path, got {path!r}")
        self._path = os.fspath(path)
        _check_path(self._path)
        check_positive("busy_timeout", busy_timeout, allow_zero=True)
        check_int("max_connections", max_connections, minimum=1)
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError("clock", f"must be a Clock or None, got {clock!r}")
        if sqlite3.sqlite_version_info < _MINIMUM_VERSION:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old: SQLiteStore needs 3.24 or newer",
                store=repr(self),
            )
        self._db = Database(
            self._path,
            busy_timeout=float(busy_timeout),
            max_connections=max_connections,
            label=repr(self),
            auto_migrate=bool(auto_migrate),
            clock=clock,
        )
        self.outbox = SQLiteOutboxStore(self._db)
        self.dead_letters = SQLiteDeadLetterStore(self._db)
        self.inbox = SQLiteInboxStore(self._db)
        self.idempotency = SQLiteIdempotencyStore(self._db)
        self.projections = SQLiteProjectionStore(self._db)

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    @property
    def path(self) -> str:
        """The database file.

        Examples:
            >>> SQLiteStore("app.db").path
            'app.db'
        """
        return self._path

    def migrate(self) -> None:
        """Create the tables, or bring them to this version's schema; idempotent.

        Each migration step is applied once, in a transaction, and recorded in
        ``rk_schema_version``; several processes may migrate at the same time.

        Raises:
            StoreSchemaError: the database was migrated by a newer version of the library.
            StoreUnavailableError: the database cannot be opened or stayed locked.

        Examples:
            >>> import os, tempfile
            >>> with tempfile.TemporaryDirectory() as directory:
            ...     with SQLiteStore(os.path.join(directory, "app.db")) as store:
            ...         store.migrate()
            ...         store.migrate()  # nothing left to do
            ...         connection = store.connect()
            ...         connection.execute("SELECT max(version) FROM rk_schema_version").fetchone()
            ...         connection.close()
            (2,)
        """
        self._db.migrate()

    def connect(self) -> sqlite3.Connection:
        """A new connection to the database, configured as the stores need it.

        Use it for the application's own transactions around ``outbox.add`` and
        ``inbox.mark``: the journal is WAL, the busy timeout is the store's, foreign
        keys are enforced, and `sqlite3`'s default transaction handling applies
        (``with connection:`` commits, or rolls back on an exception). It may be used
        from any one thread at a time. When it commits writes, relays of this store
        object waiting for rows wake at once. Close it when done.

        Raises:
            StoreUnavailableError: the database cannot be opened.

        Examples:
            >>> import os, tempfile
            >>> from resilience_kit.messaging import Event
            >>> from resilience_kit.messaging._protocols import OutboxEntry
            >>> with tempfile.TemporaryDirectory() as directory:
            ...     with SQLiteStore(os.path.join(directory, "app.db")) as store:
            ...         store.migrate()
            ...         connection = store.connect()
            ...         with connection:  # one transaction: the business write and the event
            ...             event = Event(type="org.created", key="org:1", payload={})
            ...             store.outbox.add(connection, [OutboxEntry.of("orgs", event)])
            ...         connection.execute("SELECT count(*) FROM rk_outbox").fetchone()
            ...         connection.close()
            (1,)
        """
        if self._db.closed:
            raise StoreUnavailableError(f"{self!r} is closed", store=repr(self))
        return self._db.open(autocommit=False)

    def close(self) -> None:
        """Close the store's own connections (connections from `connect` stay open).

        Examples:
            >>> store = SQLiteStore("app.db")
            >>> store.close()
            >>> store.close()  # idempotent
        """
        self._db.close()

    async def ping(self) -> None:
        """Check that the database answers a query: what a health check asks a store.

        Runs on a worker thread that a cancelled caller (a health check's timeout)
        leaves behind, so the caller is never held up by a locked or slow file.
        `resilience_kit.health.store_check` calls it.

        Raises:
            StoreUnavailableError: the store is closed, or the database cannot be read.

        Examples:
            >>> import anyio, os, tempfile
            >>> with tempfile.TemporaryDirectory() as directory:
            ...     with SQLiteStore(os.path.join(directory, "app.db")) as store:
            ...         anyio.run(store.ping)
        """

        def query() -> None:
            self._db.run(lambda c: c.execute("SELECT count(*) FROM sqlite_master"), write=False)

        await anyio.to_thread.run_sync(query, abandon_on_cancel=True)

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
