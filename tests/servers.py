"""Real servers for backend tests: use the one CI started, or start one for this run.

CI (.ci/run) starts redis-server and exports REDIS_URL, and sets
RESILIENCE_KIT_REQUIRE_SERVERS=1 so that a missing server fails the run instead of
skipping. Locally, a `redis-server` on PATH is started on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

REQUIRE = os.environ.get("RESILIENCE_KIT_REQUIRE_SERVERS") == "1"


def unavailable(reason: str) -> None:
    """Skip the test with ``reason`` — or fail it when CI requires real servers."""
    if REQUIRE:
        pytest.fail(f"a real server is required in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)  # polling a process we just started, not a test sleep
    return False


@contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """Start a throwaway redis-server on loopback; yield its URL; stop it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable(
            "redis-server is not installed (apt-get install redis-server) and REDIS_URL is unset"
        )
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="rk-redis-") as workdir:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not _wait_for_port(port, time.monotonic() + 10):
                unavailable(f"redis-server did not start on port {port}")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server for the whole session (REDIS_URL, or one started here)."""
    pytest.importorskip("redis", reason="the redis extra is not installed")
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with redis_server() as started:
        yield started
