"""The idempotency guard `@idempotent` and the HTTP middleware share, and its pure `decide`.

The guard turns one call into store operations: claim the key (the one arbitrated step),
then either run and complete, or replay, or refuse. `decide` is the pure part: what a
record found in the store means for a call.
"""

from __future__ import annotations

import logging
import os
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

import anyio

from resilience_kit import _telemetry
from resilience_kit._checks import check_name, check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import (
    CircuitOpenError,
    ConfigurationError,
    CorruptRecordError,
    IdempotencyConflictError,
    IdempotencyInProgressError,
    IdempotencyKeyError,
)
from resilience_kit.messaging._event import _check_name
from resilience_kit.messaging._protocols import IdempotencyStore
from resilience_kit.messaging._records import IdempotencyRecord

if TYPE_CHECKING:
    from resilience_kit.policies._breaker import CircuitBreaker

P = ParamSpec("P")
T = TypeVar("T")

__all__ = (
    "IDEMPOTENCY_CALLS",
    "Decision",
    "IdempotencyGuard",
    "Replay",
    "Run",
    "StoreOutage",
    "check_key",
    "decide",
    "scoped_key",
    "unavailable",
)

logger = logging.getLogger("resilience_kit.idempotency")


OnInProgress = Literal["wait", "raise"]
Decision = Literal["run", "replay", "conflict", "busy", "absent"]
Outcome = Literal["executed", "replayed", "conflict", "in_progress", "failed", "lease_lost"]

IDEMPOTENCY_CALLS = "resilience.idempotency.calls"
_DESCRIPTION = "Idempotent calls by outcome (executed, replayed, conflict, in_progress, ...)"
_OUTCOMES: tuple[Outcome, ...] = typing.get_args(Outcome)

_KEY_MAX_LENGTH = 255  # as _check_name allows: an indexable column on every backend
_FIRST_POLL = 0.01  # seconds between the first polls of a running call's record
_MAX_POLL = 1.0
_MIN_POLL = 0.001  # never spin: a record about to expire is polled this often at most

# Stored results start with a tag: the decorator's outcomes, and HTTP responses.
RESULT_TAG = b"R"
FAILURE_TAG = b"E"
UNSTORABLE_TAG = b"U"  # the call ran, its result could not be stored: never run it again
RESPONSE_TAG = b"H"


