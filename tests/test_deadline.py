"""The re-armable deadline the relay puts around its publishes, on virtual and real time."""

from __future__ import annotations

import anyio
import pytest

from resilience_kit.clock import SYSTEM_CLOCK
from resilience_kit.policies._deadline import movable_deadline
from resilience_kit.testing import VirtualClock

pytestmark = pytest.mark.anyio


async def test_rearming_replaces_the_earlier_deadline_on_a_virtual_clock() -> None:
    clock = VirtualClock(auto_advance=False)
    with movable_deadline(clock) as deadline:
        deadline.arm(5.0)
        deadline.arm(10.0)
        clock.advance(7.0)  # past the first deadline, which was replaced
        assert not deadline.scope.cancel_called
        clock.advance(4.0)
        assert deadline.scope.cancel_called
        await anyio.lowlevel.checkpoint()
    assert deadline.scope.cancelled_caught


async def test_leaving_the_scope_disarms_its_timer() -> None:
    clock = VirtualClock(auto_advance=False)
    with movable_deadline(clock) as deadline:
        deadline.arm(5.0)
    clock.advance(10.0)
    assert not deadline.scope.cancel_called


async def test_the_system_clock_moves_the_loop_deadline() -> None:
    with movable_deadline(SYSTEM_CLOCK) as deadline:
        deadline.arm(60.0)
        await anyio.lowlevel.checkpoint()
        deadline.arm(0.0)
        await anyio.sleep_forever()
    assert deadline.scope.cancelled_caught


def test_a_clock_without_timers_is_refused() -> None:
    class Plain:
        def monotonic(self) -> float:
            return 0.0

    with pytest.raises(TypeError, match="call_at"), movable_deadline(Plain()):  # type: ignore[arg-type]
        pass
