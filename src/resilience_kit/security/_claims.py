"""The registered-claim checks (RFC 7519 section 4.1), as one pure function of ``now``."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from resilience_kit.errors import ConfigurationError
from resilience_kit.security._errors import (
    TokenClaimError,
    TokenExpiredError,
    TokenNotYetValidError,
)

_STRING_CLAIMS = ("iss", "sub", "jti")


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What a verifier demands of a token's claims.

    Attributes:
        issuers: accepted ``iss`` values, or ``None`` for any.
        audiences: accepted ``aud`` values, or ``None``; then a token naming an audience
            is rejected (RFC 7519 4.1.3: a recipient that is not named must reject).
        require: claims that must be present.
        leeway: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
    """

    issuers: frozenset[str] | None
    audiences: frozenset[str] | None
    require: tuple[str, ...]
    leeway: float


def string_set(parameter: str, value: str | Collection[str] | None) -> frozenset[str] | None:
    """Normalise an ``issuer``/``audience`` parameter: one string or several."""
    if value is None:
        return None
    values = (value,) if isinstance(value, str) else tuple(value)
    if not values or not all(isinstance(item, str) and item for item in values):
        raise ConfigurationError(parameter, f"must be a non-empty string or strings, got {value!r}")
    return frozenset(values)


def _numeric(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenClaimError(f"{name!r} is not a number", reason="invalid_claim")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise TokenClaimError(f"{name!r} is out of range", reason="invalid_claim")
    return number


def check_claims(claims: dict[str, Any], now: float, rules: ClaimRules) -> float | None:
    """Raise the first `TokenRejectedError` the claims deserve at wall time ``now``.

    Returns:
        The token's ``exp`` (or ``None`` when it has none), for the cache.
    """
    for name in rules.require:
        if claims.get(name) is None:
            raise TokenClaimError(f"the {name!r} claim is required", reason="missing_claim")
    for name in _STRING_CLAIMS:
        value = claims.get(name)
        if value is not None and not isinstance(value, str):
            raise TokenClaimError(f"{name!r} is not a string", reason="invalid_claim")
    leeway = rules.leeway
    expires = _numeric(claims, "exp")
    if expires is not None and now >= expires + leeway:
        raise TokenExpiredError(f"expired {now - expires:.0f}s ago (exp={expires:.0f})")
    not_before = _numeric(claims, "nbf")
    if not_before is not None and now + leeway < not_before:
        raise TokenNotYetValidError(f"valid from nbf={not_before:.0f}, {not_before - now:.0f}s on")
    issued = _numeric(claims, "iat")
    if issued is not None and now + leeway < issued:
        raise TokenNotYetValidError(f"issued in the future (iat={issued:.0f})")
    _check_issuer(claims.get("iss"), rules.issuers)
    _check_audience(claims.get("aud"), rules.audiences)
    return expires


def _check_issuer(issuer: str | None, accepted: frozenset[str] | None) -> None:
    if accepted is None:
        return
    if issuer is None:
        raise TokenClaimError("the 'iss' claim is required", reason="missing_claim")
    if issuer not in accepted:
        raise TokenClaimError(f"issued by {issuer[:100]!r}, not a trusted issuer", reason="issuer")


def _check_audience(audience: object, accepted: frozenset[str] | None) -> None:
    if audience is None:
        if accepted is not None:
            raise TokenClaimError("the 'aud' claim is required", reason="missing_claim")
        return
    if isinstance(audience, str):
        named: Collection[object] = (audience,)
    elif isinstance(audience, list) and audience:
        named = audience
    else:
        raise TokenClaimError(
            "'aud' is neither a string nor a list of them", reason="invalid_claim"
        )
    if not all(isinstance(item, str) for item in named):
        raise TokenClaimError(
            "'aud' is neither a string nor a list of them", reason="invalid_claim"
        )
    if accepted is None:
        raise TokenClaimError(
            "the token names an audience but this verifier was given none", reason="audience"
        )
    if accepted.isdisjoint(named):
        raise TokenClaimError("the token is for another audience", reason="audience")
