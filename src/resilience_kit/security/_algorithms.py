"""Signing algorithms: HMAC from the standard library, the rest from PyJWT (imported lazily).

HMAC (``HS256``/``HS384``/``HS512``) needs nothing beyond the standard library, so HS*
JWTs are issued and verified without the ``jwt`` extra. RSA, ECDSA and EdDSA come from
PyJWT's algorithm objects (backed by ``cryptography``), loaded on first use.
Every key is pinned to one algorithm when it enters a keyring; this module refuses keys
that do not fit their algorithm — the root of algorithm-confusion attacks.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from resilience_kit.errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import Algorithm

# hashlib names, for the one-shot `hmac.digest` (much faster than `hmac.new`).
HMAC_HASHES = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
ASYMMETRIC = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)
SUPPORTED = frozenset(HMAC_HASHES) | ASYMMETRIC
_MIN_RSA_BITS = 2048
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
INSTALL_HINT = "install PyJWT with cryptography: pip install 'resilience-patterns[jwt]'"

# Spellings that betray an asymmetric key or a JWK handed over as an HMAC secret.
_NOT_A_SECRET = (b"-----BEGIN", b"ssh-", b"ecdsa-sha2-", b"{")


@functools.cache
def _load() -> dict[str, Algorithm] | None:
    try:
        from jwt.algorithms import get_default_algorithms, has_crypto  # noqa: PLC0415
    except ImportError:
        return None
    if not has_crypto:
        return None
    return {name: alg for name, alg in get_default_algorithms().items() if name in ASYMMETRIC}


@functools.cache
def _hmac_check() -> Callable[[bytes], object] | None:
    try:
        from jwt.algorithms import HMACAlgorithm  # noqa: PLC0415
    except ImportError:
        return None
    # PyJWT also recognises DER-encoded keys and certificates offered as HMAC secrets.
    return HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key


def pyjwt_available() -> bool:
    """Tell whether PyJWT (with ``cryptography``) can be imported."""
    return _load() is not None


def asymmetric(algorithm: str, parameter: str) -> Algorithm:
    """PyJWT's implementation of ``algorithm``, or a `ConfigurationError` naming the extra."""
    algorithms = _load()
    if algorithms is None:
        raise ConfigurationError(parameter, f"{algorithm} needs the 'jwt' extra; {INSTALL_HINT}")
    return algorithms[algorithm]


def check_algorithm(algorithm: object, parameter: str) -> str:
    """Return ``algorithm`` if this library can sign and verify with it."""
    if not isinstance(algorithm, str) or algorithm not in SUPPORTED:
        raise ConfigurationError(
            parameter, f"must be one of {', '.join(sorted(SUPPORTED))}; got {algorithm!r}"
        )
    return algorithm


