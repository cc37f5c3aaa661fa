"""The package's import structure: no cycles between modules, and each layer imports only below.

The imports are read from the source with `ast`, as Python runs them when a module is
first imported: module-level statements only (``if TYPE_CHECKING:`` blocks and imports
inside functions do not run then, so they cannot close a loop).

Run ``python tests/test_architecture.py`` to print the layer diagram that
``docs/architecture.md`` shows; a test checks that the page holds exactly that diagram.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "resilience_kit"
DOC = ROOT / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements a module runs when imported, descending into if/try but not defs."""
    for node in body:
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _runtime_statements(node.body)
            yield from _runtime_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _runtime_statements(block)
            for handler in node.handlers:
                yield from _runtime_statements(handler.body)
        else:
            yield node


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str) -> set[str]:
    """The package's modules ``module`` imports at import time (not their parent packages).

    ``from package import name`` counts as importing ``package.name`` when that is a
    module, and ``package`` itself otherwise.
    """
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in _runtime_statements(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package_of(module).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in MODULES:
                    found.add(target)
                elif base in MODULES:
                    found.add(base)
    found.discard(module)
    return found


GRAPH: dict[str, set[str]] = {name: imports_of(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# The layers of the diagram: each module belongs to the first prefix it starts with.
LAYERS: dict[str, str] = {
    "resilience_kit.cli": "cli",
    "resilience_kit._cli": "cli",
    "resilience_kit.__main__": "cli",
    "resilience_kit.pytest_plugin": "testing",
    "resilience_kit.testing": "testing",
    "resilience_kit.stores.memory": "stores.memory",
    "resilience_kit.stores.sqlite": "stores.sqlite",
    "resilience_kit.stores.postgres": "stores.postgres",
    "resilience_kit.stores.redis": "stores.redis",
    "resilience_kit.stores": "stores",
    "resilience_kit.transports": "transports",
    "resilience_kit.messaging": "messaging",
    "resilience_kit.caching": "caching",
    "resilience_kit.security": "security",
    "resilience_kit.policies": "policies",
    "resilience_kit.health": "health",
    "resilience_kit.typing": "resilience_kit",
    "resilience_kit._checks": "kernel",
    "resilience_kit._codec": "kernel",
    "resilience_kit._integrity": "kernel",
    "resilience_kit.clock": "kernel",
    "resilience_kit._config": "kernel",
    "resilience_kit.errors": "kernel",
    "resilience_kit._telemetry": "kernel",
    "resilience_kit.telemetry": "kernel",
    "resilience_kit._version": "kernel",
    "resilience_kit._exports": "kernel",
    "resilience_kit": "resilience_kit",
}


def layer_of(module: str) -> str:
    """The diagram box ``module`` belongs to."""
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def layer_diagram() -> str:
    """A mermaid flowchart of which layer imports which, at import time."""
    edges = sorted(
        {
            (layer_of(source), layer_of(target))
            for source, targets in GRAPH.items()
            for target in targets
            if layer_of(source) != layer_of(target)
        }
    )
    lines = ["flowchart TD"]
    lines += [f'    {_node(layer)}["{layer}"]' for layer in sorted(RANKS, key=RANKS.__getitem__)]
    lines += [f"    {_node(a)} --> {_node(b)}" for a, b in edges]
    return "\n".join(lines)


def _node(layer: str) -> str:
    return layer.replace(".", "_")


def test_no_module_imports_itself_back_through_others() -> None:
    assert _cycles(GRAPH) == []


def test_nothing_outside_policies_imports_the_policy_base() -> None:
    offenders = sorted(
        name
        for name, targets in GRAPH.items()
        if "resilience_kit.policies._base" in targets
        and not name.startswith("resilience_kit.policies")
    )
    # Function-local and TYPE_CHECKING imports count here too: the rule is about the code.
    everywhere = sorted(
        name
        for name, path in MODULES.items()
        if not name.startswith("resilience_kit.policies")
        and re.search(r"resilience_kit\.policies\._base|policies import _base", path.read_text())
    )
    assert offenders == []
    assert everywhere == []


def test_the_argument_checks_import_nothing_but_errors() -> None:
    assert GRAPH["resilience_kit._checks"] == {"resilience_kit.errors"}


def test_a_backend_package_imports_no_other_backend() -> None:
    backends = ("memory", "sqlite", "postgres", "redis")
    for source, targets in GRAPH.items():
        mine = layer_of(source)
        for target in targets:
            theirs = layer_of(target)
            if mine != theirs and mine.startswith("stores.") and theirs.startswith("stores."):
                assert theirs.removeprefix("stores.") not in backends, (source, target)


# Each layer imports only layers of a lower rank (docs/architecture.md explains them).
RANKS: dict[str, int] = {
    "kernel": 0,
    "policies": 1,
    "security": 2,
    "caching": 2,
    "testing": 2,
    "health": 2,
    "messaging": 3,
    "stores": 4,
    "stores.memory": 4,
    "stores.sqlite": 4,
    "stores.postgres": 4,
    "stores.redis": 4,
    "transports": 5,
    "cli": 6,
    "resilience_kit": 7,
}


def test_every_layer_imports_only_lower_layers() -> None:
    assert set(RANKS) == set(LAYERS.values())
    for source, targets in GRAPH.items():
        for target in targets:
            mine, theirs = layer_of(source), layer_of(target)
            if mine != theirs:
                assert RANKS[theirs] < RANKS[mine], f"{source} ({mine}) imports {target} ({theirs})"


def test_a_cycle_is_found_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_architecture_page_shows_the_real_imports() -> None:
    page = DOC.read_text(encoding="utf-8")
    shown = re.search(r"```mermaid\n(flowchart TD\n.*?)\n```", page, re.DOTALL)
    assert shown is not None, "docs/architecture.md has no mermaid layer diagram"
    assert shown.group(1) == layer_diagram(), (
        "docs/architecture.md's diagram is out of date: run python tests/test_architecture.py"
    )


if __name__ == "__main__":
    sys.stdout.write(layer_diagram() + "\n")
