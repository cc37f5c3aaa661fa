"""JSON Web Tokens (RFC 7519), JWS compact serialisation only; signing goes through PyJWT.

The header is parsed here, strictly, so that the key is chosen by ``kid`` from the
keyring and the algorithm is the one pinned to that key — never the one the token asks
for. Embedded keys (``jwk``, ``jku``, ``x5u``, ``x5c``) are ignored; critical header
extensions (``crit``) are refused, as RFC 7515 requires of extensions not understood.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resilience_kit.security._encoding import ParsedToken, b64url_decode, json_object
from resilience_kit.security._errors import MalformedTokenError

PREFIX = "eyJ"  # base64url of '{"': how every JWT header starts


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
    if kid is not None and not isinstance(kid, str):
        raise MalformedTokenError("the header's 'kid' is not a string")
    if "crit" in header:
        raise MalformedTokenError("critical header extensions ('crit') are not supported")
    return ParsedToken(
        kind="jwt",
        version=kid,
        algorithm=algorithm,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=b64url_decode(signature_b64, "signature"),
        payload=b64url_decode(payload_b64, "claims segment"),
    )


def encode(version: str, algorithm: str, signing_key: Any, claims: Mapping[str, Any]) -> str:
    """Sign ``claims`` as a JWT with PyJWT, naming ``version`` in the ``kid`` header."""
    import jwt  # noqa: PLC0415  (optional dependency, checked when the issuer is built)

    return jwt.encode(dict(claims), signing_key, algorithm=algorithm, headers={"kid": version})
