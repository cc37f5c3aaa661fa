"""Every example in a public docstring runs, methods included.

pytest's ``--doctest-modules`` skips objects whose ``__module__`` is rewritten to
``resilience_kit`` (the re-exports) and their methods, so the examples are gathered
here from each public module's ``__all__`` instead.
"""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

MODULES = [
    "resilience_kit",
    "resilience_kit.errors",
    "resilience_kit.clock",
    "resilience_kit.policies",
    "resilience_kit.security",
    "resilience_kit.caching",
    "resilience_kit.health",
    "resilience_kit.messaging",
    "resilience_kit.testing",
    "resilience_kit.telemetry",
    "resilience_kit.pytest_plugin",
    "resilience_kit.stores",
    "resilience_kit.stores.memory",
    "resilience_kit.stores.sqlite",
    "resilience_kit.stores.postgres",
    "resilience_kit.stores.redis",
    "resilience_kit.transports",
    "resilience_kit.transports.memory",
    "resilience_kit.cli",
    "resilience_kit.typing",  # last: its names are re-exports, met first where defined
]


def _examples() -> dict[str, doctest.DocTest]:
    found: dict[str, doctest.DocTest] = {}
    seen: set[tuple[str | None, int | None, str]] = set()
    finder = doctest.DocTestFinder(exclude_empty=True)
    own_docstring = doctest.DocTestFinder(recurse=False, exclude_empty=True)
    for name in MODULES:
        module = importlib.import_module(name)
        tests = own_docstring.find(module, name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                tests += finder.find(obj, f"{name}.{attr}", module=False, globs=vars(module))
        for test in tests:
            key = (test.filename, test.lineno, test.docstring or "")
            if test.examples and key not in seen:
                seen.add(key)
                found[test.name] = test
    return found


EXAMPLES = _examples()


def test_examples_were_found() -> None:
    assert len(EXAMPLES) > 80
    assert "resilience_kit.Backoff.exponential" in EXAMPLES
    assert "resilience_kit.CircuitBreaker.metrics" in EXAMPLES


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example(name: str) -> None:
    test = EXAMPLES[name]
    test.globs = dict(test.globs)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} example(s) failed in {name}"
