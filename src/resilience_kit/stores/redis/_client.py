"""What every Redis store needs first: redis-py (the optional extra) and a client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilience_kit.errors import ConfigurationError

if TYPE_CHECKING:
    import redis as redis_lib


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
