"""`@idempotent`: the guard around an async function, its keys, fingerprints and results.

The decorator adds to the guard (`resilience_kit.messaging._guard`) what a function
call needs: a key and scope from the arguments, a fingerprint of them, and results and
failures stored as bytes (results through `resilience_kit._codec.ValueCodec`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import types
import typing
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar, cast

import pydantic
import pydantic_core

from resilience_kit._checks import check_name
from resilience_kit._codec import ValueCodec
from resilience_kit.clock import Clock
from resilience_kit.errors import (
    ConfigurationError,
    CorruptRecordError,
    IdempotencyError,
    IdempotencyResultError,
)
from resilience_kit.messaging._guard import (
    FAILURE_TAG,
    RESULT_TAG,
    UNSTORABLE_TAG,
    IdempotencyGuard,
    OnInProgress,
    Replay,
    check_key,
    check_settings,
    scoped_key,
)
from resilience_kit.messaging._protocols import IdempotencyStore

__all__ = ("idempotent",)

P = ParamSpec("P")
R = TypeVar("R")


# -- fingerprints ---------------------------------------------------------------------


# Types pydantic's to_jsonable_python hands back unchanged: skipping it for them saves
# a call per argument on every call (str, int and bool exactly: not a subclass, such as
# an enum, which pydantic converts to its value).
_PLAIN = frozenset({str, int, bool, type(None)})


def _jsonable(value: object) -> object:
    """A JSON value for ``value`` that is the same in every process (sets are sorted)."""
    if type(value) in _PLAIN:
        return value
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

    __slots__ = ("_function", "_name", "_values")

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self._function = function
        self._name = name
        self._values: ValueCodec | None = None
        # A forward reference to something not defined yet is resolved on the first call.
        with contextlib.suppress(NameError):
            self._values = self._build()

    def _build(self) -> ValueCodec:
        hints = _return_hint(self._function)
        if "return" not in hints:
            raise ConfigurationError(
                "function",
                f"{self._name}() has no return annotation: it says how a stored result is "
                "read back (-> None, -> Order, or -> Any for plain JSON values)",
            )
        try:
            codec = ValueCodec.for_type(hints["return"], bytes_as_base64=True)
        except pydantic.PydanticUserError as exc:
            raise ConfigurationError(
                "function",
                f"{self._name}() returns {hints['return']!r}, which pydantic cannot "
                f"serialise, so its results cannot be stored ({exc})",
            ) from None
        problem = codec.round_trip_problem()
        if problem is not None:
            raise ConfigurationError(
                "function",
                f"{self._name}() returns {hints['return']!r}, whose results cannot all be "
                f"stored and read back: {problem}",
            )
        return codec

    @property
    def values(self) -> ValueCodec:
        if self._values is None:
            try:
                self._values = self._build()
            except NameError as exc:
                raise ConfigurationError(
                    "function", f"cannot resolve the return annotation of {self._name}(): {exc}"
                ) from None
        return self._values

    def encode(self, result: object) -> bytes:
        """The result as stored, checked to read back.

        Raises:
            ValueError: the result does not match the return annotation, or does not
                read back as it (a NaN in a model's float field, a custom serializer).
            TypeError: ditto, for some values.
        """
        values = self.values
        data = values.dump(result)
        values.survives(result, data)
        return RESULT_TAG + data

    def unstorable(self, result: object, exc: Exception) -> str:
        """Why ``result`` could not be stored, as the error every repeat raises."""
        detail = " ".join(str(exc).split())
        return (
            f"{self._name}() ran, but returned a {type(result).__name__} that cannot be "
            f"stored and read back as its return annotation says ({detail}); it is not run "
            "again for this key while the outcome is kept"
        )

    def decode(self, data: bytes, *, store: IdempotencyStore, key: str) -> Any:
        try:
            return self.values.load(data[1:])
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


class _Binder:
    """`inspect.Signature.bind` plus ``apply_defaults``, fast for the common call.

    A call that passes every parameter of a function without ``*args``, ``**kwargs`` or
    keyword-only parameters, positionally or by name, binds by zipping names and
    values (``bind`` costs ~10 us a call); any other call goes through ``bind``, which
    also raises the usual `TypeError` for a call that does not fit.
    """

    __slots__ = ("_names", "_signature")

    def __init__(self, signature: inspect.Signature) -> None:
        self._signature = signature
        simple = all(
            item.kind is item.POSITIONAL_OR_KEYWORD for item in signature.parameters.values()
        )
        self._names = tuple(signature.parameters) if simple else None

    def __call__(
        self, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> inspect.BoundArguments:
        names = self._names
        if names is not None and len(args) + len(kwargs) == len(names):
            arguments = dict(zip(names, args, strict=False))  # the rest by name
            if kwargs:
                rest = names[len(args) :]
                if not all(name in kwargs for name in rest):
                    return self._slow(args, kwargs)
                for name in rest:
                    arguments[name] = kwargs[name]
            return inspect.BoundArguments(self._signature, arguments)
        return self._slow(args, kwargs)

    def _slow(self, args: tuple[object, ...], kwargs: dict[str, object]) -> inspect.BoundArguments:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound


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
    every repeat. A call whose result cannot be stored and read back raises
    `IdempotencyResultError`, which is stored as its outcome: the call never runs again
    for the key while it is kept.

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
            names no parameter, or a return type whose values cannot all be stored and
            read back (one pydantic cannot serialise, a model with a ``bytes`` field
            written as UTF-8 text, a callable, a class).

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
        bind = _Binder(signature)
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
            codec.values  # noqa: B018  (an unresolvable return type fails before the call)
            bound = bind(args, kwargs)
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
            except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
                # The call happened: releasing its claim would let every retry repeat its
                # side effects. Its outcome is this error, stored like a result.
                message = codec.unstorable(result, exc)
                await guard.finish(outcome, UNSTORABLE_TAG + message.encode(), "failed")
                raise IdempotencyResultError(message, key=stored_key) from exc
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
    if tag == UNSTORABLE_TAG:
        message = replay.data[1:].decode("utf-8", "replace")
        raise IdempotencyResultError(message, key=replay.key)
    if tag == FAILURE_TAG:
        try:
            failure = failure_from(replay.data, failures, replay.key)
        except (ValueError, KeyError, TypeError) as exc:
            raise _corrupt(store, replay.key, f"unreadable stored failure ({exc})") from None
        raise failure
    raise _corrupt(store, replay.key, "not an outcome of @idempotent")


def _corrupt(store: IdempotencyStore, key: str, problem: str) -> CorruptRecordError:
    return CorruptRecordError(f"{store!r}: {problem}: {key!r}", store=repr(store), record=key)
