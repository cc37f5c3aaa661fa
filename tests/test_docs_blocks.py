"""Every code block of the docs runs, or says why not (see the conftest.py at the root)."""

from __future__ import annotations

import importlib.util
import re
import unittest
from pathlib import Path
from types import ModuleType

import pytest
from sybil.example import SybilFailure

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^\s*(`{3,}|~{3,})", re.MULTILINE)


def _docs_conftest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_conftest", ROOT / "conftest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCS = _docs_conftest().DOCS


def _outcomes(tmp_path: Path, text: str) -> list[str]:
    page = tmp_path / "page.md"
    page.write_text(text)
    document = DOCS.parse(page)
    outcomes = []
    for example in document.examples():
        try:
            example.evaluate()
        except SybilFailure as failure:
            outcomes.append(f"failed: {failure.result}")
        except unittest.SkipTest as skipped:
            outcomes.append(f"skipped: {skipped}")
        else:
            outcomes.append("ran")
    return outcomes


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_page_with_code_is_collected_by_the_docs_tests(page: Path) -> None:
    if FENCE.search(page.read_text()):
        assert DOCS.should_parse(page), f"{page} has code blocks but conftest.PATTERNS misses it"


def test_an_untagged_shell_block_fails(tmp_path: Path) -> None:
    outcomes = _outcomes(tmp_path, "Install:\n\n```bash\npip install x\n```\n")
    assert len(outcomes) == 1
    assert outcomes[0].startswith("failed: line 3: a ```bash block that is not run needs a tag")


def test_an_untagged_block_without_a_language_fails(tmp_path: Path) -> None:
    outcomes = _outcomes(tmp_path, "```\nprint('never run')\n```\n")
    assert outcomes[0].startswith("failed: line 1: a ``` block")


def test_a_tagged_block_passes_and_python_blocks_run(tmp_path: Path) -> None:
    text = (
        "<!-- not run: shell command -->\n```bash\npip install x\n```\n\n"
        "```python\nassert 1 + 1 == 2\n```\n"
    )
    assert _outcomes(tmp_path, text) == ["ran"]


def test_a_not_run_tag_skips_a_python_block_with_its_reason(tmp_path: Path) -> None:
    text = "<!-- not run: needs a Redis server -->\n```python\nraise SystemExit\n```\n"
    assert _outcomes(tmp_path, text) == ["ran", "skipped: needs a Redis server"]


def test_a_skip_without_a_reason_fails(tmp_path: Path) -> None:
    text = "<!-- skip: next -->\n```python\nassert True\n```\n"
    outcomes = _outcomes(tmp_path, text)
    assert outcomes[0].startswith("failed: line 1: say why the block is skipped")


def test_a_skip_with_a_reason_skips(tmp_path: Path) -> None:
    text = '<!-- skip: next "needs PostgreSQL" -->\n```python\nraise SystemExit\n```\n'
    outcomes = _outcomes(tmp_path, text)
    assert outcomes == ["ran", "skipped: needs PostgreSQL"]


def test_the_home_page_first_example_fits_a_1280_px_screen() -> None:
    # mkdocs-material shows about 80 characters of code at 1280 px before scrolling.
    text = (ROOT / "docs" / "index.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    too_long = [line for line in block.splitlines() if len(line) > 80]
    assert not too_long
