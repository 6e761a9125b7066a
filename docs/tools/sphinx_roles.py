"""Griffe extension for the docs build: Sphinx roles in docstrings become code spans.

flowrl's docstrings are Google style but cross-reference with Sphinx roles
(``:class:`~flowrl.algos.on_policy.OnPolicyCore```), which Markdown would show verbatim.
This rewrites each role to inline code, ``~`` keeping only the last dotted name as Sphinx does;
the library's source files are untouched. Loaded by mkdocs.yml (mkdocstrings ``extensions``).
"""

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    """The inline code for one role."""
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx cross-reference roles in every docstring to inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        """Rewrite the docstring of each object as it is loaded."""
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
