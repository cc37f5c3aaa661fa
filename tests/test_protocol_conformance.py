"""Every backend implements its protocol's methods with the protocol's signatures.

``isinstance`` against a runtime-checkable protocol only sees that the method names
exist; a method that is sync where the protocol says async, or takes its arguments
under other names, passes it and breaks the first caller. This compares the
signatures themselves: parameter names, kinds and defaults, and sync versus async.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from resilience_kit.caching import CacheStore
from resilience_kit.messaging import (
    DeadLetterStore,
    IdempotencyStore,
    InboxStore,
    OutboxStore,
    Publisher,
    Subscriber,
)
from resilience_kit.policies import BreakerStore
from resilience_kit.security import KeySource

IMPLEMENTATIONS: dict[type, list[str]] = {
    BreakerStore: [
        "resilience_kit.stores.memory:MemoryBreakerStore",
        "resilience_kit.stores.redis:RedisBreakerStore",
    ],
    CacheStore: [
        "resilience_kit.caching:MemoryCacheStore",
        "resilience_kit.stores.redis:RedisCacheStore",
    ],
    OutboxStore: [
        "resilience_kit.stores.memory._outbox:MemoryOutboxStore",
        "resilience_kit.stores.sqlite._outbox:SQLiteOutboxStore",
        "resilience_kit.stores.postgres._outbox:PostgresOutboxStore",
    ],
    DeadLetterStore: [
        "resilience_kit.stores.memory._dead_letters:MemoryDeadLetterStore",
        "resilience_kit.stores.sqlite._dead_letters:SQLiteDeadLetterStore",
        "resilience_kit.stores.postgres._dead_letters:PostgresDeadLetterStore",
        "resilience_kit.stores.redis._dead_letters:RedisDeadLetterStore",
    ],
    InboxStore: [
        "resilience_kit.stores.memory._inbox:MemoryInboxStore",
        "resilience_kit.stores.sqlite._inbox:SQLiteInboxStore",
        "resilience_kit.stores.postgres._inbox:PostgresInboxStore",
        "resilience_kit.stores.redis._inbox:RedisInboxStore",
    ],
    IdempotencyStore: [
        "resilience_kit.stores.memory._idempotency:MemoryIdempotencyStore",
        "resilience_kit.stores.sqlite._idempotency:SQLiteIdempotencyStore",
        "resilience_kit.stores.postgres._idempotency:PostgresIdempotencyStore",
        "resilience_kit.stores.redis._idempotency:RedisIdempotencyStore",
    ],
    Publisher: [
        "resilience_kit.transports.memory:MemoryBus",
        "resilience_kit.transports.redis:RedisStreams",
        "resilience_kit.transports.kafka:KafkaTransport",
    ],
    Subscriber: [
        "resilience_kit.transports.memory:MemorySubscriber",
        "resilience_kit.transports.redis:RedisStreamSubscriber",
        "resilience_kit.transports.kafka:KafkaSubscriber",
    ],
    KeySource: [
        "resilience_kit.security:Keyring",
        "resilience_kit.security:JWKSKeySource",
    ],
}

CASES = [
    pytest.param(protocol, target, id=f"{protocol.__name__}-{target.rsplit(':', 1)[1]}")
    for protocol, targets in IMPLEMENTATIONS.items()
    for target in targets
]


def load(target: str) -> type:
    module, name = target.split(":")
    try:
        found: type = getattr(importlib.import_module(module), name)
    except ImportError as missing:  # an optional extra that is not installed
        pytest.skip(f"{target}: {missing}")
    return found


def members(protocol: type) -> dict[str, Callable[..., Any]]:
    """The methods a protocol declares (its own, not those of `Protocol` or `object`)."""
    return {
        name: value
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    }


def shape(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Parameter names, kinds and defaults: what a caller depends on, annotations aside."""
    return [
        (parameter.name, parameter.kind, parameter.default)
        for parameter in inspect.signature(function).parameters.values()
    ]


def test_every_protocol_declares_methods() -> None:
    for protocol in IMPLEMENTATIONS:
        assert members(protocol), protocol


@pytest.mark.parametrize(("protocol", "target"), CASES)
def test_an_implementation_has_the_protocols_signatures(protocol: type, target: str) -> None:
    implementation = load(target)
    for name, declared in members(protocol).items():
        actual = inspect.getattr_static(implementation, name, None)
        assert actual is not None, f"{target} has no {name}"
        if isinstance(actual, (staticmethod, classmethod)):
            actual = actual.__func__
        assert callable(actual), f"{target}.{name} is not a method"
        assert inspect.iscoroutinefunction(actual) == inspect.iscoroutinefunction(declared), (
            f"{target}.{name}: async where the protocol is sync, or the reverse"
        )
        assert inspect.isasyncgenfunction(actual) == inspect.isasyncgenfunction(declared), (
            f"{target}.{name}: an async generator where the protocol has none, or the reverse"
        )
        wanted, got = shape(declared), shape(actual)
        # An implementation may accept more, as keyword arguments with defaults.
        extra = got[len(wanted) :]
        assert got[: len(wanted)] == wanted, f"{target}.{name}{got} is not {name}{wanted}"
        for parameter_name, kind, default in extra:
            assert default is not inspect.Parameter.empty or kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ), f"{target}.{name} requires {parameter_name}, which the protocol does not pass"
