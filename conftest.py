"""Run the Python code blocks of the docs and the README as tests, with Sybil.

Every fenced ``python`` block in ``docs/*.md`` and ``README.md`` is executed in order,
the blocks of one file sharing a namespace; blocks that start with ``>>>`` are doctests.
``<!-- skip: next -->`` skips a block.
"""

from __future__ import annotations

from typing import Any

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

from resilience_kit import _config, telemetry


def _reset(namespace: dict[str, Any]) -> None:
    """Give each document a clean slate, and leave none of its switches behind."""
    _config.state.no_wait = False
    _config.state.clock = None
    telemetry.configure()


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["docs/*.md", "README.md"],
    setup=_reset,
    teardown=_reset,
).pytest()
