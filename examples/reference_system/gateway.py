"""The API gateway: authenticates every request, then routes it with a deadline.

Authentication is a `VersionedTokenVerifier` holding every signing-key version still
in play (a rolling deploy has two), and Identity's ``/introspect`` as its remote
validator, so logged-out sessions are refused everywhere:

- verified tokens are cached for 5 minutes (``cache_ttl=300``): an Identity outage is
  invisible to sessions seen recently;
- the validator sits behind the verifier's `Timeout` (2 s) and `CircuitBreaker`: once
  it opens, a token that needs the validator is refused in microseconds instead of
  each request waiting its timeout, and Identity is not hammered while it recovers;
- FAIL CLOSED: a token not in the cache while the validator is unavailable is refused
  (503 with Retry-After), never let through on its signature alone;
- ``identity.session_revoked`` events (a `ResilientConsumer` with an `Inbox`, one
  group per replica so every replica hears every event) revoke cached sessions at once.

Everything else under ``/api/<service>/<path>`` is routed to that service (Organization,
Billing, Workflow...) after the same authentication, with the caller's id in
``x-user-id`` (a client's own ``x-user-id`` is dropped: only the gateway vouches):

- a deadline per route (`Timeout`, `ROUTE_DEADLINES`): a slow service costs the
  client at most that long, then 504;
- a `CircuitBreaker` per destination service: a failing service is answered 503 with
  Retry-After in microseconds, and the others are not affected;
- one retry of a refused connection (it never reached the service), for every method.

Membership lookups (``GET /api/organization/orgs/{org}/members/{user}``), with
``cache_memberships=True`` (drill 21): answers are kept in a `PolicyCache` (fresh for
5 s, then `ServeStale` while Organization cannot answer — a partition, an outage). A
stale answer is marked: ``x-degraded: stale-cache`` and ``"degraded": true`` in the
body. ``organization.member_*`` and ``org_*`` events (one consumer group per replica)
invalidate the entries they make wrong, so a member removed while Organization is
unreachable is not answered from the cache: nothing is known, and the lookup is refused
(503 with Retry-After) — fail closed.

Revocations arrive by event, and also by a direct call from Identity when the bus is
down (``POST /internal/revocations``, drill 19); both revoke the same way, so the second
changes nothing. Each replica records a revocation it applies as a side effect
(``revocation``), once.

Calls to Identity for sign-up and login go through
``Pipeline(Timeout(5 s), RetryPolicy(2 attempts, connection refused only), CircuitBreaker)``:
a refused connection never reached Identity, so retrying it cannot log in twice; the
breaker stops a dead Identity from costing each login a connection attempt.
"""

from __future__ import annotations

import json
import math
import re

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from resilience_kit import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    Pipeline,
    RetryPolicy,
    Timeout,
)
from resilience_kit.caching import CacheLoadError, PolicyCache, Served, ServeStale
from resilience_kit.messaging import Event, Inbox, ResilientConsumer
from resilience_kit.security import (
    Keyring,
    KeyState,
    TokenRejectedError,
    ValidatorUnavailableError,
    VerifiedToken,
    VersionedTokenVerifier,
)

from .core.service import Service, ServiceContext
from .identity import TOPIC as IDENTITY_TOPIC
from .keys import KeyVault, apply_key_step
from .organization import TOPIC as ORGANIZATION_TOPIC

ROUTED = ("organization", "billing", "workflow", "notification", "audit", "analytics")
"""The services reachable under ``/api/<service>/...``."""

ROUTE_DEADLINES: dict[str, float] = {"workflow": 5.0, "billing": 3.0}
"""Seconds a routed request may take, per destination (default 5 s)."""

MEMBER_PATH = re.compile(r"orgs/(?P<org>[^/]+)/members/(?P<user>[^/]+)")
MEMBERSHIP_TTL = 5.0
"""Seconds a membership answer is used without asking Organization again."""
MEMBERSHIP_STALE_IF_ERROR = 1800.0
"""Seconds past that an answer may still be served while Organization cannot answer."""

Answer = tuple[int, bytes]  # Organization's status and body


