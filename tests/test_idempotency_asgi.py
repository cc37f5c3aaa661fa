"""IdempotencyMiddleware: the Idempotency-Key contract, driven by a hand-written ASGI client."""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from resilience_kit import CircuitBreaker
from resilience_kit.errors import (
    ConfigurationError,
    CorruptRecordError,
    StoreError,
    StoreUnavailableError,
)
from resilience_kit.messaging import IdempotencyMiddleware
from resilience_kit.stores.memory._idempotency import MemoryIdempotencyStore
from resilience_kit.testing import VirtualClock

pytestmark = pytest.mark.anyio

Message = MutableMapping[str, Any]


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        return values[-1] if values else None

    @property
    def problem(self) -> dict[str, Any]:
        assert self.header(b"content-type") == b"application/problem+json"
        document: dict[str, Any] = json.loads(self.body)
        assert document["status"] == self.status
        assert set(document) == {"type", "title", "status", "detail"}
        return document


@dataclass
class Orders:
    """A tiny ASGI app: creates an order from the body, or fails as told."""

    calls: list[bytes] = field(default_factory=list)
    status: int = 201
    error: BaseException | None = None
    gate: anyio.Event | None = None
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: int = 1
    trailers: bool = False

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append(body)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        payload = json.dumps({"order": len(self.calls), "received": body.decode()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"location", f"/orders/{len(self.calls)}".encode()),
                    *self.extra_headers,
                ],
                "trailers": self.trailers,
            }
        )
        size = -(-len(payload) // self.chunks)
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for index, piece in enumerate(pieces):
            more = index < len(pieces) - 1
            await send({"type": "http.response.body", "body": piece, "more_body": more})


async def request(
    app: Any,
    *,
    method: str = "POST",
    path: str = "/orders",
    query: bytes = b"",
    key: bytes | None = b"key-1",
    body: bytes = b'{"sku": "tea"}',
    headers: list[tuple[bytes, bytes]] | None = None,
    chunk: int | None = None,
    disconnect: bool = False,
) -> Response | None:
    """Send one HTTP request through ``app`` as an ASGI server would; None: no response."""
    all_headers = list(headers or [])
    if key is not None:
        all_headers.append((b"idempotency-key", key))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": all_headers,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    size = chunk or max(len(body), 1)
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    incoming: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]
    if disconnect:
        incoming = incoming[:1]
        incoming[0]["more_body"] = True
        incoming.append({"type": "http.disconnect"})
    sent: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    if not sent:
        return None
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    assert all(message["type"] == "http.response.body" for message in bodies)
    assert not bodies[-1].get("more_body", False)
    return Response(
        start["status"], list(start["headers"]), b"".join(m.get("body", b"") for m in bodies)
    )


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=10.0)


@pytest.fixture
def store(clock: VirtualClock) -> MemoryIdempotencyStore:
    return MemoryIdempotencyStore(clock)


@pytest.fixture
def orders() -> Orders:
    return Orders()


@pytest.fixture
def app(orders: Orders, store: MemoryIdempotencyStore) -> IdempotencyMiddleware:
    return IdempotencyMiddleware(orders, store, lock_for=30.0)


async def send(app: Any, **options: Any) -> Response:
    response = await request(app, **options)
    assert response is not None
    return response


# -- the contract ---------------------------------------------------------------------


async def test_a_repeat_gets_the_stored_response_marked_replayed(
    app: IdempotencyMiddleware, orders: Orders
) -> None:
    first = await send(app)
    again = await send(app)
    assert first.status == again.status == 201
    assert again.body == first.body
    assert json.loads(again.body) == {"order": 1, "received": '{"sku": "tea"}'}
    assert first.header(b"idempotency-replayed") is None
    assert again.header(b"idempotency-replayed") == b"true"
    assert again.header(b"location") == b"/orders/1"
    assert again.headers[:-1] == first.headers
    assert len(orders.calls) == 1


async def test_other_keys_and_keyless_requests_run(
    app: IdempotencyMiddleware, orders: Orders
) -> None:
    await send(app, key=b"key-1")
    await send(app, key=b"key-2")
    await send(app, key=None)
    await send(app, key=None)
    assert len(orders.calls) == 4


