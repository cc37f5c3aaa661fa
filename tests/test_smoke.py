from __future__ import annotations

import pytest

from resilience_kit import Backoff, CircuitBreaker, Pipeline, RetryPolicy, Timeout
from resilience_kit.testing import VirtualClock


@pytest.mark.anyio
async def test_pipeline_retries_then_succeeds() -> None:
    clock = VirtualClock()
    calls = []

    @Pipeline(
        Timeout(5.0, clock=clock),
        RetryPolicy(attempts=3, on=ConnectionError, backoff=Backoff.constant(1.0), clock=clock),
        CircuitBreaker("smoke", clock=clock),
    )
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError
        return "ok"

    assert await flaky() == "ok"
    assert clock.monotonic() == 2.0