def check_key(value: object, what: str = "key") -> str:
    """Validate an idempotency key (or scope): 1 to 255 characters, no control characters.

    An int or a UUID is converted to its text; anything else but a str is refused.

    Raises:
        IdempotencyKeyError: the key is missing, empty, too long or not a string.

    Examples:
        >>> check_key("order-17"), check_key(17)
        ('order-17', '17')
        >>> check_key("")
        Traceback (most recent call last):
            ...
        resilience_kit.errors.IdempotencyKeyError: the key must not be empty
    """
    if isinstance(value, (int, uuid.UUID)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        if value is None:
            raise IdempotencyKeyError(f"the {what} is missing (got None)", key="")
        raise IdempotencyKeyError(
            f"the {what} must be a str, got {type(value).__name__}",
            key=repr(value)[:_KEY_MAX_LENGTH],
        )
    try:
        _check_name(value, f"the {what} ")
    except ValueError as exc:
        raise IdempotencyKeyError(str(exc), key=value[:_KEY_MAX_LENGTH]) from None
    return value


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A")


def scoped_key(namespace: str, scope: str | None, key: str) -> str:
    """The key as stored: ``namespace:scope:key``.

    ``%`` and ``:`` are escaped in the namespace and the scope, so that no two
    (namespace, scope, key) triples give one stored key.

    Examples:
        >>> scoped_key("billing.charge", "tenant:a", "order-17")
        'billing.charge:tenant%3Aa:order-17'
        >>> scoped_key("billing.charge", None, "tenant:a:order-17")
        'billing.charge::tenant:a:order-17'
    """
    return f"{_escape(namespace)}:{_escape(scope or '')}:{key}"


def decide(record: IdempotencyRecord | None, *, token: str, fingerprint: str) -> Decision:
    """What a record found in the store means for the call holding ``token``.

    ``"run"``: the call owns the claim. ``"conflict"``: the key belongs to another
    request. ``"replay"``: the same request completed. ``"busy"``: the same request is
    running. ``"absent"``: nothing holds the key (claim it again).

    Examples:
        >>> record = IdempotencyRecord(
        ...     key="k", fingerprint="f1", status="completed", token="t1", result=b"R1",
        ...     expires_in=60.0,
        ... )
        >>> decide(record, token="t2", fingerprint="f1")
        'replay'
        >>> decide(record, token="t2", fingerprint="f2")
        'conflict'
    """
    if record is None:
        return "absent"
    if record.token == token and record.status == "in_progress":
        return "run"
    if record.fingerprint != fingerprint:
        return "conflict"
    return "replay" if record.status == "completed" else "busy"


@dataclass(frozen=True, slots=True)
class Run:
    """The call won the claim: run it, then `IdempotencyGuard.finish` or `.abandon`."""

    key: str
    token: str


@dataclass(frozen=True, slots=True)
class Replay:
    """The same request completed before: ``data`` is what it stored."""

    key: str
    data: bytes


def check_settings(
    store: object,
    *,
    ttl: float,
    lock_for: float,
    on_in_progress: str,
    wait_timeout: float | None,
    clock: object,
) -> None:
    """Validate the settings `IdempotencyGuard` takes, naming the bad parameter."""
    if not isinstance(store, IdempotencyStore):
        raise ConfigurationError("store", f"expected an IdempotencyStore, got {store!r}")
    check_positive("ttl", ttl)
    check_positive("lock_for", lock_for)
    check_positive("wait_timeout", wait_timeout, allow_zero=True)
    if on_in_progress not in ("wait", "raise"):
        raise ConfigurationError(
            "on_in_progress", f"must be 'wait' or 'raise', got {on_in_progress!r}"
        )
    if clock is not None and not isinstance(clock, Clock):
        raise ConfigurationError("clock", f"expected a Clock, got {clock!r}")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached now (not that it refused)."""
    return isinstance(exc, (ConnectionError, TimeoutError, CircuitOpenError))


class StoreOutage:
    """Log a store's outage once when it begins and once when it ends, not per call.

    During an outage every request fails the same way; a traceback each (hundreds of
    thousands of lines in seconds under load) buries the one line that matters. A
    store coming back often fails a few more calls (stale pooled connections, a
    breaker's probe): the outage ends once calls have succeeded for ``settle`` seconds
    with no failure between, so one outage is one pair of lines.

    Args:
        what: the store, as the log lines name it.
        clock: the clock that times the outage.
        settle: seconds of successful calls that end an outage.
    """

    __slots__ = ("_clock", "_healthy_since", "_refused", "_since", "settle", "what")

    def __init__(self, what: str, clock: Clock | None = None, *, settle: float = 1.0) -> None:
        self.what = what
        self.settle = settle
        self._clock = clock
        self._since: float | None = None
        self._healthy_since: float | None = None
        self._refused = 0

    @property
    def down(self) -> bool:
        """Whether an outage began and has not been seen to end."""
        return self._since is not None

    def failed(self, exc: BaseException, consequence: str) -> None:
        """Count a call the outage refused; log the first one, with what it caused."""
        self._refused += 1
        self._healthy_since = None
        if self._since is not None:
            return
        self._since = resolve_clock(self._clock).monotonic()
        logger.error(
            "%s is unavailable (%s: %s); %s. Logged once per outage; its end is logged too",
            self.what,
            type(exc).__name__,
            exc,
            consequence,
        )

    def recovered(self) -> None:
        """A call to the store succeeded: log the end of an outage once it has settled."""
        if self._since is None:
            return
        now = resolve_clock(self._clock).monotonic()
        if self._healthy_since is None:
            self._healthy_since = now
        if now - self._healthy_since < self.settle:
            return
        logger.warning(
            "%s is available again after %.1f s; %d call(s) were refused meanwhile",
            self.what,
            self._healthy_since - self._since,
            self._refused,
        )
        self._since = self._healthy_since = None
        self._refused = 0


class IdempotencyGuard:
    """The store side of idempotent calls, shared by `idempotent` and the ASGI middleware.

    Args:
        store: the `IdempotencyStore`.
        name: the namespace of the keys, and the ``idempotent`` metric attribute.
        ttl: seconds a completed call's outcome is kept.
        lock_for: seconds a running call holds its key; a crashed call's claim expires
            after it.
        on_in_progress: ``"wait"`` for a running duplicate to finish, or ``"raise"``
            `IdempotencyInProgressError` at once.
        wait_timeout: the longest wait (default: ``lock_for``).
        clock: the clock to wait on (default: the current default clock).
        breaker: a `CircuitBreaker` around every call to the store, so that a store
            known to be down is refused at once (`CircuitOpenError`) instead of each
            call waiting for its own timeout.
        outage: logs store failures of `finish` and `abandon` once per outage, instead
            of a traceback each.
        complete_for: seconds `finish` keeps trying to store an outcome while the store
            cannot be reached (0: once).
    """

    __slots__ = (
        "__weakref__",
        "_breaker",
        "_clock",
        "_counts",
        "_labels",
        "complete_for",
        "lock_for",
        "name",
        "on_in_progress",
        "outage",
        "store",
        "ttl",
        "wait_timeout",
    )

    def __init__(
        self,
        store: IdempotencyStore,
        *,
        name: str,
        ttl: float,
        lock_for: float,
        on_in_progress: OnInProgress = "wait",
        wait_timeout: float | None = None,
        clock: Clock | None = None,
        breaker: CircuitBreaker | None = None,
        outage: StoreOutage | None = None,
        complete_for: float = 0.0,
    ) -> None:
        check_settings(
            store,
            ttl=ttl,
            lock_for=lock_for,
            on_in_progress=on_in_progress,
            wait_timeout=wait_timeout,
            clock=clock,
        )
        self.store = store
        self.name = check_name("name", name)
        self.ttl = float(ttl)
        self.lock_for = float(lock_for)
        self.on_in_progress = on_in_progress
        self.wait_timeout = float(lock_for if wait_timeout is None else wait_timeout)
        self._clock = clock
        self._breaker = breaker
        self.outage = outage
        self.complete_for = float(complete_for)
        self._counts: dict[Outcome, int] = dict.fromkeys(_OUTCOMES, 0)
        self._labels = {
            outcome: {"idempotent": self.name, "outcome": outcome} for outcome in _OUTCOMES
        }
        _telemetry.observe(IDEMPOTENCY_CALLS, self, IdempotencyGuard._read, _DESCRIPTION)

    def __repr__(self) -> str:
        return f"IdempotencyGuard({self.name!r}, {self.store!r})"

    def _read(self) -> Iterable[tuple[int, Mapping[str, str]]]:
        return [(count, self._labels[outcome]) for outcome, count in self._counts.items()]

    def count(self, outcome: Outcome) -> None:
        """Count one call's outcome (and add it to the current span)."""
        self._counts[outcome] += 1
        _telemetry.span_event(IDEMPOTENCY_CALLS, self._labels[outcome])

    async def begin(self, key: str, fingerprint: str) -> Run | Replay:
        """Claim ``key`` for a new call, or find the outcome of the same request.

        Raises:
            IdempotencyConflictError: the key was used for another request.
            IdempotencyInProgressError: the same request is running (at once with
                ``on_in_progress="raise"``, else after waiting ``wait_timeout``).
        """
        # 32 hex digits like uuid4().hex, without building a UUID (~7 us less a call).
        token = os.urandom(16).hex()
        store = self.store
        record: IdempotencyRecord | None = None
        deadline: float | None = None
        delay = _FIRST_POLL
        while True:
            if record is None:  # first, or the running call's record went away: claim
                record = await self._claim(key, fingerprint, token)
            decision = decide(record, token=token, fingerprint=fingerprint)
            if decision == "run":
                return Run(key, token)
            if decision == "replay":
                if record.result is None:
                    raise CorruptRecordError(
                        f"{store!r}: a completed record without a result",
                        store=repr(store),
                        record=key,
                    )
                self.count("replayed")
                return Replay(key, record.result)
            if decision == "conflict":
                self.count("conflict")
                raise IdempotencyConflictError(
                    f"the idempotency key {key!r} was used before with a different request",
                    key=key,
                )
            clock = resolve_clock(self._clock)
            now = clock.monotonic()
            if deadline is None:
                deadline = now + self.wait_timeout
            remaining = deadline - now
            if self.on_in_progress == "raise" or remaining <= 0:
                self.count("in_progress")
                raise IdempotencyInProgressError(
                    f"a call with the idempotency key {key!r} is in progress",
                    key=key,
                    retry_after=max(record.expires_in, 0.0),
                )
            await clock.asleep(max(_MIN_POLL, min(delay, remaining, record.expires_in)))
            delay = min(delay * 2, _MAX_POLL)
            record = await self._store_call(store.get, key)

    async def _claim(self, key: str, fingerprint: str, token: str) -> IdempotencyRecord:
        # Shielded: a claim the store made must reach this call, which releases it if
        # cancelled; a claim lost to cancellation would hold the key for lock_for.
        with anyio.CancelScope(shield=True):
            record = await self._store_call(
                self.store.claim, key, fingerprint, token=token, lock_for=self.lock_for
            )
        return record  # noqa: RET504  (returned inside the scope, mypy sees a possible None)

    async def _store_call(
        self, operation: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """One call to the store, through the breaker when there is one."""
        if self._breaker is None:
            result = await operation(*args, **kwargs)
        else:
            result = await self._breaker.acall(operation, *args, **kwargs)
        if self.outage is not None and self.outage.down:
            self.outage.recovered()
        return result

    async def finish(self, run: Run, data: bytes, outcome: Outcome = "executed") -> None:
        """Store the call's outcome; a lost claim or a store failure is logged, not raised.

        The call has happened: its caller gets its outcome either way.
        """
        self.count(outcome)
        try:
            with anyio.CancelScope(shield=True):  # a finished call's outcome is always stored
                stored = await self._complete(run, data)
        except Exception as exc:
            if self.outage is not None and unavailable(exc):
                self.outage.failed(
                    exc,
                    f"outcomes cannot be stored: their keys stay claimed for up to "
                    f"{self.lock_for:.1f} s, then a retry runs again",
                )
                return
            logger.exception(
                "idempotent %r: could not store the outcome for key %r; a retry after %.1f s "
                "will run the call again",
                self.name,
                run.key,
                self.lock_for,
            )
            return
        if not stored:
            self.count("lease_lost")
            logger.warning(
                "idempotent %r: the claim on key %r expired before the call finished (it ran "
                "longer than lock_for=%.1f s), so its outcome was not stored and a duplicate "
                "may have run; raise lock_for or bound the call with a Timeout",
                self.name,
                run.key,
                self.lock_for,
            )

    async def _complete(self, run: Run, data: bytes) -> bool:
        """``store.complete``, tried again for up to ``complete_for`` while it is down.

        A short outage must not lose the outcome of a call that ran: its claim would
        expire after ``lock_for`` and a retry would run the call again. Completing is
        conditioned on the claim's token, so trying again is always safe.
        """
        clock = resolve_clock(self._clock)
        deadline = clock.monotonic() + self.complete_for
        delay = _FIRST_POLL * 5
        while True:
            try:
                return await self._store_call(
                    self.store.complete, run.key, token=run.token, result=data, ttl=self.ttl
                )
            except Exception as exc:  # noqa: PERF203 - a retry loop
                remaining = deadline - clock.monotonic()
                if not unavailable(exc) or remaining <= 0:
                    raise
                wait = exc.retry_after if isinstance(exc, CircuitOpenError) else None
                await clock.asleep(max(_MIN_POLL, min(wait or delay, remaining)))
                delay = min(delay * 2, _MAX_POLL)

    async def abandon(self, run: Run) -> None:
        """Release the claim so that the next call with the key runs; never raises."""
        self.count("failed")
        try:
            with anyio.CancelScope(shield=True):  # cancelled calls release their claim too
                await self._store_call(self.store.release, run.key, token=run.token)
        except Exception as exc:
            if self.outage is not None and unavailable(exc):
                self.outage.failed(
                    exc,
                    f"claims cannot be released: keys stay claimed for up to {self.lock_for:.1f} s",
                )
                return
            logger.exception(
                "idempotent %r: could not release key %r; it stays claimed for up to %.1f s",
                self.name,
                run.key,
                self.lock_for,
            )
