"""Griffe extension for the API reference: read ``Example:`` sections as ``Examples:``.

The library's Google-style docstrings title their doctests ``Example:``, which Griffe's Google
parser only knows in the plural; in the singular it becomes an admonition whose ``>>>`` lines
are rendered as Markdown (quotes and stray link references) instead of a code block. This
extension renames the section before parsing, leaving the sources as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section titles to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each object Griffe loads."""
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
