"""The secret manager the Identity and gateway replicas read signing keys from.

In production this is Vault or a cloud secret manager; a key rotation adds a version
there first, then rolls the four steps of the rotation out replica by replica
(`docs/tokens.md`). Secrets are derived from the run's seed, so runs repeat exactly.
"""

from __future__ import annotations

import hashlib

from resilience_kit.security import Keyring


class KeyVault:
    """Signing secrets by key version, shared by every replica of one deployment."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._versions: list[str] = []

    def create(self, version: str) -> bytes:
        """Create (or return) the secret of ``version``."""
        if version not in self._versions:
            self._versions.append(version)
        return self.secret(version)

    def secret(self, version: str) -> bytes:
        """The secret of ``version`` (32 bytes, derived from the seed)."""
        return hashlib.sha256(f"reference-system:{self._seed}:{version}".encode()).digest()

    @property
    def versions(self) -> list[str]:
        return list(self._versions)


def apply_key_step(keyring: Keyring, vault: KeyVault, action: str, version: str) -> None:
    """Apply one step of a key rotation to one replica's keyring.

    ``add`` (accepted, not signing), ``activate``, ``retire``: the documented rotation;
    ``replace``: what a deploy without a rotation does — drop every key, sign with the
    new one at once (the mitigation "multi-version" switched off).

    Raises:
        ValueError: an unknown action.
    """
    if action == "add":
        keyring.add(version, vault.secret(version))
    elif action == "activate":
        keyring.activate(version)
    elif action == "retire":
        keyring.retire(version)
    elif action == "replace":
        keyring.add(version, vault.secret(version))
        keyring.activate(version)
        for key in list(keyring):
            if key.version != version:
                keyring.remove(key.version)
    else:
        raise ValueError(f"unknown key action {action!r}")
