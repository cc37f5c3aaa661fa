"""Connections to one SQLite database: configuration, a small pool, errors, the clock.

Every store operation borrows a pooled connection on a worker thread, runs one
transaction on it and gives it back, so no connection is ever used by two threads at
once (and ``check_same_thread`` can be off: a connection moves between anyio's worker
threads). Read-modify-write operations run under ``BEGIN IMMEDIATE``: they take the
database's single write lock before reading, so two relays, threads or processes can
never both decide to claim the same row.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from resilience_kit.clock import Clock
from resilience_kit.errors import StoreError, StoreSchemaError, StoreUnavailableError
from resilience_kit.stores.sqlite import _schema as _sqlite_schema

__all__ = (
    "NOW",
    "Database",
    "check_connection",
    "from_micros",
    "from_seconds",
    "in_thread",
    "now",
    "to_micros",
)

T = TypeVar("T")

# The database's clock as Unix seconds. `julianday('now')` has millisecond resolution
# and works on every SQLite version (`unixepoch('subsec')` needs 3.42). Each
# transaction reads it once and passes it to its statements, so they agree on "now".
NOW = "SELECT (julianday('now') - 2440587.5) * 86400.0"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

# Messages of errors that go away by themselves (another writer held the lock past
# busy_timeout, the file could not be opened or read right now).
_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o", "disk is full", "closed")


async def in_thread(work: Callable[[], T]) -> T:
    """Run ``work`` on a worker thread and hand its result back, even to a cancelled caller.

    A caller already cancelled starts nothing. Once a transaction started, it is
    finished and its outcome returned (anyio does not abandon the thread; the
    cancellation is delivered at the caller's next checkpoint), so a caller never leaves
    a change behind that it did not see, such as a claim it won. The wait is bounded by
    busy_timeout.
    """
    return await anyio.to_thread.run_sync(work)


def now(connection: sqlite3.Connection) -> float:
    """The current time in Unix seconds: the store's clock if it has one, else the database's."""
    clock: Clock | None = getattr(connection, "clock", None)
    if clock is not None:
        return clock.time()
    value: float = connection.execute(NOW).fetchone()[0]
    return value


def from_seconds(seconds: float) -> datetime:
    """A stored Unix time in seconds (``REAL``) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, timezone.utc)


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer Unix microseconds (exact, for ``INTEGER`` columns)."""
    if moment.utcoffset() is None:
        raise ValueError("datetimes must be timezone-aware")
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """Integer Unix microseconds as an aware UTC datetime (exact)."""
    return _EPOCH + timedelta(microseconds=micros)


class _ClockedConnection(sqlite3.Connection):
    """A connection of the store: `now` reads ``clock`` when the store was given one."""

    clock: Clock | None = None


class _CallerConnection(_ClockedConnection):
    """A connection from `SQLiteStore.connect`: it tells the store when it commits writes.

    Relays of the same store object waiting for rows then wake at once. Only a hint:
    a commit by ``COMMIT`` in SQL, or on another connection, is found by polling.
    """

    on_commit: Callable[[], None] | None = None
    _changes_seen = 0

    def commit(self) -> None:
        super().commit()
        self._committed()

    def rollback(self) -> None:
        super().rollback()
        self._changes_seen = self.total_changes  # rolled back: nothing to announce

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        result = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None:
            self._committed()
        else:
            self._changes_seen = self.total_changes
        return result

    def _committed(self) -> None:
        changes = self.total_changes
        if changes != self._changes_seen and self.on_commit is not None:
            self._changes_seen = changes
            self.on_commit()


def check_connection(connection: object) -> None:
    """Raise `TypeError` unless ``connection`` is a `sqlite3.Connection`."""
    if not isinstance(connection, sqlite3.Connection):
        raise TypeError(
            "SQLite stores write on the caller's sqlite3.Connection (from"
            f" SQLiteStore.connect()), got {type(connection).__name__}"
        )


class Database:
    """One SQLite file: configured connections, a bounded pool and error translation.

    Args:
        path: the database file.
        busy_timeout: seconds a statement waits for another connection's lock before
            failing (SQLite retries by itself until then).
        max_connections: pooled connections at most; more concurrent operations wait.
        label: how errors name the store (its repr).
        auto_migrate: create or upgrade the schema on first use; without it, the first
            use checks the schema on a read-only connection and changes nothing.
        clock: where "now" is read (leases, retry times, expiries); ``None``: the
            database's own clock.
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float,
        max_connections: int,
        label: str,
        auto_migrate: bool = True,
        clock: Clock | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.busy_timeout = busy_timeout
        self.label = label
        self.auto_migrate = auto_migrate
        self.schema_ready = False
        self._max_connections = max_connections
        self._idle: list[sqlite3.Connection] = []
        self._open_count = 0
        self._closed = False
        self._condition = threading.Condition()
        self._pid = os.getpid()
        self._schema_lock = threading.Lock()
        self._waiters: set[threading.Event] = set()
        self._waiters_lock = threading.Lock()

    # -- connections ----------------------------------------------------------------------

    def open(self, *, autocommit: bool) -> sqlite3.Connection:
        """A new connection configured as the stores need it.

        ``autocommit`` connections (the pool's) run explicit ``BEGIN`` / ``COMMIT``;
        the others use `sqlite3`'s default transaction handling, which the caller's own
        ``with connection:`` blocks expect.
        """
        with self.translate():
            connection = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None if autocommit else "DEFERRED",
                check_same_thread=False,
                factory=_ClockedConnection if autocommit else _CallerConnection,
            )
            if self.clock is not None:
                connection.clock = self.clock
            if isinstance(connection, _CallerConnection):
                connection.on_commit = self.notify
            try:
                self._use_wal(connection)
                connection.execute("PRAGMA foreign_keys=ON")
            except BaseException:
                connection.close()
                raise
        return connection

    def _use_wal(self, connection: sqlite3.Connection) -> None:
        """Put the database in WAL mode: readers never block the writer.

        The mode is stored in the file, so this is usually a read. Switching takes an
        exclusive lock for which SQLite does not run its busy handler: several processes
        opening a new database at once retry here, within busy_timeout.
        """
        if connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as error:  # noqa: PERF203 - a retry loop
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(pause)  # a worker thread, or the sync migrate(): never a loop
                pause = min(2 * pause, 0.05)
            else:
                return

    def _acquire(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._after_fork()
        with self._condition:
            while True:
                if self._closed:
                    raise StoreUnavailableError(f"{self.label} is closed", store=self.label)
                if self._idle:
                    return self._idle.pop()
                if self._open_count < self._max_connections:
                    self._open_count += 1
                    break
                # Connections are held for one synchronous transaction at a time (never
                # across an await), itself bounded by busy_timeout: this wait is short.
                self._condition.wait()
        try:
            return self.open(autocommit=True)
        except BaseException:
            self._discard()
            raise

    def _after_fork(self) -> None:
        # SQLite connections must not cross a fork (a pre-forking server that built the
        # store before forking): the child leaves its parent's connections alone, never
        # even closing them, and opens its own.
        self._condition = threading.Condition()
        self._idle = []
        self._open_count = 0
        self._pid = os.getpid()

    def _discard(self) -> None:
        with self._condition:
            self._open_count -= 1
            self._condition.notify()

    def _give_back(self, connection: sqlite3.Connection) -> None:
        healthy = True
        if connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                healthy = False
        with self._condition:
            if healthy and not self._closed:
                self._idle.append(connection)
                self._condition.notify()
                return
        connection.close()
        self._discard()

    def close(self) -> None:
        """Close the idle connections; borrowed ones close when given back."""
        with self._condition:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open_count -= len(idle)
            self._condition.notify_all()
        for connection in idle:
            connection.close()

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    # -- running operations -----------------------------------------------------------------

    def run(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``operation`` in one transaction on a pooled connection (this thread).

        A ``write`` transaction begins with ``BEGIN IMMEDIATE``; a read one with a plain
        ``BEGIN``, so that its statements see one snapshot. Either is rolled back when
        ``operation`` raises.
        """
        if not self.schema_ready:
            self.prepare()
        return self._transaction(operation, write=write)

    async def call(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """`run` on a worker thread, so the event loop (asyncio or trio) never blocks."""
        return await in_thread(functools.partial(self.run, operation, write=write))

    def _transaction(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        connection = self._acquire()
        try:
            with self.translate():
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = operation(connection)
                connection.execute("COMMIT")
            return result
        finally:
            self._give_back(connection)

    def run_unless_idle(
        self,
        operation: Callable[[sqlite3.Connection], T],
        *,
        idle: Callable[[sqlite3.Connection], bool],
        default: T,
    ) -> T:
        """`run` a write that often has nothing to do, without queueing for the lock then.

        When another connection holds the write lock (a caller's open transaction, a
        relay's claim), ``idle`` first looks at a read snapshot: if it finds nothing to
        do, ``default`` is returned at once; otherwise the write waits for the lock as
        usual (up to busy_timeout). An idle relay's poll never waits on the application.
        """
        if not self.schema_ready:
            self.prepare()
        connection = self._acquire()
        try:
            with self.translate():
                if not self._try_begin_immediate(connection):
                    connection.execute("BEGIN")
                    nothing_to_do = idle(connection)
                    connection.execute("COMMIT")
                    if nothing_to_do:
                        return default
                    connection.execute("BEGIN IMMEDIATE")
                result = operation(connection)
                connection.execute("COMMIT")
            return result
        finally:
            self._give_back(connection)

    def _try_begin_immediate(self, connection: sqlite3.Connection) -> bool:
        connection.execute("PRAGMA busy_timeout = 0")
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            return False
        finally:
            connection.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout * 1000)}")
        return True

    def migrate(self) -> None:
        """Create or upgrade the schema (idempotent; safe from several processes)."""
        with self._schema_lock:
            self._transaction(
                functools.partial(_sqlite_schema.migrate, label=self.label), write=True
            )
            self.schema_ready = True

    def prepare(self) -> None:
        """Before the first operation: migrate, or (without ``auto_migrate``) check."""
        if self.auto_migrate:
            self.migrate()
        else:
            self.check_schema()

    def check_schema(self) -> None:
        """Make sure the schema is current, on a read-only connection that changes nothing.

        Not even the journal mode: a database that is not the stores' stays as it was,
        byte for byte.

        Raises:
            StoreSchemaError: the schema is missing, older or newer.
            StoreUnavailableError: the file cannot be opened.
        """
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        with self.translate():
            connection = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout)
            try:
                version = _sqlite_schema.current_version(connection)
            finally:
                connection.close()
        if version == _sqlite_schema.LATEST:
            self.schema_ready = True
            return
        if version == 0:
            problem = "has no resilience-kit tables (no rk_schema_version)"
        elif version < _sqlite_schema.LATEST:
            problem = f"has the schema at version {version}, older than {_sqlite_schema.LATEST}"
        else:
            raise StoreSchemaError(
                f"the database {self.path!r} has the schema at version {version}, newer than"
                f" this resilience-kit knows ({_sqlite_schema.LATEST}): upgrade"
                " resilience-patterns",
                store=self.label,
            )
        raise StoreSchemaError(
            f"the database {self.path!r} {problem}, and {self.label} may not change it"
            f" (auto_migrate=False); nothing was changed. Create or upgrade the schema with"
            f" 'resilience-kit migrate --store URL' or {self.label}.migrate()",
            store=self.label,
        )

    def check_caller_schema(self, connection: sqlite3.Connection) -> None:
        """Before the first write on a caller's connection: make sure the tables exist.

        The schema is created on a connection of the store's own when the caller's
        connection is not inside a transaction; inside one (whose locks the migration
        would wait for), the schema must already be current.

        Raises:
            TypeError: ``connection`` is not a `sqlite3.Connection`.
        """
        check_connection(connection)
        if not connection.in_transaction:
            self.prepare()
            return
        with self.translate():
            version = _sqlite_schema.current_version(connection)
        if version != _sqlite_schema.LATEST:
            raise StoreSchemaError(
                f"the schema of {self.path!r} is at version {version}, not"
                f" {_sqlite_schema.LATEST}: call {self.label}.migrate() at start-up (it"
                " cannot run inside the caller's transaction)",
                store=self.label,
            )
        self.schema_ready = True

    # -- commit notifications ---------------------------------------------------------------

    def notify(self) -> None:
        """Wake every `wait_for_commit` (from any thread): writes were committed."""
        with self._waiters_lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.set()

    async def wait_for_commit(self, seconds: float) -> None:
        """Return after `notify`, or after ``seconds``.

        The wait runs on a worker thread of its own (a limiter of one, so it takes no
        place from anyio's default thread limiter), which `notify` can wake from any
        thread; a cancelled wait releases its thread at once.
        """
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = _Wakeup(getattr(self.clock, "hold", None))
        with self._waiters_lock:
            self._waiters.add(woken)
        try:
            if self.clock is None:
                await self._wait(woken, seconds)
            else:
                # Time is the store's clock (a test's virtual clock): the wait ends after
                # ``seconds`` on it, so relays poll for due retries in that time too.
                async with anyio.create_task_group() as group:

                    async def wait() -> None:
                        await self._wait(woken, seconds)
                        group.cancel_scope.cancel()

                    group.start_soon(wait)
                    await self.clock.asleep(seconds)
                    group.cancel_scope.cancel()
        finally:
            with self._waiters_lock:
                self._waiters.discard(woken)
            woken.release()  # free a thread still waiting, and the clock a wake-up held

    @staticmethod
    async def _wait(woken: _Wakeup, seconds: float) -> None:
        await anyio.to_thread.run_sync(
            woken.wait, seconds, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
        )

    # -- errors ---------------------------------------------------------------------------

    @contextmanager
    def translate(self) -> Iterator[None]:
        """Turn `sqlite3` errors raised inside the block into the store's errors."""
        try:
            yield
        except sqlite3.Error as error:
            raise self.error(error) from error

    def error(self, error: sqlite3.Error) -> StoreError:
        """The store error for a `sqlite3` error: unavailable when it may pass by itself."""
        message = str(error)
        lowered = message.lower()
        if isinstance(error, sqlite3.OperationalError) and "no such table" in lowered:
            return StoreError(
                f"{message} in {self.path!r}: call {self.label}.migrate() to create the schema",
                store=self.label,
            )
        if isinstance(error, (sqlite3.OperationalError, sqlite3.ProgrammingError)) and any(
            word in lowered for word in _TRANSIENT
        ):
            return StoreUnavailableError(
                f"SQLite database {self.path!r}: {message}", store=self.label
            )
        return StoreError(f"SQLite database {self.path!r}: {message}", store=self.label)


class _Wakeup(threading.Event):
    """A commit's wake-up for one waiter, holding a test's clock until the waiter resumes.

    On a clock that can hold (a test's `VirtualClock`) the hold lasts from the commit
    until the waiter runs again. The waiter sleeps in a worker thread of its own
    limiter, which `autojump` cannot see: without the hold, every task looks blocked
    between the commit and the thread's return, and time would jump past the relay's
    wake-up.
    """

    def __init__(self, hold: Callable[[], Any] | None) -> None:
        super().__init__()
        self._hold = hold
        self._holds: list[Any] = []
        self._holds_lock = threading.Lock()

    def set(self) -> None:
        """Wake the waiter (from any thread), holding the clock until it resumes."""
        if self._hold is not None:
            with self._holds_lock:
                if not self.is_set():
                    self._holds.append(self._hold())
        super().set()

    def release(self) -> None:
        """Free a thread still waiting (a cancelled wait) and every hold taken."""
        super().set()
        with self._holds_lock:
            holds, self._holds = self._holds, []
        for hold in holds:
            hold.release()
