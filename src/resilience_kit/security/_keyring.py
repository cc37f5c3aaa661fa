"""Key versions and their life cycle: ACTIVE -> ACCEPTED -> RETIRED, in a `Keyring`."""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from resilience_kit._checks import check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError
from resilience_kit.security import _algorithms, _jwt


class KeyState(enum.Enum):
    """Where a key version is in its life.

    - ``ACTIVE``: new tokens are signed with it, and tokens signed with it are accepted.
      A keyring has at most one active version.
    - ``ACCEPTED``: tokens signed with it are still accepted; no new ones are issued.
    - ``RETIRED``: tokens signed with it are rejected with reason ``"retired_key"``.

    Examples:
        >>> KeyState.ACCEPTED.value
        'accepted'
    """

    ACTIVE = "active"
    ACCEPTED = "accepted"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One key version: its name, the algorithm pinned to it, its state and key material.

    The key material never appears in ``repr``.

    Attributes:
        version: the name tokens carry in their ``kid`` header.
        algorithm: the only algorithm tokens of this version may use.
        state: its `KeyState`, not counting a scheduled retirement.
        retire_at: wall-clock time (seconds since the epoch, on the keyring's clock) from
            which it counts as retired, or ``None``.
        verifying_key: the secret (HMAC) or public key that checks signatures.
        signing_key: the secret or private key that signs, or ``None`` (verify only).

    Examples:
        >>> ring = Keyring()
        >>> key = ring.add("v1", b"0123456789abcdef0123456789abcdef", state=KeyState.ACTIVE)
        >>> key
        KeyVersion(version='v1', algorithm='HS256', state=<KeyState.ACTIVE: 'active'>, retire_at=None)
        >>> key.state_at(0.0)
        <KeyState.ACTIVE: 'active'>
    """  # noqa: E501  (a doctest output line cannot be wrapped)

    version: str
    algorithm: str
    state: KeyState
    retire_at: float | None = None
    verifying_key: Any = field(default=None, repr=False, compare=False)
    signing_key: Any = field(default=None, repr=False, compare=False)

    def state_at(self, now: float) -> KeyState:
        """The state at wall-clock time ``now``, a scheduled retirement included."""
        if self.retire_at is not None and now >= self.retire_at:
            return KeyState.RETIRED
        return self.state


@runtime_checkable
class KeySource(Protocol):
    """Where a verifier finds the key a token names: a `Keyring`, a `JWKSKeySource`...

    ``find`` is called on every cache miss and must not do I/O. When ``wants_fetch``
    says so, the async verifier awaits ``fetch``; the sync verifier makes do with
    ``find``. ``generation`` must change whenever a key's state or material changes, so
    that the verifier re-checks the tokens it cached.

    Examples:
        >>> isinstance(Keyring(), KeySource)
        True
    """

    @property
    def generation(self) -> int:
        """A number that changes whenever the keys change."""
        ...

    def find(self, version: str) -> KeyVersion | None:
        """The key called ``version``, without I/O; ``None`` if unknown."""
        ...

    def wants_fetch(self, version: str, found: KeyVersion | None) -> bool:
        """Tell whether `fetch` could know better than `find` did (I/O is needed)."""
        ...

    async def fetch(self, version: str) -> KeyVersion | None:
        """Look ``version`` up, doing I/O if need be."""
        ...


class Keyring:
    """The key versions a service signs and verifies tokens with, and their states.

    Rotation without rejecting anyone during a rolling deploy is four steps, each rolled
    out to every instance before the next begins:

    1. ``add("v2", key)``: v2 is ACCEPTED everywhere, so any instance can verify v2
       tokens before any instance issues one.
    2. ``activate("v2")``: new tokens are v2; v1 becomes ACCEPTED.
    3. Wait for the longest token lifetime (`TokenIssuer.lifetime` plus leeway): every
       v1 token has expired.
    4. ``retire("v1")``: v1 tokens are rejected with reason ``"retired_key"``
       (``retire("v1", after=...)`` schedules it).

    Mutations are thread-safe; lookups take no lock.

    Args:
        clock: the clock whose wall time schedules retirements.

    Examples:
        >>> ring = Keyring()
        >>> _ = ring.add("v1", b"1" * 32, state=KeyState.ACTIVE)
        >>> _ = ring.add("v2", b"2" * 32)            # 1. accepted
        >>> ring.activate("v2")                       # 2. issued
        >>> ring.retire("v1")                         # 4. rejected
        >>> [(key.version, key.state.value) for key in ring]
        [('v1', 'retired'), ('v2', 'active')]
    """

    __slots__ = ("_clock", "_keys", "_lock", "generation")

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock
        self._keys: dict[str, KeyVersion] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def __repr__(self) -> str:
        states = ", ".join(f"{key.version}={key.state.value}" for key in self._keys.values())
        return f"Keyring({states})"

    def __iter__(self) -> Iterator[KeyVersion]:
        return iter(tuple(self._keys.values()))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, version: object) -> bool:
        return version in self._keys

    # -- KeySource --------------------------------------------------------------------------

    def find(self, version: str) -> KeyVersion | None:
        """The key called ``version``, or ``None``.

        Examples:
            >>> Keyring().find("v1") is None
            True
        """
        return self._keys.get(version)

    def wants_fetch(self, version: str, found: KeyVersion | None) -> bool:
        """Never: a keyring holds every key it will ever know."""
        return False

    async def fetch(self, version: str) -> KeyVersion | None:
        """The same as `find` (a keyring does no I/O)."""
        return self._keys.get(version)

    # -- reading ---------------------------------------------------------------------------

    @property
    def active(self) -> KeyVersion | None:
        """The version new tokens are signed with, if any.

        Examples:
            >>> ring = Keyring()
            >>> _ = ring.add("v1", b"1" * 32, state=KeyState.ACTIVE)
            >>> ring.active.version
            'v1'
        """
        for key in self._keys.values():
            if key.state is KeyState.ACTIVE:
                return key
        return None

    def state_of(self, version: str) -> KeyState | None:
        """The state of ``version`` now (scheduled retirements included), or ``None``.

        Examples:
            >>> ring = Keyring()
            >>> _ = ring.add("v1", b"1" * 32)
            >>> ring.state_of("v1"), ring.state_of("v9")
            (<KeyState.ACCEPTED: 'accepted'>, None)
        """
        key = self._keys.get(version)
        return None if key is None else key.state_at(self._now())

    # -- the life cycle ----------------------------------------------------------------------

    def add(
        self,
        version: str,
        key: object,
        *,
        algorithm: str = "HS256",
        state: KeyState = KeyState.ACCEPTED,
    ) -> KeyVersion:
        """Add a key version; by default ACCEPTED (verified, not yet used to sign).

        Args:
            version: the name tokens will carry in their ``kid`` header (at most 256
                characters).
            key: for ``HS*``, a secret of at least the hash size in random bytes; for
                ``RS*``/``PS*``/``ES*``/``EdDSA``, a ``cryptography`` key object, a PEM
                string or a JWK mapping (needs the ``jwt`` extra). A private key can sign;
                a public key only verifies.
            algorithm: the one algorithm tokens of this version may use.
            state: the initial state; adding an ACTIVE key makes the current active one
                ACCEPTED.

        Returns:
            The stored `KeyVersion`.

        Raises:
            ConfigurationError: for a duplicate version, an unsupported algorithm, or a
                key that does not fit the algorithm.

        Examples:
            >>> Keyring().add("v1", b"s" * 32).state
            <KeyState.ACCEPTED: 'accepted'>
        """
        if not isinstance(version, str) or not version or len(version) > _jwt.MAX_KID_LENGTH:
            raise ConfigurationError(
                "version",
                f"must be a non-empty string of at most {_jwt.MAX_KID_LENGTH} characters, "
                f"got {version[:80] if isinstance(version, str) else version!r}",
            )
        _algorithms.check_algorithm(algorithm, "algorithm")
        if not isinstance(state, KeyState):
            raise ConfigurationError("state", f"must be a KeyState, got {state!r}")
        verifying, signing = _algorithms.prepare_key(algorithm, key)
        entry = KeyVersion(version, algorithm, state, None, verifying, signing)
        with self._lock:
            if version in self._keys:
                raise ConfigurationError("version", f"{version!r} is already in the keyring")
            keys = dict(self._keys)
            if state is KeyState.ACTIVE:
                _demote_active(keys)
            keys[version] = entry
            self._install(keys)
        return entry

    def activate(self, version: str) -> None:
        """Sign new tokens with ``version``; the previously active version becomes ACCEPTED.

        Activating cancels a scheduled retirement of ``version`` (a rollback).

        Raises:
            ConfigurationError: if ``version`` is unknown or already retired.

        Examples:
            >>> ring = Keyring()
            >>> _ = ring.add("v1", b"1" * 32)
            >>> ring.activate("v1")
            >>> ring.active.version
            'v1'
        """
        now = self._now()
        with self._lock:
            current = self._require(version)
            if current.state_at(now) is KeyState.RETIRED:
                raise ConfigurationError("version", f"{version!r} is retired; add a new version")
            keys = dict(self._keys)
            _demote_active(keys)
            keys[version] = dataclasses.replace(current, state=KeyState.ACTIVE, retire_at=None)
            self._install(keys)

    def retire(self, version: str, *, after: float = 0.0) -> None:
        """Reject tokens of ``version`` from now on, or ``after`` seconds from now.

        Retire a version only once its last token has expired: wait at least the issuer's
        ``lifetime`` (plus the verifiers' leeway) after activating its successor, or pass
        that as ``after``. Verified tokens of a version are never served from the cache
        past its retirement.

        Raises:
            ConfigurationError: if ``version`` is unknown or is the active version.

        Examples:
            >>> ring = Keyring()
            >>> _ = ring.add("v1", b"1" * 32)
            >>> ring.retire("v1", after=3600.0)
            >>> ring.state_of("v1")
            <KeyState.ACCEPTED: 'accepted'>
        """
        check_positive("after", after, allow_zero=True)
        now = self._now()
        with self._lock:
            current = self._require(version)
            if current.state is KeyState.ACTIVE:
                raise ConfigurationError(
                    "version", f"{version!r} is the active version; activate another first"
                )
            keys = dict(self._keys)
            if after == 0:
                keys[version] = dataclasses.replace(current, state=KeyState.RETIRED, retire_at=None)
            else:
                keys[version] = dataclasses.replace(current, retire_at=now + after)
            self._install(keys)

    def remove(self, version: str) -> None:
        """Forget ``version``: its tokens are then rejected as ``"unknown_key"``.

        Keep retired versions instead while their tokens may still be presented, so that
        rejections say ``"retired_key"``.

        Raises:
            ConfigurationError: if ``version`` is unknown or is the active version.

        Examples:
            >>> ring = Keyring()
            >>> _ = ring.add("v1", b"1" * 32)
            >>> ring.remove("v1")
            >>> "v1" in ring
            False
        """
        with self._lock:
            if self._require(version).state is KeyState.ACTIVE:
                raise ConfigurationError(
                    "version", f"{version!r} is the active version; activate another first"
                )
            keys = dict(self._keys)
            del keys[version]
            self._install(keys)

    # -- internals --------------------------------------------------------------------------

    def _now(self) -> float:
        return resolve_clock(self._clock).time()

    def _require(self, version: str) -> KeyVersion:
        key = self._keys.get(version)
        if key is None:
            raise ConfigurationError("version", f"{version!r} is not in the keyring")
        return key

    def _install(self, keys: dict[str, KeyVersion]) -> None:
        # Readers see the old dict or the new one, never one being changed.
        self._keys = keys
        self.generation += 1


def _demote_active(keys: dict[str, KeyVersion]) -> None:
    for name, key in keys.items():
        if key.state is KeyState.ACTIVE:
            keys[name] = dataclasses.replace(key, state=KeyState.ACCEPTED)
