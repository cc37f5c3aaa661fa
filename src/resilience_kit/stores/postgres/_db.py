"""What every PostgreSQL store component shares: the driver, the pool, the schema, errors.

The components use psycopg's synchronous API and a `psycopg_pool.ConnectionPool` on
worker threads (`anyio.to_thread.run_sync`), so they serve asyncio and trio alike;
psycopg's own async API only runs on asyncio.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio.to_thread

from resilience_kit.errors import (
    ConfigurationError,
    StoreError,
    StoreSchemaError,
    StoreUnavailableError,
    StoreURLError,
)
from resilience_kit.stores.postgres._schema import MIGRATIONS, current_version

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool
    from psycopg import sql

__all__ = (
    "Database",
    "check_schema",
    "import_psycopg",
    "mask_password",
    "require_asyncio",
    "seconds",
)

T = TypeVar("T")

_EXTRA = "pip install 'resilience-patterns[postgres]'"
_SCHEMA = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_URI_PASSWORD = re.compile(r"(://[^:/@?#]*):[^@/?#]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE)


def import_psycopg() -> tuple[Any, Any]:
    """Import psycopg 3 and psycopg_pool, or say which extra installs them.

    Raises:
        ImportError: the ``postgres`` extra is not installed.
    """
    try:
        import psycopg  # noqa: PLC0415  (optional extra, imported on use)
        import psycopg_pool  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"PostgresStore needs psycopg 3 and psycopg_pool: {_EXTRA}") from exc
    return psycopg, psycopg_pool


def require_asyncio(owner: str) -> None:
    """Fail clearly when a `psycopg.AsyncConnection` is used off asyncio (on trio).

    psycopg's async API is built on asyncio; the stores' own operations run its sync
    API on worker threads, so only a caller's async connection is tied to asyncio.

    Raises:
        RuntimeError: no asyncio event loop runs in this thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{owner} with a psycopg.AsyncConnection runs on asyncio only (psycopg's async"
            " API is built on asyncio), and this code runs on another event loop (trio?)."
            " On trio, pass a sync psycopg.Connection (it is used from a worker thread)"
        ) from None


def mask_password(url: str) -> str:
    """``url`` with its password, in any of libpq's spellings, replaced by ``***``."""
    url = _URI_PASSWORD.sub(r"\1:***@", url)
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    return _KEYWORD_PASSWORD.sub(r"\1***", url)


