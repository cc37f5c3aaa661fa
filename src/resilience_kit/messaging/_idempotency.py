"""Idempotent calls: `idempotent` for async functions, and the guard it shares with HTTP.

The guard turns one call into store operations: claim the key (the one arbitrated step),
then either run and complete, or replay, or refuse. `decide` is the pure part: what a
record found in the store means for a call. The decorator adds keys, fingerprints and
the (de)serialisation of results; `resilience_kit.messaging.IdempotencyMiddleware` adds
HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import types
import typing
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar, cast

import anyio
import pydantic
import pydantic_core

from resilience_kit import _telemetry
from resilience_kit._checks import check_name, check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import (
    ConfigurationError,
    CorruptRecordError,
    IdempotencyConflictError,
    IdempotencyError,
    IdempotencyInProgressError,
    IdempotencyKeyError,
)
from resilience_kit.messaging._event import _check_name
from resilience_kit.messaging._protocols import IdempotencyStore
from resilience_kit.messaging._records import IdempotencyRecord

__all__ = (
    "IDEMPOTENCY_CALLS",
    "Decision",
    "IdempotencyGuard",
    "Replay",
    "Run",
    "check_key",
    "decide",
    "idempotent",
    "scoped_key",
)

logger = logging.getLogger("resilience_kit.idempotency")

P = ParamSpec("P")
R = TypeVar("R")

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
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_counts",
        "_labels",
        "lock_for",
        "name",
        "on_in_progress",
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
        token = uuid.uuid4().hex
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
            record = await store.get(key)

    async def _claim(self, key: str, fingerprint: str, token: str) -> IdempotencyRecord:
        # Shielded: a claim the store made must reach this call, which releases it if
        # cancelled; a claim lost to cancellation would hold the key for lock_for.
        with anyio.CancelScope(shield=True):
            record = await self.store.claim(key, fingerprint, token=token, lock_for=self.lock_for)
        return record  # noqa: RET504  (returned inside the scope, mypy sees a possible None)

    async def finish(self, run: Run, data: bytes, outcome: Outcome = "executed") -> None:
        """Store the call's outcome; a lost claim or a store failure is logged, not raised.

        The call has happened: its caller gets its outcome either way.
        """
        self.count(outcome)
        try:
            with anyio.CancelScope(shield=True):  # a finished call's outcome is always stored
                stored = await self.store.complete(
                    run.key, token=run.token, result=data, ttl=self.ttl
                )
        except Exception:
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

    async def abandon(self, run: Run) -> None:
        """Release the claim so that the next call with the key runs; never raises."""
        self.count("failed")
        try:
            with anyio.CancelScope(shield=True):  # cancelled calls release their claim too
                await self.store.release(run.key, token=run.token)
        except Exception:
            logger.exception(
                "idempotent %r: could not release key %r; it stays claimed for up to %.1f s",
                self.name,
                run.key,
                self.lock_for,
            )


# -- fingerprints ---------------------------------------------------------------------


def _jsonable(value: object) -> object:
    """A JSON value for ``value`` that is the same in every process (sets are sorted)."""
    if isinstance(value, dict):
        return {_json_key(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(item) for item in value), key=_canonical_json)
    return pydantic_core.to_jsonable_python(value, bytes_mode="base64")


def _json_key(key: object) -> str:
    converted = _jsonable(key)
    return converted if isinstance(converted, str) else _canonical_json(converted)


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(text: str) -> str:
    """The SHA-256 of ``text`` as hex: every fingerprint stored is one."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint_arguments(arguments: Mapping[str, object], function: str) -> str:
    """The default fingerprint: SHA-256 of the arguments as canonical JSON.

    Raises:
        TypeError: an argument cannot be serialised; the message says which.
    """
    values = {name: _argument_json(name, value, function) for name, value in arguments.items()}
    return digest(_canonical_json(values))


def _argument_json(name: str, value: object, function: str) -> object:
    try:
        return _jsonable(value)
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise TypeError(
            f"{function}: cannot fingerprint argument {name!r} ({type(value).__name__}) "
            f"as JSON ({exc}); pass fingerprint= to @idempotent, a function of the "
            "call's arguments returning a str that identifies the request"
        ) from None


# -- outcomes -------------------------------------------------------------------------


def _qualified_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _find_class(name: str, roots: tuple[type[Exception], ...]) -> type[Exception] | None:
    """The class called ``name`` among ``roots`` and their subclasses loaded now.

    Only classes the user allowed can come back: nothing is imported by a stored name.
    """
    seen: set[type] = set()
    stack: list[type[Exception]] = list(roots)
    while stack:
        kind = stack.pop()
        if kind in seen:
            continue
        seen.add(kind)
        if _qualified_name(kind) == name:
            return kind
        stack.extend(kind.__subclasses__())
    return None


