"""VersionedTokenVerifier, Keyring and TokenIssuer with HS256 JWTs (no PyJWT needed).

JWS signing is re-implemented here from its specification (``sign_jwt``, RFC 7515), so
these tests check the format, not only that the library agrees with itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

from resilience_kit import ConfigurationError, ResilienceError
from resilience_kit.security import (
    JWKSKeySource,
    Keyring,
    KeySource,
    KeyState,
    KeyVersion,
    MalformedTokenError,
    TokenAlgorithmError,
    TokenClaimError,
    TokenExpiredError,
    TokenIssuer,
    TokenKeyError,
    TokenNotYetValidError,
    TokenRejectedError,
    TokenRevokedError,
    TokenSignatureError,
    ValidatorUnavailableError,
    VerifiedToken,
    VersionedTokenVerifier,
    _algorithms,
)
from resilience_kit.testing import VirtualClock, use_clock

SECRET_1 = b"secret-one-0123456789abcdef-0123"
SECRET_2 = b"secret-two-0123456789abcdef-0123"
START = 1_767_225_600.0  # the VirtualClock's default wall time
V1 = "eyJhbGciOiJIUzI1NiIsImtpZCI6InYxIn0"  # {"alg":"HS256","kid":"v1"}
ROOT = Path(__file__).resolve().parent.parent


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(kid: str, secret: bytes, claims: Any, **header: Any) -> str:
    """An HS256 JWS from its specification: <header>.<claims>.<HMAC-SHA256>, base64url."""
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    head = json.dumps({"alg": "HS256", "kid": kid, **header}).encode()
    signing_input = f"{b64(head)}.{b64(payload)}"
    digest = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(digest)}"


def signed_part(token: str) -> str:
    return token.rsplit(".", 1)[0]


def header_of(token: str) -> dict[str, Any]:
    part = token.split(".", maxsplit=1)[0]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def claims_now(**extra: Any) -> dict[str, Any]:
    return {"sub": "ada", "iat": int(START), "exp": int(START) + 600, **extra}


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def ring(clock: VirtualClock) -> Keyring:
    keyring = Keyring(clock=clock)
    keyring.add("v1", SECRET_1, state=KeyState.ACTIVE)
    return keyring


def rejected(verifier: VersionedTokenVerifier, token: object) -> TokenRejectedError:
    with pytest.raises(TokenRejectedError) as info:
        verifier.verify(token)  # type: ignore[arg-type]
    return info.value


# -- errors ---------------------------------------------------------------------------------


ERRORS = [
    (MalformedTokenError, "malformed"),
    (TokenAlgorithmError, "algorithm_not_allowed"),
    (TokenKeyError, "unknown_key"),
    (TokenSignatureError, "bad_signature"),
    (TokenExpiredError, "expired"),
    (TokenNotYetValidError, "not_yet_valid"),
    (TokenClaimError, "invalid_claim"),
    (TokenRevokedError, "revoked"),
    (ValidatorUnavailableError, "validator_unavailable"),
]


@pytest.mark.parametrize(("cls", "reason"), ERRORS)
def test_each_error_is_a_token_rejection_with_a_default_reason(cls: type, reason: str) -> None:
    err = cls("why")
    assert isinstance(err, TokenRejectedError)
    assert isinstance(err, ResilienceError)
    assert err.reason == reason == cls.reasons[0]
    assert err.key_version is None
    assert str(err) == f"token rejected ({reason}): why"


def test_errors_pickle_with_their_context() -> None:
    err = TokenKeyError("gone", reason="retired_key", key_version="v1")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is TokenKeyError
    assert (copy.reason, copy.key_version, copy.message) == ("retired_key", "v1", "gone")
    assert str(copy) == str(err)


# -- keyring --------------------------------------------------------------------------------


def test_keyring_add_defaults_to_accepted_and_hides_key_material(clock: VirtualClock) -> None:
    ring = Keyring(clock=clock)
    key = ring.add("v1", SECRET_1)
    assert key.state is KeyState.ACCEPTED
    assert key.algorithm == "HS256"
    assert ring.active is None
    assert "secret" not in repr(key)
    assert "secret" not in repr(ring)
    assert repr(ring) == "Keyring(v1=accepted)"
    assert "v1" in ring
    assert len(ring) == 1
    assert list(ring) == [key]
    assert ring.find("v1") is key
    assert ring.find("nope") is None


def test_keyring_accepts_str_secrets_and_other_hmac_sizes(clock: VirtualClock) -> None:
    ring = Keyring(clock=clock)
    assert ring.add("s", "x" * 32).verifying_key == b"x" * 32
    assert ring.add("h5", b"y" * 64, algorithm="HS512").algorithm == "HS512"
    with pytest.raises(ConfigurationError, match="at least 48"):
        ring.add("h3", b"z" * 47, algorithm="HS384")


def test_adding_an_active_key_demotes_the_previous_one(ring: Keyring) -> None:
    generation = ring.generation
    ring.add("v2", SECRET_2, state=KeyState.ACTIVE)
    assert ring.active is not None
    assert ring.active.version == "v2"
    assert ring.state_of("v1") is KeyState.ACCEPTED
    assert ring.generation == generation + 1


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"version": "", "key": SECRET_1}, "version"),
        ({"version": 7, "key": SECRET_1}, "version"),
        ({"version": "v1", "key": SECRET_1}, "version"),  # duplicate
        ({"version": "v9", "key": SECRET_1, "algorithm": "none"}, "algorithm"),
        ({"version": "v9", "key": SECRET_1, "algorithm": "HS999"}, "algorithm"),
        ({"version": "v9", "key": SECRET_1, "state": "active"}, "state"),
        ({"version": "v9", "key": b"short"}, "key"),
        ({"version": "v9", "key": 12345}, "key"),
        ({"version": "v9", "key": b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBg" + b"A" * 40}, "key"),
        ({"version": "v9", "key": b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ" + b"A" * 20}, "key"),
        ({"version": "v9", "key": b'{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}'}, "key"),
    ],
)
def test_keyring_add_rejects_bad_input_naming_the_parameter(
    ring: Keyring, kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        ring.add(**kwargs)
    assert info.value.parameter == parameter


def test_retire_now_and_later(ring: Keyring, clock: VirtualClock) -> None:
    ring.add("v2", SECRET_2)
    ring.add("v3", SECRET_2)
    ring.retire("v2")
    assert ring.state_of("v2") is KeyState.RETIRED
    ring.retire("v3", after=60.0)
    assert ring.state_of("v3") is KeyState.ACCEPTED
    assert ring.find("v3").retire_at == START + 60.0  # type: ignore[union-attr]
    clock.advance(59.0)
    assert ring.state_of("v3") is KeyState.ACCEPTED
    clock.advance(1.0)
    assert ring.state_of("v3") is KeyState.RETIRED
    assert ring.state_of("nope") is None


def test_activate_cancels_a_scheduled_retirement_but_not_a_past_one(
    ring: Keyring, clock: VirtualClock
) -> None:
    ring.add("v2", SECRET_2)
    ring.retire("v2", after=10.0)
    ring.activate("v2")  # a rollback
    assert ring.state_of("v2") is KeyState.ACTIVE
    assert ring.find("v2").retire_at is None  # type: ignore[union-attr]
    assert ring.state_of("v1") is KeyState.ACCEPTED
    ring.retire("v1", after=10.0)
    clock.advance(10.0)
    with pytest.raises(ConfigurationError, match="retired"):
        ring.activate("v1")


def test_lifecycle_errors_name_the_parameter(ring: Keyring) -> None:
    for action in (ring.activate, ring.retire, ring.remove):
        with pytest.raises(ConfigurationError) as info:
            action("nope")
        assert info.value.parameter == "version"
    with pytest.raises(ConfigurationError, match="active version"):
        ring.retire("v1")
    with pytest.raises(ConfigurationError, match="active version"):
        ring.remove("v1")
    with pytest.raises(ConfigurationError) as info:
        ring.retire("v1", after=-1.0)
    assert info.value.parameter == "after"


def test_remove_forgets_a_version(ring: Keyring) -> None:
    ring.add("v0", SECRET_2, state=KeyState.RETIRED)
    assert ring.state_of("v0") is KeyState.RETIRED
    ring.remove("v0")
    assert "v0" not in ring


def test_key_version_state_at_is_pure() -> None:
    key = KeyVersion("v", "HS256", KeyState.ACCEPTED, retire_at=100.0)
    assert key.state_at(99.9) is KeyState.ACCEPTED
    assert key.state_at(100.0) is KeyState.RETIRED


@pytest.mark.anyio
async def test_keyring_is_a_key_source_that_never_fetches(ring: Keyring) -> None:
    assert isinstance(ring, KeySource)
    assert ring.wants_fetch("v1", ring.find("v1")) is False
    assert await ring.fetch("v1") is ring.find("v1")
    assert await ring.fetch("nope") is None


# -- issuer ---------------------------------------------------------------------------------


def test_issuer_signs_an_hs256_jwt_naming_the_active_version(
    ring: Keyring, clock: VirtualClock
) -> None:
    issuer = TokenIssuer(ring, issuer="idp", audience="api", lifetime=600.0, clock=clock)
    token = issuer.issue("ada", claims={"role": "admin"})
    header, payload, signature = token.split(".")
    assert header_of(token) == {"alg": "HS256", "kid": "v1", "typ": "JWT"}
    expected = hmac.new(SECRET_1, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert signature == b64(expected)
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "ada"
    assert claims["role"] == "admin"
    assert (claims["iss"], claims["aud"]) == ("idp", "api")
    assert claims["iat"] == int(START)
    assert claims["exp"] == int(START) + 600
    assert len(claims["jti"]) >= 16
    assert issuer.issue("ada") != issuer.issue("ada")  # a fresh jti each time
    assert repr(issuer) == "TokenIssuer(token_type='JWT', lifetime=600.0)"


def test_issuer_per_token_lifetime_and_audience(ring: Keyring, clock: VirtualClock) -> None:
    issuer = TokenIssuer(ring, lifetime=600.0, clock=clock)
    verifier = VersionedTokenVerifier(ring, audience=["a", "b"], clock=clock)
    token = issuer.issue(lifetime=30.0, audience=["b", "c"])
    verified = verifier.verify(token)
    assert verified.expires_at == START + 30
    assert verified.claims["aud"] == ("b", "c")
    assert verified.subject is None


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"keyring": "ring"}, "keyring"),
        ({"token_type": ""}, "token_type"),
        ({"token_type": 3}, "token_type"),
        ({"issuer": ""}, "issuer"),
        ({"lifetime": 0}, "lifetime"),
        ({"audience": ""}, "audience"),
        ({"audience": []}, "audience"),
        ({"audience": ["ok", 3]}, "audience"),
    ],
)
def test_issuer_rejects_bad_parameters(
    ring: Keyring, kwargs: dict[str, Any], parameter: str
) -> None:
    arguments: dict[str, Any] = {"keyring": ring, **kwargs}
    with pytest.raises(ConfigurationError) as info:
        TokenIssuer(**arguments)
    assert info.value.parameter == parameter


def test_issue_refuses_what_it_cannot_sign(clock: VirtualClock) -> None:
    ring = Keyring(clock=clock)
    issuer = TokenIssuer(ring, lifetime=60.0, clock=clock)
    with pytest.raises(ConfigurationError, match="no active version"):
        issuer.issue("ada")
    ring.add("v1", SECRET_1, state=KeyState.ACTIVE)
    with pytest.raises(ConfigurationError) as info:
        issuer.issue("ada", lifetime=61.0)
    assert info.value.parameter == "lifetime"
    with pytest.raises(ConfigurationError) as info:
        issuer.issue("ada", claims={"exp": 1, "jti": "x"})
    assert info.value.parameter == "claims"
    assert "exp" in str(info.value)
    with pytest.raises(TypeError):
        issuer.issue("ada", claims={"when": object()})


def test_any_hmac_key_issues_and_any_string_can_name_it(clock: VirtualClock) -> None:
    ring = Keyring(clock=clock)
    verifier = VersionedTokenVerifier(ring, clock=clock)
    issuer = TokenIssuer(ring, token_type=None, clock=clock)
    for version, algorithm, size in (("v.1 é", "HS512", 64), ("eyJ", "HS384", 48)):
        ring.add(version, b"k" * size, algorithm=algorithm, state=KeyState.ACTIVE)
        token = issuer.issue("ada")
        assert header_of(token) == {"alg": algorithm, "kid": version}
        assert verifier.verify(token).key_version == version


# -- the verifier: what passes ----------------------------------------------------------------


def test_verify_then_serve_from_cache(ring: Keyring, clock: VirtualClock) -> None:
    token = TokenIssuer(ring, clock=clock).issue("ada", claims={"roles": ["x"]})
    verifier = VersionedTokenVerifier(ring, clock=clock)
    first = verifier.verify(token)
    assert isinstance(first, VerifiedToken)
    assert (first.kind, first.key_version, first.algorithm) == ("jwt", "v1", "HS256")
    assert first.subject == "ada"
    assert first.expires_at == START + 900
    assert first.from_cache is False
    second = verifier.verify(token)
    assert second.from_cache is True
    assert second.claims == first.claims
    assert verifier.cached_tokens == 1
    with pytest.raises(TypeError):
        first.claims["sub"] = "eve"  # type: ignore[index]
    assert "VersionedTokenVerifier('tokens'" in repr(verifier)


def test_cached_claims_cannot_be_changed_by_one_caller_for_the_next(
    ring: Keyring, clock: VirtualClock
) -> None:
    token = sign_jwt("v1", SECRET_1, claims_now(roles=["reader"], org={"id": 7, "tags": ["a"]}))
    verifier = VersionedTokenVerifier(ring, clock=clock)
    first = verifier.verify(token)
    assert first.claims["roles"] == ("reader",)
    with pytest.raises(AttributeError):
        first.claims["roles"].append("admin")
    with pytest.raises(TypeError):
        first.claims["org"]["id"] = 1
    assert verifier.verify(token).claims["org"]["tags"] == ("a",)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_tokens_are_accepted(ring: Keyring, clock: VirtualClock, wrap: Any) -> None:
    token = TokenIssuer(ring, clock=clock).issue("ada")
    verifier = VersionedTokenVerifier(ring, clock=clock)
    assert verifier.verify(wrap(token.encode())).subject == "ada"
    assert verifier.verify(wrap(token.encode())).from_cache is True


@pytest.mark.anyio
async def test_async_and_sync_paths_agree(ring: Keyring, clock: VirtualClock) -> None:
    token = TokenIssuer(ring, clock=clock).issue("ada")
    verifier = VersionedTokenVerifier(ring, clock=clock)
    verified = await verifier.averify(token)
    assert verified.from_cache is False
    assert (await verifier.averify(token)).from_cache is True
    assert verifier.verify(token).claims == verified.claims
    with pytest.raises(TokenKeyError) as info:
        await verifier.averify(sign_jwt("v9", SECRET_1, claims_now()))
    assert info.value.reason == "unknown_key"
    with pytest.raises(MalformedTokenError):
        await verifier.averify(42)  # type: ignore[arg-type]


def test_the_global_test_clock_is_followed(ring: Keyring) -> None:
    clock = VirtualClock()
    with use_clock(clock):
        token = TokenIssuer(ring).issue("ada", lifetime=60.0)
        verifier = VersionedTokenVerifier(ring)
        assert verifier.verify(token).from_cache is False
        clock.advance(61.0)
        assert rejected(verifier, token).reason == "expired"


# -- the cache ------------------------------------------------------------------------------


def test_cache_entries_live_for_the_ttl(ring: Keyring, clock: VirtualClock) -> None:
    token = TokenIssuer(ring, clock=clock, lifetime=900.0).issue("ada")
    verifier = VersionedTokenVerifier(ring, cache_ttl=300.0, clock=clock)
    verifier.verify(token)
    clock.advance(299.0)
    assert verifier.verify(token).from_cache is True
    clock.advance(1.0)
    assert verifier.verify(token).from_cache is False  # re-verified, cached again
    assert verifier.verify(token).from_cache is True


def test_cache_never_outlives_the_tokens_exp(ring: Keyring, clock: VirtualClock) -> None:
    token = TokenIssuer(ring, clock=clock).issue("ada", lifetime=60.0)
    verifier = VersionedTokenVerifier(ring, cache_ttl=300.0, clock=clock)
    verifier.verify(token)
    clock.advance(59.9)
    assert verifier.verify(token).from_cache is True
    clock.advance(0.1)
    assert rejected(verifier, token).reason == "expired"


def test_cache_never_outlives_a_scheduled_retirement(ring: Keyring, clock: VirtualClock) -> None:
    ring.add("v2", SECRET_2)
    ring.retire("v2", after=100.0)
    token = sign_jwt("v2", SECRET_2, claims_now())
    verifier = VersionedTokenVerifier(ring, cache_ttl=300.0, clock=clock)
    assert verifier.verify(token).key_version == "v2"
    clock.advance(99.0)
    assert verifier.verify(token).from_cache is True
    clock.advance(1.0)
    err = rejected(verifier, token)
    assert (err.reason, err.key_version) == ("retired_key", "v2")


def test_a_keyring_change_makes_cached_tokens_reverify(ring: Keyring, clock: VirtualClock) -> None:
    ring.add("v2", SECRET_2, state=KeyState.ACTIVE)
    old = sign_jwt("v1", SECRET_1, claims_now())
    new = sign_jwt("v2", SECRET_2, claims_now())
    verifier = VersionedTokenVerifier(ring, clock=clock)
    verifier.verify(old)
    verifier.verify(new)
    ring.retire("v1")  # at once: the cache must not keep serving v1
    assert rejected(verifier, old).reason == "retired_key"
    assert verifier.verify(new).from_cache is False
    assert verifier.verify(new).from_cache is True


def test_no_cache_when_ttl_is_zero(ring: Keyring, clock: VirtualClock) -> None:
    token = TokenIssuer(ring, clock=clock).issue("ada")
    verifier = VersionedTokenVerifier(ring, cache_ttl=0, clock=clock)
    assert verifier.verify(token).from_cache is False
    assert verifier.verify(token).from_cache is False
    assert verifier.cached_tokens == 0


def test_cache_is_bounded_and_drops_the_oldest(ring: Keyring, clock: VirtualClock) -> None:
    issuer = TokenIssuer(ring, clock=clock)
    verifier = VersionedTokenVerifier(ring, cache_size=3, clock=clock)
    tokens = [issuer.issue(f"user{i}") for i in range(5)]
    for token in tokens:
        verifier.verify(token)
    assert verifier.cached_tokens == 3
    assert verifier.verify(tokens[4]).from_cache is True
    assert verifier.verify(tokens[0]).from_cache is False
    verifier.clear_cache()
    assert verifier.cached_tokens == 0


def test_tokens_without_exp_are_cached_for_the_ttl_only(ring: Keyring, clock: VirtualClock) -> None:
    token = sign_jwt("v1", SECRET_1, {"sub": "ada"})
    verifier = VersionedTokenVerifier(ring, require=(), cache_ttl=10.0, clock=clock)
    verified = verifier.verify(token)
    assert verified.expires_at is None
    clock.advance(9.0)
    assert verifier.verify(token).from_cache is True
    clock.advance(1.0)
    assert verifier.verify(token).from_cache is False


# -- revocation -----------------------------------------------------------------------------


def test_revoking_a_cached_token_rejects_it_at_once(ring: Keyring, clock: VirtualClock) -> None:
    issuer = TokenIssuer(ring, clock=clock)
    token, other = issuer.issue("ada"), issuer.issue("bob")
    verifier = VersionedTokenVerifier(ring, clock=clock)
    verifier.verify(token)
    verifier.verify(other)
    verifier.revoke(token)
    err = rejected(verifier, token)
    assert isinstance(err, TokenRevokedError)
    assert err.reason == "revoked"
    assert verifier.verify(other).from_cache is True  # only that token went


def test_revoking_a_jti_rejects_every_token_carrying_it(ring: Keyring, clock: VirtualClock) -> None:
    token = sign_jwt("v1", SECRET_1, claims_now(jti="session-42"))
    twin = sign_jwt("v1", SECRET_1, claims_now(jti="session-42", extra=1))
    verifier = VersionedTokenVerifier(ring, clock=clock)
    verifier.verify(token)
    verifier.revoke("session-42")
    assert rejected(verifier, token).reason == "revoked"
    assert rejected(verifier, twin).reason == "revoked"


def test_revoking_an_uncached_token_revokes_its_jti_too(ring: Keyring, clock: VirtualClock) -> None:
    token = sign_jwt("v1", SECRET_1, claims_now(jti="j1"))
    twin = sign_jwt("v1", SECRET_1, claims_now(jti="j1", n=2))
    verifier = VersionedTokenVerifier(ring, clock=clock)
    verifier.revoke(token)
    assert rejected(verifier, token).reason == "revoked"
    assert rejected(verifier, twin).reason == "revoked"


def test_revocations_are_forgotten_once_they_no_longer_matter(
    ring: Keyring, clock: VirtualClock
) -> None:
    verifier = VersionedTokenVerifier(ring, clock=clock)
    token = sign_jwt("v1", SECRET_1, claims_now(jti="j1"))
    verifier.revoke(token)  # forgotten at the token's exp
    verifier.revoke("jti-for-a-while", until=START + 10)
    verifier.revoke("jti-for-good")
    verifier.revoke("not.a.token")
    assert set(verifier._revoked) == {
        signed_part(token),  # revoked however its signature is spelt
        "j1",
        "jti-for-a-while",
        "jti-for-good",
        "not.a.token",
    }
    clock.advance(601.0)
    verifier.revoke("another")  # revoking prunes what has expired
    assert set(verifier._revoked) == {"jti-for-good", "not.a.token", "another"}


def test_revoke_checks_its_arguments(ring: Keyring) -> None:
    verifier = VersionedTokenVerifier(ring)
    with pytest.raises(ConfigurationError) as info:
        verifier.revoke("")
    assert info.value.parameter == "token_or_jti"
    with pytest.raises(ConfigurationError) as info:
        verifier.revoke("x", until=-5.0)
    assert info.value.parameter == "until"


def test_revoke_copes_with_absurd_exp_values(ring: Keyring) -> None:
    verifier = VersionedTokenVerifier(ring)
    token = sign_jwt("v1", SECRET_1, {"exp": 10**400})
    verifier.revoke(token)
    assert verifier._revoked[signed_part(token)] is None


# -- the verifier: what fails, and why -------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "malformed"),
        (42, "malformed"),
        (["v1.a.b"], "malformed"),
        ({"token": 1}, "malformed"),
        (object(), "malformed"),
        ("", "malformed"),
        ("v1", "malformed"),
        ("v1.abc", "malformed"),
        ("v1.abc.def.ghi", "malformed"),
        (".e30.AAAA", "malformed"),
        (f"{V1}.e30.A", "malformed"),  # impossible base64 length
        (f"{V1}.e30.AB", "malformed"),  # non-zero trailing bits: not canonical
        (f"{V1}.e3=.AAAA", "malformed"),
        (f"{V1}.e30.AA AA", "malformed"),
        (f"{V1}.é30.AAAA", "malformed"),
        (V1.encode() + b".\xff.AAAA", "malformed"),
        ("v1.e30.AAAA", "malformed"),  # not a JWT header
        ("eyJhbGciOiJIUzI1NiIsImtpZCI6InY5In0.e30.AAAA", "unknown_key"),
        ("x" * 8193, "too_large"),
        (b"x" * 8193, "too_large"),
        ("eyJhbGciOiJub25lIn0.e30.", "algorithm_not_allowed"),
    ],
)
def test_rejections_and_their_reasons(ring: Keyring, token: object, reason: str) -> None:
    err = rejected(VersionedTokenVerifier(ring), token)
    assert err.reason == reason
    assert err.reason in type(err).reasons


def test_a_str_subclass_is_treated_as_a_plain_str(ring: Keyring, clock: VirtualClock) -> None:
    class Sneaky(str):
        __slots__ = ()

        def __hash__(self) -> int:
            raise RuntimeError("boom")

    token = TokenIssuer(ring, clock=clock).issue("ada")
    verifier = VersionedTokenVerifier(ring, clock=clock)
    assert verifier.verify(Sneaky(token)).subject == "ada"


def test_max_token_size_is_configurable(ring: Keyring, clock: VirtualClock) -> None:
    token = TokenIssuer(ring, clock=clock).issue("ada")
    verifier = VersionedTokenVerifier(ring, max_token_size=len(token) - 1, clock=clock)
    err = rejected(verifier, token)
    assert isinstance(err, MalformedTokenError)
    assert err.reason == "too_large"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'{"sub": "a", "sub": "b", "exp": 1}', "malformed"),
        (b'{"exp": NaN}', "malformed"),
        (b'{"exp": Infinity}', "malformed"),
        (b"\xff\xfe", "malformed"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed"),
        (b'{"exp": 1' + b"0" * 5000 + b"}", "malformed"),
    ],
)
def test_unreadable_claims_are_malformed(ring: Keyring, payload: bytes, reason: str) -> None:
    verifier = VersionedTokenVerifier(ring, max_token_size=1_000_000)
    err = rejected(verifier, sign_jwt("v1", SECRET_1, payload))
    assert err.reason == reason
    assert err.key_version == "v1"


def test_a_tampered_token_has_a_bad_signature(ring: Keyring, clock: VirtualClock) -> None:
    token = sign_jwt("v1", SECRET_1, claims_now())
    version, _, signature = token.split(".")
    forged = f"{version}.{b64(json.dumps(claims_now(sub='root')).encode())}.{signature}"
    verifier = VersionedTokenVerifier(ring, clock=clock)
    err = rejected(verifier, forged)
    assert (type(err), err.reason, err.key_version) == (TokenSignatureError, "bad_signature", "v1")
    assert rejected(verifier, sign_jwt("v1", SECRET_2, claims_now())).reason == "bad_signature"


def test_unknown_and_retired_versions(ring: Keyring, clock: VirtualClock) -> None:
    ring.add("v0", SECRET_2, state=KeyState.RETIRED)
    verifier = VersionedTokenVerifier(ring, clock=clock)
    err = rejected(verifier, sign_jwt("v9", SECRET_1, claims_now()))
    assert (type(err), err.reason, err.key_version) == (TokenKeyError, "unknown_key", "v9")
    err = rejected(verifier, sign_jwt("v0", SECRET_2, claims_now()))
    assert (err.reason, err.key_version) == ("retired_key", "v0")
    assert "retired" in str(err)


def test_a_verifier_restricted_to_other_algorithms_rejects_compact_tokens(
    ring: Keyring, clock: VirtualClock
) -> None:
    verifier = VersionedTokenVerifier(ring, algorithms=["HS512"], clock=clock)
    err = rejected(verifier, sign_jwt("v1", SECRET_1, claims_now()))
    assert isinstance(err, TokenAlgorithmError)
    assert err.reason == "algorithm_not_allowed"


def test_a_compact_token_cannot_use_a_key_pinned_to_another_algorithm(clock: VirtualClock) -> None:
    ring = Keyring(clock=clock)
    ring.add("v5", b"k" * 64, algorithm="HS512")
    verifier = VersionedTokenVerifier(ring, clock=clock)
    err = rejected(verifier, sign_jwt("v5", b"k" * 64, claims_now()))
    assert err.reason == "algorithm_not_allowed"


def test_expiry_and_not_before_with_leeway(ring: Keyring, clock: VirtualClock) -> None:
    now = int(START)
    strict = VersionedTokenVerifier(ring, clock=clock, cache_ttl=0)
    lenient = VersionedTokenVerifier(ring, leeway=30.0, clock=clock, cache_ttl=0)
    expired = sign_jwt("v1", SECRET_1, {"exp": now - 10})
    assert isinstance(rejected(strict, expired), TokenExpiredError)
    assert lenient.verify(expired).expires_at == now - 10
    assert rejected(lenient, sign_jwt("v1", SECRET_1, {"exp": now - 30})).reason == "expired"
    assert rejected(strict, sign_jwt("v1", SECRET_1, {"exp": now})).reason == "expired"
    early = sign_jwt("v1", SECRET_1, {"exp": now + 100, "nbf": now + 10})
    err = rejected(strict, early)
    assert isinstance(err, TokenNotYetValidError)
    assert err.reason == "not_yet_valid"
    assert lenient.verify(early).subject is None
    future_iat = sign_jwt("v1", SECRET_1, {"exp": now + 100, "iat": now + 60})
    assert rejected(lenient, future_iat).reason == "not_yet_valid"
    clock.advance(10.0)
    assert strict.verify(early).claims["nbf"] == now + 10


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "a"}, "missing_claim"),  # no exp, and exp is required by default
        ({"exp": "soon"}, "invalid_claim"),
        ({"exp": True}, "invalid_claim"),
        ({"exp": 10**400}, "invalid_claim"),
        ({"exp": 2e9, "nbf": [1]}, "invalid_claim"),
        ({"exp": 2e9, "sub": 7}, "invalid_claim"),
        ({"exp": 2e9, "jti": ["x"]}, "invalid_claim"),
        ({"exp": 2e9, "iss": {"x": 1}}, "invalid_claim"),
        ({"exp": 2e9, "aud": "api"}, "audience"),  # names an audience; none configured
        ({"exp": 2e9, "aud": 5}, "invalid_claim"),
        ({"exp": 2e9, "aud": []}, "invalid_claim"),
        ({"exp": 2e9, "aud": ["api", 5]}, "invalid_claim"),
        ({"exp": None}, "missing_claim"),
    ],
)
def test_claim_types_are_checked(ring: Keyring, claims: dict[str, Any], reason: str) -> None:
    err = rejected(VersionedTokenVerifier(ring), sign_jwt("v1", SECRET_1, claims))
    assert err.reason == reason
    assert isinstance(err, TokenClaimError | TokenExpiredError)


def test_issuer_and_audience(ring: Keyring, clock: VirtualClock) -> None:
    verifier = VersionedTokenVerifier(
        ring, issuer=["idp-a", "idp-b"], audience="api", require=("exp", "sub"), clock=clock
    )

    def reason(**claims: Any) -> str:
        return rejected(verifier, sign_jwt("v1", SECRET_1, claims_now(**claims))).reason

    good = sign_jwt("v1", SECRET_1, claims_now(iss="idp-b", aud=["web", "api"]))
    assert verifier.verify(good).claims["iss"] == "idp-b"
    assert reason(iss="evil", aud="api") == "issuer"
    assert reason(aud="api") == "missing_claim"
    assert reason(iss="idp-a") == "missing_claim"
    assert reason(iss="idp-a", aud="web") == "audience"
    assert reason(iss="idp-a", aud="api", sub=None) == "missing_claim"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"keys": "ring"}, "keys"),
        ({"keys": None}, "keys"),
        ({"require": "exp"}, "require"),
        ({"require": ["exp", ""]}, "require"),
        ({"leeway": -1}, "leeway"),
        ({"max_token_size": 8}, "max_token_size"),
        ({"cache_ttl": -1}, "cache_ttl"),
        ({"cache_size": 0}, "cache_size"),
        ({"algorithms": "HS256"}, "algorithms"),
        ({"algorithms": ["none"]}, "algorithms"),
        ({"issuer": ""}, "issuer"),
        ({"audience": []}, "audience"),
        ({"validator_timeout": 0}, "validator_timeout"),
        ({"validator_breaker": "breaker"}, "validator_breaker"),
    ],
)
def test_verifier_rejects_bad_parameters(
    ring: Keyring, kwargs: dict[str, Any], parameter: str
) -> None:
    arguments: dict[str, Any] = {"keys": ring, **kwargs}
    keys = arguments.pop("keys")
    with pytest.raises(ConfigurationError) as info:
        VersionedTokenVerifier(keys, **arguments)
    assert info.value.parameter == parameter


class BrokenKeys:
    """A KeySource with a bug: nothing but TokenRejectedError may escape anyway."""

    generation = 0

    def find(self, version: str) -> KeyVersion | None:
        raise RuntimeError("bug")

    def wants_fetch(self, version: str, found: KeyVersion | None) -> bool:
        return False

    async def fetch(self, version: str) -> KeyVersion | None:
        raise RuntimeError("bug")


@pytest.mark.anyio
async def test_a_bug_in_a_key_source_is_still_a_token_rejection() -> None:
    verifier = VersionedTokenVerifier(BrokenKeys())
    token = sign_jwt("v1", SECRET_1, claims_now())
    with pytest.raises(MalformedTokenError) as info:
        await verifier.averify(token)
    assert info.value.key_version == "v1"
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(MalformedTokenError):
        verifier.verify(token)


# -- rotation during a rolling deploy ---------------------------------------------------------


class Pod:
    """One instance of a service: its own keyring, issuer and verifier."""

    def __init__(self, name: str, clock: VirtualClock, lifetime: float) -> None:
        self.name = name
        self.ring = Keyring(clock=clock)
        self.ring.add("v1", SECRET_1, state=KeyState.ACTIVE)
        self.issuer = TokenIssuer(self.ring, lifetime=lifetime, clock=clock)
        self.verifier = VersionedTokenVerifier(self.ring, clock=clock)

    def accepts(self, token: str) -> bool | str:
        try:
            self.verifier.verify(token)
        except TokenRejectedError as exc:
            return exc.reason
        return True

    # the steps of the rotation, as each pod applies them when it is redeployed
    def add_v2(self) -> None:
        self.ring.add("v2", SECRET_2)

    def activate_v2(self) -> None:
        self.ring.activate("v2")

    def retire_v1(self) -> None:
        self.ring.retire("v1")


def test_rotation_sequence_on_one_instance(clock: VirtualClock) -> None:
    pod = Pod("a", clock, lifetime=600.0)
    before = pod.issuer.issue("ada")
    pod.add_v2()
    assert pod.ring.state_of("v2") is KeyState.ACCEPTED
    assert header_of(pod.issuer.issue("ada"))["kid"] == "v1"  # accepted, not yet issued
    assert pod.accepts(before) is True
    pod.activate_v2()
    during_v1 = before
    during_v2 = pod.issuer.issue("ada")
    assert header_of(during_v2)["kid"] == "v2"
    assert pod.accepts(during_v1) is True
    assert pod.accepts(during_v2) is True
    clock.advance(600.0)  # the longest token lifetime
    assert pod.accepts(during_v1) == "expired"  # every v1 token has expired...
    pod.retire_v1()
    assert pod.accepts(during_v1) == "retired_key"
    after = pod.issuer.issue("ada")
    assert pod.accepts(after) is True
    assert pod.accepts(sign_jwt("v1", SECRET_1, {"exp": int(START) + 10_000})) == (
        "retired_key"  # ...and v1 is refused from now on
    )


def test_two_pods_at_different_steps_accept_each_others_tokens(clock: VirtualClock) -> None:
    """Every pair of adjacent steps of the rotation, as two pods of a rolling deploy."""
    steps = [lambda pod: None, Pod.add_v2, Pod.activate_v2, Pod.retire_v1]
    for behind_at in range(len(steps) - 1):
        clock = VirtualClock()
        behind, ahead = Pod("behind", clock, 600.0), Pod("ahead", clock, 600.0)
        for step in steps[: behind_at + 1]:
            step(behind)
            step(ahead)
            if step is Pod.activate_v2:
                clock.advance(600.0)  # retire only after the longest lifetime
        steps[behind_at + 1](ahead)  # the new version reaches one pod first
        from_behind, from_ahead = behind.issuer.issue("ada"), ahead.issuer.issue("bob")
        assert behind.accepts(from_ahead) is True, (behind_at, behind.ring, ahead.ring)
        assert ahead.accepts(from_behind) is True, (behind_at, behind.ring, ahead.ring)
        assert behind.accepts(from_behind) is True
        assert ahead.accepts(from_ahead) is True


def test_activating_before_every_pod_accepts_the_new_version_breaks_logins(
    clock: VirtualClock,
) -> None:
    """Why step 1 must be rolled out everywhere before step 2 starts anywhere."""
    behind, ahead = Pod("behind", clock, 600.0), Pod("ahead", clock, 600.0)
    ahead.add_v2()
    ahead.activate_v2()  # skipped the rollout of step 1 to `behind`
    token = ahead.issuer.issue("ada")
    assert behind.accepts(token) == "unknown_key"


def test_retiring_before_the_longest_lifetime_rejects_live_tokens(clock: VirtualClock) -> None:
    pod = Pod("a", clock, lifetime=600.0)
    live = pod.issuer.issue("ada")
    pod.add_v2()
    pod.activate_v2()
    clock.advance(60.0)  # far less than the lifetime
    pod.retire_v1()
    assert pod.accepts(live) == "retired_key"


def test_scheduled_retirement_after_the_lifetime(clock: VirtualClock) -> None:
    pod = Pod("a", clock, lifetime=600.0)
    live = pod.issuer.issue("ada")
    pod.add_v2()
    pod.activate_v2()
    pod.ring.retire("v1", after=pod.issuer.lifetime)
    # the last v1 token expires no later than v1 retires: nothing valid is refused
    expires_at = pod.verifier.verify(live).expires_at
    assert expires_at is not None
    assert expires_at <= pod.ring.find("v1").retire_at  # type: ignore[operator,union-attr]
    clock.advance(599.0)
    assert pod.accepts(live) is True
    clock.advance(1.0)
    assert pod.ring.state_of("v1") is KeyState.RETIRED
    assert pod.accepts(live) == "retired_key"


# -- without PyJWT ----------------------------------------------------------------------------


@pytest.fixture
def without_pyjwt(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make `import jwt` fail, as on an install without the 'jwt' extra."""
    for name in list(sys.modules):
        if name == "jwt" or name.startswith("jwt."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "jwt", None)
    _algorithms._load.cache_clear()
    _algorithms._hmac_check.cache_clear()
    yield
    _algorithms._load.cache_clear()
    _algorithms._hmac_check.cache_clear()


