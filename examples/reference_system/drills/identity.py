"""Drills 1-3: the Identity scenarios of the failure-mode analysis.

Each drill builds Identity and the gateway on the `System`, runs a seeded workload
through the gateway, injects its fault, lets it pass, and judges the run from the
request log, the network's call record and the database's access log.
"""

from __future__ import annotations

import json
import math
from base64 import urlsafe_b64decode
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..core.drill import DrillResult, drill
from ..core.records import RequestLog, RequestRecord, Workload
from ..core.system import System
from ..gateway import Gateway
from ..identity import Identity
from ..keys import KeyVault

PASSWORD = "correct horse battery staple"


@dataclass
class Deployment:
    """Identity and gateway replicas, the key vault, and the users signed up."""

    system: System
    vault: KeyVault
    identities: list[Identity]
    gateways: list[Gateway]
    workload: Workload
    users: list[str] = field(default_factory=list)


def deploy(system: System, *, identities: int = 1, gateways: int = 1,
           token_lifetime: float = 900.0) -> Deployment:
    vault = KeyVault(system.seed)
    vault.create("v1")
    return Deployment(
        system,
        vault,
        system.add("identity", lambda ctx: Identity(ctx, vault=vault,
                                                    token_lifetime=token_lifetime), identities),
        system.add("gateway", lambda ctx: Gateway(ctx, vault=vault), gateways),
        system.workload(deadline=30.0),
    )


async def sign_up(deployment: Deployment, count: int, prefix: str = "user") -> list[str]:
    names = [f"{prefix}-{n}" for n in range(count)]
    for name in names:
        record = await deployment.workload.request(
            name, "signup", "POST", "http://gateway/api/signup",
            json={"username": name, "password": PASSWORD},
        )
        assert record.status == 201, record
    deployment.users += names
    return names


