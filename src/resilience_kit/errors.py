"""The exceptions resilience-kit raises, all rooted at `ResilienceError`.

<!-- not run: a diagram of the exception tree -->
```text
ResilienceError
├── ConfigurationError (also ValueError)     a policy was built with a bad parameter
│   └── StoreURLError                        a store URL cannot be understood
├── RetryExhaustedError                      a result predicate kept asking for retries
├── CircuitOpenError                         a breaker rejected the call
├── TimeoutExceededError (also TimeoutError) a Timeout cancelled the call
├── BulkheadFullError                        no slot and no room to wait
├── InjectedFaultError                       raised by the testing chaos policies
├── CacheLoadError                           a cache's loader failed; its policy serves nothing
├── CacheStoreError                          a cache store could not do what was asked
│   ├── CacheStoreUnavailableError (also ConnectionError)  its server is unreachable
│   └── CacheSerializationError (also ValueError)          a key or value cannot be stored
├── InvalidEventError (also ValueError)      an Event's fields break its rules
│   ├── MalformedEventError                  Event.from_json was given something that is not one
│   └── EventTooLargeError                   an event's JSON is larger than max_bytes
├── StoreError                               a messaging store could not do what was asked
│   ├── StoreUnavailableError (also ConnectionError)  its database or server is unreachable
│   ├── StoreSchemaError                     its tables are missing or at another version
│   └── CorruptRecordError (also ValueError)          a stored record cannot be read back
├── TransportError                           a message broker refused what a transport asked
│   └── TransportUnavailableError (also ConnectionError)  the broker is unreachable or silent
├── IdempotencyError                         an idempotent call was refused
│   ├── IdempotencyKeyError (also ValueError)         the key is missing, empty or too long
│   ├── IdempotencyConflictError             the key was used before with a different request
│   ├── IdempotencyInProgressError           a call with the key is running right now
│   └── IdempotencyResultError               a call ran, but its result could not be stored
└── TokenRejectedError (.reason)             a token verifier refused a token
    ├── MalformedTokenError                  "malformed", "too_large"
    ├── TokenAlgorithmError                  "algorithm_not_allowed"
    ├── TokenKeyError                        "unknown_key", "retired_key"
    ├── TokenSignatureError                  "bad_signature"
    ├── TokenExpiredError                    "expired"
    ├── TokenNotYetValidError                "not_yet_valid"
    ├── TokenClaimError                      "issuer", "audience", "missing_claim", "invalid_claim"
    ├── TokenRevokedError                    "revoked", "inactive"
    └── ValidatorUnavailableError            "validator_unavailable", "keys_unavailable"
```

Retries never wrap your exception: when the attempts run out, the last exception
propagates unchanged. `RetryExhaustedError` is raised only when the calls *succeeded*
but a result predicate rejected every result.

Examples:
    >>> from resilience_kit import CircuitOpenError, ResilienceError
    >>> issubclass(CircuitOpenError, ResilienceError)
    True
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, ClassVar

__all__ = (
    "BulkheadFullError",
    "CacheLoadError",
    "CacheSerializationError",
    "CacheStoreError",
    "CacheStoreUnavailableError",
    "CircuitOpenError",
    "ConfigurationError",
    "CorruptRecordError",
    "EventTooLargeError",
    "IdempotencyConflictError",
    "IdempotencyError",
    "IdempotencyInProgressError",
    "IdempotencyKeyError",
    "IdempotencyResultError",
    "InjectedFaultError",
    "InvalidEventError",
    "MalformedEventError",
    "MalformedTokenError",
    "ResilienceError",
    "RetryExhaustedError",
    "StoreError",
    "StoreSchemaError",
    "StoreURLError",
    "StoreUnavailableError",
    "TimeoutExceededError",
    "TokenAlgorithmError",
    "TokenClaimError",
    "TokenExpiredError",
    "TokenKeyError",
    "TokenNotYetValidError",
    "TokenRejectedError",
    "TokenRevokedError",
    "TokenSignatureError",
    "TransportError",
    "TransportUnavailableError",
    "ValidatorUnavailableError",
)


class ResilienceError(Exception):
    """Raised when a resilience policy refuses, cancels or gives up on a call.

    Catch it to handle every rejection of the library at once.

    Examples:
        >>> try:
        ...     raise BulkheadFullError("db", max_concurrent=1, max_waiting=0)
        ... except ResilienceError as exc:
        ...     print(type(exc).__name__)
        BulkheadFullError
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds with ``type(self)(*self.args)``, which our keyword-only
        # constructors refuse; rebuild without __init__ so copy and pickle keep working.
        return (_rebuild, (type(self), self.args, self.__dict__))


