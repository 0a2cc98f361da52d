"""Prompt templates of ``llm`` steps. Pure: no I/O.

``{input.text}`` is a field of the step's input, ``{input.items.0}`` an element of a list,
``{input}`` the whole input; a fan-in step also names its parents' outputs by step id
(``{summarise.text}``). Strings are inserted as they are, other values as compact JSON.
``{{`` and ``}}`` stand for literal braces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from dagnats_nb.runtime.handlers import Permanent

_PART = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_PATH = re.compile(r"^[\w-]+(\.[\w-]+)*$")


class TemplateError(Permanent):
    """A template names a field the step's input does not have, or is malformed.

    A :class:`Permanent` failure: retrying cannot make a missing field appear."""


def render(template: str, scope: Mapping[str, Any]) -> str:
    """Fill ``template`` from ``scope`` (names such as ``input`` or a parent's step id)."""
    return "".join(
        text if path is None else _show(lookup(path, scope)) for text, path in _parts(template)
    )


def fields(template: str) -> list[str]:
    """The field paths a template names, in order; a malformed template raises."""
    return [path for _, path in _parts(template) if path is not None]


def _parts(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, None) and ("", field path) pieces."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    for m in _PART.finditer(template):
        out.append((template[pos : m.start()], None))
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            out.append((token[0], None))
        elif token in ("{", "}"):
            raise TemplateError(
                f"stray '{token}' at character {m.start()}: write '{token * 2}' for a literal brace"
            )
        elif not _PATH.match(m.group(1).strip()):
            raise TemplateError(
                f"'{token}' at character {m.start()} is not a field such as {{input.text}}: "
                "write '{{' and '}}' for literal braces"
            )
        else:
            out.append(("", m.group(1).strip()))
    out.append((template[pos:], None))
    return out


def lookup(path: str, scope: Mapping[str, Any]) -> Any:
    """The value at a dotted ``path``; a missing field raises :class:`TemplateError`."""
    if not path:
        raise TemplateError("empty field '{}': name a field such as {input.text}")
    parts = path.split(".")
    if parts[0] not in scope:
        raise TemplateError(
            f"field '{path}' is missing: '{parts[0]}' is not one of {_names(scope)}"
        )
    value = scope[parts[0]]
    for i, key in enumerate(parts[1:], start=1):
        where = ".".join(parts[:i])
        if isinstance(value, Mapping):
            if key not in value:
                raise TemplateError(
                    f"field '{path}' is missing: '{where}' has no '{key}' (it has {_names(value)})"
                )
            value = value[key]
        elif isinstance(value, list) and key.lstrip("-").isdigit():
            idx = int(key)
            if not -len(value) <= idx < len(value):
                raise TemplateError(
                    f"field '{path}' is missing: '{where}' has {len(value)} element(s)"
                )
            value = value[idx]
        else:
            kind = "null" if value is None else type(value).__name__
            raise TemplateError(f"field '{path}' is missing: '{where}' is a {kind}, not an object")
    return value


def _names(mapping: Mapping[str, Any]) -> str:
    keys = [str(k) for k in mapping]
    if not keys:
        return "nothing"
    shown = ", ".join(keys[:12])
    return shown + (", ..." if len(keys) > 12 else "")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
