"""Drills 17-18 pass with every mitigation on, and fail when theirs is switched off."""

from __future__ import annotations

import pytest
from reference_system.core.drill import registry, run_drill

DRILLS = registry()


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["analytics-processing-lag", "analytics-read-model-corruption"])
@pytest.mark.parametrize("seed", [7, 11])
async def test_an_analytics_drill_passes_with_every_mitigation_on(name: str, seed: int) -> None:
    report = await run_drill(DRILLS[name], seed=seed)
    assert report.result.passed, report.result.checks
    assert report.result.events_lost == report.result.duplicate_effects == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "mitigation", "failing_check"),
    [
        (
            "analytics-processing-lag",
            "parallel-consumers",
            "catch-up at least 3x faster with parallel consumers",
        ),
        (
            "analytics-processing-lag",
            "lag-monitoring",
            "lag reported by the monitor and the metric",
        ),
        (
            "analytics-read-model-corruption",
            "validation",
            "the rebuilt model equals an independent fold of the event log exactly",
        ),
        (
            "analytics-read-model-corruption",
            "versioned-rebuild",
            "the old version served during the rebuild",
        ),
    ],
)
async def test_an_analytics_drill_fails_without_its_mitigation(
    name: str, mitigation: str, failing_check: str
) -> None:
    report = await run_drill(DRILLS[name], seed=7, without=(mitigation,))
    assert not report.result.passed
    failed = {check.name for check in report.result.checks if not check.passed}
    assert failing_check in failed