def encode_failure(exc: Exception) -> bytes:
    """A stored failure: the exception's qualified type name, message and JSON-able args."""
    args: list[object] | None = list(exc.args)
    if not all(item is None or isinstance(item, (str, int, float, bool)) for item in exc.args):
        args = None
    document = {"type": _qualified_name(type(exc)), "message": str(exc), "args": args}
    return FAILURE_TAG + _canonical_json(document).encode()


def failure_from(data: bytes, roots: tuple[type[Exception], ...], key: str) -> Exception:
    """Re-create a stored failure as the same class called with the same args.

    When that is impossible, an `IdempotencyError` names the original type and message.
    """
    document = json.loads(data[1:])
    name, message, args = document["type"], document["message"], document["args"]
    kind = _find_class(name, roots)
    if kind is not None:
        try:
            return kind(*(args if args is not None else [message]))
        except Exception:  # noqa: BLE001, S110  (a constructor wanting more: fall back below)
            pass
    return IdempotencyError(
        f"the call with the idempotency key {key!r} failed before with {name}: {message} "
        "(the stored failure could not be re-created as its own type)",
        key=key,
    )


# -- the decorator --------------------------------------------------------------------

# Raw bytes are not UTF-8 text: store them as base64, so that any bytes round-trip.
_BYTES_AS_BASE64 = pydantic.ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")


def _return_hint(function: Callable[..., Any]) -> dict[str, Any]:
    """``{"return": the resolved return annotation}``, or ``{}`` when there is none.

    Only the return annotation is evaluated (a parameter annotated with a type that
    exists only under ``TYPE_CHECKING`` does not matter), in the function's globals and
    the variables its body closes over.

    Raises:
        NameError: the annotation names something not defined (yet).
    """
    annotations = getattr(function, "__annotations__", {})
    if "return" not in annotations:
        return {}
    inner = inspect.unwrap(function)
    carrier = types.FunctionType(_carrier.__code__, getattr(inner, "__globals__", {}))
    carrier.__annotations__ = {"return": annotations["return"]}
    try:
        local = dict(inspect.getclosurevars(inner).nonlocals)
    except TypeError:  # not a Python function: no closure to look in
        local = {}
    return typing.get_type_hints(carrier, localns=local)


def _carrier() -> None:
    """Lends its code object to `_return_hint`'s stand-in function."""


class _Codec:
    """Results to bytes and back, by the function's return annotation (resolved once)."""

    __slots__ = ("_adapter", "_function", "_name")

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self._function = function
        self._name = name
        self._adapter: pydantic.TypeAdapter[Any] | None = None
        # A forward reference to something not defined yet is resolved on the first call.
        with contextlib.suppress(NameError):
            self._adapter = self._build()

    def _build(self) -> pydantic.TypeAdapter[Any]:
        hints = _return_hint(self._function)
        if "return" not in hints:
            raise ConfigurationError(
                "function",
                f"{self._name}() has no return annotation: it says how a stored result is "
                "read back (-> None, -> Order, or -> Any for plain JSON values)",
            )
        try:
            try:
                return pydantic.TypeAdapter(hints["return"], config=_BYTES_AS_BASE64)
            except pydantic.PydanticUserError as exc:
                if exc.code != "type-adapter-config-unused":
                    raise
                return pydantic.TypeAdapter(hints["return"])  # a model: its own config rules
        except pydantic.PydanticUserError as exc:
            raise ConfigurationError(
                "function",
                f"{self._name}() returns {hints['return']!r}, which pydantic cannot "
                f"serialise, so its results cannot be stored ({exc})",
            ) from None

    @property
    def adapter(self) -> pydantic.TypeAdapter[Any]:
        if self._adapter is None:
            try:
                self._adapter = self._build()
            except NameError as exc:
                raise ConfigurationError(
                    "function", f"cannot resolve the return annotation of {self._name}(): {exc}"
                ) from None
        return self._adapter

    def encode(self, result: object) -> bytes:
        try:
            return RESULT_TAG + self.adapter.dump_json(result, warnings="error")
        except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
            raise TypeError(
                f"{self._name}() returned a {type(result).__name__} that cannot be stored as "
                f"its return annotation says ({exc}); its claim was released"
            ) from exc

    def decode(self, data: bytes, *, store: IdempotencyStore, key: str) -> Any:
        try:
            return self.adapter.validate_json(data[1:])
        except pydantic.ValidationError as exc:
            raise CorruptRecordError(
                f"{store!r}: the stored result for {key!r} does not read back as the return "
                f"type of {self._name}() (was it changed?): {exc}",
                store=repr(store),
                record=key,
            ) from None


