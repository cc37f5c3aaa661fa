"""The caching example tells the MemberRemoved and Billing-down stories, on both backends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples/caching/membership_and_entitlements.py"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_caching_example_shows_each_mitigation(backend: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--backend", backend],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    # MemberRemoved: the naive cache keeps the stale answer, the PolicyCache does not
    assert "the naive cache stored the stale answer: ann is member = True" in out
    assert "is ann a member? -> False [loaded" in out
    assert "asked again -> False [fresh" in out
    # the organization service is down: fresh answers only, then a denial
    assert "(cached 14 min ago) -> True [fresh, 840s old" in out
    assert "denied: cache 'memberships' could not load ('acme', 'bob')" in out
    # Billing is down: last known good, the breaker opens, the default for a new org
    assert out.count("[fallback, 7200s old") == 4
    assert "breaker 'billing': closed -> open" in out
    assert "loader error: CircuitOpenError" in out
    assert "a new organization -> {'seats': 5, 'workflows': 10} [default" in out
    assert "Billing was called 3 times for 6 requests" in out
    assert out.rstrip().endswith("entitlements: 7 loads, 5 failed, 5 fail-open serves")
