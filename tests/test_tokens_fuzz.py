"""Fuzzing the verifier: whatever it is handed, only TokenRejectedError, and never a pass.

Valid tokens of every kind (ours, and PyJWT-issued HS256, RS256, ES256 and EdDSA JWTs)
are mutated — flipped bits, truncations, insertions, swapped key
versions, forged headers (``alg: none``, algorithm confusion), shuffled segments, huge
sizes — and each mutant must be rejected with a `TokenRejectedError` subclass.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from resilience_kit.security import (
    Keyring,
    KeyState,
    TokenIssuer,
    TokenRejectedError,
    VerifiedToken,
    VersionedTokenVerifier,
)
from resilience_kit.testing import VirtualClock

try:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
except ImportError:  # pragma: no cover  (the 'jwt' extra is absent)
    jwt = None

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SECRET = b"fuzz-secret-0123456789abcdefghij"
START = 1_767_225_600


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class World:
    verifier: VersionedTokenVerifier
    tokens: list[str]
    versions: list[str]
    public_pems: list[bytes]


@pytest.fixture(scope="module")
def world() -> World:
    clock = VirtualClock()
    ring = Keyring(clock=clock)
    ring.add("v1", SECRET, state=KeyState.ACTIVE)
    ring.add("v0", b"older-secret-0123456789abcdefghij")
    claims = {"sub": "ada", "iat": START, "exp": START + 600, "jti": "j"}
    tokens = [TokenIssuer(ring, clock=clock).issue("ada")]
    pems: list[bytes] = []
    if jwt is not None:
        signing = {
            "hs": ("HS256", SECRET),
            "rs": ("RS256", rsa.generate_private_key(65537, 2048)),
            "es": ("ES256", ec.generate_private_key(ec.SECP256R1())),
            "ed": ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        }
        for kid, (algorithm, key) in signing.items():
            if isinstance(key, bytes):
                ring.add(kid, key, algorithm=algorithm)
            else:
                ring.add(kid, key.public_key(), algorithm=algorithm)
                pems.append(
                    key.public_key().public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                )
            tokens.append(jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid}))
    verifier = VersionedTokenVerifier(
        ring, cache_ttl=0, clock=clock, max_token_size=4096, allow_high_s=True
    )
    for token in tokens:  # the pool is valid to begin with
        assert isinstance(verifier.verify(token), VerifiedToken)
    return World(verifier, tokens, [key.version for key in ring], pems)


def assert_rejected(verifier: VersionedTokenVerifier, token: object) -> None:
    with pytest.raises(TokenRejectedError) as info:
        verified = verifier.verify(token)  # type: ignore[arg-type]
        pytest.fail(f"accepted a mutant: {token!r} -> {verified!r}")
    assert type(info.value) is not TokenRejectedError  # always a specific subclass
    assert info.value.reason in type(info.value).reasons


# -- mutations --------------------------------------------------------------------------------


def flip_bit(token: str, data: st.DataObject) -> str:
    index = data.draw(st.integers(0, len(token) - 1))
    bit = data.draw(st.integers(0, 7))
    return token[:index] + chr(ord(token[index]) ^ (1 << bit)) + token[index + 1 :]


def truncate(token: str, data: st.DataObject) -> str:
    return token[: data.draw(st.integers(0, len(token) - 1))]


def insert(token: str, data: st.DataObject) -> str:
    index = data.draw(st.integers(0, len(token)))
    text = data.draw(st.text(min_size=1, max_size=4))
    return token[:index] + text + token[index:]


def delete(token: str, data: st.DataObject) -> str:
    index = data.draw(st.integers(0, len(token) - 1))
    return token[:index] + token[index + 1 :]


def swap_version(token: str, data: st.DataObject, world: World) -> str:
    first, _, rest = token.partition(".")
    version = data.draw(st.sampled_from([*world.versions, "", "v2", "x" * 100]))
    if first.startswith("eyJ"):
        try:
            header = json.loads(base64.urlsafe_b64decode(first + "=="))
            header["kid"] = version
        except (ValueError, TypeError):  # an earlier mutation broke the header already
            header = {"alg": "HS256", "kid": version}
        return f"{b64(json.dumps(header).encode())}.{rest}"
    return f"{version}.{rest}"


def forge_header(token: str, data: st.DataObject, world: World) -> str:
    _, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    header = {
        "alg": data.draw(
            st.sampled_from(["none", "None", "HS256", "HS512", "RS256", "ES256", "EdDSA", "PS256"])
        ),
        "kid": data.draw(st.sampled_from(world.versions)),
    }
    extra = data.draw(
        st.sampled_from([{}, {"typ": "JWT"}, {"crit": ["b64"], "b64": False}, {"jku": "https://x"}])
    )
    header.update(extra)
    signing_input = f"{b64(json.dumps(header).encode())}.{payload}"
    choice = data.draw(st.sampled_from(["empty", "original", "pem-hmac", "secret-hmac"]))
    if choice == "empty":
        signature = ""
    elif choice == "pem-hmac" and world.public_pems:  # algorithm confusion
        pem = data.draw(st.sampled_from(world.public_pems))
        signature = b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    elif choice == "secret-hmac":  # v1's key, misused to sign a JWT that does not name it
        assume(header["kid"] not in ("v1", "hs") or header["alg"] != "HS256")
        signature = b64(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature}"


def shuffle_segments(token: str, data: st.DataObject) -> str:
    segments = token.split(".")
    order = data.draw(st.permutations(range(len(segments))))
    extra = data.draw(st.lists(st.sampled_from(segments), max_size=2))
    return ".".join([segments[i] for i in order] + extra)


def retail(token: str, data: st.DataObject) -> str:
    """Change the last character of a segment: non-canonical base64 lives there."""
    segments = token.split(".")
    index = data.draw(st.integers(0, len(segments) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    segments[index] = segments[index][:-1] + data.draw(st.sampled_from(alphabet))
    return ".".join(segments)


def huge(token: str, data: st.DataObject) -> str:
    return (token * data.draw(st.integers(2, 300)))[:20_000]


MUTATIONS = [
    "flip",
    "truncate",
    "insert",
    "delete",
    "retail",
    "version",
    "header",
    "shuffle",
    "huge",
]


def mutate(token: str, data: st.DataObject, world: World) -> str:
    kind = data.draw(st.sampled_from(MUTATIONS))
    if kind == "flip":
        return flip_bit(token, data)
    if kind == "truncate":
        return truncate(token, data)
    if kind == "insert":
        return insert(token, data)
    if kind == "delete":
        return delete(token, data)
    if kind == "version":
        return swap_version(token, data, world)
    if kind == "header":
        return forge_header(token, data, world)
    if kind == "shuffle":
        return shuffle_segments(token, data)
    if kind == "retail":
        return retail(token, data)
    return huge(token, data)


def thaw(value: Any) -> Any:
    """Undo the verifier's deep freeze: read-only mappings and tuples back to JSON."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value


