"""RedisStore: dead letters, inbox records and idempotency records in Redis (no outbox)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resilience_kit._checks import check_positive
from resilience_kit.errors import ConfigurationError
from resilience_kit.stores.redis._client import RedisIO, redis_client
from resilience_kit.stores.redis._dead_letters import RedisDeadLetterStore
from resilience_kit.stores.redis._idempotency import RedisIdempotencyStore
from resilience_kit.stores.redis._inbox import RedisInboxStore

if TYPE_CHECKING:
    import redis as redis_lib

__all__ = ("RedisStore",)

DEFAULT_INBOX_TTL = 7 * 86_400.0
"""Seven days: how long an inbox record is kept by default."""


def _check(prefix: str, inbox_ttl: float, client: redis_lib.Redis) -> None:
    if not isinstance(prefix, str) or not prefix:
        raise ConfigurationError("prefix", f"must be a non-empty string, got {prefix!r}")
    check_positive("inbox_ttl", inbox_ttl)
    if client.get_encoder().decode_responses:
        raise ConfigurationError(
            "client",
            "must return bytes (results and dead letters are binary): build it without"
            " decode_responses=True",
        )


class RedisStore:
    """Dead letters, inbox records and idempotency records in Redis: no outbox.

    The store's components are its attributes: ``dead_letters`` (a `DeadLetterStore`),
    ``inbox`` (an `InboxStore`) and ``idempotency`` (an `IdempotencyStore`). Each is
    made of atomic Lua scripts, so any number of processes can share one prefix.

    **No outbox.** An outbox only works when its rows commit in the *same transaction*
    as the business write; Redis cannot join the transaction of the caller's SQL
    database, so a Redis outbox would either lose events (the database committed, the
    write to Redis failed) or publish events for writes that rolled back. Keep the
    outbox in the business database (`SQLiteStore`, `PostgresStore`), and use Redis for
    what needs no shared transaction. For the same reason ``inbox.mark`` (which records
    an event *inside* the caller's transaction) raises `TypeError`: use
    ``inbox.record`` (de-duplication by an atomic ``ZADD NX``, committed on its own),
    or a SQL store's inbox when the consumer's writes and its de-duplication must
    commit together.

    **Time** is Redis's: idempotency locks and results expire by ``PEXPIRE``, inbox
    records are stamped with the server's ``TIME``, so processes with skewed clocks
    agree. Expired idempotency records are removed by Redis itself (so
    ``idempotency.purge_expired`` returns 0); inbox records are kept ``inbox_ttl``
    seconds (an event delivered again after that is processed again).

    **Durability.** Redis acknowledges a write before it reaches disk and replicas
    asynchronously: run it with ``appendonly yes`` (and ``appendfsync everysec`` or
    ``always``) if dead letters must survive a restart, and remember that a failover
    can lose the last writes. Dead letters carry no TTL, so under ``maxmemory`` use
    ``noeviction`` or a ``volatile-*`` policy — ``allkeys-*`` would evict them.

    **Keys** all start with ``prefix`` (nothing else is read or written; the store
    never flushes a database). On Redis Cluster put a hash tag in the prefix
    (``"{orders}:"``): scripts touch several keys.

    **Outages.** Every operation raises `StoreUnavailableError` when Redis cannot be
    reached (at most the client's socket timeouts: 1 s for a client made from
    ``url``), and `StoreError` when Redis refuses it (out of memory, say).

    Args:
        url: a Redis URL such as ``redis://localhost:6379/0``; or give ``client``.
        client: a synchronous ``redis.Redis`` client returning bytes (not
            ``decode_responses=True``); it stays open when the store is closed.
        prefix: the prefix of every key (``":"`` is appended if it does not end with one).
        inbox_ttl: seconds an inbox record is kept.

    Raises:
        ConfigurationError: for a bad parameter.

    Examples:
        >>> store = RedisStore(url="redis://localhost:6379/0", prefix="orders")
        >>> store
        RedisStore(prefix='orders:')
        >>> hasattr(store, "outbox"), store.inbox.ttl
        (False, 604800.0)
        >>> store.close()

        In a service (on asyncio or trio):

        <!-- not run: a fragment; needs a Redis server -->
        ```python
        with RedisStore(url="redis://redis:6379/0", prefix="billing:") as store:
            if await store.inbox.record("billing", event.id):
                await charge(event)
            letters = await store.dead_letters.list(DeadLetterFilter(topic="orders"))
        ```
    """

    __slots__ = ("_io", "_owns_client", "dead_letters", "idempotency", "inbox", "prefix")

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis_lib.Redis | None = None,
        prefix: str = "rk:",
        inbox_ttl: float = DEFAULT_INBOX_TTL,
    ) -> None:
        owns_client = client is None
        redis, client = redis_client("RedisStore", client, url)
        try:
            _check(prefix, inbox_ttl, client)
        except ConfigurationError:
            if owns_client:
                client.close()
            raise
        self._owns_client = owns_client
        self.prefix = prefix if prefix.endswith(":") else prefix + ":"
        self._io = RedisIO(redis, client, self.prefix, repr(self))
        self.dead_letters = RedisDeadLetterStore(self._io)
        self.inbox = RedisInboxStore(self._io, ttl=float(inbox_ttl))
        self.idempotency = RedisIdempotencyStore(self._io)

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"

    def close(self) -> None:
        """Close the connections of a client this store made from ``url`` (not one given).

        Examples:
            >>> store = RedisStore(url="redis://localhost:6379/0")
            >>> store.close()
            >>> store.close()  # closing twice is harmless
        """
        if self._owns_client:
            self._io.client.close()

    async def ping(self) -> None:
        """Send Redis a ``PING``: what a health check asks a store.

        `resilience_kit.health.store_check` calls it. A client made from ``url`` gives
        up after its 1 s socket timeout.

        Raises:
            StoreUnavailableError: Redis cannot be reached.

        Examples:
            ```python
            with RedisStore(url="redis://redis:6379/0") as store:
                await store.ping()
            ```
        """
        await self._io.run(self._io.client.ping)

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Reprs and docs name the public home (resilience_kit.stores.redis re-exports it).
RedisStore.__module__ = "resilience_kit.stores.redis"
