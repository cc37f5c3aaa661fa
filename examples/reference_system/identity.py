"""Identity: sign-up, login issuing versioned tokens, introspection, key rotation.

Its database sits behind a small connection pool and one call policy per access:

    Pipeline(Timeout, RetryPolicy, CircuitBreaker)

- the Timeout (2 s) bounds a request's time in the database, retries included: a
  hung database never hangs a login;
- the RetryPolicy (4 attempts, 50 ms..400 ms full-jitter backoff) absorbs blips — a
  dropped connection is replaced by the pool, and the next attempt succeeds;
- the CircuitBreaker opens on a long outage: logins then fail in microseconds with
  503 and a Retry-After taken from `CircuitOpenError.retry_after`, and the database
  is not hammered while it restarts; half-open probes close it again by themselves.

**Revocation is the critical path** (drill 19). A logout commits its
``identity.session_revoked`` event with the revocation, and every gateway drops the
session when the event arrives. While the bus is down that could be minutes, and a
stolen token would keep working from the gateways' caches all that time — so a logout
waits for the bus to take its event (at most ``confirm_within``, 1 s) and, when it has
not, calls every gateway replica directly (``POST /internal/revocations``) through
``Pipeline(Timeout(1 s), RetryPolicy(3 attempts), CircuitBreaker per gateway)``.
Revoking is idempotent, so the event that follows once the bus is back changes nothing.
Sign-ups and other events are not critical: they wait in the outbox.

Routes: ``POST /signup``, ``POST /login``, ``POST /logout``, ``POST /introspect``
(the gateway's remote validator, RFC 7662 style), ``POST /admin/keys`` (one step of
a key rotation, on this replica), and the health routes.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
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
from resilience_kit.messaging import Event, Outbox
from resilience_kit.security import (
    Keyring,
    KeyState,
    TokenIssuer,
    TokenRejectedError,
    VersionedTokenVerifier,
)
from resilience_kit.testing import ChaosFault

from .core.service import Service, ServiceContext
from .keys import KeyVault, apply_key_step

T = TypeVar("T")

TOPIC = "identity"
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (username TEXT PRIMARY KEY, salt TEXT, password TEXT);
CREATE TABLE IF NOT EXISTS revoked (jti TEXT PRIMARY KEY, username TEXT);
"""


class ConnectionPool:
    """A few reusable connections to the service's database, used from worker threads.

    `drop_connections` and `outage` are where a drill cuts the database: a use of a
    dropped connection raises `sqlite3.OperationalError` and the pool throws that
    connection away, as a driver does with a broken socket; the next use opens a fresh
    one. ``attempts`` is the database's own access log (the instants of every use).
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int, clock: Any) -> None:
        self._connect = connect
        self._idle: list[sqlite3.Connection] = []
        self._limiter = anyio.CapacityLimiter(size)
        self._clock = clock
        self._dropped = 0
        self.outage = False
        self.attempts: list[float] = []
        self.fault = ChaosFault(
            sqlite3.OperationalError("database connection lost"),
            schedule=self._broken,
            name="identity.db.connection",
        )

    def drop_connections(self, count: int) -> None:
        """A blip: the next ``count`` uses find their connection dropped."""
        self._dropped = count

    def _broken(self, _: int) -> bool:
        self.attempts.append(self._clock.monotonic())
        if self.outage:
            return True
        if self._dropped:
            self._dropped -= 1
            return True
        return False

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` in one transaction on a pooled connection."""
        async with self._limiter:
            connection = self._idle.pop() if self._idle else None

            def job() -> T:
                nonlocal connection
                if connection is None:
                    connection = self._connect()
                with connection:
                    return work(connection)

            try:
                self.fault.call(lambda: None)  # the network between us and the database
                result = await anyio.to_thread.run_sync(job)
            except sqlite3.OperationalError:
                if connection is not None:
                    connection.close()  # broken: never handed out again
                raise
            self._idle.append(connection)  # type: ignore[arg-type]
            return result

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


