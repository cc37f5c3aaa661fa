"""IdempotencyMiddleware under load while its store goes down and comes back.

32 concurrent clients post to 50 hot keys through the middleware, in process (an ASGI
driver, no sockets for HTTP); mid-run the store's server goes away for two seconds.
Afterwards the history is checked, not the middleware's counters: every key's side
effect ran exactly once, every replay carries the first response, and a key reused with
another body was answered 422 every time the store could be reached (503 otherwise).

Redis is a real ``redis-server`` that the test starts with an append-only file, kills
(SIGKILL) and starts again on the same port. PostgreSQL is the session's server behind
a loopback TCP proxy that the test closes (every connection reset, new ones refused)
and opens again: restarting a cluster inside the test would take longer than the whole
run, and to the store a reset proxy looks like a restarted server.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from resilience_kit.messaging import IdempotencyMiddleware
from tests.servers import free_port, unavailable
from tests.test_idempotency_asgi import Response, request

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CLIENTS = 32
KEYS = 50
RUN_FOR = 8.0  # seconds of load: the store is back for the last few
OUTAGE_AT, OUTAGE_FOR = 1.5, 2.0  # seconds into the run, and how long the store is away


# -- the store's server, stopped and started -----------------------------------------------


class _RedisServer:
    """A redis-server that keeps every acknowledged write across a kill (AOF, fsync always)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?socket_timeout=1&socket_connect_timeout=1"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)  # polling a process just started, not a test's wait
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None


class _Proxy:
    """A loopback TCP proxy that can be closed (connections reset) and opened again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                self._close(end)

    def _close(self, end: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(end)
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        end.close()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            ends = list(self._sockets)
        for end in ends:
            self._close(end)


@contextmanager
def _redis_store() -> Iterator[tuple[Any, Any, Any]]:
    pytest.importorskip("redis")
    from resilience_kit.stores.redis import RedisStore  # noqa: PLC0415 - the redis extra

    with tempfile.TemporaryDirectory(prefix="rk-redis-") as directory:
        server = _RedisServer(Path(directory))
        server.start()
        store = RedisStore(url=server.url, prefix=f"load{uuid.uuid4().hex[:8]}:")
        try:
            yield store, server.stop, server.start
        finally:
            store.close()
            server.stop()


@contextmanager
def _postgres_store(postgres_url: str) -> Iterator[tuple[Any, Any, Any]]:
    psycopg = pytest.importorskip("psycopg")
    from resilience_kit.stores.postgres import PostgresStore  # noqa: PLC0415 - the extra

    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    proxy = _Proxy((str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)))
    proxy.start()
    info.update(host="127.0.0.1", port=str(proxy.port))
    schema = f"load_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(
        psycopg.conninfo.make_conninfo(**info), schema=schema, max_size=8, timeout=2.0
    )
    store.migrate()
    try:
        yield store, proxy.stop, proxy.start
    finally:
        store.close()
        proxy.stop()
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- the service and its clients -------------------------------------------------------------


class _Service:
    """An ASGI app whose side effect is counted per key: the history the test checks."""

    def __init__(self) -> None:
        self.executions: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        body = json.loads(message["body"])
        self.executions[body["key"]] += 1
        await anyio.sleep(0.002)  # the work takes a moment: duplicates overlap with it
        answer = json.dumps({"key": body["key"], "execution": uuid.uuid4().hex}).encode()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": answer})


class _History:
    def __init__(self) -> None:
        self.first: dict[str, bytes] = {}  # the first 201 body seen per key
        self.statuses: Counter[int] = Counter()
        self.reused: Counter[int] = Counter()  # statuses of a key reused with another body
        self.mismatched: list[str] = []


def _body(key: str, other: bool = False) -> bytes:
    return json.dumps({"key": key, "cents": 999 if other else 100}).encode()


async def _post(app: Any, key: str, body: bytes) -> Response:
    response = await request(app, path="/charges", key=key.encode(), body=body)
    assert response is not None
    return response


def _record(history: _History, key: str, response: Response) -> None:
    history.statuses[response.status] += 1
    if response.status == 201:
        first = history.first.setdefault(key, response.body)
        if response.body != first:
            history.mismatched.append(key)


async def _client(app: Any, history: _History, rng: random.Random, until: float) -> None:
    while time.monotonic() < until:
        key = f"hot-{rng.randrange(KEYS)}"
        if key in history.first and rng.random() < 0.2:
            response = await _post(app, key, _body(key, other=True))
            history.reused[response.status] += 1
        else:
            _record(history, key, await _post(app, key, _body(key)))
        await anyio.sleep(rng.uniform(0.001, 0.01))  # a client's think time


async def _settle(app: Any, history: _History, key: str, until: float) -> None:
    """After the run: ask for the key until its answer is in (replayed, or run at last)."""
    while True:
        response = await _post(app, key, _body(key))
        _record(history, key, response)
        if response.status == 201 or time.monotonic() > until:
            return
        await anyio.sleep(0.05)


@pytest.mark.parametrize("backend", ["redis", "postgres"])
async def test_under_load_with_the_store_restarted_every_key_runs_exactly_once(
    request: pytest.FixtureRequest, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    opened = (
        _redis_store()
        if backend == "redis"
        else _postgres_store(request.getfixturevalue("postgres_url"))
    )
    service = _Service()
    history = _History()
    with opened as (store, stop, start), caplog.at_level(logging.WARNING, "resilience_kit"):
        app = IdempotencyMiddleware(service, store.idempotency, name=f"load-{backend}")
        rng = random.Random(1789)
        began = time.monotonic()

        async def outage() -> None:
            await anyio.sleep(OUTAGE_AT)
            await anyio.to_thread.run_sync(stop)
            await anyio.sleep(OUTAGE_FOR)
            await anyio.to_thread.run_sync(start)

        async with anyio.create_task_group() as group:
            group.start_soon(outage)
            for _ in range(CLIENTS):
                group.start_soon(
                    _client, app, history, random.Random(rng.random()), began + RUN_FOR
                )
        async with anyio.create_task_group() as group:
            for number in range(KEYS):
                group.start_soon(_settle, app, history, f"hot-{number}", time.monotonic() + 25)

    assert history.statuses[503] > 0, "the outage was not seen: it proves nothing"
    assert sorted(service.executions) == sorted(f"hot-{number}" for number in range(KEYS))
    assert set(service.executions.values()) == {1}, "a key's side effect ran twice"
    assert len(history.first) == KEYS, "a key never got its answer"
    assert history.mismatched == [], "a replay differs from the first response"
    assert history.reused[422] > 0
    assert set(history.reused) <= {422, 503}, f"a reused key was answered {history.reused}"
    assert set(history.statuses) <= {201, 409, 503}
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("resilience_kit")]
    assert sum("is unavailable" in line for line in lines) == 1, lines  # once per outage
    assert sum("is available again" in line for line in lines) == 1, lines
    assert len(lines) < 20, lines  # and the breaker's transitions: not a line per request
