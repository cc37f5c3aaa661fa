from __future__ import annotations

import pytest

from resilience_kit import Backoff, RetryPolicy, Timeout, TimeoutExceededError, _config
from resilience_kit.clock import get_clock
from resilience_kit.testing import VirtualClock

pytest_plugins = ["pytester"]

# The inner test files run in a subprocess, where pytest loads resilience_kit's plugin
# through its pytest11 entry point (not through this conftest).

INI = """
[pytest]
addopts = -p no:cacheprovider
filterwarnings = error
{extra}
"""

INNER_TESTS = """
import pytest

from resilience_kit import Backoff, RetryPolicy, Timeout, TimeoutExceededError, _config
from resilience_kit.clock import get_clock
from resilience_kit.testing import VirtualClock

import resilience_kit.pytest_plugin


def test_plugin_loaded_from_the_entry_point(request):
    plugin = request.config.pluginmanager.get_plugin("resilience_kit")
    assert plugin is resilience_kit.pytest_plugin


@pytest.mark.{marker}
async def test_virtual_clock_fixture(virtual_clock):
    assert isinstance(virtual_clock, VirtualClock)
    assert get_clock() is virtual_clock
    with pytest.raises(TimeoutExceededError):
        await Timeout(2).acall(virtual_clock.asleep, 10)
    assert virtual_clock.monotonic() == 2.0


@pytest.mark.{marker}
async def test_retries_sleep_on_the_virtual_clock(virtual_clock):
    calls = []

    @RetryPolicy(attempts=3, on=KeyError, backoff=Backoff.constant(5))
    async def flaky():
        calls.append(virtual_clock.monotonic())
        raise KeyError

    with pytest.raises(KeyError):
        await flaky()
    assert calls == [0.0, 5.0, 10.0]


@pytest.mark.{marker}
async def test_no_wait_fixture(no_wait):
    assert _config.state.no_wait is True
    calls = []

    @RetryPolicy(attempts=3, on=KeyError, backoff=Backoff.constant(3600))
    async def flaky():
        calls.append(1)
        raise KeyError

    with pytest.raises(KeyError):
        await flaky()
    assert len(calls) == 3


def test_sync_test_with_both_fixtures(virtual_clock, no_wait):
    assert get_clock() is virtual_clock
    assert _config.state.no_wait is True


def test_fixtures_are_undone_afterwards():
    assert _config.state.no_wait is False
    assert _config.state.clock is None
"""


def _run(pytester: pytest.Pytester, *, marker: str, extra_ini: str, args: list[str]) -> None:
    pytester.makeini(INI.format(extra=extra_ini))
    pytester.makepyfile(test_inner=INNER_TESTS.replace("{marker}", marker))
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=9 if marker == "anyio" else 6)


def test_fixtures_under_anyio_plugin(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""
    )
    # Three async tests on two backends, plus the three sync tests.
    _run(pytester, marker="anyio", extra_ini="", args=["-p", "no:asyncio"])


def test_fixtures_under_pytest_asyncio(pytester: pytest.Pytester) -> None:
    _run(
        pytester,
        marker="asyncio",
        extra_ini="asyncio_mode = strict\nasyncio_default_fixture_loop_scope = function",
        args=["-p", "asyncio", "-p", "no:anyio"],
    )


# The same fixtures, used in this process (where the entry point loaded the plugin too).


def test_virtual_clock_fixture_in_process(virtual_clock: VirtualClock) -> None:
    assert get_clock() is virtual_clock
    RetryPolicy(attempts=2, on=KeyError, backoff=Backoff.constant(4)).call(lambda: 1)
    assert virtual_clock.monotonic() == 0.0
    with pytest.raises(KeyError):
        RetryPolicy(attempts=2, on=KeyError, backoff=Backoff.constant(4)).call(lambda: {}["k"])
    assert virtual_clock.monotonic() == 4.0


def test_no_wait_fixture_in_process(no_wait: None) -> None:
    assert _config.state.no_wait is True


@pytest.mark.anyio
async def test_virtual_clock_fixture_in_process_async(virtual_clock: VirtualClock) -> None:
    with pytest.raises(TimeoutExceededError):
        await Timeout(1).acall(virtual_clock.asleep, 5)
    assert virtual_clock.monotonic() == 1.0