class Gateway(Service):
    """One replica of the API gateway."""

    def __init__(
        self, ctx: ServiceContext, *, vault: KeyVault, cache_memberships: bool = False
    ) -> None:
        super().__init__(ctx)
        self.vault = vault
        clock, mitigations = ctx.clock, ctx.mitigations
        self.keyring = Keyring(clock=clock)
        for version in vault.versions[:1]:
            self.keyring.add(version, vault.secret(version), state=KeyState.ACTIVE)
        self.validator_breaker = self.watch(
            CircuitBreaker(
                "gateway.validator",
                window=10,
                minimum_calls=5,
                failure_rate_threshold=0.5,
                open_for=30.0,
                half_open_calls=2,
                clock=clock,
            )
        )
        if not mitigations.on("breaker"):
            self.validator_breaker.disable()
        self.verifier = VersionedTokenVerifier(
            self.keyring,
            issuer="identity",
            cache_ttl=300.0 if mitigations.on("cache") else 0.0,
            validator=self._introspect,
            validator_timeout=2.0,
            validator_breaker=self.validator_breaker,
            clock=clock,
            name=f"{ctx.host}.tokens",
        )
        # Only for the fail-open variant (mitigation "fail-closed" off): signatures alone.
        self._signature_only = VersionedTokenVerifier(
            self.keyring, issuer="identity", cache_ttl=0.0, clock=clock
        )
        self.fail_closed = mitigations.on("fail-closed")
        self.identity_breaker = self.watch(
            CircuitBreaker(
                "gateway.identity", window=20, minimum_calls=10, open_for=15.0, clock=clock
            )
        )
        if not mitigations.on("breaker"):
            self.identity_breaker.disable()
        self.identity_calls = Pipeline(
            Timeout(5.0, clock=clock, name="gateway.identity.deadline"),
            RetryPolicy(
                attempts=2 if mitigations.on("retries") else 1,
                on=httpx.ConnectError,
                backoff=Backoff.constant(0.1),
                clock=clock,
                rand=ctx.rand.random,
                name="gateway.identity.retry",
            ),
            self.identity_breaker,
        )
        self.routes_to: dict[str, Pipeline] = {}
        for service in ROUTED:
            breaker = self.watch(
                CircuitBreaker(
                    f"gateway.{service}",
                    window=20,
                    minimum_calls=10,
                    failure_rate_threshold=0.5,
                    open_for=15.0,
                    half_open_calls=2,
                    record_on=(httpx.TransportError, ConnectionError, TimeoutError),
                    clock=clock,
                )
            )
            if not mitigations.on("breaker"):
                breaker.disable()
            self.routes_to[service] = Pipeline(
                Timeout(ROUTE_DEADLINES.get(service, 5.0), clock=clock, name=f"gateway.{service}"),
                RetryPolicy(
                    attempts=2 if mitigations.on("retries") else 1,
                    on=httpx.ConnectError,
                    backoff=Backoff.constant(0.1),
                    clock=clock,
                    rand=ctx.rand.random,
                    name=f"gateway.{service}.retry",
                ),
                breaker,
            )
        self._revoked: set[str] = set()
        self.mark_degraded = mitigations.on("degraded-mode")
        self.memberships: PolicyCache[tuple[str, str], Answer] | None = None
        if cache_memberships and mitigations.on("local-cache"):
            self.memberships = PolicyCache(
                self._load_membership,
                ttl=MEMBERSHIP_TTL,
                policy=ServeStale(stale_if_error=MEMBERSHIP_STALE_IF_ERROR),
                clock=clock,
                name=f"{ctx.host}.memberships",
            )
        if self.memberships is not None and mitigations.on("cache-invalidation"):
            self.consumers.append(
                ResilientConsumer(
                    ctx.bus.subscribe(ORGANIZATION_TOPIC, group=f"memberships.{ctx.host}"),
                    self._on_organization_event,
                    name=f"memberships.{ctx.host}",
                    dead_letters=ctx.store.dead_letters,
                    retry=RetryPolicy(attempts=3, backoff=Backoff.constant(1.0), clock=clock),
                    clock=clock,
                )
            )
        self.consumers.append(
            ResilientConsumer(
                ctx.bus.subscribe(IDENTITY_TOPIC, group=f"revocations.{ctx.host}"),
                self._on_identity_event,
                name=f"revocations.{ctx.host}",
                dead_letters=ctx.store.dead_letters,
                inbox=Inbox(ctx.store.inbox, consumer=f"revocations.{ctx.host}"),
                retry=RetryPolicy(attempts=3, backoff=Backoff.constant(1.0), clock=clock),
                clock=clock,
            )
        )

    # -- authentication -------------------------------------------------------------------

    async def _introspect(self, token: str) -> object:
        response = await self.ctx.http.post(
            f"{self.ctx.urls['identity']}/introspect", json={"token": token}
        )
        if response.status_code != 200:
            raise ConnectionError(f"identity answered {response.status_code}")
        return response.json()

    async def authenticate(self, request: Request) -> VerifiedToken | Response:
        """The verified token of ``request``, or the response refusing it."""
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
        try:
            return await self.verifier.averify(token)
        except ValidatorUnavailableError as exc:
            if not self.fail_closed:
                try:  # fail open: what the analysis warns against
                    return self._signature_only.verify(token)
                except TokenRejectedError:
                    pass
            self.ctx.observe("fail closed")
            metrics = self.validator_breaker.metrics()
            wait = metrics.open_until - self.ctx.clock.monotonic() if metrics.open_until else 5.0
            return JSONResponse(
                {"error": "unauthenticated", "reason": exc.reason},
                status_code=503,
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )
        except TokenRejectedError as exc:
            return JSONResponse({"error": "unauthenticated", "reason": exc.reason}, status_code=401)

    async def _on_identity_event(self, event: Event) -> None:
        if event.type == "identity.session_revoked":
            self.revoke(str(event.payload["jti"]), via="event")

    def revoke(self, jti: str, *, via: str) -> None:
        """Refuse every token with ``jti`` from now on (idempotent: twice is once)."""
        self.verifier.revoke(jti)
        if jti not in self._revoked:
            self._revoked.add(jti)
            self.ctx.sink.record("revocation", f"{self.ctx.host}:{jti}", self.ctx.host, via=via)
            self.ctx.observe(f"revocation applied ({via})")

    async def internal_revocation(self, request: Request) -> Response:
        """Identity's direct call while the bus is down (in production: mTLS only)."""
        jti = str((await request.json())["jti"])
        self.revoke(jti, via="direct call")
        return JSONResponse({"revoked": jti, "host": self.ctx.host})

    # -- membership lookups: a local cache, invalidated by events -----------------------------

    async def _load_membership(self, key: tuple[str, str]) -> Answer:
        org, user = key
        url = f"{self.ctx.urls['organization']}/orgs/{org}/members/{user}"
        response = await self.routes_to["organization"].acall(lambda: self.ctx.http.get(url))
        if response.status_code not in (200, 404):
            raise ConnectionError(f"organization answered {response.status_code}")
        return response.status_code, response.content

    async def _on_organization_event(self, event: Event) -> None:
        if self.memberships is None:
            return
        kind = event.type.removeprefix("organization.")
        if kind in ("member_added", "member_removed"):
            key = (str(event.payload["org_id"]), str(event.payload["user_id"]))
            await self.memberships.invalidate(key)
        elif kind in ("org_deleted", "org_purged"):
            await self.memberships.invalidate_all()

    async def cached_membership(self, org: str, user: str) -> Response:
        """A membership lookup through the cache: fresh, or stale and marked, or 503."""
        assert self.memberships is not None
        try:
            lookup = await self.memberships.lookup((org, user))
        except CacheLoadError:
            # Nothing known (never asked, or invalidated by an event): fail closed.
            return JSONResponse(
                {"error": "organization_unavailable"},
                status_code=503,
                headers={"retry-after": "5"},
            )
        status, content = lookup.value
        if lookup.served is not Served.STALE or not self.mark_degraded:
            return Response(content, status_code=status, media_type="application/json")
        self.ctx.observe("membership answered from the gateway's cache (degraded)")
        body = {**json.loads(content), "degraded": True, "age": round(lookup.age or 0.0, 3)}
        return JSONResponse(body, status_code=status, headers={"x-degraded": "stale-cache"})

    # -- routes ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/whoami", self.whoami, methods=["GET"]),
            Route("/api/signup", self.to_identity("/signup"), methods=["POST"]),
            Route("/api/login", self.to_identity("/login"), methods=["POST"]),
            Route("/api/logout", self.to_identity("/logout"), methods=["POST"]),
            Route("/admin/keys", self.rotate, methods=["POST"]),
            Route("/internal/revocations", self.internal_revocation, methods=["POST"]),
            Route(
                "/api/{service}/{path:path}",
                self.route,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            ),
        ]

    async def route(self, request: Request) -> Response:
        """Forward ``/api/<service>/<path>`` to the service, as the authenticated user."""
        service, path = request.path_params["service"], request.path_params["path"]
        pipeline = self.routes_to.get(service)
        if pipeline is None:
            return JSONResponse({"error": f"no service {service!r}"}, status_code=404)
        verified = await self.authenticate(request)
        if isinstance(verified, Response):
            return verified
        member = MEMBER_PATH.fullmatch(path) if service == "organization" else None
        if member is not None and request.method == "GET" and self.memberships is not None:
            return await self.cached_membership(member["org"], member["user"])
        body = await request.body()
        headers = {"x-user-id": verified.subject or "", "content-type": "application/json"}
        url = f"{self.ctx.urls[service]}/{path}"
        if request.url.query:
            url += f"?{request.url.query}"
        try:
            response = await pipeline.acall(
                lambda: self.ctx.http.request(request.method, url, content=body, headers=headers)
            )
        except CircuitOpenError as exc:
            wait = max(1, math.ceil(exc.retry_after or 1))
            return JSONResponse(
                {"error": f"{service}_unavailable"},
                status_code=503,
                headers={"retry-after": str(wait)},
            )
        except TimeoutError:
            return JSONResponse({"error": f"{service}_timeout"}, status_code=504)
        except httpx.HTTPError as exc:
            return JSONResponse(
                {"error": f"{service}_unavailable", "detail": type(exc).__name__}, status_code=502
            )
        passed = {k: v for k, v in response.headers.items() if k in ("retry-after", "x-degraded")}
        return Response(
            response.content,
            status_code=response.status_code,
            headers=passed,
            media_type=response.headers.get("content-type", "application/json"),
        )

    async def rotate(self, request: Request) -> Response:
        """One step of a key rotation on this replica (it only verifies)."""
        body = await request.json()
        try:
            apply_key_step(self.keyring, self.vault, str(body["action"]), str(body["version"]))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"host": self.ctx.host, **body})

    async def whoami(self, request: Request) -> Response:
        verified = await self.authenticate(request)
        if isinstance(verified, Response):
            return verified
        return JSONResponse(
            {
                "sub": verified.subject,
                "key_version": verified.key_version,
                "from_cache": verified.from_cache,
                "host": self.ctx.host,
            }
        )

    def to_identity(self, path: str):  # type: ignore[no-untyped-def]
        """A route handler forwarding the request to Identity's ``path``."""

        async def forward(request: Request) -> Response:
            body = await request.body()
            headers = {k: v for k, v in request.headers.items() if k == "authorization"}
            try:
                response = await self.identity_calls.acall(
                    lambda: self.ctx.http.post(
                        f"{self.ctx.urls['identity']}{path}",
                        content=body,
                        headers={**headers, "content-type": "application/json"},
                    )
                )
            except CircuitOpenError as exc:
                wait = max(1, math.ceil(exc.retry_after or 1))
                return JSONResponse(
                    {"error": "identity_unavailable"},
                    status_code=503,
                    headers={"retry-after": str(wait)},
                )
            except (httpx.HTTPError, TimeoutError) as exc:
                return JSONResponse(
                    {"error": "identity_unavailable", "detail": type(exc).__name__}, status_code=502
                )
            passed = {k: v for k, v in response.headers.items() if k in ("retry-after",)}
            return Response(
                response.content,
                status_code=response.status_code,
                headers=passed,
                media_type="application/json",
            )

        return forward
