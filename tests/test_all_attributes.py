"""Every public module's __all__ lists exactly what it defines for users, and no more."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import resilience_kit
from resilience_kit import errors
from resilience_kit import typing as typing_module
from resilience_kit._exports import TOP_LEVEL

PUBLIC_MODULES = [
    "resilience_kit",
    "resilience_kit.errors",
    "resilience_kit.typing",
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


# The top level holds what users instantiate and the errors they catch; changing it is a
# deliberate edit of this list (and a CHANGELOG entry).
TOP_LEVEL_NAMES = (
    "Attempt",
    "Attempts",
    "Backoff",
    "Bulkhead",
    "BulkheadFullError",
    "CacheLoadError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "ConfigurationError",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "Event",
    "FailClosed",
    "FailOpen",
    "Fallback",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "IdempotencyKeyError",
    "IdempotencyMiddleware",
    "Inbox",
    "KeyState",
    "Keyring",
    "Outbox",
    "OutboxRelay",
    "Pipeline",
    "PolicyCache",
    "ResilienceError",
    "ResilientConsumer",
    "RetryBudget",
    "RetryExhaustedError",
    "RetryPolicy",
    "ServeStale",
    "StoreUnavailableError",
    "Timeout",
    "TimeoutExceededError",
    "TokenIssuer",
    "TokenRejectedError",
    "TransportUnavailableError",
    "VersionedTokenVerifier",
    "__version__",
    "idempotent",
)


def test_the_top_level_exports_exactly_these_names() -> None:
    assert resilience_kit.__all__ == TOP_LEVEL_NAMES
    assert set(TOP_LEVEL) == set(TOP_LEVEL_NAMES) - {"__version__"}


def test_every_top_level_name_is_the_object_its_package_exports() -> None:
    for attr, home in TOP_LEVEL.items():
        module = importlib.import_module(home)
        assert attr in module.__all__, f"{home} does not export {attr}"
        assert getattr(resilience_kit, attr) is getattr(module, attr), attr


def test_the_top_level_has_nothing_else() -> None:
    with pytest.raises(AttributeError, match="no attribute 'StateTransition'"):
        _ = resilience_kit.StateTransition  # type: ignore[attr-defined]
    public = {name for name in dir(resilience_kit) if not name.startswith("_")}
    assert public == set(TOP_LEVEL_NAMES) - {"__version__"}


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_exported_error_is_in_the_errors_module(name: str) -> None:
    module = importlib.import_module(name)
    for attr in module.__all__:
        value = getattr(module, attr)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert errors.__all__.count(attr) == 1, f"{name}.{attr} is not in errors"
            assert getattr(errors, attr) is value, attr


def test_the_typing_module_only_re_exports() -> None:
    homes = [
        importlib.import_module(name)
        for name in PUBLIC_MODULES
        if name not in {"resilience_kit", "resilience_kit.typing"}
    ]
    for attr in typing_module.__all__:
        value = getattr(typing_module, attr)
        assert any(getattr(home, attr, None) is value for home in homes), attr
        if inspect.isclass(value):
            assert value.__module__ != "resilience_kit.typing", attr


def test_in_memory_default_stores_live_beside_memory_store() -> None:
    memory = importlib.import_module("resilience_kit.stores.memory")
    policies = importlib.import_module("resilience_kit.policies")
    caching = importlib.import_module("resilience_kit.caching")
    assert memory.MemoryBreakerStore is policies.MemoryBreakerStore
    assert memory.MemoryCacheStore is caching.MemoryCacheStore


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
        if attr not in {"Attempt", "Attempts"}:
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


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_explicit_re_export_is_in_all(name: str) -> None:
    """``from x import Y as Y`` is the re-export idiom (STYLE.md 1): such a name that is
    left out of ``__all__`` is a public name nobody can find."""
    module = importlib.import_module(name)
    tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
    statements: list[ast.stmt] = []
    for node in tree.body:
        statements.extend(node.body if isinstance(node, ast.If) else [node])
    re_exported = {
        alias.name
        for node in statements
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name
    }
    missing = re_exported - set(module.__all__) - {"__version__"}
    assert not missing, f"{name} re-exports names missing from __all__: {sorted(missing)}"