async def login(deployment: Deployment, user: str, gateway: str = "gateway") -> str | None:
    record = await deployment.workload.request(
        user, "login", "POST", f"http://{gateway}/api/login",
        json={"username": user, "password": PASSWORD},
    )
    return str(record.body["token"]) if record.status == 200 else None


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a compact token, read without verifying (the checker's view)."""
    part = token.split(".")[1]
    return dict(json.loads(urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def fill_counts(result: DrillResult, records: list[RequestRecord]) -> None:
    counts = RequestLog.tally(records)
    result.served, result.degraded = counts["served"], counts["degraded"]
    result.rejected, result.failed = counts["rejected"], counts["failed"]


# -- 1. validator down ----------------------------------------------------------------------

CACHE_TTL = 300.0
VALIDATOR_OPEN_FOR = 30.0


@drill(
    name="identity-validator-down",
    number=1,
    service="Identity",
    scenario="Token validation service unavailable for 10 minutes",
    fault="Identity's /introspect hangs for 600 s (network fault: hang)",
    mitigations=("cache", "breaker", "fail-closed"),
    criterion=(
        "tokens verified in the last 5 min pass until their cache entry expires; 0 unknown "
        "or forged tokens allowed; calls to the down validator bounded by the breaker; "
        "recovery within open_for + probes"
    ),
    page="identity-validator-down.md",
)
async def validator_down(system: System) -> DrillResult:
    rand = system.rand
    deployment = deploy(system)
    users = await sign_up(deployment, 12)
    doomed = await sign_up(deployment, 4, prefix="deleted")
    tokens = {user: await login(deployment, user) for user in users}
    doomed_tokens = [await login(deployment, user) for user in doomed]
    for user in doomed:  # accounts deleted at Identity: their tokens are still well signed
        await deployment.workload.request(
            "admin", "delete", "POST", "http://identity/admin/delete-user",
            json={"username": user},
        )
    forged = [
        token.rsplit(".", 1)[0] + "." + "A" * 43 for token in tokens.values() if token
    ][:3]

    start = system.now()
    fault_at = start + 300.0 + rand.uniform(0, 60)
    fault_end = fault_at + 600.0
    finish = fault_end + 300.0
    kinds: dict[str, str] = {token: "session" for token in tokens.values() if token}

    async def user_loop(user: str) -> None:
        while (now := system.now()) < finish:
            await system.sleep(rand.expovariate(1 / 40.0))
            if rand.random() < 0.1:  # a new session: a token no cache has seen
                fresh = await login(deployment, user)
                if fresh is not None:
                    tokens[user] = fresh
                    kinds[fresh] = "session"
            token = tokens[user]
            if token is None or system.now() >= finish:
                continue
            await deployment.workload.request(
                user, "whoami", "GET", "http://gateway/api/whoami", token=token,
                tags={"kind": kinds.get(token, "session"), "token": token},
            )
        del now

    async def attacker() -> None:
        bad = [("deleted", t) for t in doomed_tokens if t] + [("forged", t) for t in forged]
        while system.now() < finish:
            await system.sleep(rand.expovariate(1 / 15.0))
            kind, token = rand.choice(bad)
            await deployment.workload.request(
                "attacker", "whoami", "GET", "http://gateway/api/whoami", token=token,
                tags={"kind": kind, "token": token},
            )

    async def chaos() -> None:
        await system.sleep_until(fault_at)
        fault = system.network.inject("hang", "identity", path="/introspect")
        await system.sleep_until(fault_end)
        system.network.clear(fault)

    async with anyio.create_task_group() as group:
        for user in users:
            group.start_soon(user_loop, user)
        group.start_soon(attacker)
        group.start_soon(chaos)

    return judge_validator_down(system, fault_at, fault_end, start)


def judge_validator_down(system: System, fault_at: float, fault_end: float,
                         start: float) -> DrillResult:
    """Fold the request log into the drill's figures; model the 5-minute cache."""
    result = DrillResult()
    records = sorted(system.log.where(lambda r: r.operation == "whoami" and r.started >= start),
                     key=lambda r: r.started)
    fill_counts(result, records)
    result.wrongly_allowed = sum(
        1 for r in records
        if r.tags["kind"] in ("deleted", "forged") and r.outcome in ("served", "degraded")
    )
    # The model of the cache: an entry is made by a served request not covered by one.
    entry_made: dict[str, float] = {}
    wrongly_refused = expected_cached = outage_failed = 0
    outage_latencies: list[float] = []
    for r in records:
        if r.tags["kind"] != "session":
            continue
        token = str(r.tags["token"])
        live = token in entry_made and r.started < entry_made[token] + CACHE_TTL
        in_outage = fault_at <= r.started < fault_end
        if in_outage:
            if r.outcome != "served":
                outage_latencies.append(r.latency)
            if r.outcome == "failed":
                outage_failed += 1
            if live:
                expected_cached += 1
                if r.outcome != "served":
                    wrongly_refused += 1
        if r.outcome == "served" and not live:
            entry_made[token] = r.started
    result.dependency_calls = system.network.calls_to("identity", fault_at, fault_end)
    # At most a window (10 calls) to open, then 2 probes per open interval.
    bound = 10 + (math.ceil((fault_end - fault_at) / VALIDATOR_OPEN_FOR) + 1) * 2
    recovered = [
        r for r in records
        if r.started >= fault_end and r.outcome == "served" and r.tags["kind"] == "session"
        and not (str(r.tags["token"]) in entry_made
                 and entry_made[str(r.tags["token"])] < r.started)
    ]
    # A served request after the fault whose entry it made itself needed the validator.
    needing_validator = [
        r for r in records if r.started >= fault_end and r.tags["kind"] == "session"
        and r.outcome == "served" and entry_made.get(str(r.tags["token"])) == r.started
    ]
    first = needing_validator[0].started if needing_validator else None
    del recovered
    result.time_to_recover = None if first is None else first - fault_end
    median = percentile(outage_latencies, 0.5)
    result.check("no unknown or forged token allowed", result.wrongly_allowed == 0,
                 f"{result.wrongly_allowed} wrongly allowed")
    result.check("cached sessions keep passing", wrongly_refused == 0 and expected_cached > 0,
                 f"{expected_cached - wrongly_refused} of {expected_cached} requests within "
                 "5 min of verification served")
    result.check("refusals are fast and explicit (503, never hanging)",
                 outage_failed == 0 and median <= 0.5,
                 f"{outage_failed} failed, median latency of refusals {median:.2f}s")
    result.check("calls to the down validator bounded by the breaker",
                 result.dependency_calls <= bound,
                 f"{result.dependency_calls} calls reached Identity (bound {bound})")
    result.check("recovers within open_for + probes",
                 first is not None and first - fault_end <= VALIDATOR_OPEN_FOR + 30.0,
                 "never" if first is None else f"{first - fault_end:.1f}s after the fault ended")
    return result
