"""JWTs issued by PyJWT (HS256, RS256, ES256, EdDSA), algorithm confusion, and JWKS keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

jwt = pytest.importorskip("jwt", reason="the 'jwt' extra (PyJWT with cryptography) is absent")
pytest.importorskip("cryptography", reason="the 'jwt' extra needs cryptography")

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm  # noqa: E402

from resilience_kit import ConfigurationError  # noqa: E402
from resilience_kit.security import (  # noqa: E402
    JWKSKeySource,
    Keyring,
    KeyState,
    MalformedTokenError,
    TokenAlgorithmError,
    TokenIssuer,
    TokenKeyError,
    TokenRejectedError,
    ValidatorUnavailableError,
    VersionedTokenVerifier,
    _algorithms,
)
from resilience_kit.security._jwks import _opener  # noqa: E402
from resilience_kit.testing import VirtualClock  # noqa: E402

START = 1_767_225_600
HS_SECRET = b"hs256-secret-0123456789abcdefghij"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pyjwt_verifier(*args: Any, **kwargs: Any) -> VersionedTokenVerifier:
    """A verifier for PyJWT's tokens: PyJWT leaves one ECDSA signature in two high-S."""
    kwargs.setdefault("allow_high_s", True)
    return VersionedTokenVerifier(*args, **kwargs)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "ada", "iat": START, "exp": START + 600, **extra}