def seconds(value: float, parameter: str) -> float:
    """``value`` as a float number of seconds (any sign); `ConfigurationError` if it is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(parameter, f"must be a finite number of seconds, got {value!r}")
    return float(value)


def check_schema(schema: str) -> str:
    """Return ``schema`` if it is a plain identifier; raise `ConfigurationError` if not."""
    if not isinstance(schema, str) or not _SCHEMA.fullmatch(schema):
        raise ConfigurationError(
            "schema",
            f"must be an identifier of 1 to 63 letters, digits and underscores, got {schema!r}",
        )
    return schema


class Database:
    """One schema on one server: the pool, direct connections, query rendering, errors.

    Args:
        url: a libpq connection string or URI; or give ``pool``.
        pool: a `psycopg_pool.ConnectionPool` the caller owns (it is not closed here).
        schema: where the tables live; every query names it, so no connection's
            ``search_path`` matters.
        min_size: connections the pool keeps open.
        max_size: connections the pool opens at most.
        timeout: seconds to wait for a connection (from the pool, or a new one).
        migrate: the schema migration, run on a direct connection.
        auto_migrate: migrate on first use; without it, the first use checks the
            schema (reading only) and raises `StoreSchemaError` when it is not current.
    """

    def __init__(
        self,
        url: str | None,
        pool: psycopg_pool.ConnectionPool[Any] | None,
        *,
        schema: str,
        min_size: int,
        max_size: int,
        timeout: float,
        migrate: Callable[[psycopg.Connection[Any], str, str], None],
        auto_migrate: bool = True,
    ) -> None:
        self.psycopg, self.psycopg_pool = import_psycopg()
        from psycopg import sql  # noqa: PLC0415

        self.sql = sql
        if (url is None) == (pool is None):
            raise ConfigurationError("url", "give exactly one of url= and pool=")
        self.schema = check_schema(schema)
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
            raise ConfigurationError("min_size", f"must be an int >= 0, got {min_size!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ConfigurationError("max_size", f"must be an int >= 1, got {max_size!r}")
        if max_size < min_size:
            raise ConfigurationError("max_size", f"must be >= min_size ({min_size})")
        if not timeout > 0:
            raise ConfigurationError("timeout", f"must be > 0 seconds, got {timeout!r}")
        self._migrate = migrate
        self.auto_migrate = auto_migrate
        self._timeout = float(timeout)
        self._ready = False
        self._ready_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._opened = False
        if url is not None:
            if not isinstance(url, str):
                raise ConfigurationError("url", f"must be a str, got {type(url).__name__}")
            self.where = repr(mask_password(url))
            params = self._parse(url)
            self._password = str(params.get("password") or "")
            kwargs: dict[str, Any] = {"autocommit": True}
            if "connect_timeout" not in params:
                kwargs["connect_timeout"] = max(2, round(self._timeout))
            self._conninfo = url
            self._kwargs = kwargs
            self.pool: psycopg_pool.ConnectionPool[Any] = self.psycopg_pool.ConnectionPool(
                url,
                kwargs=kwargs,
                min_size=min_size,
                max_size=max_size,
                timeout=self._timeout,
                open=False,
                name=f"resilience-kit:{schema}",
            )
            self._owns_pool = True
        else:
            assert pool is not None  # noqa: S101 - narrowed by the exactly-one check above
            if not isinstance(pool, self.psycopg_pool.ConnectionPool):
                raise ConfigurationError(
                    "pool", f"must be a psycopg_pool.ConnectionPool, got {type(pool).__name__}"
                )
            self.where = f"pool={pool.name!r}"
            self._conninfo = pool.conninfo if isinstance(pool.conninfo, str) else ""
            self._kwargs = {**(pool.kwargs or {}), "autocommit": True}
            self._password = str(
                self._kwargs.get("password") or self._parse(self._conninfo).get("password") or ""
            )
            self.pool = pool
            self._owns_pool = False
            self._opened = True  # the caller opens and closes its own pool
        self.name = f"PostgresStore({self.where}, schema={schema!r})"

    def _parse(self, url: str) -> dict[str, Any]:
        try:
            return dict(self.psycopg.conninfo.conninfo_to_dict(url))
        except self.psycopg.ProgrammingError:
            # libpq's message may quote the string, password included: say it ourselves.
            raise StoreURLError(
                mask_password(url), "not a valid PostgreSQL connection string or URI"
            ) from None

    # -- queries ----------------------------------------------------------------------

    def query(self, template: str, **parts: sql.Composable) -> bytes:
        """Render ``template``, whose ``{schema}`` names the store's schema, once.

        The result is bytes, which psycopg executes as is (and prepares after a few
        executions), so the hot paths never compose SQL again.
        """
        sql = self.sql
        rendered = sql.SQL(template).format(schema=sql.Identifier(self.schema), **parts)
        return bytes(rendered.as_bytes(None))

    def compose(self, template: str, **parts: sql.Composable) -> sql.Composed:
        """`query` for statements built per call (dead-letter filters)."""
        q = self.sql
        return cast(
            "sql.Composed", q.SQL(template).format(schema=q.Identifier(self.schema), **parts)
        )

    # -- connections ------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection of its own (migrations, LISTEN), not from the pool.

        Raises:
            StoreUnavailableError: the server cannot be reached.
        """
        try:
            connection: psycopg.Connection[Any] = self.psycopg.connect(
                self._conninfo, **self._kwargs
            )
        except self.psycopg.Error as exc:
            raise self.error(exc) from None
        return connection

    def ensure_schema(self) -> None:
        """Migrate once per store, on first use (blocking; call it from a worker thread)."""
        if self._ready:
            return
        with self._ready_lock:
            if not self._ready:
                if self.auto_migrate:
                    self.migrate()
                else:
                    self.verify_schema()

    async def aensure_schema(self) -> None:
        """`ensure_schema` without blocking the event loop."""
        if not self._ready:
            await anyio.to_thread.run_sync(self.ensure_schema)

    def migrate(self) -> None:
        """Bring the schema up to date now (idempotent, safe to run from many processes)."""
        with self.connect() as connection:
            try:
                self._migrate(connection, self.schema, self.name)
            except self.psycopg.Error as exc:
                raise self.error(exc) from None
        self._ready = True

    def verify_schema(self) -> None:
        """Make sure the schema is current, reading only: nothing is created.

        Raises:
            StoreSchemaError: the tables are missing, older or newer.
            StoreUnavailableError: the server cannot be reached.
        """
        with self.connect() as connection:
            try:
                version = current_version(connection, self.schema)
            except self.psycopg.Error as exc:
                raise self.error(exc) from None
        latest = len(MIGRATIONS)
        if version == latest:
            self._ready = True
            return
        if version > latest:
            raise StoreSchemaError(
                f"schema {self.schema!r} is at version {version}; this resilience-kit knows"
                f" versions up to {latest}: upgrade resilience-patterns",
                store=self.name,
            )
        found = "has no resilience-kit tables" if version == 0 else f"is at version {version}"
        raise StoreSchemaError(
            f"schema {self.schema!r} at {self.where} {found}, and {self.name} may not change"
            f" it (auto_migrate=False); nothing was changed. Create or upgrade it with"
            " 'resilience-kit migrate --store URL' or store.migrate()",
            store=self.name,
        )

    def _open(self) -> None:
        if not self._opened:
            with self._open_lock:
                if not self._opened:
                    self.pool.open(wait=False)
                    self._opened = True

    def run_sync(self, work: Callable[[psycopg.Connection[Any]], T], *, atomic: bool = False) -> T:
        """Run ``work`` on a pooled connection (blocking); errors become store errors.

        ``atomic`` runs it in a transaction of its own; without it each statement
        commits by itself, which saves two round trips for single statements.
        """
        self.ensure_schema()
        self._open()
        try:
            with self.pool.connection() as connection:
                if atomic or not connection.autocommit:
                    with connection.transaction():
                        return work(connection)
                return work(connection)
        except (
            self.psycopg.Error,
            self.psycopg_pool.PoolTimeout,
            self.psycopg_pool.PoolClosed,
        ) as exc:
            raise self.error(exc) from None

    async def run(self, work: Callable[[psycopg.Connection[Any]], T], *, atomic: bool = False) -> T:
        """`run_sync` on a worker thread."""

        def call() -> T:
            return self.run_sync(work, atomic=atomic)

        return await anyio.to_thread.run_sync(call)

    def error(self, exc: BaseException) -> StoreError:
        """The store error for a driver or pool error, without the password."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        unavailable = (
            self.psycopg.OperationalError,
            self.psycopg.InterfaceError,
            self.psycopg_pool.PoolTimeout,
            self.psycopg_pool.PoolClosed,
        )
        if isinstance(exc, unavailable):
            return StoreUnavailableError(
                f"PostgreSQL at {self.where} is unavailable: {text}", store=self.name
            )
        return StoreError(f"PostgreSQL at {self.where} failed: {text}", store=self.name)

    def close(self) -> None:
        """Close the pool if the store opened it (a caller's pool stays open)."""
        if self._owns_pool:
            self.pool.close()
