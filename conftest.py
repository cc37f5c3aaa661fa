"""Run the Python code blocks of the docs and the README as tests, with Sybil.

Every fenced ``python`` block in ``docs/*.md``, ``docs/migrate/*.md`` and ``README.md`` is
executed in order, the blocks of one file sharing a namespace; blocks that start with
``>>>`` are doctests. Every other block says why it is not run, on the line before it:

- ``<!-- not run: REASON -->`` before any block (a shell command, output, a config file,
  or Python that needs a server): the block is not executed;
- ``<!-- skip: next "REASON" -->``, Sybil's own directive, works too, with a reason.

An untagged block that is not executed, or a skip without a reason, fails as a test of
its own, so that no example silently stops running.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

from resilience_kit import _config, telemetry

PATTERNS = ["docs/*.md", "docs/migrate/*.md", "docs/reference-system/*.md", "README.md"]

_INFO = re.compile(r"(?P<info>[^\n]*)$\n", re.MULTILINE)
_NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>\S[^\n]*?)\s*-->\s*\Z")
_SKIP = SkipParser()


def _fail(example: Example) -> str:
    """The evaluator of a rule broken: its message is the failure."""
    return str(example.parsed)


class TaggedBlocks:
    """Check that every fenced block is run or says why not; honour ``not run`` tags."""

    def __init__(self) -> None:
        self._lexer = RawFencedCodeBlockLexer(info_pattern=_INFO)

    def __call__(self, document: Document) -> Iterable[Region]:
        """Yield a skip for each tagged Python block and a failure for each untagged block."""
        for block in self._lexer(document):
            info = str(block.lexemes["info"]).strip()
            language = info.split()[0] if info else ""
            before = document.text[: block.start].rstrip()
            last_line = before[before.rfind("\n") + 1 :]
            tag = _NOT_RUN.search(last_line)
            if tag is not None:
                if language == "python":
                    # Sybil's skip, with the tag's reason: the block is reported as skipped.
                    parsed = ("next", repr(tag.group("reason")))
                    yield Region(len(before) - len(last_line), len(before), parsed, _SKIP.skipper)
            elif language != "python":
                line = document.text.count("\n", 0, block.start) + 1
                message = (
                    f"line {line}: a ```{language} block that is not run needs a tag on the "
                    "line before it saying why, e.g. <!-- not run: shell command -->"
                )
                yield Region(block.start, block.start + 3, message, _fail)


class SkipWithReason:
    """Sybil's skip directive, refused without a reason."""

    def __call__(self, document: Document) -> Iterable[Region]:
        """Yield Sybil's skip regions, or a failure where a reason is missing."""
        for region in _SKIP(document):
            action, reason = region.parsed
            if action in ("start", "next") and not reason:
                line = document.text.count("\n", 0, region.start) + 1
                message = f'line {line}: say why the block is skipped: <!-- skip: next "why" -->'
                yield Region(region.start, region.end, message, _fail)
            else:
                yield region


def _reset(namespace: dict[str, Any]) -> None:
    """Give each document a clean slate, and leave none of its switches behind."""
    _config.state.no_wait = False
    _config.state.clock = None
    telemetry.configure()


DOCS = Sybil(
    parsers=[PythonCodeBlockParser(), SkipWithReason(), TaggedBlocks()],
    patterns=PATTERNS,
    setup=_reset,
    teardown=_reset,
)

pytest_collect_file = DOCS.pytest()
