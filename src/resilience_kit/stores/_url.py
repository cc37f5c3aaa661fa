"""Store URLs: one string that names a messaging backend and where its data lives.

``sqlite:///relative.db`` and ``sqlite:////absolute/path.db`` (SQLAlchemy's spelling),
``postgresql://user@host:5432/db?schema=name`` (or ``postgres://``),
``redis://host:6379/0?prefix=rk:`` (or ``rediss://``) and ``memory://``.
``schema`` and ``prefix`` are resilience-kit's own parameters: they are taken out of
the URL before it reaches the driver, and every other query parameter is passed on
as written. A password in a URL is never repeated in an error message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from resilience_kit.errors import StoreURLError

if TYPE_CHECKING:
    from resilience_kit.stores.memory import MemoryStore
    from resilience_kit.stores.postgres import PostgresStore
    from resilience_kit.stores.redis import RedisStore
    from resilience_kit.stores.sqlite import SQLiteStore

__all__ = ("Store", "StoreURL", "mask_url", "open_store", "parse_store_url", "scrub")

Store: TypeAlias = "MemoryStore | SQLiteStore | PostgresStore | RedisStore"
"""What `open_store` returns: one of the messaging backends."""

Backend = Literal["memory", "sqlite", "postgres", "redis"]

_BACKENDS: dict[str, Backend] = {
    "memory": "memory",
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
    "redis": "redis",
    "rediss": "redis",
}

# The parameter each backend takes from the query string (and keeps from the driver).
_OWN_PARAMETER: dict[Backend, str] = {"postgres": "schema", "redis": "prefix"}

_MASK = "***"
# For URLs too broken to split: everything between "scheme://user:" and the last "@".
_LOOSE_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*:)(.*)@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)
_REDIS_DATABASE = re.compile(r"/?[0-9]*")


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A store URL taken apart: the backend, what its constructor gets, and our option.

    Attributes:
        backend: ``"memory"``, ``"sqlite"``, ``"postgres"`` or ``"redis"``.
        target: the SQLite file path, or the URL for the driver (without ``schema`` /
            ``prefix``); empty for ``memory://``.
        option: the ``schema`` (PostgreSQL) or ``prefix`` (Redis) given, if any.
        masked: the URL as given, with its password replaced by ``***``.

    Examples:
        >>> parsed = parse_store_url("postgresql://app:s3cret@db:5432/orders?schema=rk")
        >>> parsed.backend, parsed.target, parsed.option
        ('postgres', 'postgresql://app:s3cret@db:5432/orders', 'rk')
        >>> parsed.masked
        'postgresql://app:***@db:5432/orders?schema=rk'
    """

    backend: Backend
    target: str
    option: str | None
    masked: str


