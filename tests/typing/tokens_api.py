from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from resilience_kit.security import (
    JWKSKeySource,
    Keyring,
    KeyState,
    KeyVersion,
    TokenIssuer,
    TokenRejectedError,
    VerifiedToken,
    VersionedTokenVerifier,
)

ring = Keyring()
assert_type(ring.add("v1", b"k" * 32, state=KeyState.ACTIVE), KeyVersion)
assert_type(ring.active, KeyVersion | None)
assert_type(TokenIssuer(ring).issue("ada"), str)
verifier = VersionedTokenVerifier(ring, audience=["api"], leeway=30)
assert_type(verifier.verify("token"), VerifiedToken)
assert_type(verifier.verify(b"token"), VerifiedToken)


async def introspect(token: str) -> dict[str, Any]:
    return {"active": True}


async def fetch() -> dict[str, Any]:
    return {"keys": []}


async def use() -> None:
    assert_type(await verifier.averify("token"), VerifiedToken)
    remote = VersionedTokenVerifier(JWKSKeySource(fetch=fetch), validator=introspect)
    verified = await remote.averify("token")
    assert_type(verified.claims["sub"], Any)
    assert_type(verified.subject, str | None)
    try:
        await remote.averify("x")
    except TokenRejectedError as exc:
        assert_type(exc.reason, str)
