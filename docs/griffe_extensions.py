"""Griffe extensions for the API page (``mkdocs.yml``, mkdocstrings).

- :class:`Twins`: ``name, name_async = twins(_name, ...)`` in a class body
  (``dagnats_nb/facade/twins.py``) becomes a documented method ``name`` with the signature and
  docstring of the private coroutine ``_name``, as ``inspect`` sees it at run time. The page is
  built by static analysis: importing the package to inspect it would also import
  ``dagnats_nb/__main__.py``, which runs the ``dagnats`` command.
- :class:`SphinxRoles`: the docstrings' Sphinx roles (``:meth:`wait```) read as code in
  Markdown (```wait```).
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

PAIR_MAKERS = {"twins", "stamped"}
ROLE = re.compile(r":(?:meth|func|class|attr|mod|exc|data|obj):`~?([^`]+)`")


class Twins(griffe.Extension):
    """Turn each ``twins``/``stamped`` pair of a class into a method ``name``."""

    def on_class_members(self, *, node: ast.AST | Any, cls: griffe.Class, **kwargs: Any) -> None:
        if not isinstance(node, ast.ClassDef):
            return  # inspected, not visited: nothing to rebuild
        for statement in node.body:
            pair = _pair(statement)
            if pair is None:
                continue
            name, op_name, shaped = pair
            op = cls.members.get(op_name)
            if not isinstance(op, griffe.Function):
                continue
            method = griffe.Function(
                name,
                parameters=op.parameters,
                returns=None if shaped else op.returns,
                docstring=op.docstring,
                lineno=statement.lineno,
                endlineno=statement.end_lineno,
            )
            cls.set_member(name, method)


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` as inline code in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda m: f"`{m.group(1)}`", obj.docstring.value)


def _pair(statement: ast.stmt) -> tuple[str, str, bool] | None:
    """``(name, "_name", shaped)`` for ``name, name_async = twins(_name[, shape])``."""
    if not (isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call)):
        return None
    call = statement.value
    if not (isinstance(call.func, ast.Name) and call.func.id in PAIR_MAKERS and call.args):
        return None
    target = statement.targets[0]
    if not (isinstance(target, ast.Tuple) and target.elts and isinstance(call.args[0], ast.Name)):
        return None
    first = target.elts[0]
    if not isinstance(first, ast.Name):
        return None
    shaped = call.func.id == "twins" and len(call.args) > 1
    return first.id, call.args[0].id, shaped
