"""Every public module's __all__ lists exactly what it defines for users, and no more."""

from __future__ import annotations

import importlib
import inspect

import pytest

import resilience_kit

PUBLIC_MODULES = [
    "resilience_kit",
    "resilience_kit.errors",
    "resilience_kit.clock",
    "resilience_kit.policies",
    "resilience_kit.security",
    "resilience_kit.testing",
    "resilience_kit.telemetry",
    "resilience_kit.pytest_plugin",
    "resilience_kit.caching",
    "resilience_kit.health",
    "resilience_kit.messaging",
    "resilience_kit.stores",
    "resilience_kit.stores.memory",
    "resilience_kit.stores.sqlite",
    "resilience_kit.stores.postgres",
    "resilience_kit.stores.redis",
    "resilience_kit.transports",
    "resilience_kit.transports.memory",
    "resilience_kit.transports.redis",
    "resilience_kit.transports.kafka",
    "resilience_kit.cli",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_names_exist_and_are_public(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert isinstance(exported, tuple)
    assert len(set(exported)) == len(exported), "duplicates in __all__"
    # Sorted isort-style (constants first) by ruff's RUF022 in CI.
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr} is in __all__ but missing"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_everything_public_is_in_all(name: str) -> None:
    module = importlib.import_module(name)
    defined_here = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    missing = defined_here - set(module.__all__)
    assert not missing, f"{name} defines public names missing from __all__: {sorted(missing)}"


def test_top_level_reexports_every_policy_and_error() -> None:
    for sub in ("resilience_kit.policies", "resilience_kit.errors"):
        module = importlib.import_module(sub)
        for attr in module.__all__:
            if attr in {"Jitter"}:
                continue
            assert getattr(resilience_kit, attr) is getattr(module, attr), attr


def test_top_level_reexports_say_resilience_kit() -> None:
    for attr in resilience_kit.__all__:
        value = getattr(resilience_kit, attr)
        if inspect.isclass(value) and not issubclass(value, BaseException):
            assert value.__module__ == "resilience_kit", attr


def test_public_names_have_docstrings_with_examples() -> None:
    for attr in resilience_kit.__all__:
        value = getattr(resilience_kit, attr)
        if attr.startswith("__") or not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        doc = inspect.getdoc(value) or ""
        assert doc, f"{attr} has no docstring"
        if attr not in {
            "Attempt",
            "Attempts",
            "RetryEvent",
            "StateTransition",
            "BreakerMetrics",
            "BreakerRecord",
            "BreakerStore",
            "Policy",
        }:
            assert "Example" in doc, f"{attr}'s docstring has no example"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_classes_can_be_found_where_they_say_they_live(name: str) -> None:
    # pickle (and the docs' cross-references) look a class up by its __module__.
    module = importlib.import_module(name)
    for attr in module.__all__:
        value = getattr(module, attr)
        if inspect.isclass(value):
            home = importlib.import_module(value.__module__)
            assert getattr(home, value.__qualname__, None) is value, (
                f"{name}.{attr} says it lives in {value.__module__}, which has no {attr}"
            )
