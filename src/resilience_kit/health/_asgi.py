"""`HealthEndpoint`: liveness and readiness probes for any ASGI 3 server, no framework."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from resilience_kit.errors import ConfigurationError
from resilience_kit.health._check import HealthChecks, HealthStatus

__all__ = ("HealthEndpoint",)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_METHODS = ("GET", "HEAD")
_JSON = (b"content-type", b"application/json")
# A probe's answer is about this instant: no proxy or client may reuse it.
_NO_STORE = (b"cache-control", b"no-store")


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise ConfigurationError("prefix", f"must be a str, got {prefix!r}")
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigurationError(
            "prefix", f"must be empty or start with '/' and not end with one, got {prefix!r}"
        )
    return prefix


class HealthEndpoint:
    """Serve ``GET <prefix>/live`` and ``GET <prefix>/ready`` from `HealthChecks`.

    - ``/live`` says the process is up: 200 ``{"status": "alive"}`` always, without
      running any check — a liveness probe that fails restarts the process, which
      would not fix a database outage. Once the endpoint is shutting down (see
      `shut_down`) it answers 503 ``{"status": "shutting_down"}``.
    - ``/ready`` runs the checks and answers with the `HealthReport` as JSON: 200 when
      HEALTHY or DEGRADED (the instance still serves), 503 when UNHEALTHY or shutting
      down, so a load balancer stops sending it traffic.

    Responses carry ``Cache-Control: no-store``. ``HEAD`` answers like ``GET`` without
    a body; other methods get 405 with ``Allow: GET, HEAD``.

    Without ``app`` the endpoint is an ASGI application of its own (mount it, or serve
    it alone; other paths get 404). With ``app`` it is a middleware: it answers its two
    paths and passes every other request, websocket and lifespan event to ``app``.
    Either way a lifespan ``shutdown`` marks it shutting down, so readiness fails while
    the server drains. Paths are matched after the scope's ``root_path``.

    Args:
        checks: the checks ``/ready`` runs.
        app: the ASGI application to wrap, or ``None``.
        prefix: the paths' common prefix: ``""`` or a path such as ``"/health"``.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> from resilience_kit.health import HealthCheck, HealthChecks, HealthEndpoint
        >>> endpoint = HealthEndpoint(HealthChecks([HealthCheck("db", lambda: True)]))
        >>> endpoint.live_path, endpoint.ready_path
        ('/health/live', '/health/ready')
    """

    __slots__ = ("_shutting_down", "app", "checks", "live_path", "ready_path")

    def __init__(
        self, checks: HealthChecks, app: ASGIApp | None = None, *, prefix: str = "/health"
    ) -> None:
        if not isinstance(checks, HealthChecks):
            raise ConfigurationError("checks", f"must be HealthChecks, got {checks!r}")
        if app is not None and not callable(app):
            raise ConfigurationError("app", f"must be an ASGI application or None, got {app!r}")
        prefix = _check_prefix(prefix)
        self.checks = checks
        self.app = app
        self.live_path = f"{prefix}/live"
        self.ready_path = f"{prefix}/ready"
        self._shutting_down = False

    def __repr__(self) -> str:
        prefix = self.live_path[: -len("/live")]
        return f"HealthEndpoint({self.checks!r}, prefix={prefix!r})"

    @property
    def shutting_down(self) -> bool:
        """Whether `shut_down` was called (or the server announced its shutdown).

        Examples:
            >>> HealthEndpoint(HealthChecks()).shutting_down
            False
        """
        return self._shutting_down

    def shut_down(self) -> None:
        """Answer 503 on both paths from now on, so traffic drains before the exit.

        Examples:
            >>> endpoint = HealthEndpoint(HealthChecks())
            >>> endpoint.shut_down()
            >>> endpoint.shutting_down
            True
        """
        self._shutting_down = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope.get("path", "")
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            if path in (self.live_path, self.ready_path):
                await self._answer(scope, path, send)
                return
            if self.app is None:
                await _respond(send, 404, {"detail": "not found"}, head=False)
                return
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if self.app is None:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, path: str, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in _METHODS:
            await _respond(
                send,
                405,
                {"detail": f"method {method} not allowed"},
                head=False,
                extra=((b"allow", b"GET, HEAD"),),
            )
            return
        head = method == "HEAD"
        if path == self.live_path:
            if self._shutting_down:
                await _respond(send, 503, {"status": "shutting_down"}, head=head)
            else:
                await _respond(send, 200, {"status": "alive"}, head=head)
            return
        if self._shutting_down:
            body = {"status": HealthStatus.UNHEALTHY.value, "detail": "shutting down"}
            await _respond(send, 503, body, head=head)
            return
        report = await self.checks.run()
        code = 503 if report.status is HealthStatus.UNHEALTHY else 200
        await _respond(send, code, report.to_dict(), head=head)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watched() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                self._shutting_down = True
            return message

        if self.app is not None:
            await self.app(scope, watched, send)
            return
        while True:
            message = await watched()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(
    send: Send,
    status: int,
    body: dict[str, Any],
    *,
    head: bool,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = [_JSON, _NO_STORE, (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else payload})
