"""The mail server: the outside world's e-mail API, reachable on the in-process network.

It is not one of the system's services but a provider they call (an HTTP e-mail API):
``POST /messages`` with ``{to, subject, text, tag}`` delivers an e-mail and answers 202.
Every delivery is recorded in the `SideEffectSink` as kind ``email``, keyed
``<to>|<subject>`` — THE record of e-mails actually sent, where a duplicate shows.

Like real providers, it honours an ``Idempotency-Key`` header, with the library's
`IdempotencyMiddleware` on its own storage: a repeat of a request it has already served
gets the stored answer (``Idempotency-Replayed: true``) and sends nothing. `fail_next`
makes it flaky: the next requests answer 503 without sending.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from resilience_kit.messaging import IdempotencyMiddleware
from resilience_kit.stores.memory import MemoryStore

from .core.records import SideEffectSink
from .core.system import System

HOST = "mail"


class MailServer:
    """An e-mail API that records what it delivers and honours idempotency keys."""

    def __init__(self, sink: SideEffectSink) -> None:
        self.sink = sink
        self._failures = 0
        self._sent = 0
        routes = [Route("/messages", self.send, methods=["POST"])]
        self.app: Any = IdempotencyMiddleware(
            Starlette(routes=routes), MemoryStore().idempotency, name="mail"
        )

    def fail_next(self, count: int) -> None:
        """The next ``count`` requests answer 503 and send nothing (a flaky provider)."""
        self._failures += count

    def heal(self) -> None:
        """Forget the failures still to come."""
        self._failures = 0

    async def send(self, request: Request) -> Response:
        if self._failures:
            self._failures -= 1
            return JSONResponse({"error": "temporarily unavailable"}, status_code=503)
        body = await request.json()
        to, subject = str(body.get("to", "")), str(body.get("subject", ""))
        if "@" not in to or not subject:
            return JSONResponse({"error": "invalid message"}, status_code=422)
        self._sent += 1
        self.sink.record("email", f"{to}|{subject}", HOST, to=to, tag=body.get("tag"))
        return JSONResponse({"id": f"msg-{self._sent}"}, status_code=202)


def install(system: System) -> MailServer:
    """Put a mail server on the system's network as host ``mail``."""
    server = MailServer(system.sink)
    system.network.add(HOST, server.app)
    return server
