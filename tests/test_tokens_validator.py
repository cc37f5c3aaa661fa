"""The remote validator: behind a CircuitBreaker and a Timeout, failing closed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from resilience_kit import CircuitBreaker, CircuitState, ConfigurationError
from resilience_kit.security import (
    Keyring,
    KeyState,
    TokenIssuer,
    TokenRejectedError,
    TokenRevokedError,
    ValidatorUnavailableError,
    VersionedTokenVerifier,
)
from resilience_kit.testing import ChaosFault, ChaosLatency, VirtualClock

START = 1_767_225_600


class Introspection:
    """A fake token-validation service: a table of answers, and a call log."""

    def __init__(self, answers: Mapping[str, Any] | None = None) -> None:
        self.answers = dict(answers or {})
        self.calls: list[str] = []

    async def __call__(self, token: str) -> Any:
        self.calls.append(token)
        await anyio.lowlevel.checkpoint()
        return self.answers.get(token, {"active": False})


def active(sub: str, **extra: Any) -> dict[str, Any]:
    return {"active": True, "sub": sub, "exp": START + 600, **extra}


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


# -- opaque tokens: checked only remotely ------------------------------------------------------


@pytest.mark.anyio
async def test_opaque_tokens_take_their_claims_from_the_validator(clock: VirtualClock) -> None:
    service = Introspection({"tok-ada": active("ada", scope="read")})
    verifier = VersionedTokenVerifier(validator=service, clock=clock)
    verified = await verifier.averify("tok-ada")
    assert (verified.kind, verified.key_version, verified.algorithm) == ("opaque", None, None)
    assert verified.subject == "ada"
    assert dict(verified.claims) == {"sub": "ada", "exp": START + 600, "scope": "read"}
    assert verified.expires_at == START + 600
    assert (await verifier.averify("tok-ada")).from_cache is True
    assert service.calls == ["tok-ada"]  # the cache spared the second call


@pytest.mark.anyio
@pytest.mark.parametrize("answer", [False, None, {"active": False, "sub": "ada"}])
async def test_inactive_tokens_are_rejected(clock: VirtualClock, answer: Any) -> None:
    verifier = VersionedTokenVerifier(
        validator=Introspection({"tok": answer}), require=(), clock=clock
    )
    with pytest.raises(TokenRevokedError) as info:
        await verifier.averify("tok")
    assert info.value.reason == "inactive"


@pytest.mark.anyio
@pytest.mark.parametrize("answer", [42, "yes", {"sub": "ada"}, {"active": "true"}])
async def test_an_answer_that_is_no_verdict_fails_closed(clock: VirtualClock, answer: Any) -> None:
    verifier = VersionedTokenVerifier(
        validator=Introspection({"tok": answer}), require=(), clock=clock
    )
    with pytest.raises(ValidatorUnavailableError) as info:
        await verifier.averify("tok")
    assert info.value.reason == "validator_unavailable"


@pytest.mark.anyio
async def test_a_bare_true_accepts_with_no_claims(clock: VirtualClock) -> None:
    verifier = VersionedTokenVerifier(
        validator=Introspection({"tok": True}), require=(), clock=clock
    )
    verified = await verifier.averify("tok")
    assert dict(verified.claims) == {}
    assert verified.expires_at is None


@pytest.mark.anyio
async def test_claims_from_the_validator_are_still_checked(clock: VirtualClock) -> None:
    service = Introspection(
        {
            "old": {"active": True, "exp": START - 1},
            "other-aud": active("ada", aud="billing"),
            "no-exp": {"active": True, "sub": "ada"},
        }
    )
    verifier = VersionedTokenVerifier(validator=service, audience="api", clock=clock)
    for token, reason in [
        ("old", "expired"),
        ("other-aud", "audience"),
        ("no-exp", "missing_claim"),
    ]:
        with pytest.raises(TokenRejectedError) as info:
            await verifier.averify(token)
        assert info.value.reason == reason


@pytest.mark.anyio
async def test_opaque_tokens_can_be_revoked_by_jti(clock: VirtualClock) -> None:
    service = Introspection({"tok": active("ada", jti="s-1")})
    verifier = VersionedTokenVerifier(validator=service, clock=clock)
    await verifier.averify("tok")
    verifier.revoke("s-1")
    with pytest.raises(TokenRevokedError):
        await verifier.averify("tok")


# -- failing closed ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fail_closed_when_the_validator_errors_but_serve_what_is_cached(
    clock: VirtualClock,
) -> None:
    service = Introspection({"cached": active("ada"), "fresh": active("bob")})
    chaos = ChaosFault(ConnectionError("identity is down"), enabled=False)
    verifier = VersionedTokenVerifier(validator=chaos(service), clock=clock)
    await verifier.averify("cached")
    chaos.enabled = True
    assert (await verifier.averify("cached")).from_cache is True
    with pytest.raises(ValidatorUnavailableError) as info:
        await verifier.averify("fresh")
    assert info.value.reason == "validator_unavailable"
    assert "ConnectionError" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)


@pytest.mark.anyio
async def test_a_slow_validator_times_out_and_fails_closed(clock: VirtualClock) -> None:
    service = Introspection({"tok": active("ada")})
    slow = ChaosLatency(5.0, clock=clock)
    verifier = VersionedTokenVerifier(validator=slow(service), validator_timeout=2.0, clock=clock)
    with pytest.raises(ValidatorUnavailableError, match=r"did not answer within 2\.0s"):
        await verifier.averify("tok")
    assert clock.monotonic() == pytest.approx(2.0)  # cut off at the timeout, not after 5 s
    assert service.calls == []
    slow.enabled = False
    assert (await verifier.averify("tok")).subject == "ada"


@pytest.mark.anyio
async def test_the_breaker_opens_and_spares_a_failing_validator(clock: VirtualClock) -> None:
    service = Introspection({f"tok-{i}": active(f"u{i}") for i in range(40)})
    chaos = ChaosFault(ConnectionError("down"))
    breaker = CircuitBreaker("identity", window=4, minimum_calls=4, open_for=30.0, clock=clock)
    verifier = VersionedTokenVerifier(
        validator=chaos(service), validator_breaker=breaker, clock=clock
    )
    for i in range(4):
        with pytest.raises(ValidatorUnavailableError, match="ConnectionError"):
            await verifier.averify(f"tok-{i}")
    assert breaker.state is CircuitState.OPEN
    calls_when_opened = chaos.injected
    for i in range(4, 20):
        with pytest.raises(ValidatorUnavailableError, match="circuit breaker is open"):
            await verifier.averify(f"tok-{i}")
    assert chaos.injected == calls_when_opened  # the breaker held the callers back
    chaos.enabled = False
    clock.advance(30.0)
    assert (await verifier.averify("tok-30")).subject == "u30"  # a probe gets through


@pytest.mark.anyio
async def test_the_default_breaker_opens_too(clock: VirtualClock) -> None:
    chaos = ChaosFault(ConnectionError("down"))
    verifier = VersionedTokenVerifier(validator=chaos(Introspection()), clock=clock)
    messages = set()
    for i in range(40):
        with pytest.raises(ValidatorUnavailableError) as info:
            await verifier.averify(f"tok-{i}")
        messages.add(str(info.value).split(": ")[-1])
    assert "its circuit breaker is open" in messages
    assert chaos.injected < 40


@pytest.mark.anyio
async def test_a_rejection_raised_by_the_validator_passes_through(clock: VirtualClock) -> None:
    async def validator(token: str) -> bool:
        raise TokenRevokedError("banned", reason="inactive")

    verifier = VersionedTokenVerifier(validator=validator, require=(), clock=clock)
    for _ in range(30):  # never counted as failures by the default breaker
        with pytest.raises(TokenRevokedError, match="banned"):
            await verifier.averify("tok")


@pytest.mark.anyio
async def test_cancellation_is_not_swallowed(clock: VirtualClock) -> None:
    started = anyio.Event()

    async def hanging(token: str) -> bool:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    verifier = VersionedTokenVerifier(
        validator=hanging, require=(), validator_timeout=1000.0, clock=VirtualClock()
    )
    async with anyio.create_task_group() as group:
        group.start_soon(verifier.averify, "tok")
        await started.wait()
        group.cancel_scope.cancel()
    assert verifier.cached_tokens == 0


# -- signed tokens, also checked remotely ------------------------------------------------------


@pytest.mark.anyio
async def test_signed_tokens_are_checked_locally_before_remotely(clock: VirtualClock) -> None:
    ring = Keyring(clock=clock)
    ring.add("v1", b"k" * 32, state=KeyState.ACTIVE)
    token = TokenIssuer(ring, clock=clock).issue("ada")
    service = Introspection({token: {"active": True, "sub": "someone-else"}})
    verifier = VersionedTokenVerifier(ring, validator=service, clock=clock)
    verified = await verifier.averify(token)
    assert verified.subject == "ada"  # the signed claims win over the remote answer
    assert verified.kind == "jwt"
    with pytest.raises(TokenRejectedError) as info:
        await verifier.averify(token[:-4] + "AAAA")
    assert info.value.reason == "bad_signature"
    assert service.calls == [token]  # a forgery never reaches the remote validator
    service.answers[token] = {"active": False}
    verifier.clear_cache()
    with pytest.raises(TokenRevokedError):
        await verifier.averify(token)


@pytest.mark.anyio
async def test_sync_verify_cannot_reach_the_validator(clock: VirtualClock) -> None:
    ring = Keyring(clock=clock)
    ring.add("v1", b"k" * 32, state=KeyState.ACTIVE)
    issuer = TokenIssuer(ring, clock=clock)
    cached, uncached = issuer.issue("ada"), issuer.issue("bob")
    verifier = VersionedTokenVerifier(
        ring, validator=Introspection({cached: True, uncached: True}), clock=clock
    )
    await verifier.averify(cached)
    assert verifier.verify(cached).from_cache is True
    with pytest.raises(ValidatorUnavailableError, match="use `await averify"):
        verifier.verify(uncached)


def test_the_validator_must_be_async() -> None:
    def blocking(token: str) -> bool:
        return True

    with pytest.raises(ConfigurationError) as info:
        VersionedTokenVerifier(validator=blocking)  # type: ignore[arg-type]
    assert info.value.parameter == "validator"


@pytest.mark.anyio
async def test_a_key_retired_during_the_remote_check_is_not_cached_as_valid(
    clock: VirtualClock,
) -> None:
    ring = Keyring(clock=clock)
    ring.add("v1", b"k" * 32)
    ring.add("v2", b"j" * 32, state=KeyState.ACTIVE)
    token = TokenIssuer(ring, clock=clock).issue("ada")
    ring.activate("v1")
    old = TokenIssuer(ring, clock=clock).issue("bob")
    ring.activate("v2")

    async def validator(presented: str) -> bool:
        if presented == old:
            ring.retire("v1")  # an operator retires v1 while the check is in flight
        await anyio.lowlevel.checkpoint()
        return True

    verifier = VersionedTokenVerifier(ring, validator=validator, clock=clock)
    assert (await verifier.averify(old)).key_version == "v1"  # judged before the change
    with pytest.raises(TokenRejectedError) as info:
        await verifier.averify(old)  # but never served from the cache afterwards
    assert info.value.reason == "retired_key"
    assert (await verifier.averify(token)).from_cache is False
    assert (await verifier.averify(token)).from_cache is True