@pytest.mark.parametrize(
    "change",
    [
        {"body": b'{"sku": "coffee"}'},
        {"path": "/refunds"},
        {"query": b"express=1"},
        {"method": "PATCH"},
    ],
    ids=["body", "path", "query", "method"],
)
async def test_a_key_reused_for_another_request_is_422(
    app: IdempotencyMiddleware, orders: Orders, change: dict[str, Any]
) -> None:
    await send(app)
    response = await send(app, **change)
    assert response.status == 422
    assert response.problem["title"] == "Unprocessable Content"
    assert "used before with a different request" in response.problem["detail"]
    assert len(orders.calls) == 1


async def test_a_concurrent_duplicate_is_409_with_retry_after(
    app: IdempotencyMiddleware, orders: Orders
) -> None:
    orders.gate = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(send, app)
        await anyio.wait_all_tasks_blocked()
        duplicate = await send(app)
        conflicting = await send(app, body=b"{}")
        orders.gate.set()
    assert duplicate.status == 409
    assert duplicate.problem["title"] == "Conflict"
    assert duplicate.header(b"retry-after") == b"30"
    assert conflicting.status == 422
    assert len(orders.calls) == 1
    assert (await send(app)).header(b"idempotency-replayed") == b"true"


async def test_a_missing_key_is_400_when_required(
    store: MemoryIdempotencyStore, orders: Orders
) -> None:
    app = IdempotencyMiddleware(orders, store, required=True)
    response = await send(app, key=None)
    assert response.status == 400
    assert response.problem["detail"] == "this request needs an idempotency-key header"
    assert orders.calls == []
    assert (await send(app, method="GET", key=None)).status == 201  # not a guarded method


@pytest.mark.parametrize(
    ("key", "detail"),
    [
        (b"k" * 256, "at most 255 characters"),
        (b"a\x01b", "control characters"),
        (b"", "must not be empty"),
        (b'"unterminated\\"', "not a valid quoted string"),
        (b'"bad\\escape"', "not a valid quoted string"),
    ],
)
async def test_a_malformed_key_is_400(
    app: IdempotencyMiddleware, orders: Orders, key: bytes, detail: str
) -> None:
    response = await send(app, key=key)
    assert response.status == 400
    assert detail in response.problem["detail"]
    assert orders.calls == []


async def test_two_key_headers_are_400(app: IdempotencyMiddleware, orders: Orders) -> None:
    response = await send(app, headers=[(b"idempotency-key", b"other")])
    assert response.status == 400
    assert "not 2" in response.problem["detail"]
    assert orders.calls == []


async def test_a_quoted_key_is_the_same_key(app: IdempotencyMiddleware, orders: Orders) -> None:
    await send(app, key=b'"key-1"')  # a structured-field string, as the draft writes it
    assert (await send(app, key=b"key-1")).header(b"idempotency-replayed") == b"true"
    await send(app, key=b'"a \\"quoted\\" \\\\ key"')
    replay = await send(app, key=b'"a \\"quoted\\" \\\\ key"')
    assert replay.header(b"idempotency-replayed") == b"true"
    assert len(orders.calls) == 2


