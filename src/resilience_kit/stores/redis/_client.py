"""What every Redis store needs first: redis-py (the optional extra), a client, and `RedisIO`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from resilience_kit.errors import ConfigurationError, StoreError, StoreUnavailableError

if TYPE_CHECKING:
    import redis as redis_lib

T = TypeVar("T")


def redis_client(
    owner: str, client: redis_lib.Redis | None, url: str | None
) -> tuple[Any, redis_lib.Redis]:
    """Import redis-py for ``owner`` and return it with the client given or built from ``url``.

    Raises:
        ImportError: the ``redis`` extra is not installed; the message says how to get it.
        ConfigurationError: not exactly one of ``client`` and ``url`` was given.
    """
    try:
        import redis  # noqa: PLC0415  (optional extra, imported on use)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"{owner} needs redis-py: pip install 'resilience-patterns[redis]'"
        ) from exc
    if client is not None and url is None:
        return redis, client
    if client is None and url is not None:
        return redis, redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    raise ConfigurationError("client", "give exactly one of client= and url=")


class RedisIO:
    """The client, key prefix and error handling the three Redis components share.

    Every Redis call runs on a worker thread (``anyio.to_thread.run_sync``) with the
    synchronous client, so the components work on asyncio and trio alike; Redis errors
    come out as `StoreUnavailableError` (cannot reach a writable Redis) or `StoreError`.
    """

    __slots__ = ("_refused", "_unavailable", "client", "name", "prefix")

    def __init__(self, redis: Any, client: redis_lib.Redis, prefix: str, name: str) -> None:
        self.client = client
        self.prefix = prefix
        self.name = name
        # READONLY: a demoted primary during a failover; it cannot take writes either.
        self._unavailable: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            redis.exceptions.ReadOnlyError,
            OSError,
        )
        self._refused: tuple[type[BaseException], ...] = (redis.RedisError,)

    def script(self, source: str) -> Any:
        """Register a Lua script (run with EVALSHA, loaded again after a server restart)."""
        return self.client.register_script(source)

    async def run(self, call: Callable[[], T]) -> T:
        """Run ``call`` on a worker thread, turning Redis errors into store errors."""
        try:
            return await anyio.to_thread.run_sync(call)
        except self._unavailable as exc:
            raise StoreUnavailableError(
                f"{self.name}: Redis is unreachable ({type(exc).__name__}: {exc})",
                store=self.name,
            ) from exc
        except self._refused as exc:
            raise StoreError(
                f"{self.name}: Redis refused the operation ({type(exc).__name__}: {exc})",
                store=self.name,
            ) from exc
