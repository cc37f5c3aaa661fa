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

from reference_system.core.drill import DrillResult, drill
from reference_system.core.records import RequestLog, RequestRecord, Workload
from reference_system.core.system import System
from reference_system.gateway import Gateway
from reference_system.identity import Identity
from reference_system.keys import KeyVault

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


def deploy(
    system: System,
    *,
    identities: int = 1,
    gateways: int = 1,
    token_lifetime: float = 900.0,
    cache_memberships: bool = False,
) -> Deployment:
    vault = KeyVault(system.seed)
    vault.create("v1")

    def every_gateway() -> list[str]:  # service discovery: Identity's direct revocations
        return [f"http://{host}" for host in system.network.hosts("gateway")]

    return Deployment(
        system,
        vault,
        system.add(
            "identity",
            lambda ctx: Identity(
                ctx,
                vault=vault,
                token_lifetime=token_lifetime,
                revocation_targets=every_gateway,
            ),
            identities,
        ),
        system.add(
            "gateway",
            lambda ctx: Gateway(ctx, vault=vault, cache_memberships=cache_memberships),
            gateways,
        ),
        system.workload(deadline=30.0),
    )


async def sign_up(deployment: Deployment, count: int, prefix: str = "user") -> list[str]:
    names = [f"{prefix}-{n}" for n in range(count)]
    for name in names:
        record = await deployment.workload.request(
            name,
            "signup",
            "POST",
            "http://gateway/api/signup",
            json={"username": name, "password": PASSWORD},
        )
        assert record.status == 201, record
    deployment.users += names
    return names


