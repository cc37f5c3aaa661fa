"""A Griffe extension for the API reference: read ``Example:`` sections as examples.

The docstrings follow Google style, whose example section is often written in the
singular (``Example:``). Griffe only recognises the plural, and would render a singular
section as an admonition whose ``>>>`` lines become nested block quotes. This extension
renames the heading before the docstrings are parsed, so both spellings render as
highlighted doctest blocks. The source stays as it is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:`` in every loaded docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the heading in ``obj``'s docstring, if it has one."""
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _SINGULAR.sub(r"\1Examples:", docstring.value)
