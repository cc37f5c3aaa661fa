"""Every backend's store answers ``ping``, and says so when it cannot."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from resilience_kit import StoreUnavailableError
from resilience_kit.health import HealthChecks, HealthStatus, store_check
from resilience_kit.stores.memory import MemoryStore
from resilience_kit.stores.sqlite import SQLiteStore
from tests.servers import free_port

pytestmark = pytest.mark.anyio


async def test_a_memory_store_is_always_up() -> None:
    store = MemoryStore()
    assert await store.ping() is None  # answers, raising nothing
    report = await HealthChecks([store_check(store, name="db")]).run()
    assert report["db"].status is HealthStatus.HEALTHY


async def test_a_sqlite_store_answers_its_ping(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "app.db") as store:
        await store.ping()
        report = await HealthChecks([store_check(store, name="db")]).run()
        assert report["db"].status is HealthStatus.HEALTHY


async def test_a_closed_sqlite_store_fails_its_ping(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "app.db")
    store.close()
    with pytest.raises(StoreUnavailableError):
        await store.ping()
    report = await HealthChecks([store_check(store, name="db")]).run()
    assert report.status is HealthStatus.UNHEALTHY
    assert report["db"].detail is not None
    assert report["db"].detail.startswith("StoreUnavailableError")


async def test_a_sqlite_file_that_is_not_a_database_fails_its_ping(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    path.write_bytes(b"this is not a database" * 100)
    with SQLiteStore(path) as store:
        report = await HealthChecks([store_check(store, name="db")]).run()
    assert report["db"].status is HealthStatus.UNHEALTHY


async def test_a_postgres_store_answers_its_ping(postgres_url: str) -> None:
    pytest.importorskip("psycopg")
    from resilience_kit.stores.postgres import PostgresStore  # noqa: PLC0415

    schema = f"rk_ping_{uuid.uuid4().hex[:12]}"
    with PostgresStore(postgres_url, schema=schema, max_size=2) as store:
        await store.ping()
        report = await HealthChecks([store_check(store, name="db")]).run()
        assert report["db"].status is HealthStatus.HEALTHY
    import psycopg  # noqa: PLC0415

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_a_postgres_store_without_a_server_fails_its_ping() -> None:
    pytest.importorskip("psycopg")
    from resilience_kit.stores.postgres import PostgresStore  # noqa: PLC0415

    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
    with PostgresStore(url, timeout=1.0) as store:
        with pytest.raises(StoreUnavailableError):
            await store.ping()


async def test_a_redis_store_answers_its_ping(redis_url: str) -> None:
    pytest.importorskip("redis")
    from resilience_kit.stores.redis import RedisStore  # noqa: PLC0415

    with RedisStore(url=redis_url, prefix="ping") as store:
        await store.ping()
        report = await HealthChecks([store_check(store, name="cache")]).run()
        assert report["cache"].status is HealthStatus.HEALTHY


async def test_a_redis_store_without_a_server_fails_its_ping() -> None:
    pytest.importorskip("redis")
    from resilience_kit.stores.redis import RedisStore  # noqa: PLC0415

    with RedisStore(url=f"redis://127.0.0.1:{free_port()}/0") as store:
        with pytest.raises(StoreUnavailableError):
            await store.ping()
