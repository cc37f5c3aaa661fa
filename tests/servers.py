"""Real servers for backend tests: use the one CI started, or start one for this run.

CI (.ci/run) starts redis-server and PostgreSQL, exports REDIS_URL and POSTGRES_URL,
and sets RESILIENCE_KIT_REQUIRE_SERVERS=1 so that a missing server fails the run
instead of skipping. Locally, a `redis-server` on PATH is started on a free loopback
port, and so is a throwaway PostgreSQL cluster (initdb + postgres from PATH or
/usr/lib/postgresql/*/bin; as the `postgres` user when the tests run as root).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE = os.environ.get("RESILIENCE_KIT_REQUIRE_SERVERS") == "1"


def unavailable(reason: str) -> NoReturn:
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


def _postgres_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: PATH first, then Debian's layout."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versioned = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(
        versioned,
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def _log_tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for_postgres(url: str, process: subprocess.Popen[bytes], deadline: float) -> bool:
    import psycopg  # noqa: PLC0415 - only the postgres fixtures need the driver

    while time.monotonic() < deadline and process.poll() is None:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            time.sleep(0.05)  # polling a process we just started, not a test sleep
    return False


@contextmanager
def postgres_server(port: int | None = None) -> Iterator[str]:
    """Start a throwaway PostgreSQL cluster on loopback; yield its URL; stop it afterwards.

    The cluster lives in a temporary directory, listens only on 127.0.0.1, trusts
    every local connection and skips fsync: it is for tests and nothing else.
    PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
    """
    bindir = _postgres_bindir()
    if bindir is None:
        unavailable(
            "PostgreSQL server binaries (initdb, postgres) are not installed "
            "(apt-get install postgresql) and POSTGRES_URL is unset"
        )
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable(
                "PostgreSQL will not run as root and there is no `postgres` user to run it as "
                "(useradd --system postgres), and POSTGRES_URL is unset"
            )
    # Popen's user/group/extra_groups: None leaves the process as it is.
    uid, gid = (owner.pw_uid, owner.pw_gid) if owner else (None, None)
    groups: list[int] | None = [] if owner else None
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="rk-pg-") as workdir:
        if uid is not None and gid is not None:
            os.chown(workdir, uid, gid)
        data = Path(workdir, "data")
        log = Path(workdir, "postgres.log")
        initdb = subprocess.run(  # noqa: PLW1510 - the return code is checked below
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        if initdb.returncode != 0:
            unavailable(f"initdb failed: {initdb.stderr.strip()[-500:]}")
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={workdir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                cwd=workdir,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        try:
            if not _wait_for_postgres(url, process, time.monotonic() + 30):
                unavailable(f"postgres did not start on port {port}: {_log_tail(log)}")
            yield url
        finally:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: disconnects clients
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session (POSTGRES_URL, or one started here)."""
    if importlib.util.find_spec("psycopg") is None:
        unavailable("psycopg is not installed (the postgres extra: psycopg[binary,pool])")
    url = os.environ.get("POSTGRES_URL")
    if url:
        yield url
        return
    with postgres_server() as started:
        yield started
