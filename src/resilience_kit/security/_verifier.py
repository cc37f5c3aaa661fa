"""VersionedTokenVerifier: accept every token version a rolling deploy still issues.

One core, two thin drivers (STYLE.md 11): `_flow` is a generator that does every check
and yields when it needs I/O — a key from a JWKS endpoint, or the remote validator's
verdict. `averify` (async) answers those requests; `verify` answers them without I/O
(known keys only; the remote validator counts as unavailable). Both share the cache-hit
fast path, which touches nothing but two dicts and one reading of the wall clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

from resilience_kit import _config, _telemetry
from resilience_kit._checks import check_int, check_positive, is_async_callable
from resilience_kit.clock import SYSTEM_CLOCK, Clock, resolve_clock
from resilience_kit.errors import CircuitOpenError, ConfigurationError, TimeoutExceededError
from resilience_kit.policies._breaker import CircuitBreaker
from resilience_kit.policies._timeout import Timeout
from resilience_kit.security import _algorithms, _jwt
from resilience_kit.security._claims import ClaimRules, check_claims, string_set
from resilience_kit.security._encoding import ParsedToken, json_object
from resilience_kit.security._errors import (
    MalformedTokenError,
    TokenAlgorithmError,
    TokenClaimError,
    TokenKeyError,
    TokenRejectedError,
    TokenRevokedError,
    TokenSignatureError,
    ValidatorUnavailableError,
)
from resilience_kit.security._keyring import KeySource, KeyState, KeyVersion

Introspection = Mapping[str, Any] | bool | None
Validator = Callable[[str], Awaitable[Introspection]]

_RETIRED = KeyState.RETIRED


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed every check, and what it says.

    Attributes:
        claims: the token's claims, deeply read-only (JSON arrays are tuples, objects
            read-only mappings), since cached claims are shared between callers; for an
            opaque token, the remote validator's answer without ``active``.
        kind: ``"jwt"``, or ``"opaque"`` (checked only remotely).
        key_version: the key version that verified it (``None`` for opaque tokens).
        algorithm: the signature algorithm (``None`` for opaque tokens).
        expires_at: its ``exp`` (wall-clock seconds since the epoch), or ``None``.
        from_cache: ``True`` when served from the verifier's cache of verified tokens.

    Examples:
        >>> token = VerifiedToken({"sub": "ada"}, "jwt", "v1", "HS256", None)
        >>> token.subject, token.from_cache
        ('ada', False)
    """

    claims: Mapping[str, Any]
    kind: str
    key_version: str | None
    algorithm: str | None
    expires_at: float | None
    from_cache: bool = False

    @property
    def subject(self) -> str | None:
        """The ``sub`` claim, if any."""
        subject = self.claims.get("sub")
        return subject if isinstance(subject, str) else None


def _freeze(value: Any) -> Any:
    """Claims as served from the cache to every caller: nothing in them can be changed."""
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