# -- the properties ----------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_tokens_are_always_rejected(world: World, data: st.DataObject) -> None:
    token = data.draw(st.sampled_from(world.tokens))
    mutant = mutate(token, data, world)
    assume(mutant != token)
    assert_rejected(world.verifier, mutant)
    encoded = mutant.encode("utf-8", "surrogatepass")
    assert_rejected(world.verifier, encoded)


@FUZZ
@given(data=st.data())
def test_stacked_mutations_are_always_rejected(world: World, data: st.DataObject) -> None:
    token = original = data.draw(st.sampled_from(world.tokens))
    for _ in range(data.draw(st.integers(2, 3))):
        if not token:
            break
        token = mutate(token, data, world)
    assume(token != original)
    assert_rejected(world.verifier, token)


@FUZZ
@given(
    junk=st.one_of(
        st.binary(max_size=400),
        st.text(max_size=400),
        st.from_regex(r"(eyJ)?[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_-]{0,90}"),
        st.none(),
        st.integers(),
        st.lists(st.text(max_size=5), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )
)
def test_arbitrary_input_is_rejected(world: World, junk: Any) -> None:
    assert_rejected(world.verifier, junk)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
claim_names = st.sampled_from(["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]) | st.text(
    max_size=5
)


@settings(FUZZ, max_examples=150)
@given(
    base=st.sampled_from([{}, {"exp": START + 600}]),
    drawn=st.dictionaries(claim_names, json_values, max_size=6),
)
def test_any_signed_claims_verify_or_are_rejected_cleanly(
    world: World, base: dict[str, Any], drawn: dict[str, Any]
) -> None:
    claims = {**base, **drawn}
    header = b64(b'{"alg":"HS256","kid":"v1"}')
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    digest = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(digest)}"
    try:
        verified = world.verifier.verify(token)
    except TokenRejectedError as exc:
        rejection: TokenRejectedError | None = exc
    else:
        rejection = None
    if rejection is not None:
        assert type(rejection) is not TokenRejectedError
        assert rejection.reason in type(rejection).reasons
    else:
        assert thaw(verified.claims) == claims
        assert isinstance(claims["exp"], int | float)
        assert claims["exp"] > START


@pytest.mark.anyio
@settings(max_examples=60, deadline=None)
@given(data=st.data())
async def test_the_async_driver_rejects_mutants_too(world: World, data: st.DataObject) -> None:
    token = data.draw(st.sampled_from(world.tokens))
    mutant = mutate(token, data, world)
    assume(mutant != token)
    with pytest.raises(TokenRejectedError):
        await world.verifier.averify(mutant)
