from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilience_kit import _config
from tests.servers import postgres_url, redis_url

__all__ = ("postgres_url", "redis_url")

# tests/typing is for mypy only; importing it would run type-level sample code.
collect_ignore = ["typing"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _reset_global_switches() -> Iterator[None]:
    """No test may leak the no-wait mode or a default-clock override into another."""
    saved = (_config.state.no_wait, _config.state.clock)
    yield
    _config.state.no_wait, _config.state.clock = saved
