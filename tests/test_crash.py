"""The crash drill as a test: >= 50 SIGKILLs, and still nothing lost, duplicated or invented."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.crash.drill import run_drill

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


@pytest.mark.timeout(600)
def test_relay_and_consumer_survive_50_sigkills(tmp_path: Path) -> None:
    counts = run_drill(tmp_path, kills=50)
    print("crash drill:", counts)
    assert counts["killed"] >= 50
    assert counts["drain_exit_code"] == 0
    assert counts["producer_error"] is None
    assert counts["committed"] > 100
    assert counts["rolled_back"] > 10
    assert counts["lost"] == 0
    assert counts["published_for_rolled_back"] == 0
    assert counts["published_unknown"] == 0
    assert counts["effects_missing"] == 0
    assert counts["effects_duplicated"] == 0
    assert counts["effects"] == counts["committed"]
