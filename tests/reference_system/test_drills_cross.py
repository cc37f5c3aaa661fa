"""Drills 19-21 pass with every mitigation on, and fail when theirs is switched off."""

from __future__ import annotations

import pytest
from reference_system.core.drill import registry, run_drill

DRILLS = registry()
CROSS_DRILLS = ["cross-bus-down", "cross-database-down", "cross-network-partition"]


@pytest.mark.anyio
@pytest.mark.parametrize("name", CROSS_DRILLS)
async def test_a_cross_service_drill_passes_with_every_mitigation_on(name: str) -> None:
    report = await run_drill(DRILLS[name], seed=7)
    assert report.result.passed, report.result.checks
    assert report.result.wrongly_allowed == 0
    assert report.result.events_lost == 0


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", CROSS_DRILLS)
def test_a_cross_service_drill_passes_for_other_seeds(name: str, seed: int) -> None:
    import anyio  # noqa: PLC0415 - one backend is enough per extra seed

    report = anyio.run(lambda: run_drill(DRILLS[name], seed=seed))
    assert report.result.passed, report.result.checks


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "mitigation", "failing_check"),
    [
        ("cross-bus-down", "outbox", "0 events lost (outbox)"),
        (
            "cross-bus-down",
            "sync-fallback",
            "the critical path degrades to a direct call: revoked sessions refused at once",
        ),
        (
            "cross-database-down",
            "replica",
            "reads served from the replica within the staleness bound",
        ),
        ("cross-database-down", "breaker", "the breaker stops the hammering"),
        ("cross-network-partition", "local-cache", "degraded responses marked as such"),
        ("cross-network-partition", "cache-invalidation", "0 wrong allows"),
        ("cross-network-partition", "degraded-mode", "degraded responses marked as such"),
    ],
)
async def test_a_cross_service_drill_fails_without_its_mitigation(
    name: str, mitigation: str, failing_check: str
) -> None:
    report = await run_drill(DRILLS[name], seed=7, without=(mitigation,))
    assert not report.result.passed
    failed = {check.name for check in report.result.checks if not check.passed}
    assert failing_check in failed


@pytest.mark.anyio
async def test_a_replica_that_cannot_reach_its_primary_keeps_its_staleness_window() -> None:
    import sqlite3  # noqa: PLC0415

    from reference_system.core.replica import ReadReplica  # noqa: PLC0415
    from reference_system.core.system import System  # noqa: PLC0415

    from resilience_kit.testing import ChaosFault  # noqa: PLC0415

    system = System(seed=0)
    async with system.running():
        store = system.store("primary")
        link = ChaosFault(sqlite3.OperationalError("down"), enabled=False)
        replica = ReadReplica(
            store.connect, system.workdir / "replica.db", clock=system.clock, link=link
        )
        assert replica.staleness() == float("inf")
        assert await replica.ship()
        await system.sleep(1.5)
        assert replica.staleness() == pytest.approx(1.5)
        link.enabled = True
        assert not await replica.ship()
        await system.sleep(60.0)
        assert replica.staleness() == pytest.approx(1.5)  # frozen: the primary takes no writes
        link.enabled = False
        assert await replica.ship()
        assert replica.staleness() == 0.0