def forge(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """A JWT with any header; ``sign`` turns the signing input into a signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def keys(rsa_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    """Private (signing) keys per algorithm, generated once per test session."""
    return {
        "HS256": HS_SECRET,
        "RS256": rsa_key,
        "PS256": rsa_key,
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


def public(key: Any) -> Any:
    return key if isinstance(key, bytes) else key.public_key()


def pem(key: Any) -> bytes:
    return public(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def ring(clock: VirtualClock, keys: dict[str, Any]) -> Keyring:
    """One verify-only version per algorithm, named after it in lower case."""
    keyring = Keyring(clock=clock)
    for algorithm, key in keys.items():
        keyring.add(algorithm.lower(), public(key), algorithm=algorithm)
    return keyring


FOUR = ["HS256", "RS256", "ES256", "EdDSA"]
ALL = [*FOUR, "PS256", "ES384"]


# -- interoperability with PyJWT ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL)
def test_pyjwt_issued_tokens_verify(
    ring: Keyring, clock: VirtualClock, keys: dict[str, Any], algorithm: str
) -> None:
    token = jwt.encode(
        claims(role="admin"),
        keys[algorithm],
        algorithm=algorithm,
        headers={"kid": algorithm.lower()},
    )
    verifier = pyjwt_verifier(ring, clock=clock)
    verified = verifier.verify(token)
    assert dict(verified.claims) == claims(role="admin")
    assert (verified.kind, verified.key_version, verified.algorithm) == (
        "jwt",
        algorithm.lower(),
        algorithm,
    )
    assert verifier.verify(token).from_cache is True


@pytest.mark.anyio
@pytest.mark.parametrize("algorithm", FOUR)
async def test_pyjwt_issued_tokens_verify_async(
    ring: Keyring, clock: VirtualClock, keys: dict[str, Any], algorithm: str
) -> None:
    token = jwt.encode(
        claims(), keys[algorithm], algorithm=algorithm, headers={"kid": algorithm.lower()}
    )
    verified = await pyjwt_verifier(ring, clock=clock).averify(token)
    assert verified.subject == "ada"


@pytest.mark.parametrize("algorithm", ALL)
def test_our_jwts_decode_with_pyjwt(keys: dict[str, Any], algorithm: str) -> None:
    ring = Keyring()
    ring.add("k1", keys[algorithm], algorithm=algorithm, state=KeyState.ACTIVE)
    issuer = TokenIssuer(ring, issuer="idp", audience="api", lifetime=60.0)
    token = issuer.issue("ada", claims={"role": "admin"})
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    decoded = jwt.decode(
        token, public(keys[algorithm]), algorithms=[algorithm], audience="api", issuer="idp"
    )
    assert decoded["sub"] == "ada"
    assert decoded["role"] == "admin"
    verifier = pyjwt_verifier(ring, issuer="idp", audience="api")
    assert verifier.verify(token).claims["role"] == "admin"


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_a_tampered_jwt_fails(
    ring: Keyring, clock: VirtualClock, keys: dict[str, Any], algorithm: str
) -> None:
    token = jwt.encode(
        claims(), keys[algorithm], algorithm=algorithm, headers={"kid": algorithm.lower()}
    )
    header, _, signature = token.split(".")
    forged = f"{header}.{b64(json.dumps(claims(sub='root')).encode())}.{signature}"
    with pytest.raises(TokenRejectedError) as info:
        pyjwt_verifier(ring, clock=clock).verify(forged)
    assert info.value.reason == "bad_signature"
    assert info.value.key_version == algorithm.lower()


# -- alg none and algorithm confusion -------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_alg_none_is_never_accepted(ring: Keyring, clock: VirtualClock, alg: str) -> None:
    for kid in ("hs256", "rs256", "unknown"):
        token = forge({"alg": alg, "kid": kid, "typ": "JWT"}, claims())
        with pytest.raises(TokenAlgorithmError) as info:
            pyjwt_verifier(ring, clock=clock).verify(token)
        assert info.value.reason == "algorithm_not_allowed"
    pyjwt_none = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rs256"})
    with pytest.raises(TokenAlgorithmError):
        pyjwt_verifier(ring, clock=clock).verify(pyjwt_none)


def test_the_public_key_used_as_an_hmac_secret_is_refused(
    ring: Keyring, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    """The classic attack: sign HS256 with the RS256 public key, which everyone knows."""
    verifier = pyjwt_verifier(ring, clock=clock)
    for algorithm in ("RS256", "ES256", "EdDSA"):
        public_pem = pem(keys[algorithm])
        token = forge(
            {"alg": "HS256", "kid": algorithm.lower()},
            claims(sub="root"),
            lambda data, secret=public_pem: hmac.new(secret, data, hashlib.sha256).digest(),
        )
        with pytest.raises(TokenAlgorithmError) as info:
            verifier.verify(token)
        assert "pinned to" in str(info.value)


def test_an_hmac_key_never_verifies_an_asymmetric_token(
    ring: Keyring, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    token = jwt.encode(claims(), keys["RS256"], algorithm="RS256", headers={"kid": "hs256"})
    with pytest.raises(TokenAlgorithmError):
        pyjwt_verifier(ring, clock=clock).verify(token)
    token = jwt.encode(claims(), keys["ES256"], algorithm="ES256", headers={"kid": "rs256"})
    with pytest.raises(TokenAlgorithmError):
        pyjwt_verifier(ring, clock=clock).verify(token)


@pytest.mark.parametrize(
    "encoding",
    [
        (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
    ],
)
def test_a_public_key_cannot_enter_the_keyring_as_an_hmac_secret(
    keys: dict[str, Any], encoding: Any
) -> None:
    material = public(keys["RS256"]).public_bytes(*encoding)
    with pytest.raises(ConfigurationError, match="algorithm-confusion") as info:
        Keyring().add("v1", material, algorithm="HS256")
    assert info.value.parameter == "key"


def test_a_verifier_can_narrow_the_algorithms(
    ring: Keyring, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    verifier = pyjwt_verifier(ring, algorithms=["ES256", "EdDSA"], clock=clock)
    ok = jwt.encode(claims(), keys["ES256"], algorithm="ES256", headers={"kid": "es256"})
    assert verifier.verify(ok).algorithm == "ES256"
    refused = jwt.encode(claims(), keys["RS256"], algorithm="RS256", headers={"kid": "rs256"})
    with pytest.raises(TokenAlgorithmError):
        verifier.verify(refused)


# -- keys and headers ----------------------------------------------------------------------------


def test_keys_as_pem_text_or_jwk(clock: VirtualClock, keys: dict[str, Any]) -> None:
    ring = Keyring(clock=clock)
    ring.add("pem", pem(keys["ES256"]).decode(), algorithm="ES256")
    private_pem = keys["EdDSA"].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ring.add("priv", private_pem, algorithm="EdDSA", state=KeyState.ACTIVE)
    ring.add("jwk", RSAAlgorithm.to_jwk(public(keys["RS256"]), as_dict=True), algorithm="RS256")
    verifier = pyjwt_verifier(ring, clock=clock)
    for kid, algorithm in (("pem", "ES256"), ("jwk", "RS256")):
        token = jwt.encode(claims(), keys[algorithm], algorithm=algorithm, headers={"kid": kid})
        assert verifier.verify(token).key_version == kid
    ours = TokenIssuer(ring, clock=clock).issue("ada")
    assert verifier.verify(ours).key_version == "priv"


def test_a_public_key_cannot_sign(clock: VirtualClock, keys: dict[str, Any]) -> None:
    ring = Keyring(clock=clock)
    ring.add("pub", public(keys["ES256"]), algorithm="ES256", state=KeyState.ACTIVE)
    assert ring.find("pub").signing_key is None  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="no private key"):
        TokenIssuer(ring, clock=clock).issue("ada")


@pytest.mark.parametrize(
    ("algorithm", "make_key", "match"),
    [
        ("RS256", lambda: rsa.generate_private_key(65537, 1024), "2048"),
        ("ES256", lambda: ec.generate_private_key(ec.SECP384R1()), "curve"),
        ("ES384", lambda: ec.generate_private_key(ec.SECP256R1()), "curve"),
        ("EdDSA", lambda: ec.generate_private_key(ec.SECP256R1()), "usable"),
        ("RS256", ed25519.Ed25519PrivateKey.generate, "usable"),
        ("RS256", lambda: b"not a pem", "usable"),
        ("ES256", lambda: {"kty": "EC", "crv": "P-256"}, "usable"),
    ],
)
def test_keys_that_do_not_fit_their_algorithm_are_refused(
    algorithm: str, make_key: Any, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        Keyring().add("k", make_key(), algorithm=algorithm)
    assert info.value.parameter == "key"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "ES256"}, "unknown_key"),  # names no key
        ({"alg": "ES256", "kid": 7}, "malformed"),
        ({"kid": "es256"}, "malformed"),
        ({"alg": 256, "kid": "es256"}, "malformed"),
        ({"alg": "ES256", "kid": "es256", "crit": ["exp"]}, "malformed"),
        ({"alg": "ES256", "kid": "nope"}, "unknown_key"),
        ({"alg": "ES512", "kid": "es256"}, "algorithm_not_allowed"),
        ({"alg": "HS1024", "kid": "es256"}, "algorithm_not_allowed"),
    ],
)
def test_header_problems(
    ring: Keyring, clock: VirtualClock, keys: dict[str, Any], header: dict[str, Any], reason: str
) -> None:
    algorithm = ECAlgorithm(ECAlgorithm.SHA256)
    token = forge(header, claims(), lambda data: algorithm.sign(data, keys["ES256"]))
    with pytest.raises(TokenRejectedError) as info:
        pyjwt_verifier(ring, clock=clock).verify(token)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "token",
    [
        "eyJhbGciOiJIUzI1NiJ9.e30",
        "eyJhbGciOiJIUzI1NiJ9.e30.sig.extra.more",  # a JWE has five segments
        "eyJ.e30.AAAA",
        "eyJbXQ.e30.AAAA",  # header is an array
        "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVzMjU2In0.!!.AAAA",
    ],
)
def test_malformed_jwts(ring: Keyring, token: str) -> None:
    with pytest.raises(MalformedTokenError):
        pyjwt_verifier(ring).verify(token)


# -- rotation across algorithms, two pods ---------------------------------------------------------


def test_rolling_rotation_from_rs256_to_eddsa(clock: VirtualClock, keys: dict[str, Any]) -> None:
    def pod() -> tuple[Keyring, TokenIssuer, VersionedTokenVerifier]:
        ring = Keyring(clock=clock)
        ring.add("2025", keys["RS256"], algorithm="RS256", state=KeyState.ACTIVE)
        return (
            ring,
            TokenIssuer(ring, lifetime=300.0, clock=clock),
            pyjwt_verifier(ring, clock=clock),
        )

    (ring_a, issue_a, verify_a), (ring_b, issue_b, verify_b) = pod(), pod()
    old = issue_a.issue("ada")
    for ring in (ring_a, ring_b):  # step 1 everywhere
        ring.add("2026", keys["EdDSA"], algorithm="EdDSA")
    ring_a.activate("2026")  # step 2 reaches pod A first
    new = issue_a.issue("bob")
    assert jwt.get_unverified_header(new)["alg"] == "EdDSA"
    assert verify_b.verify(new).key_version == "2026"
    assert verify_a.verify(issue_b.issue("eve")).key_version == "2025"
    ring_b.activate("2026")
    clock.advance(300.0)
    ring_a.retire("2025")  # step 4 reaches pod A first
    with pytest.raises(TokenKeyError) as info:
        verify_a.verify(old)
    assert info.value.reason == "retired_key"
    assert verify_b.verify(issue_a.issue("x")).algorithm == "EdDSA"


# -- JWKS -----------------------------------------------------------------------------------------


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    key = public(key)
    if isinstance(key, rsa.RSAPublicKey):
        document = RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        document = ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        document = OKPAlgorithm.to_jwk(key, as_dict=True)
    return {**document, "kid": kid, "use": "sig", **extra}


class FakeJWKS:
    """An async fetch callable standing in for a JWKS endpoint; counts its calls."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.calls = 0
        self.error: Exception | None = None
        self.gate: anyio.Event | None = None
        self.document: Any = None

    async def __call__(self) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        await anyio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        if self.document is not None:
            return self.document
        return {"keys": list(self.keys)}


@pytest.fixture
def endpoint(keys: dict[str, Any]) -> FakeJWKS:
    return FakeJWKS([jwk(keys["RS256"], "rsa-1"), jwk(keys["ES256"], "ec-1")])


def token_for(keys: dict[str, Any], algorithm: str, kid: str, **extra: Any) -> str:
    return jwt.encode(claims(**extra), keys[algorithm], algorithm=algorithm, headers={"kid": kid})


def source_for(endpoint: FakeJWKS, clock: VirtualClock, **kwargs: Any) -> JWKSKeySource:
    return JWKSKeySource(fetch=endpoint, clock=clock, **kwargs)


async def reason_of(verifier: VersionedTokenVerifier, token: str) -> str:
    try:
        await verifier.averify(token)
    except TokenRejectedError as exc:
        return exc.reason
    return "accepted"


@pytest.mark.anyio
async def test_jwks_keys_are_fetched_once_and_reused(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    source = source_for(endpoint, clock)
    verifier = pyjwt_verifier(source, clock=clock, cache_ttl=0)
    assert endpoint.calls == 0
    assert (await verifier.averify(token_for(keys, "RS256", "rsa-1"))).key_version == "rsa-1"
    known = token_for(keys, "ES256", "ec-1", exp=START + 10_000)
    assert (await verifier.averify(known)).key_version == "ec-1"
    assert (await verifier.averify(token_for(keys, "RS256", "rsa-1", n=2))).subject == "ada"
    assert endpoint.calls == 1
    assert source.versions == ("ec-1", "rsa-1")
    assert "rsa-1" in repr(source)


@pytest.mark.anyio
async def test_sync_verify_uses_only_the_keys_already_fetched(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    source = source_for(endpoint, clock)
    verifier = pyjwt_verifier(source, clock=clock)
    token = token_for(keys, "RS256", "rsa-1")
    with pytest.raises(TokenKeyError):
        verifier.verify(token)  # no I/O on the sync path
    assert endpoint.calls == 0
    assert await source.refresh() is True
    assert verifier.verify(token).key_version == "rsa-1"


@pytest.mark.anyio
async def test_concurrent_misses_share_one_fetch(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    source = source_for(endpoint, clock)
    verifier = pyjwt_verifier(source, clock=clock)
    endpoint.gate = anyio.Event()
    results: list[str] = []

    async def one(i: int) -> None:
        results.append(await reason_of(verifier, token_for(keys, "ES256", "ec-1", n=i)))

    async with anyio.create_task_group() as group:
        for i in range(50):
            group.start_soon(one, i)
        refresher_done = anyio.Event()

        async def explicit_refresh() -> None:
            assert await source.refresh() is True
            refresher_done.set()

        group.start_soon(explicit_refresh)
        await anyio.wait_all_tasks_blocked()
        endpoint.gate.set()
    assert results == ["accepted"] * 50
    assert endpoint.calls == 1
    assert refresher_done.is_set()


@pytest.mark.anyio
async def test_random_kids_cause_at_most_one_fetch_per_cooldown(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    """The amplification attack: the attacker picks the kid of every token."""
    source = source_for(endpoint, clock, refetch_cooldown=30.0, negative_ttl=60.0)
    verifier = pyjwt_verifier(source, clock=clock)

    def forged_token() -> str:  # the kid is looked up before any signature check
        return forge({"alg": "ES256", "kid": secrets.token_hex(8)}, claims(), lambda _: b"x" * 64)

    forged = [forged_token() for _ in range(1000)]
    reasons: list[str] = []

    async def attack(token: str) -> None:
        reasons.append(await reason_of(verifier, token))

    async with anyio.create_task_group() as group:  # 1,000 at once
        for token in forged:
            group.start_soon(attack, token)
    assert endpoint.calls == 1
    assert set(reasons) == {"unknown_key"}

    async with anyio.create_task_group() as group:  # again, still within the cooldown
        for token in forged:
            group.start_soon(attack, token)
    assert endpoint.calls == 1

    started = clock.monotonic()
    for token in [forged_token() for _ in range(1000)]:
        clock.advance(0.6)  # 1,000 more over ten virtual minutes, one at a time
        assert await reason_of(verifier, token) == "unknown_key"
    elapsed = clock.monotonic() - started
    assert endpoint.calls - 1 <= elapsed / 30.0 + 1
    assert endpoint.calls > 1  # new kids do get looked up, once per cooldown
    known = token_for(keys, "ES256", "ec-1", exp=START + 10_000)
    assert (await verifier.averify(known)).key_version == "ec-1"


@pytest.mark.anyio
async def test_an_unknown_kid_is_remembered_as_missing(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    source = source_for(endpoint, clock, refetch_cooldown=10.0, negative_ttl=100.0)
    verifier = pyjwt_verifier(source, clock=clock)
    stranger = token_for(keys, "ES256", "stranger")
    assert await reason_of(verifier, stranger) == "unknown_key"
    assert endpoint.calls == 1
    clock.advance(50.0)  # past the cooldown, within the negative TTL
    assert await reason_of(verifier, stranger) == "unknown_key"
    assert endpoint.calls == 1
    clock.advance(50.0)
    endpoint.keys.append(jwk(keys["ES256"], "stranger"))  # it is published at last
    assert await reason_of(verifier, stranger) == "accepted"
    assert endpoint.calls == 2


@pytest.mark.anyio
async def test_a_new_key_is_picked_up_after_the_cooldown(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    source = source_for(endpoint, clock, refetch_cooldown=30.0)
    verifier = pyjwt_verifier(source, clock=clock)
    assert await source.refresh()
    endpoint.keys.append(jwk(keys["EdDSA"], "ed-2"))
    token = token_for(keys, "EdDSA", "ed-2")
    assert await reason_of(verifier, token) == "unknown_key"  # within the cooldown
    assert endpoint.calls == 1
    clock.advance(30.0)
    assert await reason_of(verifier, token) == "accepted"
    assert endpoint.calls == 2


@pytest.mark.anyio
async def test_a_failed_refresh_keeps_the_last_good_keys(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any], caplog: Any
) -> None:
    source = source_for(endpoint, clock, refresh_interval=60.0, refetch_cooldown=10.0)
    verifier = pyjwt_verifier(source, clock=clock, cache_ttl=0)
    assert await source.refresh()
    endpoint.error = ConnectionError("idp is down")
    clock.advance(60.0)  # the key set is stale: the next verify refreshes it, and fails
    assert await reason_of(verifier, token_for(keys, "RS256", "rsa-1")) == "accepted"
    assert endpoint.calls == 2
    assert isinstance(source.last_error, ConnectionError)
    assert "keeping 2 last known good keys" in caplog.text
    newcomer = token_for(keys, "ES256", "ec-2")
    with pytest.raises(ValidatorUnavailableError) as info:
        await verifier.averify(newcomer)
    assert info.value.reason == "keys_unavailable"
    assert endpoint.calls == 2  # within the cooldown: no new attempt
    clock.advance(10.0)
    assert await reason_of(verifier, newcomer) == "keys_unavailable"
    assert endpoint.calls == 3
    endpoint.error = None
    endpoint.keys.append(jwk(keys["ES256"], "ec-2"))
    clock.advance(10.0)
    assert await reason_of(verifier, newcomer) == "accepted"
    assert source.last_error is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "document",
    [
        {"keys": []},
        {"keys": "nope"},
        [1, 2],
        b"not json",
        b"x" * 600_000,
        {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}]},
    ],
)
async def test_a_useless_document_is_a_failed_refresh(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any], document: Any
) -> None:
    source = source_for(endpoint, clock)
    verifier = pyjwt_verifier(source, clock=clock)
    assert await source.refresh()
    endpoint.document = document
    assert await source.refresh() is False
    assert source.versions == ("ec-1", "rsa-1")
    assert await reason_of(verifier, token_for(keys, "RS256", "rsa-1")) == "accepted"


@pytest.mark.anyio
async def test_a_first_fetch_that_fails_fails_closed(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    endpoint.error = OSError("connection refused")
    verifier = pyjwt_verifier(source_for(endpoint, clock, refetch_cooldown=5.0), clock=clock)
    token = token_for(keys, "RS256", "rsa-1")
    assert await reason_of(verifier, token) == "keys_unavailable"
    assert await reason_of(verifier, token) == "keys_unavailable"
    assert endpoint.calls == 1
    endpoint.error = None
    clock.advance(5.0)
    assert await reason_of(verifier, token) == "accepted"


@pytest.mark.anyio
async def test_a_hanging_endpoint_times_out(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    async def hanging() -> Any:
        await clock.asleep(3600.0)
        return await endpoint()

    source = JWKSKeySource(fetch=hanging, fetch_timeout=2.0, clock=clock)
    verifier = pyjwt_verifier(source, clock=clock)
    assert await reason_of(verifier, token_for(keys, "RS256", "rsa-1")) == "keys_unavailable"
    assert type(source.last_error).__name__ == "TimeoutExceededError"
    assert clock.monotonic() == pytest.approx(2.0)


@pytest.mark.anyio
async def test_a_key_that_leaves_the_set_is_retired(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    source = source_for(endpoint, clock, refresh_interval=100.0)
    verifier = pyjwt_verifier(source, clock=clock)
    token = token_for(keys, "ES256", "ec-1")
    await verifier.averify(token)
    assert (await verifier.averify(token)).from_cache is True
    generation = source.generation
    endpoint.keys = [k for k in endpoint.keys if k["kid"] != "ec-1"]
    clock.advance(100.0)
    assert await source.refresh()
    assert source.generation == generation + 1
    assert await reason_of(verifier, token) == "retired_key"  # the cache let go of it
    assert verifier.verify(token_for(keys, "RS256", "rsa-1")).key_version == "rsa-1"
    endpoint.keys.append(jwk(keys["ES256"], "ec-1"))  # it comes back
    assert await source.refresh()
    assert await reason_of(verifier, token) == "accepted"


@pytest.mark.anyio
async def test_an_unchanged_key_set_keeps_the_cache(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    source = source_for(endpoint, clock, refresh_interval=60.0)
    verifier = pyjwt_verifier(source, clock=clock)
    token = token_for(keys, "ES256", "ec-1")
    await verifier.averify(token)
    clock.advance(60.0)
    assert await source.refresh()
    assert (await verifier.averify(token)).from_cache is True


@pytest.mark.anyio
async def test_only_usable_signing_keys_are_taken(
    clock: VirtualClock, keys: dict[str, Any], caplog: Any
) -> None:
    endpoint = FakeJWKS(
        [
            jwk(keys["RS256"], "good"),
            {"kty": "oct", "k": b64(HS_SECRET), "kid": "shared-secret"},
            jwk(keys["ES256"], "for-encryption", use="enc"),
            {**jwk(keys["ES256"], "x"), "kid": None},
            jwk(keys["ES256"], "twice"),
            jwk(keys["EdDSA"], "twice"),
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            jwk(keys["ES384"], "p384"),
            "not a jwk",
        ]
    )
    source = JWKSKeySource(fetch=endpoint, algorithms=["RS256", "ES256"], clock=clock)
    assert await source.refresh()
    assert source.versions == ("good",)
    assert "ignoring symmetric key 'shared-secret'" in caplog.text
    assert "ignoring key 'broken'" in caplog.text


@pytest.mark.anyio
async def test_a_document_as_text_or_bytes(clock: VirtualClock, keys: dict[str, Any]) -> None:
    text = json.dumps({"keys": [jwk(keys["EdDSA"], "ed")]})
    for document in (text, text.encode()):
        endpoint = FakeJWKS([])
        endpoint.document = document
        source = JWKSKeySource(fetch=endpoint, clock=clock)
        assert await source.refresh()
        assert source.versions == ("ed",)


@pytest.mark.anyio
async def test_negative_cache_is_bounded(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any]
) -> None:
    source = source_for(endpoint, clock, refetch_cooldown=0.0, max_unknown_kids=3)
    verifier = pyjwt_verifier(source, clock=clock)
    for i in range(10):
        assert await reason_of(verifier, token_for(keys, "ES256", f"kid-{i}")) == "unknown_key"
    assert list(source._missing) == ["kid-7", "kid-8", "kid-9"]
    unbounded = source_for(endpoint, clock, refetch_cooldown=0.0, negative_ttl=0.0)
    verifier = pyjwt_verifier(unbounded, clock=clock)
    assert await reason_of(verifier, token_for(keys, "ES256", "kid-x")) == "unknown_key"
    assert unbounded._missing == {}


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({}, "url"),
        ({"url": "https://idp.example/jwks", "fetch": FakeJWKS([])}, "url"),
        ({"url": "http://idp.example/jwks"}, "url"),
        ({"url": "ftp://idp.example/jwks"}, "url"),
        ({"url": "https:///jwks"}, "url"),
        ({"url": 42}, "url"),
        ({"fetch": "not callable"}, "fetch"),
        ({"fetch": FakeJWKS([]), "refresh_interval": 0}, "refresh_interval"),
        ({"fetch": FakeJWKS([]), "refetch_cooldown": -1}, "refetch_cooldown"),
        ({"fetch": FakeJWKS([]), "negative_ttl": -1}, "negative_ttl"),
        ({"fetch": FakeJWKS([]), "fetch_timeout": 0}, "fetch_timeout"),
        ({"fetch": FakeJWKS([]), "max_document_size": 1}, "max_document_size"),
        ({"fetch": FakeJWKS([]), "max_unknown_kids": -1}, "max_unknown_kids"),
        ({"fetch": FakeJWKS([]), "algorithms": "RS256"}, "algorithms"),
        ({"fetch": FakeJWKS([]), "algorithms": ["none"]}, "algorithms"),
    ],
)
def test_jwks_source_rejects_bad_parameters(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        JWKSKeySource(**kwargs)
    assert info.value.parameter == parameter


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks",
        "http://localhost/jwks",
        "http://[::1]/jwks",
    ],
)
def test_https_or_loopback_urls_are_accepted(url: str) -> None:
    assert JWKSKeySource(url).fetches == 0


def test_redirects_never_downgrade_from_https() -> None:
    handler = next(
        h for h in _opener().handlers if isinstance(h, urllib.request.HTTPRedirectHandler)
    )
    secure = urllib.request.Request("https://idp.example/jwks")
    with pytest.raises(ValueError, match="refusing a redirect"):
        handler.redirect_request(secure, None, 302, "Found", {}, "http://evil.example/jwks")  # type: ignore[arg-type]
    again = handler.redirect_request(secure, None, 302, "Found", {}, "https://idp.example/v2")  # type: ignore[arg-type]
    assert again is not None
    assert again.full_url == "https://idp.example/v2"


# -- the default fetch: HTTP in a worker thread, against a loopback server -------------------------


class JWKSServer:
    """A real HTTP server on 127.0.0.1 serving a JWKS document, in a thread."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.body = json.dumps(document).encode()
        self.requests = 0
        self.gate: threading.Event | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.gate is not None:
                    server.gate.wait(timeout=10)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self) -> JWKSServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def jwks_server(keys: dict[str, Any]) -> Iterator[JWKSServer]:
    with JWKSServer({"keys": [jwk(keys["RS256"], "rsa-1")]}) as server:
        yield server


@pytest.mark.anyio
async def test_keys_from_a_real_http_endpoint(
    jwks_server: JWKSServer, keys: dict[str, Any]
) -> None:
    now = int(time.time())
    token = jwt.encode(
        {"sub": "ada", "exp": now + 60}, keys["RS256"], algorithm="RS256", headers={"kid": "rsa-1"}
    )
    verifier = pyjwt_verifier(JWKSKeySource(jwks_server.url))
    assert (await verifier.averify(token)).key_version == "rsa-1"
    assert jwks_server.requests == 1


@pytest.mark.anyio
async def test_the_http_fetch_does_not_block_the_event_loop(
    jwks_server: JWKSServer, keys: dict[str, Any]
) -> None:
    """The server answers only once the loop has shown it is still running."""
    jwks_server.gate = threading.Event()
    source = JWKSKeySource(jwks_server.url)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not jwks_server.requests:
            await anyio.sleep(0.001)
        ticks += 1
        jwks_server.gate.set()  # type: ignore[union-attr]

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        assert await source.refresh() is True
    assert ticks == 1
    assert source.versions == ("rsa-1",)


@pytest.mark.anyio
async def test_an_http_error_is_a_failed_fetch(keys: dict[str, Any]) -> None:
    with JWKSServer({"keys": []}) as server:
        server.body = b"x" * 2000
        source = JWKSKeySource(server.url, max_document_size=1000)
        assert await source.refresh() is False
        assert "over 1000 bytes" in str(source.last_error)


def test_pyjwt_without_cryptography_counts_as_absent() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jwt.algorithms, "has_crypto", False)
        _algorithms._load.cache_clear()
        assert _algorithms.pyjwt_available() is False
        with pytest.raises(ConfigurationError, match="needs the 'jwt' extra"):
            Keyring().add("r", b"x", algorithm="RS256")
    _algorithms._load.cache_clear()
    assert _algorithms.pyjwt_available() is True


@pytest.mark.anyio
async def test_fetch_called_directly(
    endpoint: FakeJWKS, clock: VirtualClock, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = source_for(endpoint, clock)
    assert await source.fetch("nope") is None  # fetched, and it is not there
    assert await source.fetch("other") is None  # within the cooldown: no fetch
    assert endpoint.calls == 1
    endpoint.gate = anyio.Event()
    known = source.find("rsa-1")
    async with anyio.create_task_group() as group:
        group.start_soon(source.refresh)
        await anyio.wait_all_tasks_blocked()
        assert await source.fetch("rsa-1") is known  # a known key does not wait
        endpoint.gate.set()
    assert endpoint.calls == 2
    monkeypatch.setattr("resilience_kit.security._jwks._MAX_REMEMBERED_REMOVALS", 1)
    endpoint.keys = [jwk(keys["ES256"], "ec-2")]
    assert await source.refresh()
    assert len(source._removed) == 1  # the removals remembered are bounded


def test_the_curve_is_checked_whatever_pyjwt_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ECAlgorithm, "_validate_curve", lambda self, key: None, raising=False)
    with pytest.raises(ConfigurationError, match="needs curve secp256r1, got secp384r1"):
        Keyring().add("k", ec.generate_private_key(ec.SECP384R1()), algorithm="ES256")
