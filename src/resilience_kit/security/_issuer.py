"""TokenIssuer: sign tokens with a keyring's active version."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from resilience_kit._checks import check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError
from resilience_kit.security import _algorithms, _compact, _jwt
from resilience_kit.security._keyring import Keyring

_SET_BY_ISSUER = frozenset({"exp", "iat", "nbf", "iss", "jti"})


class TokenIssuer:
    """Issue tokens signed with the keyring's ACTIVE version, naming that version.

    Every token gets ``iat``, ``exp`` (``iat`` plus the lifetime), a random ``jti``,
    and ``iss``/``aud``/``sub`` when given. ``lifetime`` is the longest any token of this
    issuer lives: wait that long (plus the verifiers' leeway) after activating a new
    version before retiring the old one.

    Args:
        keyring: where the active version comes from, at each `issue`.
        kind: ``"compact"`` (the built-in HMAC-SHA256 format, no dependency) or
            ``"jwt"`` (any supported algorithm; needs the ``jwt`` extra).
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
        >>> token = TokenIssuer(ring, lifetime=600.0).issue("ada")
        >>> token.split(".")[0]
        'v7'
    """

    __slots__ = ("_audience", "_clock", "_issuer", "_keyring", "kind", "lifetime")

    def __init__(
        self,
        keyring: Keyring,
        *,
        kind: Literal["compact", "jwt"] = "compact",
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        lifetime: float = 900.0,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(keyring, Keyring):
            raise ConfigurationError("keyring", f"must be a Keyring, got {keyring!r}")
        if kind not in ("compact", "jwt"):
            raise ConfigurationError("kind", f"must be 'compact' or 'jwt', got {kind!r}")
        if kind == "jwt" and not _pyjwt_importable():
            raise ConfigurationError("kind", f"JWTs need PyJWT; {_algorithms.INSTALL_HINT}")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ConfigurationError("issuer", f"must be a non-empty string, got {issuer!r}")
        check_positive("lifetime", lifetime)
        self._keyring = keyring
        self.kind = kind
        self._issuer = issuer
        self._audience = _audience(audience)
        self.lifetime = float(lifetime)
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenIssuer(kind={self.kind!r}, lifetime={self.lifetime})"

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
            ConfigurationError: when the keyring has no active version that can sign in
                this kind, or for a bad argument.
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
        if self.kind == "compact":
            if key.algorithm != _compact.ALGORITHM:
                raise ConfigurationError(
                    "keyring",
                    f"compact tokens are HS256; the active version {key.version!r} is "
                    f"{key.algorithm}",
                )
            _compact.check_version(key.version)
            return _compact.encode(key.version, key.signing_key, payload)
        return _jwt.encode(key.version, key.algorithm, key.signing_key, payload)


def _audience(audience: str | Sequence[str] | None) -> str | list[str] | None:
    if audience is None or (isinstance(audience, str) and audience):
        return audience
    if isinstance(audience, Sequence) and not isinstance(audience, str):
        values = list(audience)
        if values and all(isinstance(item, str) and item for item in values):
            return values
    raise ConfigurationError("audience", f"must be a non-empty string or strings, got {audience!r}")


def _pyjwt_importable() -> bool:
    try:
        import jwt  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True