def _argument_getter(
    value: str | Callable[..., object], parameter: str, signature: inspect.Signature, name: str
) -> Callable[[inspect.BoundArguments], object]:
    """Read a key or scope from a call: a named parameter, or a function of the arguments."""
    if isinstance(value, str):
        found = signature.parameters.get(value)
        if found is None or found.kind in (found.VAR_POSITIONAL, found.VAR_KEYWORD):
            names = [
                item.name
                for item in signature.parameters.values()
                if item.kind not in (item.VAR_POSITIONAL, item.VAR_KEYWORD)
            ]
            raise ConfigurationError(
                parameter, f"{name}() has no parameter {value!r} (it has {names})"
            )
        return lambda bound: bound.arguments[value]
    if not callable(value):
        raise ConfigurationError(
            parameter, f"expected a parameter name or a function of the arguments, got {value!r}"
        )
    return lambda bound: value(*bound.args, **bound.kwargs)


class _Requests:
    """How the calls of one decorated function become a stored key and a fingerprint."""

    __slots__ = ("_fingerprint", "_key", "_label", "_namespace", "_scope", "_skipped")

    def __init__(
        self,
        signature: inspect.Signature,
        label: str,
        namespace: str,
        *,
        key: str | Callable[..., object],
        scope: str | Callable[..., object] | None,
        fingerprint: Callable[..., str] | None,
    ) -> None:
        self._label = label
        self._namespace = namespace
        self._key = _argument_getter(key, "key", signature, label)
        self._scope = None if scope is None else _argument_getter(scope, "scope", signature, label)
        self._fingerprint = fingerprint
        first = next(iter(signature.parameters), None)
        self._skipped = {first} if first in ("self", "cls") else set()

    def __call__(self, bound: inspect.BoundArguments) -> tuple[str, str]:
        scope = None if self._scope is None else check_key(self._scope(bound), "scope")
        stored_key = scoped_key(self._namespace, scope, check_key(self._key(bound)))
        if self._fingerprint is None:
            arguments = {k: v for k, v in bound.arguments.items() if k not in self._skipped}
            return stored_key, fingerprint_arguments(arguments, self._label)
        text = self._fingerprint(*bound.args, **bound.kwargs)
        if not isinstance(text, str):
            raise TypeError(
                f"fingerprint= must return a str, got {type(text).__name__} for {self._label}()"
            )
        return stored_key, digest(text)


def _check_failures(value: object) -> tuple[type[Exception], ...]:
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple):
        raise ConfigurationError(
            "store_failures", f"expected a tuple of exception types, got {value!r}"
        )
    for item in value:
        if not (isinstance(item, type) and issubclass(item, Exception)):
            raise ConfigurationError(
                "store_failures",
                f"expected subclasses of Exception, got {item!r} (cancellation, "
                "KeyboardInterrupt and SystemExit are never stored)",
            )
    return value


