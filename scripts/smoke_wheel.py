"""Smoke-test an installed wheel of resilience-patterns, with or without one extra.

Run by `.ci/run` inside a fresh virtual environment where only the built wheel (and the
named extra) is installed, from a directory outside the source tree, so that a module or
file missing from the wheel fails here instead of on a user's machine.

Usage: python smoke_wheel.py [none|postgres|redis|kafka|jwt|reference]
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path


def check_core() -> None:
    """What every install has: the policies, messaging on SQLite, py.typed, the CLI."""
    import anyio

    import resilience_kit
    from resilience_kit import Backoff, CircuitBreaker, Pipeline, RetryPolicy
    from resilience_kit.messaging import Event, Outbox, OutboxRelay
    from resilience_kit.stores.sqlite import SQLiteStore
    from resilience_kit.transports import MemoryBus

    assert "site-packages" in str(Path(resilience_kit.__file__)), resilience_kit.__file__
    assert (Path(resilience_kit.__file__).parent / "py.typed").is_file(), "py.typed is missing"
    version = importlib.metadata.version("resilience-patterns")
    assert resilience_kit.__version__ == version, (resilience_kit.__version__, version)

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    policy = Pipeline(
        RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.none()),
        CircuitBreaker("smoke"),
    )
    assert policy.call(flaky) == "ok"

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "smoke.db")
        store.migrate()
        connection = store.connect()
        with connection:
            Outbox(store.outbox, topic="smoke").add(
                connection, Event(type="smoke.tested", key="k", payload={"n": 1})
            )
        connection.close()

        async def relay() -> int:
            bus = MemoryBus()
            report = await OutboxRelay(store.outbox, bus).drain()
            return report.published

        assert anyio.run(relay) == 1
        store.close()

    cli = Path(sys.executable).parent / "resilience-kit"
    result = subprocess.run([str(cli), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "dead-letters" in result.stdout, result


def check_postgres() -> None:
    """The postgres extra: psycopg imports, and a real round trip when a server is given."""
    from resilience_kit.stores.postgres import PostgresStore

    url = os.environ.get("POSTGRES_URL")
    if not url:
        print("  (POSTGRES_URL not set: import checked only)")
        return
    import psycopg

    schema = f"smoke_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(url, schema=schema, notify=False)
    try:
        store.migrate()  # the schema's SQL ships in the wheel
    finally:
        store.close()
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


def check_redis() -> None:
    """The redis extra: redis-py imports, and a real round trip when a server is given."""
    from resilience_kit.stores.redis import RedisBreakerStore, RedisStore

    assert RedisBreakerStore is not None
    url = os.environ.get("REDIS_URL")
    if not url:
        print("  (REDIS_URL not set: import checked only)")
        return
    store = RedisStore(url, prefix=f"smoke-{uuid.uuid4().hex[:8]}:")
    try:
        assert store.inbox is not None
    finally:
        store.close()


def check_kafka() -> None:
    """The kafka extra: aiokafka and the transport import."""
    from resilience_kit.transports.kafka import KafkaTransport

    assert KafkaTransport is not None


def check_jwt() -> None:
    """The jwt extra: an EdDSA JWT issued and verified."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from resilience_kit.security import Keyring, KeyState, TokenIssuer, VersionedTokenVerifier

    private_key = ed25519.Ed25519PrivateKey.generate()
    signer = Keyring()
    signer.add("2026-01", private_key, algorithm="EdDSA", state=KeyState.ACTIVE)
    verifying = Keyring()
    verifying.add("2026-01", private_key.public_key(), algorithm="EdDSA")
    token = TokenIssuer(signer, audience="api").issue("user-42")
    verifier = VersionedTokenVerifier(verifying, audience="api")
    assert verifier.verify(token).algorithm == "EdDSA"


def check_reference() -> None:
    """The reference extra: what the reference system's services are built on."""
    import httpx
    import starlette

    assert httpx.__version__ and starlette.__version__


CHECKS = {
    "none": [],
    "postgres": [check_postgres],
    "redis": [check_redis],
    "kafka": [check_kafka],
    "jwt": [check_jwt],
    "reference": [check_reference],
}


def main() -> None:
    extra = sys.argv[1] if len(sys.argv) > 1 else "none"
    check_core()
    for check in CHECKS[extra]:
        check()
    print(f"  wheel smoke test passed ({extra})")


if __name__ == "__main__":
    main()
