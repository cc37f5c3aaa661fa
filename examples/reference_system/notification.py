"""Notification: welcome and "you were added" e-mails, with an in-app fallback.

It consumes ``identity.user_signed_up`` {user_id, email} (a welcome e-mail; the address
is kept for later e-mails) and ``organization.member_added`` {org_id, user_id, role}
(a "you were added" e-mail), and sends e-mail through the mail server
(``ctx.urls["mail"]``, an external HTTP API).

**Exactly one e-mail from at-least-once delivery**, decided in two places:

- the `Inbox` (event id), marked in the very transaction that stores the notification:
  a redelivered event stores nothing, and the mark and the notification commit
  together, so no crash can separate them;
- an idempotency key per notification, stored with it and sent to the mail server as
  ``Idempotency-Key``: a re-send of the same notification — after an acknowledgement
  lost on the network, or a crash between the send and recording it — is answered
  from the server's record and not delivered twice.

**The e-mail queue.** Handling an event only stores the notification (table
``emails``, status pending), so a consumer never waits on the mail server and an
outage never turns into dead letters. A dispatcher sends what is pending through

    Pipeline(Fallback, RetryPolicy, CircuitBreaker, Timeout)

- the Timeout (2 s) bounds one attempt: a hung mail server costs one attempt, not
  the queue;
- the RetryPolicy (3 attempts, exponential backoff 0.5 s to 4 s, full jitter) absorbs
  blips: a provider's passing 503 is invisible;
- the CircuitBreaker stops calling a mail server that keeps failing: while it is
  open the queue holds (no call at all), and half-open probes find when it is back;
- the Fallback turns "cannot send now" into a *held* e-mail instead of an error: the
  user gets an in-app notification at once (table ``in_app``, once per notification)
  and the e-mail stays pending (queue persistence); when a send succeeds again, every
  held e-mail is sent.

**Poison.** An event that cannot become a notification (a role there is no wording
for, a payload missing a field) fails in the handler; the `ResilientConsumer` tries
it 3 times, puts it in dead letters (``ctx.store.dead_letters``) and moves on. After
the fix (``POST /admin/templates``), an operator replays it with
``resilience-kit dead-letters replay --to outbox``.

Routes: ``GET /users/{user_id}/notifications`` (the in-app channel),
``POST /admin/templates`` {role, wording}, and the health routes (readiness adds the
consumers' lag, the age of the oldest pending e-mail, and dead letters waiting).
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
    Fallback,
    Pipeline,
    RetryPolicy,
    Timeout,
)
from resilience_kit.health import HealthCheck, lag_check, threshold_check
from resilience_kit.messaging import (
    DeadLetterFilter,
    DeadLetterQueue,
    Event,
    Inbox,
    ResilientConsumer,
)
from resilience_kit.testing import ChaosFault

from .core.service import Service, ServiceContext

T = TypeVar("T")

GROUP = "notification"
TOPICS = ("identity", "organization")
ROLES = {"admin": "an administrator", "member": "a member"}
HOLD = 5.0  # seconds the queue holds after a failed send, when the breaker gives no time
MISSING_ADDRESS_WAIT = 30.0  # a member_added may overtake its user's sign-up

SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (user_id TEXT PRIMARY KEY, email TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS emails (
    key TEXT PRIMARY KEY,          -- the idempotency key the mail server sees
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    subject TEXT NOT NULL,
    text TEXT NOT NULL,
    status TEXT NOT NULL,          -- pending | sent | rejected | dropped
    tries INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    created REAL NOT NULL,
    sent REAL
);
CREATE INDEX IF NOT EXISTS emails_pending ON emails (status, due);
CREATE TABLE IF NOT EXISTS in_app (
    key TEXT PRIMARY KEY REFERENCES emails (key),
    user_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class TemplateError(ValueError):
    """The event cannot be turned into a notification: there is no wording for it."""


class MailUnavailableError(Exception):
    """The mail server asked to try later (5xx, 409, 429)."""


class MailRejectedError(Exception):
    """The mail server refused the e-mail for good (another 4xx): never retried."""


@dataclass(frozen=True)
class Held:
    """The Fallback's answer: the e-mail could not be sent now, and why."""

    reason: str
    retry_after: float | None

    @classmethod
    def of(cls, exc: BaseException | None) -> Held:
        retry_after = getattr(exc, "retry_after", None)
        return cls(type(exc).__name__, retry_after if isinstance(retry_after, float) else None)


@dataclass(frozen=True)
class Pending:
    """A pending e-mail, as the dispatcher reads it."""

    key: str
    user_id: str
    address: str | None
    tag: str
    subject: str
    text: str
    in_app: bool


