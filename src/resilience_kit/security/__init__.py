"""Token verification for rolling deploys: versioned keys, issuers, verifiers, JWKS.

Examples:
    >>> from resilience_kit.security import (
    ...     Keyring, KeyState, TokenIssuer, VersionedTokenVerifier,
    ... )
    >>> ring = Keyring()
    >>> _ = ring.add("v1", b"k" * 32, state=KeyState.ACTIVE)
    >>> token = TokenIssuer(ring).issue("ada")
    >>> VersionedTokenVerifier(ring).verify(token).subject
    'ada'
"""

from resilience_kit._exports import present
from resilience_kit.security._errors import MalformedTokenError as MalformedTokenError
from resilience_kit.security._errors import TokenAlgorithmError as TokenAlgorithmError
from resilience_kit.security._errors import TokenClaimError as TokenClaimError
from resilience_kit.security._errors import TokenExpiredError as TokenExpiredError
from resilience_kit.security._errors import TokenKeyError as TokenKeyError
from resilience_kit.security._errors import TokenNotYetValidError as TokenNotYetValidError
from resilience_kit.security._errors import TokenRejectedError as TokenRejectedError
from resilience_kit.security._errors import TokenRevokedError as TokenRevokedError
from resilience_kit.security._errors import TokenSignatureError as TokenSignatureError
from resilience_kit.security._errors import ValidatorUnavailableError as ValidatorUnavailableError
from resilience_kit.security._issuer import TokenIssuer as TokenIssuer
from resilience_kit.security._jwks import JWKSKeySource as JWKSKeySource
from resilience_kit.security._keyring import Keyring as Keyring
from resilience_kit.security._keyring import KeySource as KeySource
from resilience_kit.security._keyring import KeyState as KeyState
from resilience_kit.security._keyring import KeyVersion as KeyVersion
from resilience_kit.security._verifier import VerifiedToken as VerifiedToken
from resilience_kit.security._verifier import VersionedTokenVerifier as VersionedTokenVerifier

__all__ = (
    "JWKSKeySource",
    "KeySource",
    "KeyState",
    "KeyVersion",
    "Keyring",
    "MalformedTokenError",
    "TokenAlgorithmError",
    "TokenClaimError",
    "TokenExpiredError",
    "TokenIssuer",
    "TokenKeyError",
    "TokenNotYetValidError",
    "TokenRejectedError",
    "TokenRevokedError",
    "TokenSignatureError",
    "ValidatorUnavailableError",
    "VerifiedToken",
    "VersionedTokenVerifier",
)

# Reprs, docs and pickles name where users import a class from, not its private module.
present(__name__, globals(), __all__)