class ConfigurationError(ResilienceError, ValueError):
    """Raised when a policy is constructed with an invalid parameter.

    The message names the parameter; `parameter` holds it too.

    Examples:
        >>> ConfigurationError("attempts", "must be >= 1, got 0").parameter
        'attempts'
    """

    def __init__(self, parameter: str, problem: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {problem}")


class RetryExhaustedError(ResilienceError):
    """Raised when every attempt returned a result the retry's result predicate rejected.

    Exceptions are never wrapped in it: when the attempts run out on an exception, that
    exception propagates unchanged.

    Attributes:
        attempts: how many attempts ran.
        last_result: the result of the last attempt.

    Examples:
        >>> err = RetryExhaustedError(attempts=3, last_result=None)
        >>> err.attempts
        3
    """

    def __init__(self, *, attempts: int, last_result: Any) -> None:
        self.attempts = attempts
        self.last_result = last_result
        super().__init__(
            f"gave up after {attempts} attempt(s); the last result was {last_result!r}"
        )


class CircuitOpenError(ResilienceError):
    """Raised when a circuit breaker rejects a call without running it.

    Attributes:
        name: the breaker's name.
        state: the breaker's state name (``"open"``, ``"half_open"``, ``"forced_open"``).
        retry_after: seconds until the breaker admits a probe, or ``None`` when only an
            operator can close it (forced open). A `RetryPolicy` honours it.

    Examples:
        >>> err = CircuitOpenError("billing", state="open", retry_after=12.5)
        >>> err.retry_after
        12.5
    """

    def __init__(self, name: str, *, state: str, retry_after: float | None) -> None:
        super().__init__(name, state, retry_after)

    @classmethod
    def new(cls, name: str, state: str, retry_after: float | None) -> CircuitOpenError:
        """Build one without running ``__init__``: breakers reject on a hot path.

        Examples:
            >>> CircuitOpenError.new("billing", "open", 1.0).state
            'open'
        """
        return cls.__new__(cls, name, state, retry_after)

    # The attributes live in ``args`` (set in C), and the message is formatted only
    # when someone reads it: a rejection stays cheap.
    @property
    def name(self) -> str:
        """The breaker's name."""
        return str(self.args[0])

    @property
    def state(self) -> str:
        """The breaker's state name."""
        return str(self.args[1])

    @property
    def retry_after(self) -> float | None:
        """Seconds until the breaker admits a probe, or ``None``."""
        value: float | None = self.args[2]
        return value

    def __str__(self) -> str:
        retry_after = self.retry_after
        when = "" if retry_after is None else f"; next probe in {retry_after:.3f}s"
        return f"circuit {self.name!r} is {self.state}{when}"


class TimeoutExceededError(ResilienceError, TimeoutError):
    """Raised when a `Timeout` cancelled the call because it ran too long.

    It is also a built-in `TimeoutError`, so ``except TimeoutError`` and
    ``RetryPolicy(on=TimeoutError)`` catch it.

    Attributes:
        name: the timeout policy's name.
        seconds: the limit that was exceeded.

    Examples:
        >>> isinstance(TimeoutExceededError("db", seconds=2.0), TimeoutError)
        True
    """

    def __init__(self, name: str, *, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        super().__init__(f"{name!r} timed out after {seconds}s")


class BulkheadFullError(ResilienceError):
    """Raised when a bulkhead has no free slot and no room (or time) left to wait.

    Attributes:
        name: the bulkhead's name.
        max_concurrent: its concurrency limit.
        max_waiting: how many callers may queue.

    Examples:
        >>> BulkheadFullError("db", max_concurrent=10, max_waiting=0).max_concurrent
        10
    """

    def __init__(self, name: str, *, max_concurrent: int, max_waiting: int) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        super().__init__(
            f"bulkhead {name!r} is full ({max_concurrent} running, {max_waiting} waiting)"
        )


class InjectedFaultError(ResilienceError):
    """Raised by `resilience_kit.testing.ChaosFault` when no other exception was chosen.

    Examples:
        >>> str(InjectedFaultError("chaos"))
        'chaos'
    """


def _rebuild(cls: type[ResilienceError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Recreate an error from its class, ``args`` and attributes (for copy and pickle)."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class CacheLoadError(ResilienceError):
    """Raised when a cache's loader failed and its policy had nothing it may serve instead.

    This is the *denial* of a fail-closed cache: a `FailClosed` cache on a miss, a
    `ServeStale` cache past its stale windows, a `FailOpen` cache with no last known
    good value and no default. The loader's exception is chained as ``__cause__`` (a
    `CircuitOpenError` when a breaker guards the loader).

    Attributes:
        cache: the cache's name.
        key: the key that could not be loaded.
        policy: the policy that refused (``"fail_closed"``, ``"fail_open"``,
            ``"serve_stale"``).

    Examples:
        >>> err = CacheLoadError("members", key="ann", policy="fail_closed")
        >>> err.key, err.policy
        ('ann', 'fail_closed')
        >>> str(err)
        "cache 'members' could not load 'ann' and its fail_closed policy serves nothing"
    """

    def __init__(self, cache: str, *, key: Hashable, policy: str) -> None:
        self.cache = cache
        self.key = key
        self.policy = policy
        super().__init__(
            f"cache {cache!r} could not load {key!r} and its {policy} policy serves nothing"
        )


class CacheStoreError(ResilienceError):
    """Raised when a cache store cannot do what the cache asked of it.

    A `PolicyCache` treats it like a loader failure, so its policy decides what is
    served (with the default ``on=Exception``): `FailClosed` denies, `FailOpen` serves
    its last known good value or default.

    Attributes:
        store: the store, as its repr.
        key: the cache key concerned, or ``None`` for the whole store.

    Examples:
        >>> error = CacheStoreError("Redis said no", store="RedisCacheStore('m:')", key="ann")
        >>> error.key, str(error)
        ('ann', 'Redis said no')
    """

    def __init__(self, message: str, *, store: str, key: Hashable | None = None) -> None:
        self.store = store
        self.key = key
        super().__init__(message)


class CacheStoreUnavailableError(CacheStoreError, ConnectionError):
    """Raised when the server behind a cache store cannot be reached, or did not answer in time.

    Examples:
        >>> issubclass(CacheStoreUnavailableError, ConnectionError)
        True
    """


class CacheSerializationError(CacheStoreError, ValueError):
    """Raised when a cache store cannot serialise a key or a value: nothing is stored.

    Examples:
        >>> error = CacheSerializationError("not JSON", store="RedisCacheStore('m:')", key=1)
        >>> isinstance(error, ValueError), error.key
        (True, 1)
    """


class TokenRejectedError(ResilienceError):
    """Raised when a token verifier refuses a token; the root of every token failure.

    A verifier raises nothing else, whatever it is handed. `reason` is a stable,
    machine-readable word for logs, metrics and HTTP responses; the message is for people
    and may change.

    Attributes:
        reason: why, in one word (see `reasons` on each subclass).
        key_version: the key version (``kid``) the token named, when it named one.

    Examples:
        >>> from resilience_kit.errors import TokenExpiredError, TokenRejectedError
        >>> err = TokenExpiredError("expired at 1700000000", key_version="v2")
        >>> isinstance(err, TokenRejectedError), err.reason, err.key_version
        (True, 'expired', 'v2')
    """

    reasons: ClassVar[tuple[str, ...]] = ("rejected",)

    def __init__(
        self, message: str, *, reason: str | None = None, key_version: str | None = None
    ) -> None:
        self.reason = reason if reason is not None else self.reasons[0]
        self.key_version = key_version
        self.message = message
        super().__init__(f"token rejected ({self.reason}): {message}")


class MalformedTokenError(TokenRejectedError):
    """Raised when a token cannot be parsed, or is larger than the verifier accepts.

    Examples:
        >>> MalformedTokenError("8193 characters", reason="too_large").reason
        'too_large'
    """

    reasons = ("malformed", "too_large")


class TokenAlgorithmError(TokenRejectedError):
    """Raised when a token's algorithm is not the one its key is pinned to (or is ``none``).

    This is what algorithm-confusion attacks run into: an RS256 key never verifies an
    HS256 token, whatever the header says.

    Examples:
        >>> TokenAlgorithmError("alg 'none' is never accepted").reason
        'algorithm_not_allowed'
    """

    reasons = ("algorithm_not_allowed",)


class TokenKeyError(TokenRejectedError):
    """Raised when a token names a key version the verifier does not know, or has retired.

    Examples:
        >>> TokenKeyError("key 'v1' is retired", reason="retired_key").reason
        'retired_key'
    """

    reasons = ("unknown_key", "retired_key")


class TokenSignatureError(TokenRejectedError):
    """Raised when a token's signature does not match its key.

    Examples:
        >>> TokenSignatureError("signature mismatch").reason
        'bad_signature'
    """

    reasons = ("bad_signature",)


class TokenExpiredError(TokenRejectedError):
    """Raised when a token's ``exp`` has passed (beyond the leeway).

    Examples:
        >>> TokenExpiredError("expired 3s ago").reason
        'expired'
    """

    reasons = ("expired",)


class TokenNotYetValidError(TokenRejectedError):
    """Raised when a token's ``nbf`` or ``iat`` lies in the future (beyond the leeway).

    Examples:
        >>> TokenNotYetValidError("valid from 1700000000").reason
        'not_yet_valid'
    """

    reasons = ("not_yet_valid",)


class TokenClaimError(TokenRejectedError):
    """Raised when a claim is missing, has the wrong type, names another issuer/audience...

    ... or when the token's ``typ`` header is not the one expected (``"token_type"``).

    Examples:
        >>> TokenClaimError("no 'exp' claim", reason="missing_claim").reason
        'missing_claim'
    """

    reasons = ("invalid_claim", "issuer", "audience", "missing_claim", "token_type")


class TokenRevokedError(TokenRejectedError):
    """Raised when a token was revoked here, or the remote validator says it is inactive.

    Examples:
        >>> TokenRevokedError("revoked by an operator").reason
        'revoked'
    """

    reasons = ("revoked", "inactive")


class ValidatorUnavailableError(TokenRejectedError):
    """Raised when a token could only be checked by a remote service that is unavailable.

    The verifier fails closed: a token that is not already cached is rejected while the
    remote validator (or the JWKS endpoint, for a key it has never seen) is down, slow or
    behind an open circuit breaker.

    Examples:
        >>> ValidatorUnavailableError("circuit open").reason
        'validator_unavailable'
    """

    reasons = ("validator_unavailable", "keys_unavailable")


class InvalidEventError(ResilienceError, ValueError):
    """Raised when an `Event` cannot be built: a field is missing, mistyped or breaks a rule.

    Nothing is coerced: a set, a tuple, bytes, a NaN or an enum in the payload is refused,
    not converted. It is also a `ValueError`.

    Attributes:
        problems: one line per problem, each starting with the field it concerns.

    Examples:
        >>> err = InvalidEventError(["key: must not be empty"])
        >>> err.problems, isinstance(err, ValueError)
        (('key: must not be empty',), True)
        >>> str(err)
        'invalid event: key: must not be empty'
    """

    _what: ClassVar[str] = "invalid event"

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{self._what}: {'; '.join(self.problems)}")


class MalformedEventError(InvalidEventError):
    """Raised when `Event.from_json` is given something that is not an event.

    Garbage bytes, truncated or invalid JSON, text that is not UTF-8, a missing, unknown
    or mistyped field, a payload that is not JSON-exact, ``None`` (a Kafka tombstone):
    every way in which input can be wrong ends here, never in a parser's own exception.
    A consumer sends such a message to dead letters without retrying it.

    Examples:
        >>> err = MalformedEventError(["schema_version: Field required"])
        >>> isinstance(err, InvalidEventError), str(err)
        (True, 'malformed event: schema_version: Field required')
    """

    _what = "malformed event"


class EventTooLargeError(InvalidEventError):
    """Raised when an event's JSON is larger than the ``max_bytes`` allowed.

    `Event.to_json` raises it before anything is written; `Event.from_json` raises it
    before parsing, so an oversized message costs no parsing work.

    Attributes:
        size: the size of the JSON, in bytes (UTF-8).
        max_bytes: the limit it broke.

    Examples:
        >>> err = EventTooLargeError(size=2_000_000, max_bytes=1_048_576)
        >>> err.size, err.max_bytes
        (2000000, 1048576)
        >>> str(err)
        'event too large: 2000000 bytes of JSON, more than max_bytes=1048576'
    """

    _what = "event too large"

    def __init__(self, *, size: int, max_bytes: int) -> None:
        self.size = size
        self.max_bytes = max_bytes
        super().__init__([f"{size} bytes of JSON, more than max_bytes={max_bytes}"])


class StoreURLError(ConfigurationError):
    """Raised when a store URL cannot be understood; the message says what is wrong with it.

    The URL's password, if any, is never repeated in the message.

    Examples:
        >>> error = StoreURLError("mysql://db/app", "unknown scheme 'mysql'")
        >>> error.parameter, str(error)
        ('url', "url: unknown scheme 'mysql' (use sqlite:///path, postgresql://..., redis://..., memory://)")
    """

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        super().__init__(
            "url",
            f"{problem} (use sqlite:///path, postgresql://..., redis://..., memory://)",
        )


class StoreError(ResilienceError):
    """Raised when a messaging store (outbox, dead letters, inbox, idempotency) fails.

    Attributes:
        store: the store, as its repr (never with a password).

    Examples:
        >>> str(StoreError("the outbox table is missing", store="SQLiteStore('app.db')"))
        'the outbox table is missing'
    """

    def __init__(self, message: str, *, store: str) -> None:
        self.store = store
        super().__init__(message)


class StoreUnavailableError(StoreError, ConnectionError):
    """Raised when a store's database or server cannot be reached, or did not answer in time.

    Examples:
        >>> issubclass(StoreUnavailableError, ConnectionError)
        True
    """


class StoreSchemaError(StoreError):
    """Raised when a store's tables are missing, or at a version it cannot use.

    A store that may not create or migrate them (``auto_migrate=False``, as the
    ``resilience-kit`` command opens every store) raises it before changing anything;
    ``store.migrate()`` or ``resilience-kit migrate --store URL`` creates them. A schema
    newer than the library raises it too: upgrade resilience-patterns.

    Examples:
        >>> error = StoreSchemaError("no rk_ tables", store="SQLiteStore('app.db')")
        >>> isinstance(error, StoreError), error.store
        (True, "SQLiteStore('app.db')")
    """


class CorruptRecordError(StoreError, ValueError):
    """Raised when a stored record cannot be read back: a corrupted row or value.

    Nothing is deleted or rewritten because of it: the record stays where it is for an
    operator to inspect, and the other records are still served.

    Attributes:
        record: which record, as the store names it (a row id, a key).

    Examples:
        >>> error = CorruptRecordError("not JSON", store="SQLiteStore('app.db')", record="42")
        >>> error.record, isinstance(error, ValueError)
        ('42', True)
    """

    def __init__(self, message: str, *, store: str, record: str) -> None:
        self.record = record
        super().__init__(message, store=store)


class TransportError(ResilienceError):
    """Raised when a message broker refuses what a transport asked of it (publish, consume, commit).

    The broker client's own exception is chained as ``__cause__``, so its details are
    kept without catching it by the client's types.

    Attributes:
        transport: the transport, as its repr (never with a password).

    Examples:
        >>> error = TransportError("Kafka refused it", transport="KafkaTransport('k:9092')")
        >>> error.transport, str(error)
        ("KafkaTransport('k:9092')", 'Kafka refused it')
    """

    def __init__(self, message: str, *, transport: str) -> None:
        self.transport = transport
        super().__init__(message)


class TransportUnavailableError(TransportError, ConnectionError):
    """Raised when a transport's broker cannot be reached, or did not answer in time.

    It is also a built-in `ConnectionError`, so ``RetryPolicy(on=ConnectionError)``
    retries it.

    Examples:
        >>> issubclass(TransportUnavailableError, ConnectionError)
        True
    """


class IdempotencyError(ResilienceError):
    """Raised when an idempotent call is refused; the root of the idempotency errors.

    Attributes:
        key: the idempotency key, scoped as stored (``"tenant-a:order-17"``).

    Examples:
        >>> IdempotencyError("refused", key="order-17").key
        'order-17'
    """

    def __init__(self, message: str, *, key: str) -> None:
        self.key = key
        super().__init__(message)


class IdempotencyKeyError(IdempotencyError, ValueError):
    """Raised when an idempotency key is missing, empty, too long or not a string.

    Examples:
        >>> error = IdempotencyKeyError("the key is empty", key="")
        >>> isinstance(error, ValueError), str(error)
        (True, 'the key is empty')
    """


class IdempotencyConflictError(IdempotencyError):
    """Raised when a key is used again with a different request (another fingerprint).

    The stored result is not returned and the function does not run: reusing a key
    for a different request is a client bug (HTTP 422 in the Idempotency-Key draft).

    Examples:
        >>> error = IdempotencyConflictError("key reused with another request", key="k1")
        >>> error.key
        'k1'
    """


class IdempotencyInProgressError(IdempotencyError):
    """Raised when a call with the same key is still running (HTTP 409 in the draft).

    Attributes:
        retry_after: seconds until the running call's claim expires, when known.

    Examples:
        >>> error = IdempotencyInProgressError("running", key="k1", retry_after=2.5)
        >>> error.retry_after
        2.5
    """

    def __init__(self, message: str, *, key: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, key=key)


class IdempotencyResultError(IdempotencyError):
    """Raised when an idempotent call ran, but its result cannot be stored and read back.

    The call's side effects happened, so it is never run again for its key: this is its
    stored outcome, raised by the call and by every repeat until the record expires.
    The message says why the result could not be stored (it does not match the return
    annotation, or does not read back as it).

    Examples:
        >>> error = IdempotencyResultError("the result is not an int", key="k1")
        >>> isinstance(error, IdempotencyError), error.key
        (True, 'k1')
    """