def _hash(password: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{password}".encode()).hexdigest()


def _retry_after(exc: BaseException) -> str:
    if isinstance(exc, CircuitOpenError) and exc.retry_after is not None:
        return str(max(1, math.ceil(exc.retry_after)))
    return "1"


class Identity(Service):
    """One replica of the Identity service."""

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        vault: KeyVault,
        token_lifetime: float = 900.0,
        revocation_targets: Callable[[], Sequence[str]] | None = None,
        confirm_within: float = 1.0,
    ):
        super().__init__(ctx)
        # Base URLs of every gateway replica (service discovery), for the direct call.
        self.revocation_targets = (
            revocation_targets if ctx.mitigations.on("sync-fallback") else None
        )
        self.confirm_within = confirm_within
        self._push_policies: dict[str, Pipeline] = {}
        self.vault = vault
        self.keyring = Keyring(clock=ctx.clock)
        for version in vault.versions[:1]:
            self.keyring.add(version, vault.secret(version), state=KeyState.ACTIVE)
        self.issuer = TokenIssuer(
            self.keyring, issuer="identity", lifetime=token_lifetime, clock=ctx.clock
        )
        self.verifier = VersionedTokenVerifier(
            self.keyring, issuer="identity", cache_ttl=0, clock=ctx.clock, name="identity"
        )
        self.outbox = Outbox(ctx.store.outbox, topic=TOPIC)
        self.pool = ConnectionPool(ctx.store.connect, size=4, clock=ctx.clock)
        mitigations = ctx.mitigations
        self.db_breaker = self.watch(
            CircuitBreaker(
                "identity.db",
                window=20,
                minimum_calls=5,
                failure_rate_threshold=0.5,
                open_for=10.0,
                half_open_calls=2,
                record_on=(sqlite3.Error, TimeoutError),
                clock=ctx.clock,
            ),
            critical=True,  # no database, no logins: Identity is not ready
        )
        if not mitigations.on("breaker"):
            self.db_breaker.disable()
        self.db_policy = Pipeline(
            Timeout(2.0, clock=ctx.clock, name="identity.db.timeout"),
            RetryPolicy(
                attempts=4 if mitigations.on("retries") else 1,
                on=sqlite3.OperationalError,
                backoff=Backoff.exponential(initial=0.05, maximum=0.4, jitter="full"),
                clock=ctx.clock,
                rand=ctx.rand.random,
                name="identity.db.retry",
            ),
            self.db_breaker,
        )
        self._schema_ready = False

    async def database(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the database through the pool and the call policy."""
        if not self._schema_ready:
            await self.pool.run(lambda connection: connection.executescript(SCHEMA))
            self._schema_ready = True
        return await self.db_policy.acall(lambda: self.pool.run(work))

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/signup", self.signup, methods=["POST"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/introspect", self.introspect, methods=["POST"]),
            Route("/admin/keys", self.rotate, methods=["POST"]),
            Route("/admin/delete-user", self.delete_user, methods=["POST"]),
        ]

    def close(self) -> None:
        self.pool.close()

    async def delete_user(self, request: Request) -> Response:
        """Delete an account (a ban, a GDPR erasure): its tokens stop passing introspection."""
        username = str((await request.json())["username"])

        async def handle() -> Response:
            await self.database(
                lambda connection: connection.execute(
                    "DELETE FROM users WHERE username = ?", (username,)
                )
            )
            return JSONResponse({"deleted": username})

        return await self._guarded(handle)

    async def _guarded(self, handler: Callable[[], Any]) -> Response:
        """Turn database trouble into 503 with Retry-After: fail fast, never hang."""
        try:
            return await handler()  # type: ignore[no-any-return]
        except (CircuitOpenError, sqlite3.Error, TimeoutError) as exc:
            return JSONResponse(
                {"error": "database_unavailable", "detail": type(exc).__name__},
                status_code=503,
                headers={"retry-after": _retry_after(exc)},
            )

    async def signup(self, request: Request) -> Response:
        body = await request.json()
        username, password = str(body["username"]), str(body["password"])
        email = str(body.get("email") or f"{username}@example.com")
        salt = hashlib.sha256(f"{self.ctx.host}:{username}".encode()).hexdigest()[:16]

        def insert(connection: sqlite3.Connection) -> bool:
            try:
                connection.execute(
                    "INSERT INTO users VALUES (?, ?, ?)", (username, salt, _hash(password, salt))
                )
            except sqlite3.IntegrityError:
                return False
            self.outbox.add(  # committed with the user, or not at all
                connection,
                Event(
                    type="identity.user_signed_up",
                    key=f"user:{username}",
                    payload={"user_id": username, "email": email},
                ),
            )
            return True

        async def handle() -> Response:
            if not await self.database(insert):
                return JSONResponse({"error": "exists"}, status_code=409)
            self.ctx.sink.record("row", f"users:{username}", self.ctx.service)
            return JSONResponse({"username": username}, status_code=201)

        return await self._guarded(handle)

    async def login(self, request: Request) -> Response:
        body = await request.json()
        username, password = str(body["username"]), str(body["password"])

        def read(connection: sqlite3.Connection) -> tuple[str, str] | None:
            row = connection.execute(
                "SELECT salt, password FROM users WHERE username = ?", (username,)
            ).fetchone()
            return None if row is None else (row[0], row[1])

        async def handle() -> Response:
            found = await self.database(read)
            if found is None or _hash(password, found[0]) != found[1]:
                return JSONResponse({"error": "bad_credentials"}, status_code=401)
            token = self.issuer.issue(username)
            version = self.keyring.active.version if self.keyring.active else None
            return JSONResponse({"token": token, "key_version": version})

        return await self._guarded(handle)

    async def logout(self, request: Request) -> Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        try:
            verified = self.verifier.verify(token)
        except TokenRejectedError as exc:
            return JSONResponse({"error": exc.reason}, status_code=401)
        jti, username = str(verified.claims["jti"]), str(verified.subject)

        def revoke(connection: sqlite3.Connection) -> None:
            connection.execute("INSERT OR IGNORE INTO revoked VALUES (?, ?)", (jti, username))
            self.outbox.add(
                connection,
                Event(
                    type="identity.session_revoked",
                    key=f"user:{username}",
                    payload={"jti": jti, "username": username},
                ),
            )

        async def handle() -> Response:
            await self.database(revoke)
            pushed = await self.push_revocation(jti)
            return JSONResponse({"revoked": jti, "pushed": pushed})

        return await self._guarded(handle)

    # -- the critical path: revocations do not wait for the bus ------------------------------

    async def push_revocation(self, jti: str) -> int:
        """Call every gateway directly when the bus has not taken the revocation's event
        within ``confirm_within``; the number of gateways reached."""
        if self.revocation_targets is None:
            return 0
        clock = self.ctx.clock
        deadline = clock.monotonic() + self.confirm_within
        while (await self.ctx.store.outbox.status()).backlog:
            if clock.monotonic() >= deadline:
                break
            await clock.asleep(0.1)
        else:
            return 0  # the relay published it: every gateway hears of it from the bus
        self.ctx.observe("sync fallback: revocation pushed to every gateway")
        reached = 0

        async def push(base: str) -> None:
            nonlocal reached
            try:
                await self._push_policy(base).acall(
                    lambda: self._post_revocation(f"{base}/internal/revocations", jti)
                )
            except (httpx.HTTPError, ConnectionError, TimeoutError, CircuitOpenError):
                return  # that gateway gets the event when the bus is back
            reached += 1

        async with anyio.create_task_group() as group:
            for base in self.revocation_targets():
                group.start_soon(push, base)
        return reached

    async def _post_revocation(self, url: str, jti: str) -> None:
        response = await self.ctx.http.post(url, json={"jti": jti})
        if response.status_code != 200:
            raise ConnectionError(f"{url} answered {response.status_code}")

    def _push_policy(self, base: str) -> Pipeline:
        # Per gateway: a 1 s deadline (a logout waits for it); 3 attempts with a short
        # backoff, on any failure, since revoking twice is harmless; a breaker so that a
        # dead replica costs each logout nothing (it will hear the event later).
        if base not in self._push_policies:
            clock = self.ctx.clock
            breaker = CircuitBreaker(
                f"identity.revocations.{base.removeprefix('http://')}",
                window=5,
                minimum_calls=3,
                open_for=30.0,
                clock=clock,
            )
            self._push_policies[base] = Pipeline(
                Timeout(1.0, clock=clock, name="identity.revocations.deadline"),
                RetryPolicy(
                    attempts=3,
                    on=(httpx.TransportError, ConnectionError),
                    backoff=Backoff.exponential(initial=0.05, maximum=0.2, jitter="full"),
                    clock=clock,
                    rand=self.ctx.rand.random,
                    name="identity.revocations.retry",
                ),
                self.watch(breaker),
            )
        return self._push_policies[base]

    async def introspect(self, request: Request) -> Response:
        token = str((await request.json()).get("token", ""))
        try:
            verified = self.verifier.verify(token)
        except TokenRejectedError as exc:
            return JSONResponse({"active": False, "reason": exc.reason})
        jti = str(verified.claims["jti"])

        username = str(verified.subject)

        def still_valid(connection: sqlite3.Connection) -> bool:
            revoked = connection.execute("SELECT 1 FROM revoked WHERE jti = ?", (jti,))
            if revoked.fetchone() is not None:
                return False
            user = connection.execute("SELECT 1 FROM users WHERE username = ?", (username,))
            return user.fetchone() is not None  # a deleted account's tokens die with it

        async def handle() -> Response:
            if not await self.database(still_valid):
                return JSONResponse({"active": False, "reason": "revoked"})
            return JSONResponse({"active": True, **dict(verified.claims)})

        return await self._guarded(handle)

    async def rotate(self, request: Request) -> Response:
        """One step of a key rotation on this replica: add, activate or retire."""
        body = await request.json()
        try:
            apply_key_step(self.keyring, self.vault, str(body["action"]), str(body["version"]))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"host": self.ctx.host, **body})
