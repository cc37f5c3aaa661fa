"""`import resilience_kit` stays cheap: subpackages load on first use (PEP 562).

Each check runs in a fresh interpreter, since this one has imported everything already.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = (
    "pydantic",
    "resilience_kit.messaging",
    "resilience_kit.caching",
    "resilience_kit.security",
    "resilience_kit.stores",
    "resilience_kit.transports",
)


def loaded_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> set[str]:
    return {name for name in modules if name.startswith(HEAVY)}


def test_importing_the_package_loads_no_subpackage() -> None:
    modules = loaded_after("import resilience_kit")
    assert heavy(modules) == set()
    assert "resilience_kit.policies" not in modules
    assert "resilience_kit.errors" not in modules
    assert "anyio" not in modules


def test_importing_a_policy_loads_only_the_policies() -> None:
    modules = loaded_after("from resilience_kit import RetryPolicy, CircuitBreaker, Pipeline")
    assert "resilience_kit.policies" in modules
    assert heavy(modules) == set()
    assert not {name for name in modules if name.startswith("opentelemetry")}


def test_importing_the_retry_policy_loads_neither_the_breaker_nor_the_bulkhead() -> None:
    modules = loaded_after("from resilience_kit import RetryPolicy")
    policies = {name for name in modules if name.startswith("resilience_kit.policies.")}
    assert policies == {
        "resilience_kit.policies._backoff",
        "resilience_kit.policies._base",
        "resilience_kit.policies._budget",
        "resilience_kit.policies._retry",
        "resilience_kit.policies._retry_after",
    }
    assert heavy(modules) == set()
    # Neither anyio nor the costly standard-library modules: they load on first use.
    assert {"anyio", "asyncio", "dataclasses", "inspect", "logging"} & modules == set()


def test_the_retry_policy_loads_anyio_and_inspect_when_first_used() -> None:
    modules = loaded_after("""
        import asyncio
        from resilience_kit import Backoff, RetryPolicy
        from resilience_kit.clock import SystemClock

        @RetryPolicy(attempts=2, on=ValueError, backoff=Backoff.none())
        async def ok() -> int:
            await SystemClock().asleep(0)  # binds anyio.sleep
            await SystemClock().asleep(0)  # uses it
            return 1

        assert asyncio.run(ok()) == 1
    """)
    assert {"anyio", "inspect"} <= modules


def test_the_logger_is_created_on_first_use() -> None:
    modules = loaded_after("""
        from resilience_kit import _telemetry
        import logging
        assert _telemetry.logger is logging.getLogger("resilience_kit")
        assert any(isinstance(h, logging.NullHandler) for h in _telemetry.logger.handlers)
    """)
    assert "logging" in modules
    from resilience_kit import _telemetry  # noqa: PLC0415  (the module under test)

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = _telemetry.nope  # type: ignore[attr-defined]


def test_each_policies_name_loads_from_the_module_that_defines_it() -> None:
    import resilience_kit.policies as policies  # noqa: PLC0415  (the module under test)

    defined_in = vars(policies)["_DEFINED_IN"]
    assert set(defined_in) == set(policies.__all__)
    for name, module in defined_in.items():
        defining = importlib.import_module(f"resilience_kit.policies.{module}")
        assert getattr(policies, name) is vars(defining)[name]
    assert {name for name in dir(policies) if not name.startswith("__")} == set(policies.__all__)


def test_a_class_imported_privately_first_is_presented_once_the_package_is_reached() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "from resilience_kit.policies._breaker import CircuitBreaker as X\n"
                "from resilience_kit.policies import Backoff\n"
                "print(repr(X))"
            ),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "<class 'resilience_kit.CircuitBreaker'>"


def test_opentelemetry_loads_when_a_policy_first_records() -> None:
    modules = loaded_after("""
        from resilience_kit import Backoff, RetryPolicy
        failures = [ValueError()]
        def flaky():
            if failures:
                raise failures.pop()
        RetryPolicy(attempts=2, on=ValueError, backoff=Backoff.none()).call(flaky)
    """)
    assert {"opentelemetry.metrics", "opentelemetry.trace"} <= modules


def test_importing_an_error_loads_only_the_errors() -> None:
    modules = loaded_after("from resilience_kit import CircuitOpenError, ResilienceError")
    assert {name for name in modules if name.startswith("resilience_kit.")} == {
        "resilience_kit._exports",
        "resilience_kit._version",
        "resilience_kit.errors",
    }


def test_a_messaging_name_loads_messaging_on_first_use() -> None:
    modules = loaded_after("import resilience_kit\nresilience_kit.Outbox")
    assert "resilience_kit.messaging" in modules
    assert "pydantic" in modules


@pytest.mark.parametrize(
    ("module", "name", "presented"),
    [
        ("resilience_kit", "RetryPolicy", "resilience_kit"),
        ("resilience_kit.policies", "RetryPolicy", "resilience_kit"),
        ("resilience_kit.policies", "MemoryBreakerStore", "resilience_kit.policies"),
        ("resilience_kit.typing", "RetryEvent", "resilience_kit.policies"),
        ("resilience_kit.messaging", "Outbox", "resilience_kit"),
        ("resilience_kit.caching", "PolicyCache", "resilience_kit"),
        ("resilience_kit.security", "VersionedTokenVerifier", "resilience_kit"),
        ("resilience_kit.typing", "StateTransition", "resilience_kit.policies"),
        ("resilience_kit.typing", "OutboxStore", "resilience_kit.messaging"),
        ("resilience_kit.stores.memory", "MemoryCacheStore", "resilience_kit.caching"),
    ],
)
def test_a_class_presents_the_same_name_whichever_way_it_was_imported_first(
    module: str, name: str, presented: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"from {module} import {name} as X\nprint(repr(X))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == f"<class '{presented}.{name}'>"


def test_unknown_names_raise_attribute_error() -> None:
    import resilience_kit  # noqa: PLC0415  (the module under test, imported where it is used)

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = resilience_kit.Nope  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from resilience_kit import Nope", {})
    with pytest.raises(AttributeError, match=r"'resilience_kit\.policies' has no attribute 'Nope'"):
        exec("import resilience_kit.policies\nresilience_kit.policies.Nope", {})