@pytest.mark.usefixtures("without_pyjwt")
def test_hs256_jwts_are_issued_and_verified_without_pyjwt(clock: VirtualClock) -> None:
    ring = Keyring(clock=clock)
    ring.add("v1", SECRET_1, state=KeyState.ACTIVE)
    verifier = VersionedTokenVerifier(ring, clock=clock)
    assert verifier.verify(TokenIssuer(ring, clock=clock).issue("ada")).subject == "ada"
    header = b64(b'{"alg":"HS256","kid":"v1","typ":"JWT"}')
    payload = b64(json.dumps(claims_now()).encode())
    signature = hmac.new(SECRET_1, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert verifier.verify(f"{header}.{payload}.{b64(signature)}").kind == "jwt"
    with pytest.raises(ConfigurationError, match=r"resilience-patterns\[jwt\]"):
        ring.add("r1", b"-----BEGIN PUBLIC KEY-----", algorithm="RS256")

    async def fetch() -> dict[str, Any]:
        return {"keys": []}

    with pytest.raises(ConfigurationError, match="PyJWT"):
        JWKSKeySource(fetch=fetch)


# -- the runnable example ----------------------------------------------------------------------


def test_the_rolling_deploy_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(ROOT / "examples" / "tokens" / "rolling_deploy.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "retired_key" in out
    assert "unknown_key" in out
    assert "REJECTED" not in out.split("The rotation, step by step")[1].split("Shortcuts")[0]


def test_a_token_within_the_leeway_past_exp_is_accepted_but_not_cached(
    ring: Keyring, clock: VirtualClock
) -> None:
    verifier = VersionedTokenVerifier(ring, leeway=30.0, clock=clock)
    token = sign_jwt("v1", SECRET_1, {"exp": int(START) - 5})
    assert verifier.verify(token).from_cache is False
    assert verifier.verify(token).from_cache is False
    assert verifier.cached_tokens == 0


def test_revoking_a_token_with_a_strange_exp_keeps_it_for_good(ring: Keyring) -> None:
    verifier = VersionedTokenVerifier(ring)
    token = sign_jwt("v1", SECRET_1, {"exp": "tomorrow", "jti": 7})
    verifier.revoke(token)
    assert verifier._revoked == {signed_part(token): None}


class FlakyKeys:
    """A KeySource that wants I/O; `find` fails from its second call on."""

    generation = 0

    def __init__(self, fetch_error: Exception | None = None) -> None:
        self.finds = 0
        self.fetch_error = fetch_error

    def find(self, version: str) -> KeyVersion | None:
        self.finds += 1
        if self.finds > 1:
            raise RuntimeError("bug")
        return None

    def wants_fetch(self, version: str, found: KeyVersion | None) -> bool:
        return True

    async def fetch(self, version: str) -> KeyVersion | None:
        if self.fetch_error is not None:
            raise self.fetch_error
        return None


@pytest.mark.anyio
async def test_failures_while_fetching_keys_fail_closed() -> None:
    token = sign_jwt("v1", SECRET_1, claims_now())
    with pytest.raises(ValidatorUnavailableError) as info:
        VersionedTokenVerifier(FlakyKeys()).verify(token)
    assert info.value.reason == "keys_unavailable"
    verifier = VersionedTokenVerifier(FlakyKeys(fetch_error=OSError("down")))
    with pytest.raises(ValidatorUnavailableError) as info:
        await verifier.averify(token)
    assert (info.value.reason, info.value.key_version) == ("keys_unavailable", "v1")
    assert "OSError" in str(info.value)
    verifier = VersionedTokenVerifier(FlakyKeys(fetch_error=TokenKeyError("no", key_version="k")))
    with pytest.raises(TokenKeyError) as key_info:
        await verifier.averify(token)
    assert key_info.value.key_version == "k"  # a version already set is kept
