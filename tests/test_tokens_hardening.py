"""The defects of issue 11, each from the public API: the verified-token cache, ECDSA
malleability, explicit typing, attacker-chosen kids, and a hanging JWKS endpoint."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience_kit import ConfigurationError
from resilience_kit.security import (
    JWKSKeySource,
    Keyring,
    KeyState,
    TokenIssuer,
    TokenRejectedError,
    VersionedTokenVerifier,
)
from resilience_kit.testing import VirtualClock

try:
    from cryptography.hazmat.primitives.asymmetric import ec as _ec

    _P256: Any = _ec.generate_private_key(_ec.SECP256R1())
except ImportError:  # pragma: no cover  (the 'jwt' extra is absent)
    _P256 = None

SECRET = b"hardening-secret-0123456789abcdef"
START = 1_767_225_600.0  # the VirtualClock's default wall time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class SteppedClock(VirtualClock):
    """A virtual clock whose wall time can jump (suspend/resume, an NTP step)."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0.0

    def time(self) -> float:
        return super().time() + self.step


def reason_of(verifier: VersionedTokenVerifier, token: str) -> str:
    try:
        verifier.verify(token)
    except TokenRejectedError as exc:
        return exc.reason
    return "accepted"


async def areason_of(verifier: VersionedTokenVerifier, token: str) -> str:
    try:
        await verifier.averify(token)
    except TokenRejectedError as exc:
        return exc.reason
    return "accepted"


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def ring(clock: SteppedClock) -> Keyring:
    keyring = Keyring(clock=clock)
    keyring.add("v1", SECRET, state=KeyState.ACTIVE)
    return keyring


class Gate:
    """A remote validator that answers only when let through; remembers being asked."""

    def __init__(self) -> None:
        self.asked = anyio.Event()
        self.open = anyio.Event()

    async def __call__(self, token: str) -> bool:
        self.asked.set()
        await self.open.wait()
        return True


# -- a revocation during a verification -------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("by", ["token", "jti"])
async def test_a_token_revoked_while_the_validator_is_asked_is_never_accepted_from_the_cache(
    ring: Keyring, clock: SteppedClock, by: str
) -> None:
    gate = Gate()
    verifier = VersionedTokenVerifier(ring, validator=gate, clock=clock)
    token = TokenIssuer(ring, clock=clock).issue("ada")
    jti = json.loads(unb64(token.split(".")[1]))["jti"]
    outcome: list[str] = []

    async def first() -> None:
        outcome.append(await areason_of(verifier, token))

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await gate.asked.wait()
        verifier.revoke(token if by == "token" else jti)
        gate.open.set()
    assert outcome == ["revoked"]  # the verification under way sees it too
    assert reason_of(verifier, token) == "revoked"
    assert await areason_of(verifier, token) == "revoked"
    assert verifier.cached_tokens == 0


@pytest.mark.anyio
async def test_a_token_revoked_during_the_first_jwks_fetch_is_never_accepted_from_the_cache(
    clock: SteppedClock,
) -> None:
    pytest.importorskip("jwt", reason="JWKS needs the 'jwt' extra")
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    from jwt.algorithms import OKPAlgorithm  # noqa: PLC0415

    private = ed25519.Ed25519PrivateKey.generate()
    signer = Keyring(clock=clock)
    signer.add("k1", private, algorithm="EdDSA", state=KeyState.ACTIVE)
    token = TokenIssuer(signer, clock=clock).issue("ada")
    asked, release = anyio.Event(), anyio.Event()

    async def fetch() -> dict[str, Any]:
        asked.set()
        await release.wait()
        return {"keys": [{**OKPAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "k1"}]}

    verifier = VersionedTokenVerifier(JWKSKeySource(fetch=fetch, clock=clock), clock=clock)
    outcome: list[str] = []

    async def first() -> None:
        outcome.append(await areason_of(verifier, token))

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await asked.wait()
        verifier.revoke(token)
        release.set()
    assert outcome == ["revoked"]
    assert await areason_of(verifier, token) == "revoked"


# -- the cache and the wall clock --------------------------------------------------------------


def test_after_the_wall_clock_jumps_past_exp_a_cached_token_is_expired(
    ring: Keyring, clock: SteppedClock
) -> None:
    verifier = VersionedTokenVerifier(ring, clock=clock)
    token = TokenIssuer(ring, lifetime=600.0, clock=clock).issue("ada")
    assert verifier.verify(token).from_cache is False
    assert verifier.verify(token).from_cache is True
    clock.step = 3600.0  # the laptop slept for an hour; monotonic time did not move
    assert reason_of(verifier, token) == "expired"


