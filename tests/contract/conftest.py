"""Backends for the store contract suites: every suite runs against each backend here.

A backend fixture yields a `Backend`: the store object, and a way to open a transaction
on the store's own database with the backend's native connection (what a service does
around `Outbox.add` and `Inbox.mark`). Each test gets a fresh, empty store: a new SQLite
file, a new PostgreSQL schema, a new Redis key prefix.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from resilience_kit.testing import VirtualClock


@dataclass
class Backend:
    """A store under test and how to run a transaction on its database."""

    name: str
    store: Any
    transaction: Callable[[], contextlib.AbstractContextManager[Any]]
    clock: VirtualClock | None = None  # set when the store's clock can be moved


def _memory() -> Iterator[Backend]:
    from resilience_kit.stores.memory import MemoryStore  # noqa: PLC0415

    clock = VirtualClock(start=1_000.0)
    store = MemoryStore(clock=clock)
    yield Backend("memory", store, store.transaction, clock)


def _sqlite(tmp_path: Any) -> Iterator[Backend]:
    import sqlite3  # noqa: PLC0415

    from resilience_kit.stores.sqlite import SQLiteStore  # noqa: PLC0415

    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    store.migrate()

    @contextlib.contextmanager
    def transaction() -> Iterator[sqlite3.Connection]:
        connection = store.connect()
        try:
            with connection:  # commits on success, rolls back on an exception
                yield connection
        finally:
            connection.close()

    try:
        yield Backend("sqlite", store, transaction)
    finally:
        store.close()


def _postgres(url: str) -> Iterator[Backend]:
    import psycopg  # noqa: PLC0415

    from resilience_kit.stores.postgres import PostgresStore  # noqa: PLC0415

    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(url, schema=schema)
    store.migrate()

    @contextlib.contextmanager
    def transaction() -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(url) as connection, connection.transaction():
            yield connection

    try:
        yield Backend("postgres", store, transaction)
    finally:
        store.close()
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _redis(url: str) -> Iterator[Backend]:
    import redis  # noqa: PLC0415

    from resilience_kit.stores.redis import RedisStore  # noqa: PLC0415

    prefix = f"t{uuid.uuid4().hex[:12]}:"
    store = RedisStore(url=url, prefix=prefix)

    @contextlib.contextmanager
    def transaction() -> Iterator[None]:
        yield None  # Redis has no transaction to share with a caller's own writes

    try:
        yield Backend("redis", store, transaction)
    finally:
        store.close()
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def sql_like_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """The backends that hold an outbox (and share transactions with the caller)."""
    yield from _make(request, tmp_path)


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """Every backend: for dead letters, inbox records and idempotency."""
    yield from _make(request, tmp_path)


def _make(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    name = request.param
    if name == "memory":
        yield from _memory()
    elif name == "sqlite":
        yield from _sqlite(tmp_path)
    elif name == "postgres":
        yield from _postgres(request.getfixturevalue("postgres_url"))
    else:
        yield from _redis(request.getfixturevalue("redis_url"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the transport contract for Kafka on trio: aiokafka cannot run there.

    Deselected rather than skipped, so that a run which requires every server (CI)
    shows no Kafka test skipped.
    """
    dropped = [item for item in items if _kafka_on_trio(item)]
    if dropped:
        items[:] = [item for item in items if not _kafka_on_trio(item)]
        config.hook.pytest_deselected(items=dropped)


def _kafka_on_trio(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    params = callspec.params
    return bool(params.get("transport") == "kafka" and params.get("anyio_backend") == "trio")


# -- breaker stores and cache stores: "two instances" of a service sharing state ----------


@dataclass
class SharedStores:
    """Two stores that share one state, as two instances of a service would.

    In memory both are the same object (instances in one process share the store); in
    Redis they are two clients on one prefix. ``another`` opens a further one (closed at
    the end of the test); ``flush`` waits until the stores' writes reached the backend.
    """

    name: str
    first: Any
    second: Any
    another: Callable[[], Any]
    flush: Callable[[float], bool]
    clock: VirtualClock


def _memory_breakers() -> Iterator[SharedStores]:
    from resilience_kit.stores.memory import MemoryBreakerStore  # noqa: PLC0415

    store = MemoryBreakerStore()
    yield SharedStores("memory", store, store, lambda: store, lambda _: True, VirtualClock())


def _redis_breakers(url: str) -> Iterator[SharedStores]:
    import redis  # noqa: PLC0415

    from resilience_kit.stores.redis import RedisBreakerStore  # noqa: PLC0415

    prefix = f"test:{uuid.uuid4().hex}:"
    opened: list[Any] = []

    def another() -> Any:
        opened.append(RedisBreakerStore(url=url, prefix=prefix, sync_interval=0.05))
        return opened[-1]

    first, second = another(), another()

    def flush(timeout: float) -> bool:
        flushed = [store.flush(timeout) for store in opened]  # every one, not the first only
        return all(flushed)

    try:
        yield SharedStores("redis", first, second, another, flush, VirtualClock())
    finally:
        for store in opened:
            store.close()
        _drop_keys(redis, url, prefix)


def _memory_caches() -> Iterator[SharedStores]:
    from resilience_kit.caching import MemoryCacheStore  # noqa: PLC0415

    store: Any = MemoryCacheStore()
    yield SharedStores("memory", store, store, lambda: store, lambda _: True, VirtualClock())


def _redis_caches(url: str) -> Iterator[SharedStores]:
    import redis  # noqa: PLC0415

    from resilience_kit.stores.redis import RedisCacheStore  # noqa: PLC0415

    prefix = f"test:{uuid.uuid4().hex}:"
    # Records hold times on the cache clock: a virtual clock at 0 makes these records current.
    clock = VirtualClock()
    opened: list[Any] = []

    def another() -> Any:
        opened.append(RedisCacheStore[Any, Any](url=url, prefix=prefix, clock=clock))
        return opened[-1]

    first, second = another(), another()
    try:
        yield SharedStores("redis", first, second, another, lambda _: True, clock)
    finally:
        for store in opened:
            store.close()
        _drop_keys(redis, url, prefix)


def _drop_keys(redis: Any, url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def breaker_stores(request: pytest.FixtureRequest) -> Iterator[SharedStores]:
    """Every breaker store: two instances sharing one breaker state."""
    if request.param == "memory":
        yield from _memory_breakers()
    else:
        yield from _redis_breakers(request.getfixturevalue("redis_url"))


@pytest.fixture(params=["memory", "redis"])
def cache_stores(request: pytest.FixtureRequest) -> Iterator[SharedStores]:
    """Every cache store: two instances sharing one cache's records and invalidations."""
    if request.param == "memory":
        yield from _memory_caches()
    else:
        yield from _redis_caches(request.getfixturevalue("redis_url"))
