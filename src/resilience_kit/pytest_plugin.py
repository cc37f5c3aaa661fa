"""pytest fixtures for testing resilient code; registered through the ``pytest11`` entry point.

The fixtures are synchronous, so they work the same under anyio's pytest plugin,
pytest-asyncio, or plain pytest.

Examples:
    ```python
    def test_gives_up(virtual_clock):
        ...  # every policy built without a clock now runs on virtual_clock
    ```
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilience_kit.testing import VirtualClock, use_clock
from resilience_kit.testing import no_wait as _no_wait

__all__ = ("no_wait", "virtual_clock")


@pytest.fixture
def virtual_clock() -> Iterator[VirtualClock]:
    """A fresh `VirtualClock`, installed as the default clock of every policy."""
    clock = VirtualClock()
    with use_clock(clock):
        yield clock


@pytest.fixture
def no_wait() -> Iterator[None]:
    """Retries skip their sleeps for the duration of the test."""
    with _no_wait():
        yield