def test_after_the_wall_clock_jumps_past_a_scheduled_retirement_cached_tokens_are_refused(
    ring: Keyring, clock: SteppedClock
) -> None:
    verifier = VersionedTokenVerifier(ring, clock=clock)
    token = TokenIssuer(ring, lifetime=600.0, clock=clock).issue("ada")
    ring.add("v2", b"second-secret-0123456789abcdefgh", state=KeyState.ACTIVE)
    ring.retire("v1", after=100.0)
    assert verifier.verify(token).key_version == "v1"
    assert verifier.verify(token).from_cache is True
    clock.step = 200.0
    assert reason_of(verifier, token) == "retired_key"


def test_after_the_wall_clock_steps_back_cached_tokens_are_verified_afresh(
    ring: Keyring, clock: SteppedClock
) -> None:
    verifier = VersionedTokenVerifier(ring, leeway=60.0, clock=clock)
    token = TokenIssuer(ring, clock=clock).issue("ada")
    verifier.verify(token)
    clock.step = -30.0  # a TTL measured from a later instant would outlive cache_ttl
    assert verifier.verify(token).from_cache is False
    assert verifier.verify(token).from_cache is True
    clock.step = -3600.0
    assert reason_of(verifier, token) == "not_yet_valid"  # what a fresh check says


# -- ECDSA malleability -----------------------------------------------------------------------


@pytest.fixture
def ecdsa() -> Any:
    pytest.importorskip("jwt", reason="ECDSA needs the 'jwt' extra")
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    return ec


def twin(token: str, order: int) -> str:
    """The same token with the other valid ECDSA signature: (r, n - s)."""
    signed, _, signature = token.rpartition(".")
    raw = unb64(signature)
    size = len(raw) // 2
    s = int.from_bytes(raw[size:], "big")
    return f"{signed}.{b64(raw[:size] + (order - s).to_bytes(size, 'big'))}"


@pytest.mark.parametrize(("algorithm", "curve"), [("ES256", "SECP256R1"), ("ES384", "SECP384R1")])
def test_the_high_s_twin_of_an_ecdsa_token_is_refused_and_revocation_covers_it(
    ecdsa: Any, clock: SteppedClock, algorithm: str, curve: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: PLC0415
        encode_dss_signature,
    )

    private = ecdsa.generate_private_key(getattr(ecdsa, curve)())
    ring = Keyring(clock=clock)
    ring.add("e1", private, algorithm=algorithm, state=KeyState.ACTIVE)
    token = TokenIssuer(ring, clock=clock).issue("ada")  # no jti-based revocation below
    other = twin(token, private.curve.group_order)
    # The twin is a valid signature for anyone who accepts high S: the attack is real.
    signed, _, signature = other.rpartition(".")
    raw = unb64(signature)
    size = len(raw) // 2
    r, s = int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
    hashes = {"ES256": "SHA256", "ES384": "SHA384"}
    from cryptography.hazmat.primitives import hashes as hash_module  # noqa: PLC0415

    private.public_key().verify(
        encode_dss_signature(r, s),
        signed.encode(),
        ecdsa.ECDSA(getattr(hash_module, hashes[algorithm])()),
    )
    strict = VersionedTokenVerifier(ring, clock=clock)
    assert strict.verify(token).subject == "ada"
    assert reason_of(strict, other) == "bad_signature"
    lenient = VersionedTokenVerifier(ring, allow_high_s=True, clock=clock)
    assert lenient.verify(other).subject == "ada"
    lenient.revoke(token)
    assert reason_of(lenient, other) == "revoked"  # however the signature is spelt
    assert reason_of(lenient, token) == "revoked"


@settings(max_examples=40, deadline=None)
@given(subject=st.text(min_size=1, max_size=20))
def test_our_ecdsa_signatures_are_always_low_s(subject: str) -> None:
    pytest.importorskip("jwt", reason="ECDSA needs the 'jwt' extra")
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    private = _P256
    ring = Keyring()
    ring.add("e1", private, algorithm="ES256", state=KeyState.ACTIVE)
    token = TokenIssuer(ring).issue(subject)
    raw = unb64(token.rpartition(".")[2])
    assert len(raw) == 64
    assert int.from_bytes(raw[32:], "big") <= ec.SECP256R1().group_order // 2
    assert VersionedTokenVerifier(ring).verify(token).subject == subject


def test_allow_high_s_must_be_a_bool(ring: Keyring) -> None:
    with pytest.raises(ConfigurationError) as info:
        VersionedTokenVerifier(ring, allow_high_s="yes")  # type: ignore[arg-type]
    assert info.value.parameter == "allow_high_s"