def prepare_key(algorithm: str, key: object) -> tuple[Any, Any]:
    """Check ``key`` against ``algorithm``; return ``(verifying_key, signing_key or None)``.

    Raises:
        ConfigurationError: naming ``key`` when it does not fit the algorithm (too short
            a secret, an asymmetric key offered as an HMAC secret, the wrong curve, an
            RSA key under 2048 bits...).
    """
    if algorithm in HMAC_HASHES:
        secret = _hmac_secret(algorithm, key)
        return secret, secret
    implementation = asymmetric(algorithm, "algorithm")
    try:
        if isinstance(key, Mapping):
            from jwt import PyJWK  # noqa: PLC0415

            key = PyJWK(dict(key), algorithm).key
        prepared = implementation.prepare_key(key)
    except Exception as exc:  # noqa: BLE001  (PyJWT and cryptography raise many types)
        raise ConfigurationError("key", f"not a usable {algorithm} key: {exc}") from None
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa  # noqa: PLC0415

    # Checked here too, whatever the PyJWT version does.
    if isinstance(prepared, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if prepared.key_size < _MIN_RSA_BITS:
            raise ConfigurationError(
                "key", f"an RSA key needs at least {_MIN_RSA_BITS} bits, got {prepared.key_size}"
            )
    elif isinstance(prepared, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if prepared.curve.name != _EC_CURVES.get(algorithm):
            raise ConfigurationError(
                "key",
                f"{algorithm} needs curve {_EC_CURVES.get(algorithm)}, got {prepared.curve.name}",
            )
        if not isinstance(getattr(prepared.curve, "group_order", None), int):  # pragma: no cover
            # Without the curve's order, high-S signatures can be neither refused nor
            # avoided (see `high_s`): refuse the key rather than one token in two.
            raise ConfigurationError(
                "key", f"{algorithm} keys need a newer cryptography (curves with group_order)"
            )
    private = (
        rsa.RSAPrivateKey,
        ec.EllipticCurvePrivateKey,
        ed25519.Ed25519PrivateKey,
        ed448.Ed448PrivateKey,
    )
    if isinstance(prepared, private):  # keep it for signing; verify with its public half
        return prepared.public_key(), prepared
    return prepared, None


def _hmac_secret(algorithm: str, key: object) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)):
        raise ConfigurationError("key", f"an {algorithm} secret must be bytes, got {key!r}")
    secret = bytes(key)
    minimum = hashlib.new(HMAC_HASHES[algorithm]).digest_size
    if len(secret) < minimum:
        raise ConfigurationError(
            "key",
            f"an {algorithm} secret needs at least {minimum} random bytes (RFC 7518 3.2), "
            f"got {len(secret)}",
        )
    suspicious = secret.lstrip().startswith(_NOT_A_SECRET) or b"-----BEGIN" in secret
    check = _hmac_check()
    if not suspicious and check is not None:
        try:
            check(secret)
        except Exception:  # noqa: BLE001  (PyJWT's InvalidKeyError, whatever its base)
            suspicious = True
    if suspicious:
        raise ConfigurationError(
            "key",
            "looks like a public/private key or a JWK, not an HMAC secret; using one as "
            "the other is the algorithm-confusion attack",
        )
    return secret


def sign(algorithm: str, signing_key: Any, message: bytes) -> bytes:
    """Sign ``message`` as JWS ``algorithm`` does; ECDSA signatures come out low-S."""
    digest = HMAC_HASHES.get(algorithm)
    if digest is not None:
        return hmac.digest(signing_key, message, digest)
    if algorithm in _EC_CURVES:
        return _sign_ecdsa(algorithm, signing_key, message)
    signature: bytes = asymmetric(algorithm, "algorithm").sign(message, signing_key)
    return signature


def _sign_ecdsa(algorithm: str, signing_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: PLC0415
        decode_dss_signature,
    )

    digests = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}
    der = signing_key.sign(message, ec.ECDSA(digests[algorithm]))
    r, s = decode_dss_signature(der)
    order = signing_key.curve.group_order
    # (r, s) and (r, n - s) are both valid; the low one is the canonical one, which
    # verifiers that refuse malleable signatures (ours by default) accept.
    s = min(s, order - s)
    size = (signing_key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def high_s(algorithm: str, verifying_key: Any, signature: bytes) -> bool:
    """Tell whether ``signature`` is an ECDSA (JWS ``r || s``) one with ``s > n / 2``.

    Anyone can turn a valid signature ``(r, s)`` into the valid ``(r, n - s)``: a second
    spelling of the same token. Only one of the two has ``s <= n / 2``.
    """
    if algorithm not in _EC_CURVES:
        return False
    curve = verifying_key.curve
    size = (curve.key_size + 7) // 8
    if len(signature) != 2 * size:
        return False  # not a signature at all: the verification proper says so
    order: int = curve.group_order
    return int.from_bytes(signature[size:], "big") > order // 2


def verify(algorithm: str, verifying_key: Any, message: bytes, signature: bytes) -> bool:
    """Tell whether ``signature`` is ``message`` signed by the holder of ``verifying_key``."""
    digest = HMAC_HASHES.get(algorithm)
    if digest is not None:
        return hmac.compare_digest(hmac.digest(verifying_key, message, digest), signature)
    return asymmetric(algorithm, "algorithm").verify(message, verifying_key, signature)