def idempotent(
    store: IdempotencyStore,
    *,
    key: str | Callable[..., object],
    scope: str | Callable[..., object] | None = None,
    name: str | None = None,
    ttl: float = 86_400.0,
    lock_for: float = 60.0,
    on_in_progress: OnInProgress = "wait",
    wait_timeout: float | None = None,
    store_failures: tuple[type[Exception], ...] = (),
    fingerprint: Callable[..., str] | None = None,
    clock: Clock | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Make an async function run once per key: repeats get the stored outcome.

    The first call with a key claims it in ``store``, runs, and stores its result
    (serialised by pydantic as the return annotation says) for ``ttl`` seconds. A repeat
    of the same request returns the stored result without running. The same key with a
    different request (another fingerprint of the arguments) raises
    `IdempotencyConflictError`. A repeat while the first call still runs waits for its
    result (or raises `IdempotencyInProgressError`); a crashed call's claim expires after
    ``lock_for``. A call that raises releases its claim, so that a retry runs, unless
    the exception is one of ``store_failures``: then it is stored and raised again on
    every repeat.

    Args:
        store: where claims and outcomes live (``store.idempotency`` of a backend).
        key: the name of the parameter holding the key, or a function of the call's
            arguments returning it: a str of 1 to 255 characters, no control characters
            (an int or UUID is converted).
        scope: who the key belongs to (a tenant, a client): a parameter name or a
            function of the arguments, like ``key``. Keys of different scopes never meet.
        name: the namespace of the keys in the store, and the metric attribute (default:
            the function's ``module.qualname``). Set it for keys to survive renaming.
        ttl: seconds an outcome is kept (and replayed).
        lock_for: seconds a running call holds its key. Longer than the call can take:
            a call still running after it may be run again by a duplicate.
        on_in_progress: ``"wait"`` (poll until the running call finishes) or ``"raise"``.
        wait_timeout: the longest wait for a running call (default: ``lock_for``).
        store_failures: exception types (subclasses of `Exception`) that are an outcome
            too, stored and raised again on repeats.
        fingerprint: a function of the call's arguments returning a str identifying the
            request (default: SHA-256 of all arguments as canonical JSON, ``self`` and
            ``cls`` left out). Stored as its SHA-256.
        clock: the clock to wait on.

    Raises:
        ConfigurationError: for a bad parameter, a synchronous function, a ``key`` that
            names no parameter, or a return type pydantic cannot serialise.

    Examples:
        >>> import anyio
        >>> from resilience_kit.messaging import idempotent
        >>> from resilience_kit.stores.memory import MemoryStore
        >>> store = MemoryStore()
        >>> charges = []
        >>> @idempotent(store.idempotency, key="order_id")
        ... async def charge(order_id: str, cents: int) -> str:
        ...     charges.append(cents)
        ...     return f"receipt-{len(charges)}"
        >>> anyio.run(charge, "order-17", 500), anyio.run(charge, "order-17", 500), charges
        ('receipt-1', 'receipt-1', [500])
    """
    check_settings(
        store,
        ttl=ttl,
        lock_for=lock_for,
        on_in_progress=on_in_progress,
        wait_timeout=wait_timeout,
        clock=clock,
    )
    failures = _check_failures(store_failures)
    if fingerprint is not None and not callable(fingerprint):
        raise ConfigurationError("fingerprint", f"expected a function, got {fingerprint!r}")
    if name is not None:
        check_name("name", name)

    def decorate(
        function: Callable[P, Coroutine[Any, Any, R]],
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        label = getattr(function, "__qualname__", repr(function))
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(
                "function",
                f"{label} is not an async function: idempotency stores are async (a claim "
                "is a database or Redis round trip); make it `async def`, or call the sync "
                "code from one with anyio.to_thread.run_sync",
            )
        signature = inspect.signature(function)
        namespace = name or f"{function.__module__}.{label}"
        request = _Requests(
            signature, label, namespace, key=key, scope=scope, fingerprint=fingerprint
        )
        codec = _Codec(function, label)
        guard = IdempotencyGuard(
            store,
            name=namespace,
            ttl=ttl,
            lock_for=lock_for,
            on_in_progress=on_in_progress,
            wait_timeout=wait_timeout,
            clock=clock,
        )

        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            codec.adapter  # noqa: B018  (an unresolvable return type fails before the call)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            stored_key, digest_ = request(bound)
            outcome = await guard.begin(stored_key, digest_)
            if isinstance(outcome, Replay):
                return cast("R", _replay(outcome, codec, failures, store))
            try:
                result = await function(*args, **kwargs)
            except Exception as exc:
                if failures and isinstance(exc, failures):
                    await guard.finish(outcome, encode_failure(exc), "failed")
                else:
                    await guard.abandon(outcome)
                raise
            except BaseException:  # cancellation, KeyboardInterrupt: never an outcome
                await guard.abandon(outcome)
                raise
            try:
                data = codec.encode(result)
            except TypeError:
                await guard.abandon(outcome)
                raise
            await guard.finish(outcome, data)
            return result

        return wrapper

    return decorate


def _replay(
    replay: Replay,
    codec: _Codec,
    failures: tuple[type[Exception], ...],
    store: IdempotencyStore,
) -> object:
    tag = replay.data[:1]
    if tag == RESULT_TAG:
        return codec.decode(replay.data, store=store, key=replay.key)
    if tag == FAILURE_TAG:
        try:
            failure = failure_from(replay.data, failures, replay.key)
        except (ValueError, KeyError, TypeError) as exc:
            raise _corrupt(store, replay.key, f"unreadable stored failure ({exc})") from None
        raise failure
    raise _corrupt(store, replay.key, "not an outcome of @idempotent")


def _corrupt(store: IdempotencyStore, key: str, problem: str) -> CorruptRecordError:
    return CorruptRecordError(f"{store!r}: {problem}: {key!r}", store=repr(store), record=key)
