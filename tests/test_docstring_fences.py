"""Fenced examples in public docstrings run too, or say why not.

``>>>`` examples run in test_docstring_examples.py. A fenced block in a docstring (shown
as code by the API reference) runs here, in the namespace of its module, unless the line
before it says otherwise:

- ``<!-- not run: REASON -->``: never run (a fragment, or output);
- ``<!-- needs: VARIABLE -->``: run only when that environment variable is set (the URL
  of a server), skipped otherwise.

An untagged block in another language than Python fails, as in the Markdown docs.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil
import re
import textwrap
from dataclasses import dataclass

import pytest

import resilience_kit

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<language>[\w-]*)[ \t]*\n(?P<body>.*?)^[ \t]*```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
NOT_RUN = re.compile(r"<!--\s*not run:\s*\S.*-->")
NEEDS = re.compile(r"<!--\s*needs:\s*(?P<variable>[A-Z_][A-Z0-9_]*)\s*-->")


@dataclass(frozen=True)
class Block:
    name: str
    language: str
    source: str
    tag: str
    module: str


def _public_modules() -> list[str]:
    found = pkgutil.walk_packages(resilience_kit.__path__, "resilience_kit.")
    public = [info.name for info in found if "._" not in info.name]
    return ["resilience_kit", *public]


def _docstrings() -> dict[str, tuple[str, str]]:
    """Each public docstring once: a name for it -> (its text, its module's name)."""
    found: dict[str, tuple[str, str]] = {}
    seen: set[tuple[str | None, int | None]] = set()
    finder = doctest.DocTestFinder(exclude_empty=False)
    for name in _public_modules():
        module = importlib.import_module(name)
        tests = doctest.DocTestFinder(recurse=False, exclude_empty=False).find(module, name)
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                tests += finder.find(obj, f"{name}.{attr}", module=False, globs=vars(module))
        for test in tests:
            key = (test.filename, test.lineno)
            if test.docstring and "```" in test.docstring and key not in seen:
                seen.add(key)
                found[test.name] = (test.docstring, name)
    return found


def _blocks() -> list[Block]:
    blocks = []
    for name, (docstring, module) in sorted(_docstrings().items()):
        for number, match in enumerate(FENCE.finditer(docstring), start=1):
            before = docstring[: match.start()].rstrip().splitlines()
            tag = before[-1].strip() if before else ""
            blocks.append(
                Block(
                    f"{name}[{number}]",
                    match.group("language"),
                    textwrap.dedent(match.group("body")),
                    tag,
                    module,
                )
            )
    return blocks


BLOCKS = _blocks()


def test_fenced_docstring_examples_are_found() -> None:
    names = {block.name for block in BLOCKS}
    assert "resilience_kit.stores.postgres.PostgresStore[1]" in names


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_fenced_docstring_example(block: Block) -> None:
    if NOT_RUN.fullmatch(block.tag):
        pytest.skip(block.tag)
    needs = NEEDS.fullmatch(block.tag)
    if needs is not None and not os.environ.get(needs.group("variable")):
        pytest.skip(f"needs {needs.group('variable')}")
    assert block.language == "python", (
        f"a ```{block.language} block that is not run needs a tag on the line before it "
        "saying why, e.g. <!-- not run: output -->"
    )
    namespace = dict(vars(importlib.import_module(block.module)))
    # A name in angle brackets: coverage leaves it alone (it is no file to report on).
    exec(compile(block.source, f"<docstring {block.name}>", "exec"), namespace)