def mask_url(url: str) -> str:
    """``url`` with its password (``user:password@`` or ``?password=``) replaced by ``***``.

    Examples:
        >>> mask_url("redis://:hunter2@cache:6379/0")
        'redis://:***@cache:6379/0'
        >>> mask_url("postgresql://app@db/orders?password=hunter2&sslmode=require")
        'postgresql://app@db/orders?password=***&sslmode=require'
        >>> mask_url("sqlite:///app.db")
        'sqlite:///app.db'
    """
    url = _QUERY_PASSWORD.sub(rf"\g<1>{_MASK}", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _LOOSE_PASSWORD.sub(rf"\g<1>{_MASK}@", url)
    if password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{_MASK}@{hostinfo}"))


def _passwords(url: str) -> set[str]:
    """Every spelling of every password in ``url``: raw and percent-decoded."""
    found = [match.group(2) for match in _QUERY_PASSWORD.finditer(url)]
    try:
        found.append(urlsplit(url).password or "")
    except ValueError:
        loose = _LOOSE_PASSWORD.match(url)
        found.append(loose.group(2) if loose else "")
    return {spelling for secret in found for spelling in (secret, unquote(secret)) if spelling}


def scrub(text: str, url: str | None) -> str:
    """``text`` with every occurrence of ``url``'s password replaced by ``***``.

    For messages that may quote a URL, or a driver's error that may repeat it.

    Examples:
        >>> scrub("cannot log in with hunter2", "redis://:hunter2@cache/0")
        'cannot log in with ***'
    """
    if not url:
        return text
    for secret in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


def _split_query(query: str, name: str, masked: str) -> tuple[str, str | None]:
    """Take parameter ``name`` out of a raw query string; the rest stays byte for byte."""
    kept: list[str] = []
    found: list[str] = []
    for piece in query.split("&"):
        key, _, value = piece.partition("=")
        if unquote(key) == name:
            found.append(unquote(value))
        elif piece:
            kept.append(piece)
    if len(found) > 1:
        raise StoreURLError(masked, f"{name!r} is given {len(found)} times in {masked!r}")
    if found and not found[0]:
        raise StoreURLError(masked, f"{name!r} is empty in {masked!r}")
    return "&".join(kept), (found[0] if found else None)


def _sqlite(parts: SplitResult, masked: str) -> StoreURL:
    if parts.netloc:
        raise StoreURLError(
            masked,
            f"a SQLite URL has no host, got {masked!r}"
            " (sqlite:///relative.db, sqlite:////absolute/path.db)",
        )
    if parts.query:
        raise StoreURLError(masked, f"a SQLite URL takes no query parameters: {masked!r}")
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path or path.endswith("/"):
        raise StoreURLError(
            masked,
            f"no database file in {masked!r} (sqlite:///relative.db, sqlite:////absolute/path.db)",
        )
    return StoreURL("sqlite", path, None, masked)


def _postgres(parts: SplitResult, masked: str) -> StoreURL:
    query, schema = _split_query(parts.query, "schema", masked)
    # The rest of the URL is PostgresStore's to check (it raises StoreURLError itself).
    target = urlunsplit(parts._replace(query=query))
    return StoreURL("postgres", target, schema, masked)


def _redis(parts: SplitResult, masked: str) -> StoreURL:
    query, prefix = _split_query(parts.query, "prefix", masked)
    if not _REDIS_DATABASE.fullmatch(parts.path):
        raise StoreURLError(
            masked,
            f"the path of a Redis URL is a database number (redis://host:6379/0), got {masked!r}",
        )
    return StoreURL("redis", urlunsplit(parts._replace(query=query)), prefix, masked)


def parse_store_url(url: str) -> StoreURL:
    """Check ``url`` and take it apart, without connecting to anything.

    Raises:
        StoreURLError: a malformed URL, an unknown scheme, a SQLite URL without a file,
            an empty or repeated ``schema`` / ``prefix``.

    Examples:
        >>> parse_store_url("sqlite:////var/lib/app/app.db").target
        '/var/lib/app/app.db'
        >>> parse_store_url("redis://cache:6379/0?prefix=billing:").option
        'billing:'
        >>> parse_store_url("mysql://db/app")
        Traceback (most recent call last):
        ...
        resilience_kit.errors.StoreURLError: url: unknown scheme 'mysql' in 'mysql://db/app' ...
    """
    if not isinstance(url, str):
        raise StoreURLError(repr(url), f"must be a str, got {type(url).__name__}")
    masked = mask_url(url)
    if not url:
        raise StoreURLError(masked, "the URL is empty")
    if any(character <= " " or character == "\x7f" for character in url):
        raise StoreURLError(masked, f"{masked!r} contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port: a number in 0-65535
    except ValueError as exc:
        raise StoreURLError(masked, f"malformed URL {masked!r}: {scrub(str(exc), url)}") from None
    if ":" not in url or not parts.scheme:
        raise StoreURLError(masked, f"{masked!r} has no scheme")
    backend = _BACKENDS.get(parts.scheme)
    if backend is None:
        raise StoreURLError(masked, f"unknown scheme {parts.scheme!r} in {masked!r}")
    if parts.fragment or url.endswith("#"):
        raise StoreURLError(
            masked, f"{masked!r} has a '#' fragment (write '#' in a password as %23)"
        )
    if backend == "memory":
        if parts.netloc or parts.path or parts.query:
            raise StoreURLError(masked, f"memory:// takes nothing else, got {masked!r}")
        return StoreURL("memory", "", None, masked)
    if backend == "sqlite":
        return _sqlite(parts, masked)
    if backend == "postgres":
        return _postgres(parts, masked)
    return _redis(parts, masked)


def _construct(parsed: StoreURL, auto_migrate: bool) -> Store:
    # Backend modules are imported on use: each may need an optional extra.
    if parsed.backend == "memory":
        from resilience_kit.stores.memory import MemoryStore  # noqa: PLC0415

        return MemoryStore()
    if parsed.backend == "sqlite":
        from resilience_kit.stores.sqlite import SQLiteStore  # noqa: PLC0415

        return SQLiteStore(parsed.target, auto_migrate=auto_migrate)
    if parsed.backend == "postgres":
        from resilience_kit.stores.postgres import PostgresStore  # noqa: PLC0415

        if parsed.option is None:
            return PostgresStore(parsed.target, auto_migrate=auto_migrate)
        return PostgresStore(parsed.target, schema=parsed.option, auto_migrate=auto_migrate)
    from resilience_kit.stores.redis import RedisStore  # noqa: PLC0415

    if parsed.option is None:
        return RedisStore(url=parsed.target)
    return RedisStore(url=parsed.target, prefix=parsed.option)


def open_store(url: str, *, auto_migrate: bool = True) -> Store:
    """The messaging store a URL names: every component (outbox, dead letters...) in one.

    Nothing is created or migrated when it opens: call the store's ``migrate()`` at
    start-up as with a store built by hand, and ``close()`` it when done. A SQL store
    also migrates on first use, unless ``auto_migrate=False``: then a missing or
    outdated schema raises `StoreSchemaError` and the database is left as it was.

    - ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``: `SQLiteStore` on that
      file (SQLAlchemy's spelling: three slashes, then the path).
    - ``postgresql://user@host:5432/db?schema=rk`` (or ``postgres://``): `PostgresStore`
      on that database, its tables in schema ``rk``.
    - ``redis://host:6379/0?prefix=billing:`` (or ``rediss://``, TLS): `RedisStore`, its
      keys prefixed ``billing:``.
    - ``memory://``: a new, empty `MemoryStore` (for tests).

    Other query parameters go to the driver unchanged (``?sslmode=require``, ``?socket_timeout=2``).

    Args:
        url: the store URL.
        auto_migrate: let a SQLite or PostgreSQL store create or upgrade its tables on
            first use (Redis and memory stores have none).

    Raises:
        StoreURLError: the URL is malformed, has an unknown scheme, names no SQLite file,
            or has a bad ``schema`` / ``prefix``. The message never repeats a password.
        ImportError: the backend's extra is not installed (the message names it).

    Examples:
        >>> from resilience_kit.stores import open_store
        >>> open_store("memory://")
        MemoryStore()
        >>> from resilience_kit.errors import StoreURLError
        >>> try:
        ...     open_store("redis://:s3cret@cache/0?prefix=")
        ... except StoreURLError as error:
        ...     print(error)
        url: 'prefix' is empty in 'redis://:***@cache/0?prefix=' (use ...)
    """
    parsed = parse_store_url(url)
    try:
        return _construct(parsed, bool(auto_migrate))
    except StoreURLError:
        raise
    except ValueError as exc:  # a ConfigurationError (a bad schema or prefix), or the driver's
        problem = f"{scrub(str(exc), url)}, in {parsed.masked!r}"
        raise StoreURLError(parsed.masked, problem) from exc
