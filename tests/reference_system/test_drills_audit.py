"""Drills 15-16 pass with every mitigation on, and fail when theirs is switched off."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from reference_system.audit import ColdStorage
from reference_system.core.drill import registry, run_drill

DRILLS = registry()


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["audit-write-burst", "audit-storage-full"])
async def test_an_audit_drill_passes_with_every_mitigation_on(name: str) -> None:
    report = await run_drill(DRILLS[name], seed=7)
    assert report.result.passed, report.result.checks
    assert report.result.events_lost == 0
    assert report.result.duplicate_effects == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "mitigation", "failing_check"),
    [
        ("audit-write-burst", "batching", "the burst is absorbed (p99 publish-to-durable <= 2 s)"),
        ("audit-write-burst", "backpressure", "bounded memory: the queue never exceeds its bound"),
        ("audit-storage-full", "retention", "0 audit events lost (held and retried)"),
        ("audit-storage-full", "archival", "archived events verifiable"),
        ("audit-storage-full", "alerting", "an alert raised (the monitor saw it)"),
    ],
)
async def test_an_audit_drill_fails_without_its_mitigation(
    name: str, mitigation: str, failing_check: str
) -> None:
    report = await run_drill(DRILLS[name], seed=7, without=(mitigation,))
    assert not report.result.passed
    failed = {check.name for check in report.result.checks if not check.passed}
    assert failing_check in failed


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [1, 2])
async def test_the_audit_drills_pass_for_other_seeds(seed: int) -> None:
    for name in ("audit-write-burst", "audit-storage-full"):
        report = await run_drill(DRILLS[name], seed=seed)
        assert report.result.passed, (name, report.result.checks)


def test_verify_finds_an_archive_that_was_tampered_with(tmp_path: Path) -> None:
    cold = ColdStorage(tmp_path)
    rows = [
        (n, f"id-{n}", "identity", "identity.user_signed_up", f"user:{n}", 1.0, "{}")
        for n in (1, 2, 3)
    ]
    entry = cold.archive(rows, now=10.0)
    assert cold.verify().ok
    assert [record["event_id"] for record in cold.read(entry)] == ["id-1", "id-2", "id-3"]
    path = tmp_path / entry.file
    lines = gzip.decompress(path.read_bytes()).splitlines()[:2]  # one event dropped
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    problems = cold.verify().problems
    assert any("sha256" in problem for problem in problems)
    assert any("2 events, manifest says 3" in problem for problem in problems)
    path.unlink()
    assert cold.verify().problems == [f"{entry.file}: missing"]
    assert json.loads(cold.manifest_path.read_text())["files"][0]["count"] == 3