async def login(deployment: Deployment, user: str, gateway: str = "gateway") -> str | None:
    record = await deployment.workload.request(
        user,
        "login",
        "POST",
        f"http://{gateway}/api/login",
        json={"username": user, "password": PASSWORD},
    )
    return str(record.body["token"]) if record.status == 200 else None


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a JWT, read without verifying (the checker's view)."""
    return _segment(token, 1)


def version_of(token: str) -> str:
    """The key version a JWT names (its ``kid`` header), read without verifying."""
    return str(_segment(token, 0).get("kid"))


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
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
            "admin",
            "delete",
            "POST",
            "http://identity/admin/delete-user",
            json={"username": user},
        )
    forged = [token.rsplit(".", 1)[0] + "." + "A" * 43 for token in tokens.values() if token][:3]

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
                user,
                "whoami",
                "GET",
                "http://gateway/api/whoami",
                token=token,
                tags={"kind": kinds.get(token, "session"), "token": token},
            )
        del now

    async def attacker() -> None:
        bad = [("deleted", t) for t in doomed_tokens if t] + [("forged", t) for t in forged]
        while system.now() < finish:
            await system.sleep(rand.expovariate(1 / 15.0))
            kind, token = rand.choice(bad)
            await deployment.workload.request(
                "attacker",
                "whoami",
                "GET",
                "http://gateway/api/whoami",
                token=token,
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


def judge_validator_down(
    system: System, fault_at: float, fault_end: float, start: float
) -> DrillResult:
    """Fold the request log into the drill's figures; model the 5-minute cache."""
    result = DrillResult()
    records = sorted(
        system.log.where(lambda r: r.operation == "whoami" and r.started >= start),
        key=lambda r: r.started,
    )
    fill_counts(result, records)
    result.wrongly_allowed = sum(
        1
        for r in records
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
        r
        for r in records
        if r.started >= fault_end
        and r.outcome == "served"
        and r.tags["kind"] == "session"
        and not (
            str(r.tags["token"]) in entry_made and entry_made[str(r.tags["token"])] < r.started
        )
    ]
    # A served request after the fault whose entry it made itself needed the validator.
    needing_validator = [
        r
        for r in records
        if r.started >= fault_end
        and r.tags["kind"] == "session"
        and r.outcome == "served"
        and entry_made.get(str(r.tags["token"])) == r.started
    ]
    first = needing_validator[0].started if needing_validator else None
    del recovered
    result.time_to_recover = None if first is None else first - fault_end
    median = percentile(outage_latencies, 0.5)
    result.check(
        "no unknown or forged token allowed",
        result.wrongly_allowed == 0,
        f"{result.wrongly_allowed} wrongly allowed",
    )
    result.check(
        "cached sessions keep passing",
        wrongly_refused == 0 and expected_cached > 0,
        f"{expected_cached - wrongly_refused} of {expected_cached} requests within "
        "5 min of verification served",
    )
    result.check(
        "refusals are fast and explicit (503, never hanging)",
        outage_failed == 0 and median <= 0.5,
        f"{outage_failed} failed, median latency of refusals {median:.2f}s",
    )
    result.check(
        "calls to the down validator bounded by the breaker",
        result.dependency_calls <= bound,
        f"{result.dependency_calls} calls reached Identity (bound {bound})",
    )
    result.check(
        "recovers within open_for + probes",
        first is not None and first - fault_end <= VALIDATOR_OPEN_FOR + 30.0,
        "never" if first is None else f"{first - fault_end:.1f}s after the fault ended",
    )
    return result


# -- 2. rolling token deploy ----------------------------------------------------------------

TOKEN_LIFETIME = 900.0
STEP_GAP = 20.0  # between two replicas' steps: a rolling deploy, one pod at a time


@drill(
    name="identity-rolling-deploy",
    number=2,
    service="Identity",
    scenario="Token version mismatch during a rolling deploy over 3 replicas",
    fault="key v1 -> v2 rolled out replica by replica (3 Identity + 3 gateway replicas)",
    mitigations=("multi-version",),
    criterion=(
        "0 valid tokens rejected during the overlap; old-version tokens rejected after "
        "retirement; re-issuance works"
    ),
    page="identity-rolling-deploy.md",
)
async def rolling_deploy(system: System) -> DrillResult:
    rand = system.rand
    deployment = deploy(system, identities=3, gateways=3, token_lifetime=TOKEN_LIFETIME)
    users = await sign_up(deployment, 12)
    hosts = system.network.hosts("identity") + system.network.hosts("gateway")
    gateways = system.network.hosts("gateway")
    multi_version = system.mitigations.on("multi-version")
    tokens: dict[str, str | None] = dict.fromkeys(users)
    start = system.now()
    rollout_at = start + 60.0 + rand.uniform(0, 60)
    timeline: dict[str, float] = {}

    async def step(action: str, version: str, order: list[str]) -> None:
        for host in order:
            await deployment.workload.request(
                "deployer",
                "deploy",
                "POST",
                f"http://{host}/admin/keys",
                json={"action": action, "version": version},
            )
            await system.sleep(STEP_GAP * rand.uniform(0.5, 1.5))

    async def deployer() -> None:
        await system.sleep_until(rollout_at)
        deployment.vault.create("v2")
        order = rand.sample(hosts, len(hosts))  # replicas move in a random order
        timeline["rollout"] = system.now()
        if multi_version:
            await step("add", "v2", order)
            await step("activate", "v2", order)  # gateways too: they may then retire v1
            timeline["activated"] = system.now()
            await system.sleep(TOKEN_LIFETIME)  # no unexpired v1 token is left
            timeline["retire"] = system.now()
            await step("retire", "v1", order)
        else:
            await step("replace", "v2", order)  # each pod swaps its key as it restarts
            timeline["retire"] = system.now()
        timeline["done"] = system.now()

    async def user_loop(user: str) -> None:
        while "done" not in timeline or system.now() < timeline["done"] + 120.0:
            await system.sleep(rand.expovariate(1 / 20.0))
            gateway = rand.choice(gateways)
            if tokens[user] is None:
                tokens[user] = await login(deployment, user, gateway)
                continue
            token = str(tokens[user])
            claims = claims_of(token)
            record = await deployment.workload.request(
                user,
                "whoami",
                "GET",
                f"http://{gateway}/api/whoami",
                token=token,
                tags={
                    "version": version_of(token),
                    "exp": claims["exp"],
                    "wall": system.clock.time(),
                },
            )
            if record.status == 401:
                tokens[user] = None  # log in again: re-issuance

    async with anyio.create_task_group() as group:
        group.start_soon(deployer)
        for user in users:
            group.start_soon(user_loop, user)
    return judge_rolling_deploy(system, timeline, start, users)


def judge_rolling_deploy(
    system: System, timeline: dict[str, float], start: float, users: list[str]
) -> DrillResult:
    result = DrillResult()
    records = system.log.where(lambda r: r.operation == "whoami" and r.started >= start)
    fill_counts(result, records)
    unexpired = [r for r in records if r.tags["wall"] < r.tags["exp"]]
    overlap = [r for r in unexpired if r.started < timeline["retire"]]
    valid_rejected = sum(1 for r in overlap if r.outcome != "served")
    after = [r for r in records if r.started >= timeline["done"]]
    old_accepted = sum(1 for r in after if r.tags["version"] == "v1" and r.outcome == "served")
    result.wrongly_allowed = old_accepted
    reissued = {r.client for r in after if r.tags["version"] == "v2" and r.outcome == "served"}
    result.dependency_calls = sum(1 for r in system.log.records if r.operation == "login")
    result.check(
        "0 valid tokens rejected during the overlap",
        valid_rejected == 0,
        f"{valid_rejected} of {len(overlap)} unexpired tokens rejected before retirement",
    )
    result.check(
        "old-version tokens rejected after retirement",
        old_accepted == 0,
        f"{old_accepted} v1 tokens accepted after retirement",
    )
    result.check(
        "re-issuance works: every user is served with a v2 token",
        reissued == set(users),
        f"{len(reissued)} of {len(users)} users",
    )
    steps = system.log.where(lambda r: r.operation == "deploy")
    applied = sum(1 for r in steps if r.status == 200)
    result.check(
        "every deploy step applied", applied == len(steps) > 0, f"{applied} of {len(steps)} steps"
    )
    result.time_to_recover = timeline["done"] - timeline["rollout"]
    return result


# -- 3. database connection loss ------------------------------------------------------------

DB_OPEN_FOR = 10.0


@drill(
    name="identity-database-loss",
    number=3,
    service="Identity",
    scenario="Identity's database connection lost: blips, then a 2-minute outage",
    fault="connections dropped (sqlite3.OperationalError) 8 times, then every use for 120 s",
    mitigations=("retries", "breaker"),
    criterion=(
        "blips invisible (0 failed logins); a long outage fails fast (503 with Retry-After, "
        "never hanging); automatic recovery"
    ),
    page="identity-database-loss.md",
)
async def database_loss(system: System) -> DrillResult:
    rand = system.rand
    deployment = deploy(system)
    users = await sign_up(deployment, 10)
    pool = deployment.identities[0].pool
    start = system.now()
    blips_end = start + 200.0
    outage_at = blips_end + 30.0
    outage_end = outage_at + 120.0
    finish = outage_end + 60.0

    async def chaos() -> None:
        for _ in range(8):
            await system.sleep(rand.uniform(10.0, 24.0))
            pool.drop_connections(rand.randint(1, 3))  # a blip: up to 3 broken connections
        await system.sleep_until(outage_at)
        pool.outage = True
        await system.sleep_until(outage_end)
        pool.outage = False

    async def user_loop(user: str) -> None:
        while system.now() < finish:
            await system.sleep(rand.expovariate(1 / 5.0))
            if system.now() < finish:
                await login(deployment, user)

    async with anyio.create_task_group() as group:
        group.start_soon(chaos)
        for user in users:
            group.start_soon(user_loop, user)

    result = DrillResult()
    logins = system.log.where(lambda r: r.operation == "login" and r.started >= start)
    fill_counts(result, logins)
    during_blips = [r for r in logins if r.started < blips_end]
    blip_failures = sum(1 for r in during_blips if r.outcome != "served")
    during_outage = [r for r in logins if outage_at <= r.started < outage_end]
    not_explicit = sum(
        1 for r in during_outage if not (r.status == 503 and r.retry_after is not None)
    )
    slowest = max((r.latency for r in during_outage), default=0.0)
    median = percentile([r.latency for r in during_outage], 0.5)
    result.dependency_calls = sum(1 for at in pool.attempts if outage_at <= at < outage_end)
    bound = 2 * 4 + (math.ceil((outage_end - outage_at) / DB_OPEN_FOR) + 1) * 2
    served_after = [r for r in logins if r.started >= outage_end and r.outcome == "served"]
    first = served_after[0].started - outage_end if served_after else None
    result.time_to_recover = first
    result.check(
        "blips are invisible",
        blip_failures == 0,
        f"{blip_failures} of {len(during_blips)} logins during blips not served",
    )
    result.check(
        "the outage fails fast and explicitly",
        not_explicit == 0 and median <= 0.1 and slowest <= 2.5,
        f"{not_explicit} of {len(during_outage)} not 503+Retry-After; median "
        f"{median:.2f}s, slowest {slowest:.2f}s",
    )
    result.check(
        "the database is not hammered while down",
        result.dependency_calls <= bound,
        f"{result.dependency_calls} database uses during the outage (bound {bound})",
    )
    result.check(
        "recovers by itself",
        first is not None and first <= DB_OPEN_FOR + 10.0,
        "never" if first is None else f"first login served {first:.1f}s after",
    )
    return result
