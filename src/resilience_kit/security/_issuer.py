"""TokenIssuer: sign tokens with a keyring's active version."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from resilience_kit._checks import check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError
from resilience_kit.security import _jwt
from resilience_kit.security._keyring import Keyring

_SET_BY_ISSUER = frozenset({"exp", "iat", "nbf", "iss", "jti"})


class TokenIssuer:
    """Issue JWTs signed with the keyring's ACTIVE version, naming that version.

    A token names its key version in the ``kid`` header and its type in ``typ``. Every
    token gets ``iat``, ``exp`` (``iat`` plus the lifetime), a random ``jti``, and
    ``iss``/``aud``/``sub`` when given. ``lifetime`` is the longest any token of this
    issuer lives: wait that long (plus the verifiers' leeway) after activating a new
    version before retiring the old one.

    HS256/384/512 need nothing beyond the standard library; the asymmetric algorithms
    need the ``jwt`` extra (their keys cannot enter a keyring without it). ECDSA
    signatures are issued in their canonical low-S form.

    Args:
        keyring: where the active version comes from, at each `issue`.
        token_type: the ``typ`` header, e.g. ``"at+jwt"`` for access tokens (RFC 9068),
            so that a verifier can refuse tokens of another type; ``None`` leaves it out.
        issuer: the ``iss`` claim.
        audience: the ``aud`` claim (a string or several).
        lifetime: seconds from issue to expiry, and the most `issue` accepts.
        clock: the clock whose wall time stamps ``iat`` and ``exp``.

    Raises:
        ConfigurationError: for a bad parameter; the message names it.

    Examples:
        >>> from resilience_kit.security import Keyring, KeyState
        >>> ring = Keyring()
        >>> _ = ring.add("v7", b"k" * 32, state=KeyState.ACTIVE)
        >>> token = TokenIssuer(ring, token_type="at+jwt", lifetime=600.0).issue("ada")
        >>> import base64, json
        >>> json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        {'alg': 'HS256', 'kid': 'v7', 'typ': 'at+jwt'}
    """

    __slots__ = ("_audience", "_clock", "_issuer", "_keyring", "lifetime", "token_type")

    def __init__(
        self,
        keyring: Keyring,
        *,
        token_type: str | None = "JWT",  # noqa: S107  (a media type, not a secret)
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        lifetime: float = 900.0,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(keyring, Keyring):
            raise ConfigurationError("keyring", f"must be a Keyring, got {keyring!r}")
        if token_type is not None and (not isinstance(token_type, str) or not token_type):
            raise ConfigurationError(
                "token_type", f"must be a non-empty string or None, got {token_type!r}"
            )
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ConfigurationError("issuer", f"must be a non-empty string, got {issuer!r}")
        check_positive("lifetime", lifetime)
        self._keyring = keyring
        self.token_type = token_type
        self._issuer = issuer
        self._audience = _audience(audience)
        self.lifetime = float(lifetime)
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenIssuer(token_type={self.token_type!r}, lifetime={self.lifetime})"

    def issue(
        self,
        subject: str | None = None,
        *,
        claims: Mapping[str, Any] | None = None,
        lifetime: float | None = None,
        audience: str | Sequence[str] | None = None,
    ) -> str:
        """Sign a new token with the active key version.

        Args:
            subject: the ``sub`` claim.
            claims: more claims (JSON-serialisable); they may not set ``exp``, ``iat``,
                ``nbf``, ``iss`` or ``jti``.
            lifetime: seconds until expiry, at most the issuer's ``lifetime``.
            audience: the ``aud`` claim, instead of the issuer's.

        Returns:
            The token.

        Raises:
            ConfigurationError: when the keyring has no active version that can sign,
                or for a bad argument.
            TypeError: when a claim is not JSON-serialisable.

        Examples:
            >>> from resilience_kit.security import Keyring, KeyState
            >>> ring = Keyring()
            >>> _ = ring.add("v1", b"k" * 32, state=KeyState.ACTIVE)
            >>> token = TokenIssuer(ring).issue("ada", claims={"role": "admin"})
            >>> token.count(".")
            2
        """
        key = self._keyring.active
        if key is None:
            raise ConfigurationError("keyring", "has no active version to sign with")
        if key.signing_key is None:
            raise ConfigurationError(
                "keyring", f"the active version {key.version!r} has no private key"
            )
        if lifetime is None:
            lifetime = self.lifetime
        check_positive("lifetime", lifetime)
        if lifetime > self.lifetime:
            raise ConfigurationError(
                "lifetime", f"at most the issuer's lifetime ({self.lifetime}s), got {lifetime}"
            )
        extra = dict(claims or {})
        clash = _SET_BY_ISSUER.intersection(extra)
        if clash:
            raise ConfigurationError("claims", f"may not set {sorted(clash)}; the issuer does")
        now = resolve_clock(self._clock).time()
        payload: dict[str, Any] = {
            **extra,
            "iat": int(now),
            "exp": int(now + lifetime),
            "jti": secrets.token_urlsafe(16),
        }
        if subject is not None:
            payload["sub"] = subject
        if self._issuer is not None:
            payload["iss"] = self._issuer
        named = _audience(audience) if audience is not None else self._audience
        if named is not None:
            payload["aud"] = named
        return _jwt.encode(
            key.version, key.algorithm, key.signing_key, payload, token_type=self.token_type
        )


def _audience(audience: str | Sequence[str] | None) -> str | list[str] | None:
    if audience is None or (isinstance(audience, str) and audience):
        return audience
    if isinstance(audience, Sequence) and not isinstance(audience, str):
        values = list(audience)
        if values and all(isinstance(item, str) and item for item in values):
            return values
    raise ConfigurationError("audience", f"must be a non-empty string or strings, got {audience!r}")