class _Failed:
    """An exception raised while answering a request of the flow, handed back to it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _FetchKey:
    __slots__ = ("source", "version")

    def __init__(self, source: KeySource, version: str) -> None:
        self.source = source
        self.version = version

    async def answer(self) -> object:
        try:
            return await self.source.fetch(self.version)
        except Exception as exc:  # noqa: BLE001  (handed to the flow, which fails closed)
            return _Failed(exc)

    def answer_offline(self) -> object:
        try:
            return self.source.find(self.version)
        except Exception as exc:  # noqa: BLE001  (ditto)
            return _Failed(exc)


class _Introspect:
    __slots__ = ("introspect", "token")

    def __init__(self, introspect: Validator, token: str) -> None:
        self.introspect = introspect
        self.token = token

    async def answer(self) -> object:
        try:
            return await self.introspect(self.token)
        except Exception as exc:  # noqa: BLE001  (handed to the flow, which fails closed)
            return _Failed(exc)

    def answer_offline(self) -> object:
        return _Failed(
            ValidatorUnavailableError(
                "verify() cannot call the remote validator; use `await averify()`"
            )
        )


_Need = _FetchKey | _Introspect
# Valid from, valid until (both wall-clock), the key generation, the cached answer, its
# jti, and what revoking it is keyed on (the signed part of a JWT; an opaque token).
_Entry = tuple[float, float, int, VerifiedToken, str | None, str]


class _NoKeys:
    generation = 0


class _Progress:
    """How far a verification got: the key version named, once parsed (for errors)."""

    __slots__ = ("version",)

    def __init__(self) -> None:
        self.version: str | None = None


class VersionedTokenVerifier:
    """Verify tokens signed by any key version still in play, and cache the verdicts.

    A token (a JWT) names its key version in its ``kid`` header. The key source — a
    `Keyring` or a `JWKSKeySource` — says whether that version is ACTIVE or ACCEPTED
    (verified) or RETIRED (rejected with reason ``"retired_key"``); the algorithm is the
    one pinned to the key, never the one the token asks for.

    Checks, in order: type and size; format; revocation; ``typ`` (when ``token_type`` is
    given); algorithm (``none`` is never accepted); key version; signature (ECDSA ones
    in their canonical low-S form, unless ``allow_high_s``); claims (``exp`` and
    ``nbf``/``iat`` with leeway, issuer, audience, required claims); then, if configured,
    the remote validator; and revocation (of the token or its ``jti``) once more, since
    it may have come while the verifier waited. Every failure is a `TokenRejectedError`
    with a machine-readable ``reason``; nothing else escapes, whatever the input.

    A verified token is cached for ``cache_ttl`` seconds, never past its ``exp`` nor
    its key's retirement, all on the verifier's wall clock, read once per cache hit (a
    clock stepped back makes cached tokens re-verify); any change to the keys makes
    cached tokens re-verify, and a hit is refused once the token is revoked. `revoke`
    rejects a token (or a ``jti``) from then on, however its signature is spelt.

    With a remote ``validator`` (an async introspection callable), every token not
    already cached is also checked remotely, through a `CircuitBreaker` and a `Timeout`;
    when the validator is unavailable the verifier fails closed: reason
    ``"validator_unavailable"``. Without ``keys``, tokens are opaque and checked only
    remotely.

    Args:
        keys: where key versions come from; ``None`` for opaque tokens.
        issuer: accepted ``iss`` value(s); ``None`` accepts any.
        audience: accepted ``aud`` value(s); with ``None``, a token naming an audience
            is rejected.
        require: claims that must be present (``exp`` by default).
        leeway: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
        algorithms: accepted algorithms; by default every one the library supports (each
            key is pinned to one of them anyway).
        token_type: accepted ``typ`` header value(s), e.g. ``"at+jwt"`` for access
            tokens (RFC 9068); compared case-insensitively, ``application/`` optional.
            A token of another type, or with none, is rejected (reason
            ``"token_type"``): explicit typing keeps an ID token from passing for an
            access token (RFC 8725 3.11). ``None`` (the default) does not look.
        allow_high_s: accept ECDSA signatures with ``s > n/2``. Each valid ECDSA
            signature has such a twin anyone can compute, a second spelling of the same
            token; by default it is refused (reason ``"bad_signature"``). Issuers that
            do not normalise ``s`` (most JWT libraries, PyJWT included) produce one
            token in two that way: set this for their ES256/384/512 tokens.
        max_token_size: longer tokens are rejected (reason ``"too_large"``) unread.
        cache_ttl: seconds a verified token is served from the cache; 0 disables it.
        cache_size: the most tokens cached; the oldest go first.
        validator: ``async (token) -> bool | Mapping | None``: ``True`` or an RFC 7662
            response with ``"active": true`` accepts; ``False``, ``None`` or
            ``"active": false`` rejects (reason ``"inactive"``).
        validator_timeout: seconds before a validator call counts as failed.
        validator_breaker: the breaker around the validator; by default one named
            ``"<name>.validator"`` with the library's defaults.
        clock: the clock for expiry, the cache and the validator's timeout.
        name: a name for logs and the default breaker.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> from resilience_kit.security import Keyring, KeyState, TokenIssuer
        >>> ring = Keyring()
        >>> _ = ring.add("v1", b"k" * 32, state=KeyState.ACTIVE)
        >>> token = TokenIssuer(ring).issue("ada")
        >>> verifier = VersionedTokenVerifier(ring)
        >>> verified = verifier.verify(token)
        >>> verified.subject, verified.key_version, verified.from_cache
        ('ada', 'v1', False)
        >>> verifier.verify(token).from_cache
        True
    """

    __slots__ = (
        "_algorithms",
        "_allow_high_s",
        "_cache",
        "_cache_size",
        "_clock",
        "_introspect",
        "_keys",
        "_leeway",
        "_lock",
        "_max_size",
        "_revoked",
        "_rules",
        "_source",
        "_ttl",
        "_types",
        "name",
    )

    def __init__(
        self,
        keys: KeySource | None = None,
        *,
        issuer: str | Collection[str] | None = None,
        audience: str | Collection[str] | None = None,
        require: Collection[str] = ("exp",),
        leeway: float = 0.0,
        algorithms: Collection[str] | None = None,
        token_type: str | Collection[str] | None = None,
        allow_high_s: bool = False,
        max_token_size: int = 8192,
        cache_ttl: float = 300.0,
        cache_size: int = 10_000,
        validator: Validator | None = None,
        validator_timeout: float = 2.0,
        validator_breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        name: str = "tokens",
    ) -> None:
        if keys is not None and not isinstance(keys, KeySource):
            raise ConfigurationError(
                "keys", f"must be a Keyring or another KeySource, got {keys!r}"
            )
        if keys is None and validator is None:
            raise ConfigurationError("keys", "give keys, a remote validator, or both")
        if isinstance(require, str) or not all(isinstance(c, str) and c for c in require):
            raise ConfigurationError(
                "require", f"must be a collection of claim names, got {require!r}"
            )
        check_positive("leeway", leeway, allow_zero=True)
        check_int("max_token_size", max_token_size, minimum=16)
        check_positive("cache_ttl", cache_ttl, allow_zero=True)
        check_int("cache_size", cache_size, minimum=1)
        if algorithms is None:
            accepted = _algorithms.SUPPORTED
        elif isinstance(algorithms, str):
            raise ConfigurationError("algorithms", "must be a collection, e.g. ('RS256',)")
        else:
            accepted = frozenset(_algorithms.check_algorithm(a, "algorithms") for a in algorithms)
        types = string_set("token_type", token_type)
        if types is not None and keys is None:
            raise ConfigurationError(
                "token_type", "checks a JWT header; opaque tokens (no keys) have none"
            )
        if not isinstance(allow_high_s, bool):
            raise ConfigurationError("allow_high_s", f"must be a bool, got {allow_high_s!r}")
        self.name = name
        self._keys = keys
        self._source: KeySource | _NoKeys = keys if keys is not None else _NoKeys()
        self._algorithms = accepted
        self._types = None if types is None else frozenset(map(_jwt.normal_type, types))
        self._allow_high_s = allow_high_s
        self._leeway = float(leeway)
        self._rules = ClaimRules(
            issuers=string_set("issuer", issuer),
            audiences=string_set("audience", audience),
            require=tuple(require),
            leeway=float(leeway),
        )
        self._max_size = max_token_size
        self._ttl = float(cache_ttl)
        self._cache_size = cache_size
        self._cache: dict[str, _Entry] = {}
        self._revoked: dict[str, float | None] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._introspect = self._guard(validator, validator_timeout, validator_breaker)

    def _guard(
        self, validator: Validator | None, timeout: float, breaker: CircuitBreaker | None
    ) -> Validator | None:
        check_positive("validator_timeout", timeout)
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(
                "validator_breaker", f"must be a CircuitBreaker, got {breaker!r}"
            )
        if validator is None:
            return None
        if not is_async_callable(validator):
            raise ConfigurationError("validator", f"must be an async callable, got {validator!r}")
        if breaker is None:
            breaker = CircuitBreaker(
                f"{self.name}.validator", ignore_on=TokenRejectedError, clock=self._clock
            )
        limit = Timeout(timeout, name=f"{self.name}.validator", clock=self._clock)
        return cast("Validator", breaker.wrap(limit.wrap(validator)))

    def __repr__(self) -> str:
        return f"VersionedTokenVerifier({self.name!r}, keys={self._keys!r})"

    # -- the drivers ------------------------------------------------------------------------

    async def averify(self, token: str | bytes) -> VerifiedToken:
        """Verify ``token``, fetching keys and asking the remote validator as needed.

        Raises:
            TokenRejectedError: a subclass saying why (``reason``); nothing else.

        Examples:
            >>> import anyio
            >>> from resilience_kit.security import Keyring, KeyState, TokenIssuer
            >>> ring = Keyring()
            >>> _ = ring.add("v1", b"k" * 32, state=KeyState.ACTIVE)
            >>> verifier = VersionedTokenVerifier(ring)
            >>> anyio.run(verifier.averify, TokenIssuer(ring).issue("ada")).subject
            'ada'
        """
        if type(token) is str and len(token) <= self._max_size:
            hit = self._cached(token)
            if hit is not None:
                return hit
        flow = self._flow(token)
        try:
            need = next(flow)
            while True:
                need = flow.send(await need.answer())
        except StopIteration as done:
            return cast("VerifiedToken", done.value)
        finally:
            flow.close()

    def verify(self, token: str | bytes) -> VerifiedToken:
        """Verify ``token`` without I/O: with the keys at hand, and no remote validator.

        On a verifier with a remote validator, only cached tokens pass (others fail
        closed with reason ``"validator_unavailable"``); with a JWKS source, only keys
        already fetched are used.

        Raises:
            TokenRejectedError: a subclass saying why (``reason``); nothing else.

        Examples:
            >>> from resilience_kit.security import Keyring
            >>> verifier = VersionedTokenVerifier(Keyring())
            >>> try:
            ...     verifier.verify("eyJhbGciOiJIUzI1NiIsImtpZCI6InYxIn0.e30.AAAA")
            ... except TokenRejectedError as exc:
            ...     print(exc.reason)
            unknown_key
        """
        if type(token) is str and len(token) <= self._max_size:
            hit = self._cached(token)
            if hit is not None:
                return hit
        flow = self._flow(token)
        try:
            need = next(flow)
            while True:
                need = flow.send(need.answer_offline())
        except StopIteration as done:
            return cast("VerifiedToken", done.value)
        finally:
            flow.close()

    def _cached(self, token: str) -> VerifiedToken | None:
        entry = self._cache.get(token)
        if entry is None:
            return None
        now = (self._clock or _config.state.clock or SYSTEM_CLOCK).time()
        revoked = self._revoked
        if (
            entry[0] <= now < entry[1]
            and entry[2] == self._source.generation
            and not (revoked and (entry[5] in revoked or entry[4] in revoked))
        ):
            return entry[3]
        # Expired, the wall clock stepped back, the keys changed, or revoked (perhaps
        # while it was being verified): verify afresh.
        self._cache.pop(token, None)
        return None

    # -- the core -------------------------------------------------------------------------

    def _flow(self, token: object) -> Generator[_Need, object, VerifiedToken]:
        progress = _Progress()
        try:
            return (yield from self._steps(token, progress))
        except TokenRejectedError as exc:
            if exc.key_version is None:
                exc.key_version = progress.version
            raise
        except Exception as exc:
            # Whatever the input, only TokenRejectedError leaves the verifier.
            raise MalformedTokenError(
                f"could not be read ({type(exc).__name__})", key_version=progress.version
            ) from exc

    def _steps(self, token: object, progress: _Progress) -> Generator[_Need, object, VerifiedToken]:
        text = self._coerce(token)
        cached = self._cached(text)
        if cached is not None:
            return cached
        clock = resolve_clock(self._clock)
        keys = self._keys
        key: KeyVersion | None = None
        if keys is None:
            signed = text
            self._check_revoked(signed, None)
            generation = 0
            claims = yield from self._ask_validator(text, opaque=True)
            kind, version, algorithm = "opaque", None, None
        else:
            parsed = _jwt.parse(text)
            signed = parsed.signed
            version = progress.version = parsed.version
            self._check_revoked(signed, None)
            self._check_type(parsed.token_type)
            key = yield from self._key_for(parsed, keys)
            # The keys as they were when this key was judged valid: should they change
            # while we wait for the remote validator, the cache entry is born stale.
            generation = keys.generation
            self._check_signature(key, parsed)
            claims = json_object(parsed.payload, "claims")
            kind, algorithm = "jwt", key.algorithm
        expires = check_claims(claims, clock.time(), self._rules)
        jti = claims.get("jti")
        # Again, and after the remote validator too: a revocation that came while we
        # waited for I/O (a key fetch, the validator) must not be cached past.
        self._check_revoked(signed, jti)
        if keys is not None and self._introspect is not None:
            yield from self._ask_validator(text, opaque=False)
            self._check_revoked(signed, jti)
        verified = VerifiedToken(_freeze(claims), kind, version, algorithm, expires)
        self._remember(
            text, verified, key=key, jti=jti, signed=signed, generation=generation, clock=clock
        )
        return verified

    def _check_revoked(self, signed: str, jti: str | None) -> None:
        revoked = self._revoked
        if signed in revoked:
            raise TokenRevokedError("revoked")
        if jti is not None and jti in revoked:
            raise TokenRevokedError("its jti was revoked")

    def _check_type(self, token_type: str | None) -> None:
        accepted = self._types
        if accepted is None:
            return
        if token_type is None:
            raise TokenClaimError("the header has no 'typ'", reason="token_type")
        if _jwt.normal_type(token_type) not in accepted:
            raise TokenClaimError(
                f"typ {token_type[:40]!r} is not one of {sorted(accepted)}", reason="token_type"
            )

    def _check_signature(self, key: KeyVersion, parsed: ParsedToken) -> None:
        if not self._allow_high_s and _algorithms.high_s(
            key.algorithm, key.verifying_key, parsed.signature
        ):
            raise TokenSignatureError(
                "a high-S ECDSA signature, the malleable twin of a canonical one; if the "
                "issuer does not normalise S, pass allow_high_s=True"
            )
        if not _algorithms.verify(
            key.algorithm, key.verifying_key, parsed.signed.encode("ascii"), parsed.signature
        ):
            raise TokenSignatureError("the signature does not match the key")

    def _coerce(self, token: object) -> str:
        if isinstance(token, (bytes, bytearray, memoryview)):
            if len(token) > self._max_size:
                raise MalformedTokenError(
                    f"{len(token)} bytes, the limit is {self._max_size}", reason="too_large"
                )
            try:
                token = bytes(token).decode("ascii")
            except UnicodeDecodeError:
                raise MalformedTokenError("not ASCII") from None
        if not isinstance(token, str):
            raise MalformedTokenError(f"a token is a str or bytes, not {type(token).__name__}")
        if len(token) > self._max_size:
            raise MalformedTokenError(
                f"{len(token)} characters, the limit is {self._max_size}", reason="too_large"
            )
        if not token.isascii():
            raise MalformedTokenError("not ASCII")
        return str.__str__(token)  # a plain str: a subclass could override hash or eq

    def _key_for(
        self, parsed: ParsedToken, keys: KeySource
    ) -> Generator[_Need, object, KeyVersion]:
        algorithm = parsed.algorithm
        if algorithm not in self._algorithms:
            raise TokenAlgorithmError(f"alg {algorithm[:20]!r} is not accepted")
        version = parsed.version
        if version is None:
            raise TokenKeyError("the token names no key version (no 'kid')")
        key = keys.find(version)
        if keys.wants_fetch(version, key):
            reply = yield _FetchKey(keys, version)
            if isinstance(reply, _Failed):
                if isinstance(reply.error, TokenRejectedError):
                    raise reply.error
                raise ValidatorUnavailableError(
                    f"could not fetch keys ({type(reply.error).__name__})",
                    reason="keys_unavailable",
                ) from reply.error
            key = cast("KeyVersion | None", reply)
        if key is None:
            raise TokenKeyError(f"no key version {version[:64]!r}")
        if key.state_at(resolve_clock(self._clock).time()) is _RETIRED:
            raise TokenKeyError(f"key version {version[:64]!r} is retired", reason="retired_key")
        if algorithm != key.algorithm:
            raise TokenAlgorithmError(
                f"key version {version[:64]!r} is pinned to {key.algorithm}, the token says "
                f"{algorithm[:20]!r}"
            )
        return key

    def _ask_validator(
        self, token: str, *, opaque: bool
    ) -> Generator[_Need, object, dict[str, Any]]:
        introspect = self._introspect
        assert introspect is not None  # noqa: S101  (guaranteed by the callers)
        reply = yield _Introspect(introspect, token)
        if isinstance(reply, _Failed):
            error = reply.error
            if isinstance(error, TokenRejectedError):
                raise error
            if isinstance(error, CircuitOpenError):
                # The breaker logged when it opened; one line per rejected call would flood.
                why = "its circuit breaker is open"
            else:
                if isinstance(error, TimeoutExceededError):
                    why = f"it did not answer within {error.seconds}s"
                else:
                    why = f"it failed ({type(error).__name__})"
                _telemetry.logger.warning("%s: remote validator unavailable: %s", self.name, why)
            raise ValidatorUnavailableError(
                f"the remote validator is unavailable: {why}"
            ) from error
        if reply is True:
            return {}
        if reply is False or reply is None:
            raise TokenRevokedError("the remote validator says it is not active", reason="inactive")
        if isinstance(reply, Mapping):
            active = reply.get("active")
            if active is False:
                raise TokenRevokedError(
                    "the remote validator says it is not active", reason="inactive"
                )
            if active is True:
                return {k: v for k, v in reply.items() if k != "active"} if opaque else {}
        raise ValidatorUnavailableError(
            f"the remote validator answered {type(reply).__name__}, not a verdict"
        )

    def _remember(
        self,
        token: str,
        verified: VerifiedToken,
        *,
        key: KeyVersion | None,
        jti: str | None,
        signed: str,
        generation: int,
        clock: Clock,
    ) -> None:
        if self._ttl <= 0:
            return
        now = clock.time()
        until = now + self._ttl
        if verified.expires_at is not None:
            until = min(until, verified.expires_at)
        if key is not None and key.retire_at is not None:
            until = min(until, key.retire_at)
        if until <= now:
            return
        entry = (
            now,
            until,
            generation,
            dataclasses.replace(verified, from_cache=True),
            jti,
            signed,
        )
        with self._lock:
            cache = self._cache
            if len(cache) >= self._cache_size and token not in cache:
                del cache[next(iter(cache))]  # the oldest entry
            cache[token] = entry

    # -- revocation and housekeeping ----------------------------------------------------------

    def revoke(self, token_or_jti: str, *, until: float | None = None) -> None:
        """Reject a token, or every token with a given ``jti``, from now on.

        A JWT is revoked by the part its signature covers, so no other spelling of its
        signature gets it accepted; the cache never serves it again, even should a
        verification already under way when it is revoked finish later. Revocations
        are forgotten once they no longer matter: at ``until`` (wall-clock seconds), or
        else at the token's own ``exp`` when it can be read; a bare ``jti`` without
        ``until`` is kept for good.

        Args:
            token_or_jti: a token, or the value of a ``jti`` claim.
            until: when to forget the revocation.

        Examples:
            >>> from resilience_kit.security import Keyring, KeyState, TokenIssuer
            >>> ring = Keyring()
            >>> _ = ring.add("v1", b"k" * 32, state=KeyState.ACTIVE)
            >>> token = TokenIssuer(ring).issue("ada")
            >>> verifier = VersionedTokenVerifier(ring)
            >>> _ = verifier.verify(token)
            >>> verifier.revoke(token)
            >>> try:
            ...     verifier.verify(token)
            ... except TokenRejectedError as exc:
            ...     print(exc.reason)
            revoked
        """
        if not isinstance(token_or_jti, str) or not token_or_jti:
            raise ConfigurationError("token_or_jti", "must be a non-empty string")
        check_positive("until", until, allow_zero=True)
        signed, jti, expires = self._peek(token_or_jti)
        forget_at = until if until is not None else expires
        now = resolve_clock(self._clock).time()
        keys = {signed or token_or_jti, jti}
        keys.discard(None)
        with self._lock:
            revoked = {k: t for k, t in self._revoked.items() if t is None or t > now}
            revoked.update(dict.fromkeys(cast("set[str]", keys), forget_at))
            self._revoked = revoked
            self._cache = {
                token: entry
                for token, entry in self._cache.items()
                if entry[5] not in keys and entry[4] not in keys
            }

    def _peek(self, token: str) -> tuple[str | None, str | None, float | None]:
        """The signed part, ``jti`` and ``exp`` of a JWT, read without verifying."""
        entry = self._cache.get(token)
        if entry is not None:
            return entry[5], entry[4], entry[3].expires_at
        try:
            parsed = _jwt.parse(token)
            claims = json_object(parsed.payload, "claims")
        except TokenRejectedError:
            return None, None, None  # an opaque token, or a jti
        jti, expires = claims.get("jti"), claims.get("exp")
        forget_at = None
        if isinstance(expires, (int, float)) and not isinstance(expires, bool):
            with contextlib.suppress(OverflowError):
                forget_at = float(expires) + self._leeway
        return parsed.signed, (jti if isinstance(jti, str) else None), forget_at

    def clear_cache(self) -> None:
        """Drop every cached verdict: the next presentation of each token is verified afresh.

        Examples:
            >>> from resilience_kit.security import Keyring
            >>> VersionedTokenVerifier(Keyring()).clear_cache()
        """
        with self._lock:
            self._cache = {}

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens the cache holds (some may have expired unseen)."""
        return len(self._cache)
