"""Every script under examples/ runs to completion and says what it did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The reference system is a package, not a set of scripts: tests/reference_system/ runs it.
EXAMPLES = sorted(
    path
    for path in (ROOT / "examples").rglob("*.py")
    if "reference_system" not in path.relative_to(ROOT / "examples").parts
)


def test_examples_are_found() -> None:
    # A broken glob would otherwise turn the parametrised test below into no test at all.
    assert ROOT / "examples" / "policies" / "retry.py" in EXAMPLES


@pytest.mark.parametrize(
    "script", EXAMPLES, ids=[str(path.relative_to(ROOT / "examples")) for path in EXAMPLES]
)
def test_example_runs(script: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip(), f"{script.name} printed nothing"
    assert "Traceback" not in completed.stderr
