"""JSON Web Tokens (RFC 7519), JWS compact serialisation only.

The header is parsed here, strictly, so that the key is chosen by ``kid`` from the
keyring and the algorithm is the one pinned to that key — never the one the token asks
for. Embedded keys (``jwk``, ``jku``, ``x5u``, ``x5c``) are ignored; critical header
extensions (``crit``) are refused, as RFC 7515 requires of extensions not understood.

Signing needs no PyJWT for HMAC (the standard library's `hmac`); the asymmetric
algorithms sign with ``cryptography`` through `_algorithms.sign`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resilience_kit.security import _algorithms
from resilience_kit.security._encoding import (
    ParsedToken,
    b64url_decode,
    b64url_encode,
    json_compact,
    json_object,
)
from resilience_kit.security._errors import MalformedTokenError

# Key identifiers in the wild are thumbprints, UUIDs or dates (well under 100
# characters); an attacker chooses the kid of what they send, and every kid the key
# source has to look up may be remembered, so a longer one is refused unread.
MAX_KID_LENGTH = 256


def parse(token: str) -> ParsedToken:
    """Take a JWT apart; raise `MalformedTokenError` if it is not a JWS-signed JWT."""
    segments = token.split(".")
    if len(segments) != 3:
        raise MalformedTokenError(
            f"a signed JWT has 3 segments, this has {len(segments)} (encrypted JWTs are "
            "not supported)"
        )
    header_b64, payload_b64, signature_b64 = segments
    header = json_object(b64url_decode(header_b64, "header"), "header")
    algorithm = header.get("alg")
    if not isinstance(algorithm, str):
        raise MalformedTokenError("the header has no 'alg'")
    kid = header.get("kid")
    if kid is not None:
        if not isinstance(kid, str):
            raise MalformedTokenError("the header's 'kid' is not a string")
        if len(kid) > MAX_KID_LENGTH:
            raise MalformedTokenError(
                f"the header's 'kid' is {len(kid)} characters long, the limit is {MAX_KID_LENGTH}"
            )
    token_type = header.get("typ")
    if token_type is not None and not isinstance(token_type, str):
        raise MalformedTokenError("the header's 'typ' is not a string")
    if "crit" in header:
        raise MalformedTokenError("critical header extensions ('crit') are not supported")
    return ParsedToken(
        version=kid,
        algorithm=algorithm,
        token_type=token_type,
        signed=f"{header_b64}.{payload_b64}",
        signature=b64url_decode(signature_b64, "signature"),
        payload=b64url_decode(payload_b64, "claims segment"),
    )


def normal_type(token_type: str) -> str:
    """``typ`` as compared: case-insensitive, ``application/`` optional (RFC 7515 4.1.9)."""
    lowered = token_type.lower()
    return lowered.removeprefix("application/") if "/" in lowered else lowered


def encode(
    version: str,
    algorithm: str,
    signing_key: Any,
    claims: Mapping[str, Any],
    *,
    token_type: str | None,
) -> str:
    """Sign ``claims`` as a JWT, naming ``version`` in the ``kid`` header."""
    header: dict[str, str] = {"alg": algorithm, "kid": version}
    if token_type is not None:
        header["typ"] = token_type
    signed = f"{b64url_encode(json_compact(header))}.{b64url_encode(json_compact(dict(claims)))}"
    signature = _algorithms.sign(algorithm, signing_key, signed.encode("ascii"))
    return f"{signed}.{b64url_encode(signature)}"
