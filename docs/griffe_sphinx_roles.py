"""Griffe extension used by the docs build: render Sphinx roles in docstrings as code.

The core's docstrings cross-reference with Sphinx roles (``:class:`~stitchframe.Anchor```);
mkdocstrings renders Markdown, so this turns each role into a code span (``Anchor``) and
``::`` before a literal block into ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"::$", re.MULTILINE)


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def convert(text: str) -> str:
    """Sphinx roles -> code spans; a trailing ``::`` -> ``:``."""
    return _LITERAL.sub(":", _ROLE.sub(_role, text))


class SphinxRoles(griffe.Extension):
    """Rewrite every loaded docstring with :func:`convert`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
