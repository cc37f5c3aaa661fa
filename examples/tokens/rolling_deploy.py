"""Rotating a token signing key during a rolling deploy, without logging anyone out.

Two pods of an Identity service, A and B, each with its own keyring. Every step of the
rotation reaches pod A first and pod B a little later — a rolling deploy — and at each
moment every token issued so far is presented to both pods:

    1. add v2 as ACCEPTED   (verified, not yet issued)
    2. activate v2          (issued; v1 is ACCEPTED)
    3. wait for the longest token lifetime
    4. retire v1            (rejected with reason "retired_key")

Then the two shortcuts that do log people out. Time is a VirtualClock, so the waits
take no time and the output is the same on every run.

    python examples/tokens/rolling_deploy.py
"""

from __future__ import annotations

from collections.abc import Callable

from resilience_kit.security import (
    Keyring,
    KeyState,
    TokenIssuer,
    TokenRejectedError,
    VersionedTokenVerifier,
)
from resilience_kit.testing import VirtualClock

SECRETS = {"v1": b"v1-secret-0123456789abcdef-012345", "v2": b"v2-secret-0123456789abcdef-012345"}
LIFETIME = 600.0  # seconds: the longest any token lives


class Pod:
    """One instance of the service: a keyring, an issuer and a verifier of its own."""

    def __init__(self, name: str, clock: VirtualClock) -> None:
        self.name = name
        self.ring = Keyring(clock=clock)
        self.ring.add("v1", SECRETS["v1"], state=KeyState.ACTIVE)
        self.issuer = TokenIssuer(self.ring, lifetime=LIFETIME, clock=clock)
        self.verifier = VersionedTokenVerifier(self.ring, clock=clock, cache_ttl=0)

    def states(self) -> str:
        return " ".join(f"{key.version}={key.state_at(clock.time()).value}" for key in self.ring)


clock = VirtualClock()
tokens: dict[str, tuple[str, float]] = {}  # label -> (token, expires at)


def issue(pod: Pod, label: str) -> None:
    token = pod.issuer.issue(f"user-of-{pod.name}")
    tokens[label] = (token, clock.time() + LIFETIME)


def verdict(pod: Pod, token: str, expires_at: float) -> str:
    try:
        pod.verifier.verify(token)
    except TokenRejectedError as exc:
        if clock.time() >= expires_at:
            return "expired" if exc.reason == "expired" else f"{exc.reason} (expired anyway)"
        return f"REJECTED ({exc.reason})"
    return "ok"


def show(title: str, pods: list[Pod]) -> None:
    print(f"\n[t={clock.monotonic():5.0f}s] {title}")
    for pod in pods:
        print(f"    pod {pod.name}: {pod.states()}")
    for label, (token, expires_at) in tokens.items():
        cells = "  ".join(f"{pod.name}: {verdict(pod, token, expires_at):27s}" for pod in pods)
        print(f"    {label:13s} ({token.split('.')[0]})  {cells}".rstrip())


def roll_out(title: str, pods: list[Pod], step: Callable[[Pod], None]) -> None:
    """Apply ``step`` to one pod after the other, issuing a token from each as we go."""
    for pod in pods:
        step(pod)
        issue(pod, f"{pod.name} {title.split(maxsplit=1)[0]}")
        show(f"{title}: reached pod {pod.name}", pods)
        clock.advance(30.0)


print("The rotation, step by step")
a, b = Pod("A", clock), Pod("B", clock)
pods = [a, b]
issue(a, "A before")
issue(b, "B before")
show("both pods sign with v1", pods)
roll_out("add v2 as accepted", pods, lambda pod: pod.ring.add("v2", SECRETS["v2"]))
roll_out("activate v2", pods, lambda pod: pod.ring.activate("v2"))
clock.advance(LIFETIME)
print(f"\n... {LIFETIME:.0f}s later, every v1 token has expired ...")
roll_out("retire v1", pods, lambda pod: pod.ring.retire("v1"))

print("\n\nShortcuts, and who they log out")
clock = VirtualClock()
tokens.clear()
a, b = Pod("A", clock), Pod("B", clock)
a.ring.add("v2", SECRETS["v2"])
a.ring.activate("v2")  # pod B has not been given v2 yet
issue(a, "A, v2 early")
show("activate v2 on pod A before every pod accepts it", [a, b])

clock = VirtualClock()
tokens.clear()
a = Pod("A", clock)
issue(a, "A, v1")
a.ring.add("v2", SECRETS["v2"])
a.ring.activate("v2")
clock.advance(60.0)  # far less than the lifetime
a.ring.retire("v1")
show("retire v1 60s after activating v2 (the lifetime is 600s)", [a])
