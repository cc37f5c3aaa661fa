"""The baseline: every service together under a mixed workload passes, and fails when
something in the system is broken."""

from __future__ import annotations

import sqlite3

import pytest
from reference_system.analytics import Analytics
from reference_system.core.drill import Report, registry, run_drill
from reference_system.organization import Organization

from resilience_kit.messaging import Event
from resilience_kit.transports import MemoryBus

BASELINE = registry()["baseline"]


def failed_checks(report: Report) -> set[str]:
    return {check.name for check in report.result.checks if not check.passed}


@pytest.mark.anyio
async def test_the_baseline_passes_with_every_service_running_together() -> None:
    report = await run_drill(BASELINE)
    assert report.result.passed, report.result.checks
    result = report.result
    assert result.failed == result.wrongly_allowed == result.events_lost == 0
    assert result.duplicate_effects == result.dead_lettered == 0
    assert result.served > 50  # a real workload went through the gateway
    assert report.virtual_seconds > 60.0


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [3, 11])
async def test_the_baseline_passes_for_other_seeds(seed: int) -> None:
    report = await run_drill(BASELINE, seed=seed)
    assert report.result.passed, report.result.checks


@pytest.mark.anyio
async def test_an_event_dropped_on_the_bus_makes_the_baseline_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish = MemoryBus.publish
    dropped: list[Event] = []

    async def lossy(self: MemoryBus, topic: str, event: Event) -> None:
        # The broker acknowledges the first member_added and then loses it.
        if event.type == "organization.member_added" and not dropped:
            dropped.append(event)
            return
        await publish(self, topic, event)

    monkeypatch.setattr(MemoryBus, "publish", lossy)
    report = await run_drill(BASELINE)
    assert dropped
    assert not report.result.passed
    assert report.result.events_lost >= 1
    assert (
        "every event delivered to every consumer group (0 lost, 0 dead letters)"
        in failed_checks(report)
    )


@pytest.mark.anyio
async def test_a_write_that_forgets_its_event_makes_the_baseline_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emit = Organization._emit

    def forgetful(
        self: Organization, connection: sqlite3.Connection, pending: list[Event], event: Event
    ) -> None:
        if event.type != "organization.member_removed":
            emit(self, connection, pending, event)

    monkeypatch.setattr(Organization, "_emit", forgetful)
    report = await run_drill(BASELINE)
    assert not report.result.passed
    assert (
        "every event delivered to every consumer group (0 lost, 0 dead letters)"
        in failed_checks(report)
    )


@pytest.mark.anyio
async def test_a_read_model_that_misses_events_makes_the_baseline_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle = Analytics.handle

    async def careless(self: Analytics, event: Event) -> None:
        if event.type != "workflow.resource_created":  # a bug: resources never counted
            await handle(self, event)

    monkeypatch.setattr(Analytics, "handle", careless)
    report = await run_drill(BASELINE)
    assert not report.result.passed
    assert "Analytics' read model equals an independent fold of the events" in failed_checks(report)
