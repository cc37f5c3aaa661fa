"""IdempotencyMiddleware in a Starlette (or FastAPI) application, behind its authentication.

The Billing API takes double-submitted POSTs from several clients. The middleware goes
in the application's middleware list *after* authentication, so that its ``scope=``
function sees the authenticated client: two clients that pick the same key never meet,
and a request without a key, or without credentials, is refused before the route runs.
A FastAPI application takes the same ``middleware=[...]`` list (or
``app.add_middleware``, which puts a middleware outside those added before it).

Driven here by httpx's ASGI transport, as your tests would; the same application runs
under uvicorn unchanged.

    python examples/messaging/idempotency_starlette.py
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
    requires,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resilience_kit.messaging import IdempotencyMiddleware
from resilience_kit.stores.memory import MemoryStore

TOKENS = {"token-acme": "acme", "token-globex": "globex"}  # your identity provider's job
invoices: list[tuple[str, int]] = []


class BearerTokens(AuthenticationBackend):
    """Authenticate ``Authorization: Bearer <token>``; no credentials, no user."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in TOKENS:
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(TOKENS[token])


def client_of(scope: MutableMapping[str, Any]) -> str | None:
    """Who the key belongs to: set by AuthenticationMiddleware, which runs first."""
    user = scope.get("user")
    return user.display_name if user is not None and user.is_authenticated else None


@requires("authenticated")
async def create_invoice(request: Request) -> JSONResponse:
    body = await request.json()
    invoices.append((request.user.display_name, body["cents"]))
    return JSONResponse({"invoice": len(invoices), "cents": body["cents"]}, status_code=201)


store = MemoryStore()
app = Starlette(
    routes=[Route("/invoices", create_invoice, methods=["POST"])],
    middleware=[
        Middleware(AuthenticationMiddleware, backend=BearerTokens()),
        # After authentication: scope= sees the user; the key is required.
        Middleware(IdempotencyMiddleware, store=store.idempotency, required=True, scope=client_of),
    ],
)


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://billing") as client:

        async def post(token: str, key: str | None, cents: int) -> httpx.Response:
            headers = {"authorization": f"Bearer {token}"}
            if key is not None:
                headers["idempotency-key"] = key
            return await client.post("/invoices", json={"cents": cents}, headers=headers)

        first = await post("token-acme", "inv-1", 500)
        print("acme, first POST:        ", first.status_code, first.json())
        again = await post("token-acme", "inv-1", 500)
        print(
            "acme, double submit:     ",
            again.status_code,
            again.json(),
            "replayed:",
            again.headers["idempotency-replayed"],
        )
        other = await post("token-acme", "inv-1", 900)
        print("acme, same key, new body:", other.status_code, other.json()["title"])
        globex = await post("token-globex", "inv-1", 700)  # the same key, another client
        print("globex, same key:        ", globex.status_code, globex.json())
        missing = await post("token-acme", None, 500)
        print("no key:                  ", missing.status_code, missing.json()["title"])

        assert (first.status_code, again.status_code, other.status_code) == (201, 201, 422)
        assert again.json() == first.json()
        assert globex.status_code == 201
        assert missing.status_code == 400
        assert invoices == [("acme", 500), ("globex", 700)]
        print("invoices created:", invoices)


if __name__ == "__main__":
    anyio.run(main)
