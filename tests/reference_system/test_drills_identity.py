"""Drills 1-3 pass with every mitigation on, and fail when theirs is switched off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reference_system.core.drill import registry, run_drill
from reference_system.core.runner import main

DRILLS = registry()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name", ["identity-validator-down", "identity-rolling-deploy", "identity-database-loss"]
)
async def test_an_identity_drill_passes_with_every_mitigation_on(name: str) -> None:
    report = await run_drill(DRILLS[name], seed=7)
    assert report.result.passed, report.result.checks
    assert report.result.wrongly_allowed == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "mitigation", "failing_check"),
    [
        ("identity-validator-down", "cache", "cached sessions keep passing"),
        (
            "identity-validator-down",
            "breaker",
            "calls to the down validator bounded by the breaker",
        ),
        ("identity-validator-down", "fail-closed", "no unknown or forged token allowed"),
        ("identity-rolling-deploy", "multi-version", "0 valid tokens rejected during the overlap"),
        ("identity-database-loss", "retries", "blips are invisible"),
        ("identity-database-loss", "breaker", "the database is not hammered while down"),
    ],
)
async def test_an_identity_drill_fails_without_its_mitigation(
    name: str, mitigation: str, failing_check: str
) -> None:
    report = await run_drill(DRILLS[name], seed=7, without=(mitigation,))
    assert not report.result.passed
    failed = {check.name for check in report.result.checks if not check.passed}
    assert failing_check in failed


def test_the_runner_writes_a_json_report_and_exits_zero_when_all_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    assert main(["--drill", "identity-database-loss", "--seed", "3", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["schema"] == "reference-system-drills/1"
    [entry] = document["drills"]
    assert entry["passed"] is True
    assert set(entry["requests"]) == {"served", "degraded", "rejected", "failed"}
    assert "PASS" in capsys.readouterr().out


def test_the_runner_exits_one_when_a_drill_fails(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--drill", "identity-database-loss", "--without-mitigation", "retries", "--quiet"]
    assert main(argv) == 1
    assert "FAIL" in capsys.readouterr().out


def test_the_runner_lists_drills_and_refuses_unknown_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--list"]) == 0
    assert "identity-rolling-deploy" in capsys.readouterr().out
    assert main(["--drill", "no-such-drill"]) == 2