class Notification(Service):
    """One replica of the Notification service."""

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        on = ctx.mitigations.on
        self.roles = dict(ROLES)
        # Marked inside the transaction that stores the notification (see `accept`), not
        # by the consumer afterwards: then the mark and the notification commit together.
        self.inbox = Inbox(ctx.store.inbox, consumer=GROUP) if on("inbox") else None
        self.idempotency_keys = on("idempotency-key")
        self.in_app_fallback = on("in-app-fallback")
        self.queue_persistence = on("queue-persistence")
        self._db_blips = 0
        self.db_fault = ChaosFault(
            sqlite3.OperationalError("database is locked"),
            schedule=self._db_broken,
            name="notification.db",
        )
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._wake = anyio.Event()
        self._hold_until = 0.0
        self._holding = False

        retries = on("retries")
        self.mail_breaker = self.watch(
            CircuitBreaker(
                "notification.mail",
                window=10,
                minimum_calls=4,
                failure_rate_threshold=0.5,
                open_for=30.0,
                half_open_calls=1,
                record_on=(httpx.TransportError, TimeoutError, MailUnavailableError),
                clock=ctx.clock,
            )
        )
        if not on("breaker"):
            self.mail_breaker.disable()
        transient = (httpx.TransportError, TimeoutError, MailUnavailableError)
        self.mail_policy = Pipeline(
            # Outermost: whatever the mail server's trouble, the e-mail is held, not lost.
            Fallback(
                handler=Held.of, on=(*transient, CircuitOpenError), name="notification.mail.held"
            ),
            RetryPolicy(
                attempts=3 if retries else 1,
                on=transient,  # never CircuitOpenError: an open breaker means "hold now"
                backoff=Backoff.exponential(initial=0.5, maximum=4.0, jitter="full"),
                clock=ctx.clock,
                rand=ctx.rand.random,
                name="notification.mail.retry",
            ),
            self.mail_breaker,
            Timeout(2.0, clock=ctx.clock, name="notification.mail.timeout"),
        )

        handlers = {"identity": self.on_identity, "organization": self.on_organization}
        for topic in TOPICS:
            self.consumers.append(
                ResilientConsumer(
                    ctx.bus.subscribe(topic, group=GROUP, consumer=ctx.host),
                    handlers[topic],
                    name=f"{GROUP}.{topic}",
                    dead_letters=ctx.store.dead_letters,
                    retry=self._consumer_retry(topic),
                    clock=ctx.clock,
                )
            )

    def _consumer_retry(self, topic: str) -> RetryPolicy:
        """3 attempts, then dead letters; without dead-lettering, retry for good."""
        on = self.ctx.mitigations.on
        backoff = Backoff.exponential(initial=0.5, maximum=4.0, jitter="full")
        if not on("dead-lettering"):
            # What a consumer without a dead-letter queue can do: try again, and again.
            return RetryPolicy(
                attempts=None,
                deadline=86_400.0,
                backoff=Backoff.exponential(initial=0.5, maximum=10.0, jitter="full"),
                clock=self.ctx.clock,
                rand=self.ctx.rand.random,
                name=f"{GROUP}.{topic}.retry",
            )
        return RetryPolicy(
            attempts=3 if on("retries") else 1,
            backoff=backoff,
            clock=self.ctx.clock,
            rand=self.ctx.rand.random,
            name=f"{GROUP}.{topic}.retry",
        )

    # -- the database -----------------------------------------------------------------------

    def blip_database(self, count: int) -> None:
        """The next ``count`` transactions find the database locked (a passing fault)."""
        self._db_blips += count

    def _db_broken(self, _: int) -> bool:
        if self._db_blips:
            self._db_blips -= 1
            return True
        return False

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one transaction on the replica's connection, in a worker thread."""

        def job() -> T:
            # A lock taken in the worker thread, not on the event loop: one transaction
            # at a time on the connection, without extra awaits before the thread starts.
            with self._lock:
                if self._connection is None:
                    connection = self.ctx.store.connect()
                    # WAL with NORMAL: a commit survives the process crashing, with no
                    # fsync per commit (only the OS crashing could lose the last ones).
                    connection.execute("PRAGMA synchronous = NORMAL")
                    connection.executescript(SCHEMA)
                    self._connection = connection
                with self._connection:
                    return work(self._connection)

        return await anyio.to_thread.run_sync(job)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    # -- consuming: events become stored notifications ---------------------------------------

    async def on_identity(self, event: Event) -> None:
        if event.type != "identity.user_signed_up":
            return  # Identity's other events send nothing
        user_id, email = str(event.payload["user_id"]), str(event.payload["email"])
        await self.accept(
            event,
            user_id,
            tag="welcome",
            subject=f"Welcome, {user_id}",
            text="Your account is ready.",
            address=email,
        )

    async def on_organization(self, event: Event) -> None:
        if event.type != "organization.member_added":
            return
        org_id, user_id = str(event.payload["org_id"]), str(event.payload["user_id"])
        role = str(event.payload["role"])
        wording = self.roles.get(role)
        if wording is None:
            raise TemplateError(f"no wording for role {role!r} in organization.member_added")
        await self.accept(
            event,
            user_id,
            tag="member-added",
            subject=f"You were added to {org_id}",
            text=f"You are now {wording} of {org_id}.",
        )

    async def accept(
        self,
        event: Event,
        user_id: str,
        *,
        tag: str,
        subject: str,
        text: str,
        address: str | None = None,
    ) -> None:
        """Store the notification (and the address) once per event; wake the dispatcher."""
        # The key names this notification at the mail server; duplicates of the event
        # are the inbox's business, so every stored notification gets a fresh key.
        key = str(uuid.UUID(int=self.ctx.rand.getrandbits(128), version=4))
        now = self.ctx.clock.monotonic()

        def store(connection: sqlite3.Connection) -> bool:
            if self.inbox is not None and not self.inbox.mark(connection, event):
                return False
            if address is not None:
                connection.execute(
                    "INSERT INTO contacts VALUES (?, ?) "
                    "ON CONFLICT (user_id) DO UPDATE SET email = excluded.email",
                    (user_id, address),
                )
            connection.execute(
                "INSERT INTO emails (key, event_id, user_id, tag, subject, text, status, due, "
                "created) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (key, str(event.id), user_id, tag, subject, text, now, now),
            )
            return True

        self.db_fault.call(lambda: None)  # what a drill breaks: the way to the database
        if await self.transaction(store):
            self._wake.set()
        else:
            self.ctx.observe("inbox: duplicate event skipped")

    # -- dispatching: pending e-mails go out ---------------------------------------------------

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the consumers and the e-mail dispatcher until cancelled."""
        async with anyio.create_task_group() as group:
            await group.start(super().run)
            group.start_soon(self.dispatch)
            task_status.started()

    async def dispatch(self) -> None:
        """Send pending e-mails as they come due; hold the queue while mail is down."""
        clock = self.ctx.clock
        while True:
            wake = self._wake = anyio.Event()
            now = clock.monotonic()
            # On hold, only e-mails whose user has not been told in the app yet matter.
            untold = now < self._hold_until
            due, next_due = await self.transaction(partial(_due, now=now, untold_only=untold))
            tried = False
            for row in due:
                if clock.monotonic() < self._hold_until:
                    # Mail is down: no call at all, but the user hears of it in the app.
                    await self.hold(row)
                    continue
                tried = True
                await self.deliver(row)
            if tried:
                continue  # more may have come due meanwhile
            wait = [t - clock.monotonic() for t in (next_due, self._hold_until) if t is not None]
            waits = [t for t in wait if t > 0]
            await self._nap(wake, min(waits) if waits else None)

    async def _nap(self, wake: anyio.Event, seconds: float | None) -> None:
        """Wait for ``wake`` (a new notification), at most ``seconds`` of the clock."""
        clock = self.ctx.clock
        timer = None if seconds is None else clock.call_at(clock.monotonic() + seconds, wake.set)
        try:
            await wake.wait()
        finally:
            if timer is not None:
                timer.cancel()

    async def deliver(self, row: Pending) -> None:
        """One e-mail through the mail policy: sent, held (in-app, kept), or rejected."""
        now = self.ctx.clock.monotonic()
        if row.address is None:  # its sign-up has not arrived yet
            await self.transaction(
                lambda c: c.execute(
                    "UPDATE emails SET due = ? WHERE key = ?", (now + MISSING_ADDRESS_WAIT, row.key)
                )
            )
            return
        try:
            outcome = await self.mail_policy.acall(self.send, row)
        except MailRejectedError:
            await self._finish(row, "rejected")
            if not row.in_app:
                await self.fall_back(row)
            return
        if isinstance(outcome, Held):
            self._holding = True
            self._hold_until = self.ctx.clock.monotonic() + (outcome.retry_after or HOLD)
            self.ctx.observe("mail held: e-mails queued")
            await self.hold(row)
            return
        await self._finish(row, "sent")
        if self._holding:  # mail is back: what was held goes now, in order
            self._holding = False
            self._hold_until = 0.0
            await self.transaction(
                lambda c: c.execute(
                    "UPDATE emails SET due = ? WHERE status = 'pending' AND due > ?", (now, now)
                )
            )

    async def send(self, row: Pending) -> str:
        """One attempt at the mail server; the message id, or an error saying what to do."""
        headers = {"idempotency-key": row.key} if self.idempotency_keys else {}
        response = await self.ctx.http.post(
            f"{self.ctx.urls['mail']}/messages",
            json={"to": row.address, "subject": row.subject, "text": row.text, "tag": row.tag},
            headers=headers,
        )
        if response.status_code in (409, 429) or response.status_code >= 500:
            raise MailUnavailableError(f"mail server answered {response.status_code}")
        if response.status_code >= 400:
            raise MailRejectedError(f"mail server refused: {response.status_code}")
        if response.headers.get("idempotency-replayed") == "true":
            self.ctx.observe("idempotency key: a lost acknowledgement answered from the record")
        return str(response.json().get("id", ""))

    async def hold(self, row: Pending) -> None:
        """An e-mail that cannot go now: tell the user in the app; keep it for later."""
        if not row.in_app:
            await self.fall_back(row)
        if not self.queue_persistence:
            await self._finish(row, "dropped")

    async def fall_back(self, row: Pending) -> None:
        """The in-app notification for an e-mail that cannot go now (once per e-mail)."""
        if not self.in_app_fallback:
            return
        now = self.ctx.clock.monotonic()

        def insert(connection: sqlite3.Connection) -> bool:
            cursor = connection.execute(
                "INSERT OR IGNORE INTO in_app VALUES (?, ?, ?, ?)",
                (row.key, row.user_id, row.subject, now),
            )
            return cursor.rowcount == 1

        if await self.transaction(insert):
            self.ctx.sink.record(
                "in_app",
                f"{row.user_id}|{row.subject}",
                self.ctx.service,
                user=row.user_id,
                tag=row.tag,
            )
            self.ctx.observe("fallback: in-app notification")

    async def _finish(self, row: Pending, status: str) -> None:
        now = self.ctx.clock.monotonic()
        await self.transaction(
            lambda c: c.execute(
                "UPDATE emails SET status = ?, tries = tries + 1, sent = ? WHERE key = ?",
                (status, now if status == "sent" else None, row.key),
            )
        )

    # -- routes and health ---------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/users/{user_id}/notifications", self.in_app, methods=["GET"]),
            Route("/admin/templates", self.add_template, methods=["POST"]),
        ]

    async def in_app(self, request: Request) -> Response:
        user_id = request.path_params["user_id"]
        rows = await self.transaction(
            lambda c: c.execute(
                "SELECT subject, created FROM in_app WHERE user_id = ? ORDER BY created",
                (user_id,),
            ).fetchall()
        )
        return JSONResponse({"notifications": [{"subject": s, "at": at} for s, at in rows]})

    async def add_template(self, request: Request) -> Response:
        """The fix for a role without wording: deploy its wording on this replica."""
        body = await request.json()
        role, wording = str(body.get("role", "")), str(body.get("wording", ""))
        if not role or not wording:
            return JSONResponse({"error": "role and wording are required"}, status_code=422)
        self.roles[role] = wording
        return JSONResponse({"role": role, "wording": wording})

    def readiness(self) -> list[HealthCheck]:
        bus = self.ctx.bus
        queue = DeadLetterQueue(self.ctx.store.dead_letters)

        async def oldest_pending() -> float:
            now = self.ctx.clock.monotonic()
            oldest = await self.transaction(
                lambda c: c.execute(
                    "SELECT min(created) FROM emails WHERE status = 'pending'"
                ).fetchone()[0]
            )
            return 0.0 if oldest is None else now - float(oldest)

        async def dead_letters() -> float:
            return float(await queue.count(DeadLetterFilter()))

        return [
            lag_check(
                lambda: sum(bus.backlog(topic, GROUP) for topic in TOPICS), degraded_above=100
            ),
            threshold_check(
                "email_queue", oldest_pending, degraded_above=120.0, unit="s", critical=False
            ),
            # An operator is alerted: something waits for inspection and a replay.
            threshold_check("dead_letters", dead_letters, degraded_above=0, critical=False),
        ]


def _due(
    connection: sqlite3.Connection, *, now: float, untold_only: bool
) -> tuple[list[Pending], float | None]:
    """The pending e-mails due by ``now`` (oldest first; only those without an in-app
    notification when ``untold_only``), and when the next one is due."""
    untold = " AND i.key IS NULL" if untold_only else ""
    rows = connection.execute(
        "SELECT e.key, e.user_id, c.email, e.tag, e.subject, e.text, i.key IS NOT NULL "
        "FROM emails e LEFT JOIN contacts c ON c.user_id = e.user_id "
        "LEFT JOIN in_app i ON i.key = e.key "
        f"WHERE e.status = 'pending' AND e.due <= ?{untold} ORDER BY e.created LIMIT 50",
        (now,),
    ).fetchall()
    later = connection.execute(
        "SELECT min(due) FROM emails WHERE status = 'pending' AND due > ?", (now,)
    ).fetchone()[0]
    pending = [
        Pending(
            key=key,
            user_id=user_id,
            address=address,
            tag=tag,
            subject=subject,
            text=text,
            in_app=bool(told),
        )
        for key, user_id, address, tag, subject, text, told in rows
    ]
    return pending, later