# -- explicit typing ---------------------------------------------------------------------------


def test_a_verifier_expecting_access_tokens_refuses_other_types(
    ring: Keyring, clock: SteppedClock
) -> None:
    verifier = VersionedTokenVerifier(ring, token_type="at+jwt", clock=clock)
    access = TokenIssuer(ring, token_type="at+jwt", clock=clock).issue("ada")
    id_token = TokenIssuer(ring, clock=clock).issue("ada")  # typ "JWT"
    untyped = TokenIssuer(ring, token_type=None, clock=clock).issue("ada")
    spelt = TokenIssuer(ring, token_type="application/AT+JWT", clock=clock).issue("ada")
    assert verifier.verify(access).subject == "ada"
    assert verifier.verify(spelt).subject == "ada"  # RFC 7515 4.1.9: same media type
    assert reason_of(verifier, id_token) == "token_type"
    assert reason_of(verifier, untyped) == "token_type"
    anything = VersionedTokenVerifier(ring, clock=clock)
    assert all(anything.verify(t) for t in (access, id_token, untyped))
    several = VersionedTokenVerifier(ring, token_type=["at+jwt", "JWT"], clock=clock)
    assert several.verify(id_token).subject == "ada"


def test_a_typ_that_is_not_a_string_is_malformed(ring: Keyring) -> None:
    header = b64(b'{"alg":"HS256","kid":"v1","typ":7}')
    assert reason_of(VersionedTokenVerifier(ring), f"{header}.e30.AAAA") == "malformed"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"token_type": ""}, "token_type"),
        ({"token_type": [3]}, "token_type"),
        ({"keys": None, "token_type": "at+jwt"}, "token_type"),
    ],
)
def test_token_type_is_checked_at_construction(
    ring: Keyring, kwargs: dict[str, Any], parameter: str
) -> None:
    async def validator(token: str) -> bool:
        return True

    arguments: dict[str, Any] = {"keys": ring, "validator": validator, **kwargs}
    with pytest.raises(ConfigurationError) as info:
        VersionedTokenVerifier(**arguments)
    assert info.value.parameter == parameter


# -- attacker-chosen kids ----------------------------------------------------------------------


def kid_token(kid: str) -> str:
    header = b64(json.dumps({"alg": "EdDSA", "kid": kid}).encode())
    return f"{header}.e30.AAAA"


def test_a_kid_over_256_characters_is_malformed_and_no_keyring_version_is(
    ring: Keyring,
) -> None:
    verifier = VersionedTokenVerifier(ring)
    assert reason_of(verifier, kid_token("k" * 257)) == "malformed"
    assert reason_of(verifier, kid_token("k" * 256)) == "unknown_key"
    with pytest.raises(ConfigurationError) as info:
        ring.add("k" * 257, SECRET)
    assert info.value.parameter == "version"


@pytest.mark.anyio
async def test_long_kids_never_reach_the_jwks_source_and_its_memory_is_bounded(
    clock: SteppedClock,
) -> None:
    pytest.importorskip("jwt", reason="JWKS needs the 'jwt' extra")
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    from jwt.algorithms import OKPAlgorithm  # noqa: PLC0415

    public = OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate().public_key(), as_dict=True)
    fetches = 0

    async def fetch() -> dict[str, Any]:
        nonlocal fetches
        fetches += 1
        await anyio.lowlevel.checkpoint()
        return {"keys": [{**public, "kid": "k1"}, {**public, "kid": "x" * 257}]}

    source = JWKSKeySource(fetch=fetch, refetch_cooldown=0.0, clock=clock)
    verifier = VersionedTokenVerifier(source, clock=clock)
    assert await areason_of(verifier, kid_token("a" * 6000)) == "malformed"
    assert fetches == 0
    assert await source.refresh()
    assert source.versions == ("k1",)  # a key no token could name is left out
    for n in range(1_100):  # more unknown kids than the default bound
        assert await areason_of(verifier, kid_token(f"{n:0>256}")) == "unknown_key"
    assert len(source._missing) <= 1_000  # at most ~256 KB of attacker-chosen kids


