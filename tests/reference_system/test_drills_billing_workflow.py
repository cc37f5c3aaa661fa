"""Drills 7-11 pass with every mitigation on, and fail when theirs is switched off."""

from __future__ import annotations

import pytest
from reference_system.core.drill import registry, run_drill

DRILLS = registry()
BILLING_WORKFLOW = [
    "billing-entitlement-event-lost",
    "billing-cancellation-grace",
    "workflow-stale-entitlements",
    "workflow-member-removed",
    "workflow-billing-down",
]


@pytest.mark.anyio
@pytest.mark.parametrize("name", BILLING_WORKFLOW)
async def test_a_billing_or_workflow_drill_passes_with_every_mitigation_on(name: str) -> None:
    report = await run_drill(DRILLS[name], seed=7)
    assert report.result.passed, report.result.checks
    assert report.result.wrongly_allowed == 0
    assert report.result.events_lost == 0


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", BILLING_WORKFLOW)
async def test_a_billing_or_workflow_drill_passes_for_other_seeds(
    name: str, seed: int, anyio_backend: str
) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("one backend is enough to vary the seed; both run seed 7")
    report = await run_drill(DRILLS[name], seed=seed)
    assert report.result.passed, report.result.checks


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "mitigation", "failing_check"),
    [
        (
            "billing-entitlement-event-lost",
            "periodic-sync",
            "Workflow converges within 335 s (periodic sync)",
        ),
        (
            "billing-cancellation-grace",
            "grace-period",
            "warnings during the grace period (soft limits)",
        ),
        ("billing-cancellation-grace", "usage-outbox", "0 usage records lost"),
        ("workflow-stale-entitlements", "post-validation", "0 unflagged overages"),
        (
            "workflow-member-removed",
            "invalidation",
            "0 wrong allows once MemberRemoved is processed",
        ),
        (
            "workflow-member-removed",
            "membership-fail-closed",
            "a membership miss with Organization down is refused",
        ),
        ("workflow-billing-down", "breaker", "calls to Billing bounded by the breaker"),
        ("workflow-billing-down", "last-known-good", "limits enforced from the last known good"),
        ("workflow-billing-down", "fail-open", "0 requests failed for Billing's outage"),
    ],
)
async def test_a_billing_or_workflow_drill_fails_without_its_mitigation(
    name: str, mitigation: str, failing_check: str
) -> None:
    report = await run_drill(DRILLS[name], seed=7, without=(mitigation,))
    assert not report.result.passed
    failed = {check.name for check in report.result.checks if not check.passed}
    assert failing_check in failed
