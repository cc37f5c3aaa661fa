"""Strict base64url and JSON for token segments: one canonical spelling, or an error.

Lenient decoders accept several spellings of the same bytes (padding, stray characters,
non-zero trailing bits), so a token with a flipped bit could still verify. Here every
segment must be the canonical unpadded base64url encoding of its bytes, and JSON objects
may not repeat a member or contain NaN.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from resilience_kit.security._errors import MalformedTokenError

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {char: index for index, char in enumerate(_ALPHABET)}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# The last character of an unpadded segment of length 4n+2 (4n+3) carries 4 (2) bits
# that no byte uses; a canonical encoding leaves them zero.
_UNUSED_BITS = {2: 0b1111, 3: 0b11}
_PADDING = {2: "==", 3: "="}


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as JOSE uses it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str, what: str) -> bytes:
    """Decode a canonical unpadded base64url ``segment``; anything else is malformed."""
    if not _B64URL.fullmatch(segment):
        raise MalformedTokenError(f"the {what} is not base64url")
    remainder = len(segment) % 4
    if remainder:
        unused = _UNUSED_BITS.get(remainder)
        if unused is None:
            raise MalformedTokenError(f"the {what} is not base64url")
        if _VALUE[segment[-1]] & unused:
            raise MalformedTokenError(f"the {what} is not canonical base64url")
        segment += _PADDING[remainder]
    return binascii.a2b_base64(segment.encode("ascii").translate(_TO_STANDARD))


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a JSON object repeats a member")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constants)


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse ``data`` as one JSON object with unique members; anything else is malformed."""
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON, repeated members and oversized integers.
        raise MalformedTokenError(f"the {what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise MalformedTokenError(f"the {what} is not a JSON object")
    return value


def json_compact(value: object) -> bytes:
    """Serialise claims or a header the way the issuers sign them."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A token taken apart, nothing checked yet but its shape.

    Attributes:
        version: the key version it names (the JWT ``kid``).
        algorithm: the algorithm it claims.
        token_type: its ``typ`` header, if any.
        signed: what the signature covers, ``<header>.<claims>`` as sent: the part of
            a token that cannot be spelt differently without a new signature (an ECDSA
            signature can), so revocations are keyed on it.
        signature: the decoded signature.
        payload: the decoded claims segment, parsed only once the signature holds.
    """

    version: str | None
    algorithm: str
    token_type: str | None
    signed: str
    signature: bytes
    payload: bytes