async def test_unguarded_methods_and_other_scopes_pass_through(
    app: IdempotencyMiddleware, orders: Orders
) -> None:
    await send(app, method="GET")
    await send(app, method="GET")
    await send(app, method="PUT")
    assert len(orders.calls) == 3
    seen: list[str] = []

    async def lifespan_app(scope: Message, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    guarded = IdempotencyMiddleware(lifespan_app, MemoryIdempotencyStore())
    await guarded({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await guarded({"type": "websocket", "headers": []}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


# -- what is not stored ---------------------------------------------------------------


async def test_server_errors_are_not_stored(app: IdempotencyMiddleware, orders: Orders) -> None:
    orders.status = 503
    assert (await send(app)).status == 503
    orders.status = 201
    assert (await send(app)).status == 201
    assert len(orders.calls) == 2


async def test_client_errors_are_stored(app: IdempotencyMiddleware, orders: Orders) -> None:
    orders.status = 402
    await send(app)
    replay = await send(app)
    assert (replay.status, replay.header(b"idempotency-replayed")) == (402, b"true")
    assert len(orders.calls) == 1


async def test_an_exception_releases_the_key(
    app: IdempotencyMiddleware, orders: Orders, store: MemoryIdempotencyStore
) -> None:
    orders.error = RuntimeError("database down")
    with pytest.raises(RuntimeError):
        await request(app)
    assert store._entries == {}
    orders.error = None
    assert (await send(app)).status == 201
    assert len(orders.calls) == 2


async def test_a_cancelled_request_releases_the_key(
    app: IdempotencyMiddleware, orders: Orders, store: MemoryIdempotencyStore
) -> None:
    orders.gate = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(request, app)
        await anyio.wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    assert store._entries == {}


async def test_a_large_body_is_413_without_calling_the_app(
    store: MemoryIdempotencyStore, orders: Orders
) -> None:
    app = IdempotencyMiddleware(orders, store, max_body_bytes=10)
    declared = await send(app, body=b"x" * 11, headers=[(b"content-length", b"11")])
    streamed = await send(app, body=b"x" * 11, chunk=4)
    assert declared.status == streamed.status == 413
    assert declared.problem["title"] == "Content Too Large"
    assert orders.calls == []
    assert store._entries == {}
    assert (await send(app, body=b"x" * 10, chunk=3)).status == 201
    assert orders.calls == [b"x" * 10]  # the app got the whole body, read once


async def test_a_client_that_leaves_gets_nothing_and_claims_nothing(
    app: IdempotencyMiddleware, orders: Orders, store: MemoryIdempotencyStore
) -> None:
    assert await request(app, body=b"abcdef", chunk=2, disconnect=True) is None
    assert orders.calls == []
    assert store._entries == {}


async def test_a_large_response_is_sent_but_not_stored(
    store: MemoryIdempotencyStore, orders: Orders
) -> None:
    app = IdempotencyMiddleware(orders, store, max_response_bytes=20)
    orders.chunks = 3
    first = await send(app)
    assert json.loads(first.body)["order"] == 1
    assert (await send(app)).header(b"idempotency-replayed") is None
    assert len(orders.calls) == 2


async def test_a_response_with_trailers_is_not_stored(
    app: IdempotencyMiddleware, orders: Orders
) -> None:
    orders.trailers = True
    await send(app)
    await send(app)
    assert len(orders.calls) == 2


async def test_connection_headers_are_not_replayed(
    app: IdempotencyMiddleware, orders: Orders
) -> None:
    orders.extra_headers = [(b"connection", b"close"), (b"set-cookie", b"a=1")]
    await send(app)
    replay = await send(app)
    assert replay.header(b"connection") is None
    assert replay.header(b"set-cookie") == b"a=1"


async def test_clients_have_their_own_keys(store: MemoryIdempotencyStore, orders: Orders) -> None:
    def client(scope: Message) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-client":
                return str(value.decode())
        return None

    app = IdempotencyMiddleware(orders, store, scope=client)
    ann = await send(app, headers=[(b"x-client", b"ann")])
    bob = await send(app, headers=[(b"x-client", b"bob")])  # the same key: not ann's order
    assert json.loads(ann.body)["order"] == 1
    assert json.loads(bob.body)["order"] == 2
    assert bob.header(b"idempotency-replayed") is None
    assert (await send(app, headers=[(b"x-client", b"ann")])).body == ann.body


async def test_a_corrupted_stored_response_is_a_corrupt_record_error(
    app: IdempotencyMiddleware, store: MemoryIdempotencyStore
) -> None:
    await send(app)
    [entry] = store._entries.values()
    entry.result = b"H{not json"
    with pytest.raises(CorruptRecordError, match="unreadable"):
        await request(app)
    entry.result = b"R1"  # an @idempotent result under an HTTP key
    with pytest.raises(CorruptRecordError, match="not a stored HTTP response"):
        await request(app)


async def test_responses_expire_after_ttl(
    store: MemoryIdempotencyStore, orders: Orders, clock: VirtualClock
) -> None:
    app = IdempotencyMiddleware(orders, store, ttl=60.0)
    await send(app)
    clock.advance(60.0)
    assert (await send(app, body=b"{}")).status == 201  # the key is free again
    assert len(orders.calls) == 2


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"header": "bad header"}, "header"),
        ({"header": ""}, "header"),
        ({"methods": "POST"}, "methods"),
        ({"methods": ()}, "methods"),
        ({"methods": ("PO ST",)}, "methods"),
        ({"scope": "client"}, "scope"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_response_bytes": 1.5}, "max_response_bytes"),
        ({"ttl": -1}, "ttl"),
        ({"lock_for": 0}, "lock_for"),
        ({"name": "x" * 256}, "name"),
    ],
)
def test_bad_configuration_is_refused(
    store: MemoryIdempotencyStore, options: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        IdempotencyMiddleware(Orders(), store, **options)
    assert caught.value.parameter == parameter


def test_the_app_and_store_are_checked() -> None:
    with pytest.raises(ConfigurationError) as caught:
        IdempotencyMiddleware("app", MemoryIdempotencyStore())  # type: ignore[arg-type]
    assert caught.value.parameter == "app"
    with pytest.raises(ConfigurationError) as caught:
        IdempotencyMiddleware(Orders(), {})  # type: ignore[arg-type]
    assert caught.value.parameter == "store"


def test_methods_and_header_are_normalised(store: MemoryIdempotencyStore) -> None:
    app = IdempotencyMiddleware(Orders(), store, header="X-Request-Key", methods=["post", "put"])
    assert (app.header, app.methods) == ("x-request-key", ("POST", "PUT"))
    assert "IdempotencyMiddleware(" in repr(app)


# -- store outages ---------------------------------------------------------------------------


class _DownStore:
    """An idempotency store whose server can be taken down and brought back."""

    def __init__(self, inner: MemoryIdempotencyStore) -> None:
        self.inner = inner
        self.down = False
        self.calls = 0
        self.failures_left = 0  # calls that fail before the store is back by itself

    def __repr__(self) -> str:
        return "DownStore"

    def _check(self) -> None:
        self.calls += 1
        if self.failures_left > 0:
            self.failures_left -= 1
            raise StoreUnavailableError("connection reset", store="DownStore")
        if self.down:
            raise StoreUnavailableError("connection refused", store="DownStore")

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_for: float) -> Any:
        self._check()
        return await self.inner.claim(key, fingerprint, token=token, lock_for=lock_for)

    async def complete(self, key: str, *, token: str, result: bytes, ttl: float) -> bool:
        self._check()
        return await self.inner.complete(key, token=token, result=result, ttl=ttl)

    async def release(self, key: str, *, token: str) -> bool:
        self._check()
        return await self.inner.release(key, token=token)

    async def get(self, key: str) -> Any:
        self._check()
        return await self.inner.get(key)

    async def purge_expired(self) -> int:
        return await self.inner.purge_expired()


async def test_an_unreachable_store_is_a_503_problem_with_retry_after_and_the_app_never_runs(
    clock: VirtualClock,
) -> None:
    store = _DownStore(MemoryIdempotencyStore(clock))
    app = Orders()
    guarded = IdempotencyMiddleware(app, store, clock=clock)
    store.down = True
    response = await request(guarded)
    assert response is not None
    assert response.status == 503
    assert response.header(b"retry-after") == b"5"
    assert response.problem["title"] == "Service Unavailable"
    assert "retry it with the same key" in response.problem["detail"]
    assert app.calls == []


async def test_a_store_known_to_be_down_is_refused_at_once_until_a_probe_finds_it_back(
    clock: VirtualClock,
) -> None:
    store = _DownStore(MemoryIdempotencyStore(clock))
    app = Orders()
    guarded = IdempotencyMiddleware(app, store, clock=clock)
    store.down = True
    for number in range(20):
        response = await request(guarded, key=f"k-{number}".encode())
        assert response is not None
        assert response.status == 503
    assert store.calls == 3  # the breaker opened after three failures: no more waits
    clock.advance(2.0)
    response = await request(guarded, key=b"k-x")
    assert response is not None
    assert response.header(b"retry-after") == b"3"  # when the breaker admits a probe
    store.down = False
    clock.advance(3.0)
    response = await request(guarded, key=b"k-y")
    assert response is not None
    assert response.status == 201
    assert app.calls == [b'{"sku": "tea"}']


async def test_an_outage_is_logged_once_when_it_begins_and_once_when_it_ends(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = _DownStore(MemoryIdempotencyStore(clock))
    guarded = IdempotencyMiddleware(Orders(), store, clock=clock)
    store.down = True
    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        for number in range(50):
            await request(guarded, key=f"k-{number}".encode())
        clock.advance(5.0)
        store.down = False
        for number in range(3):  # the end is logged once calls have succeeded for 1 s
            response = await request(guarded, key=f"ok-{number}".encode())
            assert response is not None
            assert response.status == 201
            clock.advance(0.5)
    lines = [record for record in caplog.records if record.name == "resilience_kit.idempotency"]
    assert [record.levelno for record in lines] == [logging.ERROR, logging.WARNING]
    assert "DownStore" in lines[0].getMessage()
    assert "is unavailable (StoreUnavailableError: connection refused)" in lines[0].getMessage()
    assert lines[0].exc_info is None  # no traceback: one line per outage
    assert "available again after 5.0 s; 50 call(s) were refused" in lines[1].getMessage()


async def test_a_store_lost_while_the_app_ran_logs_once_and_the_client_keeps_its_response(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = _DownStore(MemoryIdempotencyStore(clock))
    app = Orders()
    guarded = IdempotencyMiddleware(app, store, clock=clock)
    app.gate = anyio.Event()
    results: list[Response | None] = []

    async def one(key: bytes) -> None:
        results.append(await request(guarded, key=key))

    with caplog.at_level(logging.WARNING, logger="resilience_kit"):
        async with anyio.create_task_group() as group:
            for number in range(3):
                group.start_soon(one, f"k-{number}".encode())
            await anyio.wait_all_tasks_blocked()
            store.down = True  # the store goes away while the application runs
            app.gate.set()
    assert [response.status for response in results if response] == [201, 201, 201]
    lines = [r for r in caplog.records if r.name == "resilience_kit.idempotency"]
    assert len(lines) == 1
    assert "outcomes cannot be stored" in lines[0].getMessage()


async def test_a_response_whose_store_blipped_is_stored_once_it_is_back_and_never_rerun(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = _DownStore(MemoryIdempotencyStore(clock))
    app = Orders()
    guarded = IdempotencyMiddleware(app, store, clock=clock)
    app.gate = anyio.Event()
    results: list[Response | None] = []

    async def first() -> None:
        results.append(await request(guarded))

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        store.failures_left = 2  # the store drops two calls: the outcome's first tries
        app.gate.set()
    assert results[0] is not None
    assert results[0].status == 201
    replay = await request(guarded)
    assert replay is not None
    assert replay.header(b"idempotency-replayed") == b"true"
    assert len(app.calls) == 1


async def test_other_store_errors_still_propagate(clock: VirtualClock) -> None:
    class Refusing(_DownStore):
        async def claim(self, key: str, fingerprint: str, *, token: str, lock_for: float) -> Any:
            raise StoreError("permission denied for table rk_idempotency", store="Refusing")

    guarded = IdempotencyMiddleware(Orders(), Refusing(MemoryIdempotencyStore(clock)), clock=clock)
    with pytest.raises(StoreError, match="permission denied"):
        await request(guarded)


def test_a_breaker_must_be_a_circuit_breaker(clock: VirtualClock) -> None:
    store = MemoryIdempotencyStore(clock)
    with pytest.raises(ConfigurationError) as caught:
        IdempotencyMiddleware(Orders(), store, breaker="on")  # type: ignore[arg-type]
    assert caught.value.parameter == "breaker"
    with pytest.raises(ConfigurationError) as caught:
        IdempotencyMiddleware(Orders(), store, clock="system")  # type: ignore[arg-type]
    assert caught.value.parameter == "clock"
    breaker = CircuitBreaker("mine", clock=clock)
    IdempotencyMiddleware(Orders(), store, breaker=breaker)


async def test_a_store_that_flaps_while_coming_back_is_one_outage(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = _DownStore(MemoryIdempotencyStore(clock))
    guarded = IdempotencyMiddleware(Orders(), store, clock=clock)
    store.down = True
    with caplog.at_level(logging.WARNING, logger="resilience_kit.idempotency"):
        for number in range(3):
            await request(guarded, key=f"down-{number}".encode())
        clock.advance(5.0)
        store.down = False
        statuses = []
        for number in range(6):
            store.failures_left = 1 if number == 1 else 0  # a stale connection, once
            response = await request(guarded, key=f"back-{number}".encode())
            assert response is not None
            statuses.append(response.status)
            clock.advance(5.0 if response.status == 503 else 0.4)
    assert statuses == [201, 503, 201, 201, 201, 201]
    lines = [r for r in caplog.records if r.name == "resilience_kit.idempotency"]
    assert [record.levelno for record in lines] == [logging.ERROR, logging.WARNING]
