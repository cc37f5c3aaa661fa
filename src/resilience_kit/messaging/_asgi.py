"""`IdempotencyMiddleware`: the Idempotency-Key header contract for any ASGI 3 application."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from resilience_kit._checks import check_int
from resilience_kit.clock import Clock
from resilience_kit.errors import (
    CircuitOpenError,
    ConfigurationError,
    CorruptRecordError,
    IdempotencyConflictError,
    IdempotencyInProgressError,
    IdempotencyKeyError,
)
from resilience_kit.messaging._guard import (
    RESPONSE_TAG,
    IdempotencyGuard,
    Replay,
    StoreOutage,
    check_key,
    scoped_key,
    unavailable,
)
from resilience_kit.messaging._protocols import IdempotencyStore

if TYPE_CHECKING:
    from resilience_kit.policies._breaker import CircuitBreaker

__all__ = ("IdempotencyMiddleware",)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110)
# Connection-specific fields describe one hop, not the response: never replayed.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REPLAYED = (b"idempotency-replayed", b"true")
_TITLES = {
    400: "Bad Request",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    503: "Service Unavailable",
}
# Seconds a finished request keeps trying to store its response while the store is
# down (the client already has it): a short outage must not let a retry run it again.
_COMPLETE_FOR = 10.0
# Seconds a client is told to wait when the store failed and no breaker says how long.
_UNAVAILABLE_RETRY_AFTER = 5.0


def default_breaker(name: str, clock: Clock | None) -> CircuitBreaker:
    """The breaker around a middleware's store: opens on 3 failures of the last 10 calls.

    Only "cannot reach the store" counts (``ConnectionError``, ``TimeoutError``, which
    `StoreUnavailableError` is); after 5 s one probe call finds out whether it is back.
    """
    from resilience_kit.policies._breaker import CircuitBreaker  # noqa: PLC0415 - lazy layer

    return CircuitBreaker(
        f"idempotency-store:{name}",
        failure_rate_threshold=0.3,
        window=10,
        minimum_calls=3,
        open_for=_UNAVAILABLE_RETRY_AFTER,
        half_open_calls=1,
        record_on=(ConnectionError, TimeoutError),
        clock=clock,
    )


class IdempotencyMiddleware:
    """Give an ASGI application the Idempotency-Key header contract, without a framework.

    For requests with a covered method and an ``Idempotency-Key`` header, the first
    request with a key runs the application and its response (status, headers, body) is
    stored; a repeat of the same request gets the stored response, marked with
    ``Idempotency-Replayed: true``, without running the application. As the IETF
    Idempotency-Key draft says:

    - a key reused with another request (method, path, query or body differ): **422**;
    - a repeat while the first request is still running: **409**, with ``Retry-After``;
    - no key where one is ``required``: **400** (without ``required``, the request
      passes through unguarded); a malformed key (more than 255 characters, control
      characters, two headers): **400**;
    - a body larger than ``max_body_bytes``: **413**, without calling the application.

    When the store cannot be reached, a guarded request gets **503** with ``Retry-After``
    (the application does not run: its effect could not be made idempotent), and the
    outage is logged once when it begins and once when it ends, not per request. A
    request whose application ran while the store went away keeps trying to store its
    response for up to 10 s (half ``lock_for`` at most), so that a short outage does not
    let a retry run it again. A
    `CircuitBreaker` around the store's calls opens after a few such failures, so while
    the store is known to be down requests are refused at once, instead of each waiting
    for a connection timeout; after ``open_for`` one probe finds out whether it is back.

    Errors are RFC 9457 problem documents (``application/problem+json``). Responses
    with a status of 500 or more, and requests whose application raised, are not
    stored: their claim is released, so a retry runs again. So is a response larger
    than ``max_response_bytes`` (it is sent in full, but not stored). The key may be
    sent as a structured-field string (``"abc"``, as the draft writes it) or bare.
    Lifespan and websocket connections pass through.

    Args:
        app: the ASGI 3 application to guard.
        store: where claims and responses live (``store.idempotency`` of a backend).
        header: the request header carrying the key.
        methods: the methods guarded; others pass through.
        required: answer 400 to a guarded request without a key.
        scope: a function of the ASGI scope returning who the key belongs to (the
            authenticated client or tenant), or ``None``; keys of different clients
            never meet, so one client cannot replay another's response.
        name: the namespace of the keys in the store, and the metric attribute.
        ttl: seconds a response is kept.
        lock_for: seconds a running request holds its key; a crashed request's claim
            expires after it.
        max_body_bytes: the largest request body accepted.
        max_response_bytes: the largest response body stored.
        breaker: the `CircuitBreaker` around the store's calls (default: one that opens
            when 3 of the last 10 calls could not reach the store, for 5 s).
        clock: the clock of the default breaker and of the outage log.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> from resilience_kit.messaging import IdempotencyMiddleware
        >>> from resilience_kit.stores.memory import MemoryStore
        >>> async def app(scope, receive, send):
        ...     await send({"type": "http.response.start", "status": 201, "headers": []})
        ...     await send({"type": "http.response.body", "body": b"created"})
        >>> guarded = IdempotencyMiddleware(app, MemoryStore().idempotency, required=True)
        >>> guarded.header, guarded.methods
        ('idempotency-key', ('POST', 'PATCH'))
    """

    __slots__ = (
        "_guard",
        "_header",
        "_outage",
        "_scope",
        "app",
        "max_body_bytes",
        "max_response_bytes",
        "methods",
        "required",
    )

    def __init__(
        self,
        app: ASGIApp,
        store: IdempotencyStore,
        *,
        header: str = "Idempotency-Key",
        methods: Iterable[str] = ("POST", "PATCH"),
        required: bool = False,
        scope: Callable[[Scope], str | None] | None = None,
        name: str = "http",
        ttl: float = 86_400.0,
        lock_for: float = 60.0,
        max_body_bytes: int = 1_048_576,
        max_response_bytes: int = 1_048_576,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not callable(app):
            raise ConfigurationError("app", f"expected an ASGI application, got {app!r}")
        if not isinstance(header, str) or not _TOKEN.fullmatch(header):
            raise ConfigurationError("header", f"expected an HTTP field name, got {header!r}")
        if isinstance(methods, str):
            raise ConfigurationError(
                "methods", f"expected a collection of methods, got {methods!r}"
            )
        checked = tuple(methods)
        if not checked or not all(
            isinstance(method, str) and _TOKEN.fullmatch(method) for method in checked
        ):
            raise ConfigurationError("methods", f"expected HTTP method names, got {methods!r}")
        if scope is not None and not callable(scope):
            raise ConfigurationError("scope", f"expected a function of the scope, got {scope!r}")
        check_int("max_body_bytes", max_body_bytes, minimum=1)
        check_int("max_response_bytes", max_response_bytes, minimum=1)
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError("clock", f"expected a Clock, got {clock!r}")
        from resilience_kit.policies._breaker import CircuitBreaker  # noqa: PLC0415

        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError("breaker", f"expected a CircuitBreaker, got {breaker!r}")
        self._outage = StoreOutage(f"the idempotency store {store!r} of {name!r}", clock)
        self._guard = IdempotencyGuard(
            store,
            name=name,
            ttl=ttl,
            lock_for=lock_for,
            on_in_progress="raise",
            clock=clock,
            breaker=breaker if breaker is not None else default_breaker(name, clock),
            outage=self._outage,
            complete_for=min(lock_for / 2, _COMPLETE_FOR),
        )
        self.app = app
        self._header = header.lower().encode("ascii")
        self.methods = tuple(method.upper() for method in checked)
        self.required = bool(required)
        self._scope = scope
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes

    def __repr__(self) -> str:
        return f"IdempotencyMiddleware({self.app!r}, {self._guard.store!r})"

    @property
    def header(self) -> str:
        """The key's header, lower-cased as ASGI gives header names."""
        return self._header.decode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name.lower() == self._header]
        if not values:
            if self.required:
                await _problem(send, 400, f"this request needs an {self.header} header")
            else:
                await self.app(scope, receive, send)
            return
        if len(values) > 1:
            await _problem(send, 400, f"send one {self.header} header, not {len(values)}")
            return
        try:
            key = check_key(_parse_key(values[0]))
        except IdempotencyKeyError as exc:
            await _problem(send, 400, f"the {self.header} header is invalid: {exc}")
            return
        client = None if self._scope is None else self._scope(scope)
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        stored_key = scoped_key(
            self._guard.name, None if client is None else check_key(client, "scope"), key
        )
        try:
            outcome = await self._guard.begin(stored_key, _fingerprint(scope, body))
        except IdempotencyConflictError:
            await _problem(
                send, 422, f"this {self.header} was used before with a different request"
            )
            return
        except IdempotencyInProgressError as exc:
            retry_after = str(math.ceil(exc.retry_after or 0.0)).encode()
            await _problem(
                send,
                409,
                f"a request with this {self.header} is still being processed",
                [(b"retry-after", retry_after)],
            )
            return
        except Exception as exc:
            if not unavailable(exc):
                raise
            await self._unavailable(send, exc)
            return
        if isinstance(outcome, Replay):
            await _replay(outcome, self._guard.store, send)
            return
        capture = _Capture(send, self.max_response_bytes)
        try:
            await self.app(scope, _replaying(body, receive), capture.send)
        except BaseException:
            await self._guard.abandon(outcome)
            raise
        data = capture.encoded()
        if data is None:
            await self._guard.abandon(outcome)
        else:
            await self._guard.finish(outcome, data)

    async def _unavailable(self, send: Send, exc: Exception) -> None:
        """Answer 503: the store is down, so the request cannot be made idempotent."""
        self._outage.failed(exc, "guarded requests are answered 503 with Retry-After")
        wait = exc.retry_after if isinstance(exc, CircuitOpenError) else None
        seconds = max(1, math.ceil(wait if wait is not None else _UNAVAILABLE_RETRY_AFTER))
        await _problem(
            send,
            503,
            "the idempotency store is unavailable, so this request was not processed;"
            " retry it with the same key",
            [(b"retry-after", str(seconds).encode())],
        )

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole request body, or ``None`` when it was refused or the client left."""
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
                await _problem(send, 413, f"the request body is larger than {limit} bytes")
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _problem(send, 413, f"the request body is larger than {limit} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _parse_key(raw: bytes) -> str:
    """The key in a header value: a structured-field string (``"abc"``) or bare text."""
    text = raw.decode("latin-1").strip(" \t")
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    unquoted: list[str] = []
    chars = iter(text[1:-1])
    for char in chars:
        if char == "\\":
            char = next(chars, "")  # noqa: PLW2901  (an escape takes the next character)
            if char not in ('"', "\\"):
                raise IdempotencyKeyError("the key is not a valid quoted string", key=text[:255])
        elif char == '"':
            raise IdempotencyKeyError("the key is not a valid quoted string", key=text[:255])
        unquoted.append(char)
    return "".join(unquoted)


def _fingerprint(scope: Scope, body: bytes) -> str:
    """SHA-256 of the method, path, query and body: what makes two requests the same."""
    head = json.dumps(
        [
            scope["method"],
            scope.get("root_path", "") + scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
        ],
        ensure_ascii=False,
    )
    digest = hashlib.sha256(head.encode("utf-8", "surrogatepass") + b"\n")
    digest.update(body)
    return digest.hexdigest()


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the application the body already read, then the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _Capture:
    """Forward the application's response while keeping a copy of it to store."""

    __slots__ = ("_body", "_complete", "_forward", "_headers", "_limit", "_size", "_status")

    def __init__(self, forward: Send, limit: int) -> None:
        self._forward = forward
        self._limit = limit
        self._status: int | None = None
        self._headers: list[list[str]] = []
        self._body: list[bytes] | None = []
        self._size = 0
        self._complete = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and self._status is None:
            self._status = int(message["status"])
            self._headers = [
                [bytes(name).decode("latin-1"), bytes(value).decode("latin-1")]
                for name, value in message.get("headers", [])
                if bytes(name).lower() not in _HOP_BY_HOP
            ]
            if message.get("trailers", False):
                self._body = None  # trailers are not kept: the response cannot be replayed
        elif kind == "http.response.body" and self._body is not None:
            chunk = bytes(message.get("body", b""))
            self._size += len(chunk)
            if self._size > self._limit:
                self._body = None
            else:
                self._body.append(chunk)
                self._complete = not message.get("more_body", False)
        else:  # an extension (zero-copy send, path send): not replayable
            self._body = None
        await self._forward(message)

    def encoded(self) -> bytes | None:
        """The response to store, or ``None`` when it must not be (5xx, incomplete, big)."""
        if self._status is None or self._status >= 500 or self._body is None:
            return None
        if not self._complete:
            return None
        document = {
            "status": self._status,
            "headers": self._headers,
            "body": base64.b64encode(b"".join(self._body)).decode("ascii"),
        }
        return RESPONSE_TAG + json.dumps(document, separators=(",", ":")).encode()


def _decode_response(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    if data[:1] != RESPONSE_TAG:
        raise ValueError("not a stored HTTP response")
    document = json.loads(data[1:])
    headers = [
        (str(name).encode("latin-1"), str(value).encode("latin-1"))
        for name, value in document["headers"]
    ]
    return int(document["status"]), headers, base64.b64decode(document["body"], validate=True)


async def _replay(replay: Replay, store: IdempotencyStore, send: Send) -> None:
    try:
        status, headers, body = _decode_response(replay.data)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise CorruptRecordError(
            f"{store!r}: the stored response for {replay.key!r} is unreadable ({exc})",
            store=repr(store),
            record=replay.key,
        ) from None
    await send({"type": "http.response.start", "status": status, "headers": [*headers, _REPLAYED]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _problem(
    send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer with an RFC 9457 problem document."""
    body = json.dumps(
        {"type": "about:blank", "title": _TITLES[status], "status": status, "detail": detail}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
