"""The built-in compact format: ``<version>.<claims-b64url>.<hmac-sha256-b64url>``.

A token names its key version in clear, carries its claims as JSON, and is signed with
HMAC-SHA256 over ``<version>.<claims-b64url>``; verification compares digests with
`hmac.compare_digest`. No dependency beyond the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from resilience_kit.errors import ConfigurationError
from resilience_kit.security import _algorithms
from resilience_kit.security._encoding import (
    ParsedToken,
    b64url_decode,
    b64url_encode,
    json_compact,
)
from resilience_kit.security._errors import MalformedTokenError

ALGORITHM = "HS256"
_VERSION = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_version(version: str) -> None:
    """Refuse a version a compact token cannot carry unambiguously."""
    # A JWT's first segment always starts with "eyJ" (base64 of '{"'): keep clear of it.
    if not _VERSION.fullmatch(version) or version.startswith("eyJ"):
        raise ConfigurationError(
            "keyring",
            f"the active version {version!r} cannot name a compact token: use 1-64 of "
            "A-Z a-z 0-9 _ -, not starting with 'eyJ'",
        )


def encode(version: str, signing_key: bytes, claims: Mapping[str, Any]) -> str:
    """Sign ``claims`` with ``signing_key`` as a compact token of ``version``."""
    signing_input = f"{version}.{b64url_encode(json_compact(dict(claims)))}"
    signature = _algorithms.hmac_sign(ALGORITHM, signing_key, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def parse(token: str) -> ParsedToken:
    """Take a compact token apart; raise `MalformedTokenError` if it is not one."""
    version, dot, rest = token.partition(".")
    payload_b64, dot2, signature_b64 = rest.partition(".")
    if not (dot and dot2 and version) or "." in signature_b64:
        raise MalformedTokenError("expected <version>.<claims>.<signature>")
    return ParsedToken(
        kind="compact",
        version=version,
        algorithm=ALGORITHM,
        signing_input=f"{version}.{payload_b64}".encode("ascii"),
        signature=b64url_decode(signature_b64, "signature"),
        payload=b64url_decode(payload_b64, "claims segment"),
    )
