"""Drills 4-6 pass with every mitigation on, and fail when theirs is switched off."""

from __future__ import annotations

import pytest
from reference_system.core.drill import registry, run_drill

DRILLS = registry()
ORGANIZATION_DRILLS = [
    "organization-membership-propagation",
    "organization-org-deletion",
    "organization-event-publishing",
]


@pytest.mark.anyio
@pytest.mark.parametrize("name", ORGANIZATION_DRILLS)
async def test_an_organization_drill_passes_with_every_mitigation_on(name: str) -> None:
    report = await run_drill(DRILLS[name], seed=7)
    assert report.result.passed, report.result.checks
    assert report.result.wrongly_allowed == 0
    assert report.result.events_lost == 0


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", ORGANIZATION_DRILLS)
def test_an_organization_drill_passes_for_other_seeds(name: str, seed: int) -> None:
    import anyio  # noqa: PLC0415 - one backend is enough per extra seed

    report = anyio.run(lambda: run_drill(DRILLS[name], seed=seed))
    assert report.result.passed, report.result.checks


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "mitigation", "failing_check"),
    [
        (
            "organization-membership-propagation",
            "redelivery",
            "delayed events converge through redelivery",
        ),
        (
            "organization-membership-propagation",
            "reconciliation",
            "dropped events converge through the admin reconciliation",
        ),
        (
            "organization-membership-propagation",
            "idempotent-processing",
            "duplicates add nothing twice",
        ),
        ("organization-org-deletion", "soft-delete", "0 orphaned rows after the grace period"),
        (
            "organization-org-deletion",
            "compensation",
            "a failing dependent step is compensated and retried",
        ),
        ("organization-event-publishing", "outbox", "0 events lost"),
        (
            "organization-event-publishing",
            "backoff",
            "retries back off exponentially while the bus is down (nothing given up)",
        ),
        ("organization-event-publishing", "dead-lettering", "0 events lost"),
    ],
)
async def test_an_organization_drill_fails_without_its_mitigation(
    name: str, mitigation: str, failing_check: str
) -> None:
    report = await run_drill(DRILLS[name], seed=7, without=(mitigation,))
    assert not report.result.passed
    failed = {check.name for check in report.result.checks if not check.passed}
    assert failing_check in failed


@pytest.mark.anyio
async def test_the_gateway_routes_api_service_paths_as_the_authenticated_user() -> None:
    from reference_system.core.system import System  # noqa: PLC0415
    from reference_system.drills.identity import deploy, login, sign_up  # noqa: PLC0415
    from reference_system.organization import Organization  # noqa: PLC0415

    system = System(seed=3)
    async with system.running():
        deployment = deploy(system)
        system.add("organization", Organization)
        [user] = await sign_up(deployment, 1)
        token = await login(deployment, user)
        workload = deployment.workload
        created = await workload.request(
            "admin",
            "create",
            "POST",
            "http://organization/orgs",
            json={"org_id": "acme", "owner_id": user, "name": "Acme"},
        )
        assert created.status == 201
        url = f"http://gateway/api/organization/orgs/acme/members/{user}"
        routed = await workload.request(user, "get", "GET", url, token=token)
        assert (routed.status, routed.body) == (200, {"role": "admin"})
        anonymous = await workload.request(user, "get", "GET", url)
        assert anonymous.status == 401
        unknown = await workload.request(
            user, "get", "GET", "http://gateway/api/nowhere/x", token=token
        )
        assert unknown.status == 404
        # The caller is who the token says (the gateway sets x-user-id): not an operator.
        spoofed = await workload.request(
            user,
            "reconcile",
            "POST",
            "http://gateway/api/organization/admin/reconcile",
            token=token,
        )
        assert spoofed.status == 403
        system.network.inject("down", "organization")
        statuses = [
            (await workload.request(user, "get", "GET", url, token=token)).status for _ in range(12)
        ]
        assert statuses[0] == 502  # refused, retried once, then reported
        assert statuses[-1] == 503  # the breaker of that destination opened: fail fast
        assert system.seen().count("breaker gateway.organization open") == 1