# -- a hanging JWKS endpoint ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_with_a_stale_key_set_and_a_hanging_endpoint_known_kids_verify_at_once(
    clock: SteppedClock,
) -> None:
    pytest.importorskip("jwt", reason="JWKS needs the 'jwt' extra")
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    from jwt.algorithms import OKPAlgorithm  # noqa: PLC0415

    private = ed25519.Ed25519PrivateKey.generate()
    signer = Keyring(clock=clock)
    signer.add("k1", private, algorithm="EdDSA", state=KeyState.ACTIVE)
    issuer = TokenIssuer(signer, lifetime=3600.0, clock=clock)
    public = {**OKPAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "k1"}
    hang = anyio.Event()
    calls = 0

    async def fetch() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > 1:
            await hang.wait()  # the endpoint hangs; only fetch_timeout would end it
        return {"keys": [public]}

    async with JWKSKeySource(
        fetch=fetch, refresh_interval=300.0, fetch_timeout=30.0, clock=clock
    ) as source:
        verifier = VersionedTokenVerifier(source, cache_ttl=0, clock=clock)
        assert (await verifier.averify(issuer.issue("ada"))).subject == "ada"
        clock.advance(301.0)  # the key set is stale now
        with anyio.fail_after(10):  # a guard: the fix makes this instant
            assert (await verifier.averify(issuer.issue("bob"))).subject == "bob"
            assert (await verifier.averify(issuer.issue("eve"))).subject == "eve"
        assert source.fetches == 2  # one refresh, started in the background
        while calls < 2:
            await anyio.lowlevel.checkpoint()  # let it reach the endpoint, and hang there
        assert clock.monotonic() == pytest.approx(301.0)  # no one waited, not even virtually
    # Leaving the block cancelled the hanging refresh; the source works on without it.
    assert (await verifier.averify(issuer.issue("joe"))).subject == "joe"


@pytest.mark.anyio
async def test_a_background_refresh_installs_the_new_key_set(clock: SteppedClock) -> None:
    pytest.importorskip("jwt", reason="JWKS needs the 'jwt' extra")
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    from jwt.algorithms import OKPAlgorithm  # noqa: PLC0415

    keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(2)]
    jwks = [
        {**OKPAlgorithm.to_jwk(k.public_key(), as_dict=True), "kid": f"k{i}"}
        for i, k in enumerate(keys)
    ]
    served = [jwks[:1]]

    async def fetch() -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        return {"keys": served[-1]}

    signer = Keyring(clock=clock)
    signer.add("k0", keys[0], algorithm="EdDSA", state=KeyState.ACTIVE)
    issuer = TokenIssuer(signer, lifetime=3600.0, clock=clock)
    async with JWKSKeySource(fetch=fetch, refresh_interval=300.0, clock=clock) as source:
        verifier = VersionedTokenVerifier(source, cache_ttl=0, clock=clock)
        await verifier.averify(issuer.issue("ada"))
        generation = source.generation
        served.append(jwks)
        clock.advance(301.0)
        await verifier.averify(issuer.issue("ada"))  # starts the refresh, does not wait
        while source.generation == generation:
            await anyio.lowlevel.checkpoint()
        assert source.versions == ("k0", "k1")
        with pytest.raises(RuntimeError, match="already running"):
            await source.__aenter__()


@pytest.mark.anyio
async def test_leaving_the_block_at_once_leaves_no_refresh_pending(clock: SteppedClock) -> None:
    pytest.importorskip("jwt", reason="JWKS needs the 'jwt' extra")
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    from jwt.algorithms import OKPAlgorithm  # noqa: PLC0415

    private = ed25519.Ed25519PrivateKey.generate()
    public = {**OKPAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "k1"}

    async def fetch() -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        return {"keys": [public]}

    signer = Keyring(clock=clock)
    signer.add("k1", private, algorithm="EdDSA", state=KeyState.ACTIVE)
    token = TokenIssuer(signer, lifetime=3600.0, clock=clock).issue("ada")
    source = JWKSKeySource(fetch=fetch, refresh_interval=300.0, clock=clock)
    verifier = VersionedTokenVerifier(source, cache_ttl=0, clock=clock)
    async with source:
        await verifier.averify(token)
        clock.advance(301.0)
        await verifier.averify(token)  # starts a background refresh; the block ends now
    assert source.fetches == 2
    clock.advance(301.0)
    assert await source.refresh() is True  # nothing left waiting on the abandoned one


def test_an_ecdsa_signature_of_the_wrong_length_is_a_bad_signature(ecdsa: Any) -> None:
    ring = Keyring()
    ring.add(
        "e1",
        ecdsa.generate_private_key(ecdsa.SECP256R1()),
        algorithm="ES256",
        state=KeyState.ACTIVE,
    )
    token = TokenIssuer(ring).issue("ada")
    short = token.rpartition(".")[0] + "." + b64(b"\x01" * 40)
    assert reason_of(VersionedTokenVerifier(ring), short) == "bad_signature"
