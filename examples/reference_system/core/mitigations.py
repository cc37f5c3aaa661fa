"""Which mitigations are switched on: services read this once, at construction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Every name `--without-mitigation` accepts, with what switching it off means. A drill
# lists the names it exercises; a service reads `Mitigations.on(name)` when it builds
# its policies. New services add their names here.
KNOWN: dict[str, str] = {
    "cache": "the gateway does not cache verified tokens (every request asks the validator)",
    "breaker": "circuit breakers never open (DISABLED)",
    "fail-closed": "the gateway lets locally valid tokens through when the validator is down",
    "multi-version": "a deploy replaces the signing key at once instead of the four-step rotation",
    "retries": "database and HTTP calls are tried once",
    "parallel-consumers": "Analytics handles each topic in one lane instead of 8 per-key lanes",
    "lag-monitoring": "Analytics exposes no lag gauge and no lag checks in /health/ready",
    "validation": "Analytics never checks its read model (invariants, sample vs the event log)",
    "versioned-rebuild": "Analytics rebuilds its read model in place: readers see it half-built",
}


@dataclass(frozen=True)
class Mitigations:
    """The set of mitigations switched off for one run; everything else is on."""

    disabled: frozenset[str] = frozenset()

    @classmethod
    def without(cls, names: Iterable[str]) -> Mitigations:
        """Mitigations with ``names`` switched off; unknown names are refused."""
        chosen = frozenset(names)
        unknown = sorted(chosen - KNOWN.keys())
        if unknown:
            raise ValueError(
                f"unknown mitigation(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}"
            )
        return cls(chosen)

    def on(self, name: str) -> bool:
        """Whether mitigation ``name`` is switched on."""
        if name not in KNOWN:
            raise KeyError(f"unknown mitigation {name!r}: add it to mitigations.KNOWN")
        return name not in self.disabled
