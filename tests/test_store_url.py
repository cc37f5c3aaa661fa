"""Store URLs: parsing, the store each one opens, and errors that never show a password."""

from __future__ import annotations

import string
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit.errors import ConfigurationError, StoreURLError
from resilience_kit.stores._url import mask_url, open_store, parse_store_url, scrub
from resilience_kit.stores.memory import MemoryStore
from resilience_kit.stores.sqlite import SQLiteStore


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///app.db", "app.db"),
        ("sqlite:///data/app.db", "data/app.db"),
        ("sqlite:////var/lib/app/app.db", "/var/lib/app/app.db"),
        ("sqlite:///my%20app.db", "my app.db"),
        ("SQLITE:///app.db", "app.db"),
    ],
)
def test_sqlite_urls_name_a_file(url: str, path: str) -> None:
    parsed = parse_store_url(url)
    assert (parsed.backend, parsed.target, parsed.option) == ("sqlite", path, None)


def test_postgres_urls_lose_only_the_schema_parameter() -> None:
    url = "postgresql://app:pw@db:5432/orders?sslmode=require&schema=rk&application_name=a%20b"
    parsed = parse_store_url(url)
    assert parsed.backend == "postgres"
    assert parsed.option == "rk"
    # the other parameters reach psycopg exactly as written (no re-encoding)
    assert (
        parsed.target == "postgresql://app:pw@db:5432/orders?sslmode=require&application_name=a%20b"
    )
    assert parsed.masked == url.replace(":pw@", ":***@")
    assert parse_store_url("postgres://db/orders").target == "postgres://db/orders"


def test_redis_urls_lose_only_the_prefix_parameter() -> None:
    parsed = parse_store_url("rediss://:pw@cache:6380/2?prefix=billing:&socket_timeout=2")
    assert parsed.backend == "redis"
    assert parsed.option == "billing:"
    assert parsed.target == "rediss://:pw@cache:6380/2?socket_timeout=2"
    assert parse_store_url("redis://cache").option is None


def test_memory_url() -> None:
    assert parse_store_url("memory://").backend == "memory"
    first, second = open_store("memory://"), open_store("memory://")
    assert isinstance(first, MemoryStore)
    assert first is not second  # a fresh store each time


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "the URL is empty"),
        ("app.db", "has no scheme"),
        ("mysql://db/app", "unknown scheme 'mysql'"),
        ("sqlite://", "no database file"),
        ("sqlite:///", "no database file"),
        ("sqlite:///data/", "no database file"),
        ("sqlite://host/app.db", "a SQLite URL has no host"),
        ("sqlite:///app.db?mode=ro", "takes no query parameters"),
        ("sqlite:///app .db", "contains spaces or control characters"),
        ("sqlite:///app.db\n", "contains spaces or control characters"),
        ("memory://x", "memory:// takes nothing else"),
        ("postgresql://db:99999/app", "malformed URL"),
        ("postgresql://[::1/app", "malformed URL"),
        ("postgresql://db/app?schema=a&schema=b", "'schema' is given 2 times"),
        ("postgresql://db/app?schema=", "'schema' is empty"),
        ("postgresql://db/app#frag", "has a '#' fragment"),
        ("redis://cache/zero", "database number"),
        ("redis://cache/0?prefix=", "'prefix' is empty"),
    ],
)
def test_bad_urls_raise_store_url_error(url: str, problem: str) -> None:
    with pytest.raises(StoreURLError, match="url: ") as caught:
        parse_store_url(url)
    assert problem in str(caught.value)
    assert caught.value.parameter == "url"
    assert isinstance(caught.value, ConfigurationError)


def test_a_url_must_be_a_string() -> None:
    with pytest.raises(StoreURLError, match="must be a str"):
        parse_store_url(b"sqlite:///app.db")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "mysql://app:s3cret@db/app",
        "postgresql://app:s3cret@db:port/app",
        "postgresql://app:s3cret@db/app?schema=",
        "postgresql://app@db/app?password=s3cret&schema=a&schema=b",
        "redis://:s3cret@cache/x",
        "postgresql://app:s3cret@[::1/app",
        "postgresql://app:s3cret@db/app#",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(StoreURLError) as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in caught.value.url
    assert "***" in str(caught.value)


def test_errors_of_the_store_constructor_become_url_errors(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StoreURLError, match="schema: must be an identifier") as caught:
        open_store("postgresql://app:s3cret@db/app?schema=no-dashes")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(StoreURLError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing/app.db")


def test_open_store_builds_each_backend(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/app.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == f"{tmp_path}/app.db"
    finally:
        store.close()


def test_open_store_postgres_and_redis_without_connecting() -> None:
    pytest.importorskip("psycopg")
    pytest.importorskip("redis")
    from resilience_kit.stores.postgres import PostgresStore  # noqa: PLC0415
    from resilience_kit.stores.redis import RedisStore  # noqa: PLC0415

    postgres = open_store("postgresql://app:s3cret@db.invalid/app?schema=orders")
    try:
        assert isinstance(postgres, PostgresStore)
        assert postgres.schema == "orders"
        assert "s3cret" not in repr(postgres)
    finally:
        postgres.close()
    default = open_store("postgres://db.invalid/app")
    try:
        assert isinstance(default, PostgresStore)
        assert default.schema == "public"
    finally:
        default.close()
    redis_store = open_store("redis://db.invalid:6379/0?prefix=billing")
    try:
        assert isinstance(redis_store, RedisStore)
        assert redis_store.prefix == "billing:"
    finally:
        redis_store.close()


def test_mask_url() -> None:
    assert mask_url("redis://user:pw@cache:6379/0") == "redis://user:***@cache:6379/0"
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert mask_url("postgresql://app@db/x?PASSWORD=pw") == "postgresql://app@db/x?PASSWORD=***"
    # unparsable (a bad IPv6 host): masked up to the last "@" anyway
    assert mask_url("postgresql://app:p@ss@[::1/x") == "postgresql://app:***@[::1/x"


def test_scrub() -> None:
    url = "postgresql://app:p%40ss@db/x"
    assert scrub("auth failed for p@ss and p%40ss", url) == "auth failed for *** and ***"
    assert scrub("nothing secret", "sqlite:///app.db") == "nothing secret"
    assert scrub("nothing secret", None) == "nothing secret"


PASSWORDS = st.text(alphabet=string.ascii_letters + string.digits + "@:/?#%&=+ !", min_size=8)


@settings(max_examples=60, deadline=None)
@given(
    password=PASSWORDS,
    scheme=st.sampled_from(["mysql", "postgresql", "redis", "sqlite"]),
    port=st.sampled_from(["5432", "port"]),
)
def test_no_password_survives_any_error(password: str, scheme: str, port: str) -> None:
    url = f"{scheme}://app:{quote(password, safe='')}@host:{port}/0?schema=&prefix="
    with pytest.raises(StoreURLError) as caught:
        open_store(url)
    message = str(caught.value)
    assert password not in message
    assert quote(password, safe="") not in message
