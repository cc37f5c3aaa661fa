"""`import resilience_kit` stays cheap: subpackages load on first use (PEP 562).

Each check runs in a fresh interpreter, since this one has imported everything already.
"""

from __future__ import annotations

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
        ("resilience_kit.messaging", "Outbox", "resilience_kit"),
        ("resilience_kit.caching", "PolicyCache", "resilience_kit"),
        ("resilience_kit.security", "VersionedTokenVerifier", "resilience_kit"),
        ("resilience_kit.typing", "StateTransition", "resilience_kit.policies"),
        ("resilience_kit.typing", "OutboxStore", "resilience_kit.messaging"),
        ("resilience_kit.stores.memory", "InMemoryCacheStore", "resilience_kit.caching"),
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
