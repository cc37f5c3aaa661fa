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
    "batching": "Audit writes one event per transaction instead of batches (group commit)",
    "backpressure": "Audit buffers events in an unbounded queue and acks them before they "
    "are written",
    "retention": "Audit never deletes rows from its hot storage (archives still written)",
    "archival": "Audit's retention deletes rows without archiving them to cold storage",
    "alerting": "Audit reports no health checks on its writer and lag: no alert fires",
    "inbox": "consumers do not de-duplicate events by id (a redelivered event is handled again)",
    "idempotency-key": (
        "e-mails go to the mail server without an Idempotency-Key (a re-send after a lost "
        "acknowledgement is delivered again)"
    ),
    "dead-lettering": "nothing goes to dead letters: a consumer retries a failing message "
    "forever, a relay holds events it gave up on in the outbox (blocked)",
    "in-app-fallback": "no in-app notification when an e-mail cannot be sent",
    "queue-persistence": (
        "an e-mail that cannot be sent is given up on instead of kept for after the outage"
    ),
    "redelivery": "a consumer whose handler fails gives the event up at once (dead letters) "
    "instead of retrying it with backoff",
    "reconciliation": "Organization has no admin reconciliation endpoint: a lost event is "
    "never repaired",
    "idempotent-processing": "consumers apply every delivery: no inbox, no check of the "
    "current state (a redelivered or re-published event acts twice)",
    "soft-delete": "deleting an org purges it at once: no grace period for dependents still "
    "processing",
    "compensation": "a purge step that fails leaves the steps before it in place: the org "
    "stays half-purged and the purge is never retried",
    "outbox": "Organization publishes events straight to the bus after its commit: what the "
    "bus refuses is lost",
    "backoff": "the relay retries a failed publish every 0.5 s instead of backing off "
    "exponentially",
    "parallel-consumers": "Analytics handles each topic in one lane instead of 8 per-key lanes",
    "lag-monitoring": "Analytics exposes no lag gauge and no lag checks in /health/ready",
    "validation": "Analytics never checks its read model (invariants, sample vs the event log)",
    "versioned-rebuild": "Analytics rebuilds its read model in place: readers see it half-built",
    "replica": "Organization has no read replica: membership lookups fail (503) while its "
    "database is down",
    "sync-fallback": "a session revoked while the bus is down reaches the gateways only "
    "through the event, after the bus is back (no direct call)",
    "local-cache": "the gateway keeps no membership answers: while Organization is "
    "unreachable every lookup fails",
    "cache-invalidation": "the gateway's membership cache ignores organization events: a "
    "member removed during a partition keeps a cached answer",
    "degraded-mode": "the gateway does not mark answers served from its cache as degraded",
    "periodic-sync": "Billing never re-publishes current entitlements: a lost "
    "entitlements_changed event leaves Workflow stale until its 1-hour cache ttl",
    "grace-period": "cancelling a subscription drops the org to the free plan's hard limits "
    "at once: no grace period, no soft limits with warnings",
    "usage-outbox": "Workflow reports usage with one POST to Billing after each creation "
    "instead of an event in its outbox: what Billing cannot take is lost",
    "post-validation": "Workflow never re-checks created resources against fresh "
    "entitlements: overages let through by stale entitlements stay unflagged",
    "invalidation": "Workflow keeps a cached membership when organization.member_removed "
    "arrives: a removed member is let in until the 15-min ttl runs out",
    "membership-fail-closed": "on a membership cache miss with Organization unreachable, "
    "Workflow lets the request through (fail open) instead of refusing it",
    "fail-open": "on an entitlements miss with Billing unreachable, Workflow refuses the "
    "creation (503) instead of allowing it with a warning",
    "last-known-good": "after a failed entitlements refresh Workflow forgets the last known "
    "entitlements and lets creations through unchecked",
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
                f"unknown mitigation{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"known: {', '.join(sorted(KNOWN))}"
            )
        return cls(chosen)

    def on(self, name: str) -> bool:
        """Whether mitigation ``name`` is switched on."""
        if name not in KNOWN:
            raise KeyError(f"unknown mitigation {name!r}: add it to mitigations.KNOWN")
        return name not in self.disabled
