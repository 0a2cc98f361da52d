"""What a workflow definition may hold besides its fields' types: how deep and how large
it may be, and only values JSON and the wire's encoder carry (finite numbers, integers of
64 bits, text without lone surrogates). Each check stops at its limit, so a nesting of a
million levels or a YAML alias bomb costs no more than a definition at the limit; each
problem is one line naming the source, the step and the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import yaml

from .problems import workflow_error

MAX_DEPTH = 128  # levels of mappings and lists, the definition's own mapping the first
MAX_BYTES = 16 * 1024 * 1024  # its text, and its size as JSON once YAML aliases expand
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what the wire's encoder (orjson) writes
_SHOWN_PARTS = 8  # a field path deeper than this is shown as its head and its tail
_DEPTH_ADVICE = (
    f"a workflow definition nests at most {MAX_DEPTH} levels: flatten it, or pass deep data "
    "as the run's input"
)
_SIZE_ADVICE = f"a workflow definition is at most {MAX_BYTES // 2**20} MiB"
SELF_ALIAS = "an anchor holds an alias to itself (*...)"


def check_text(text: str, label: str) -> None:
    """Refuse text longer than MAX_BYTES before it is parsed."""
    if len(text) > MAX_BYTES:
        raise too_large(len(text), label)


def too_large(size: int, label: str) -> Exception:
    """The error for a source of `size` bytes or characters, over MAX_BYTES."""
    return workflow_error([f"{label}: {_mib(size)}; {_SIZE_ADVICE}"])


def json_too_deep(text: str, label: str) -> Exception:
    """The error for JSON text the parser gave up on (RecursionError): where it passes
    MAX_DEPTH, found by counting brackets outside strings."""
    depth = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, m.start()) + 1
                column = m.start() - text.rfind("\n", 0, m.start())
                where = f"{label} line {line} column {column}"
                return workflow_error([f"{where}: nested deeper than {MAX_DEPTH}; {_DEPTH_ADVICE}"])
        elif c in "]}":
            depth -= 1
    return workflow_error([f"{label}: nested too deep to read; {_DEPTH_ADVICE}"])


def check_yaml_nodes(root: yaml.Node, label: str) -> None:
    """Refuse a composed YAML document whose aliases expand it beyond MAX_BYTES (as JSON,
    roughly) or MAX_DEPTH, or that holds itself (a recursive anchor), before it is built.
    Each node is measured once, so a billion laughs costs as little as its text."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (bytes as JSON, depth)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    visiting: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in measured:
            continue
        children = _yaml_children(node)
        if not done:
            if key in visiting:
                raise yaml_error(label, node.start_mark, SELF_ALIAS)
            visiting.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in measured)
            continue
        visiting.discard(key)
        size, depth = (len(node.value) + 2, 0) if not children else (2, 1)
        for child in children:
            if id(child) not in measured:  # a child still being measured: a cycle
                raise yaml_error(label, child.start_mark, SELF_ALIAS)
            child_size, child_depth = measured[id(child)]
            size += child_size + 1
            depth = max(depth, child_depth + 1)
        error = expansion_error(label, node.start_mark, size, depth)
        if error is not None:
            raise error
        measured[key] = (size, depth)


def expansion_error(label: str, mark: Any, size: int, depth: int) -> Exception | None:
    """The error for a YAML list or mapping (starting at `mark`) that is `size` bytes as
    JSON and `depth` levels deep once its aliases are expanded; None within the limits."""
    if size > MAX_BYTES:
        why = f"its aliases expand it beyond {_mib(MAX_BYTES)} as JSON; {_SIZE_ADVICE}"
    elif depth > MAX_DEPTH:
        why = f"with its aliases expanded it nests deeper than {MAX_DEPTH}; {_DEPTH_ADVICE}"
    else:
        return None
    return yaml_error(label, mark, why)


def yaml_error(label: str, mark: Any, why: str) -> Exception:
    """A problem of YAML text at `mark` (a yaml Mark, or None)."""
    where = f"{label} line {mark.line + 1} column {mark.column + 1}" if mark else label
    return workflow_error([f"{where}: {why}"])


def check_values(raw: Mapping[str, Any], label: str) -> None:
    """Refuse a parsed definition nested deeper than MAX_DEPTH, larger than MAX_BYTES as
    JSON, or holding a value JSON or the wire cannot carry; one line naming the field."""
    size = 2
    # lists and mappings still to look into: (value, depth, parent entry, key in parent);
    # the path of a problem is rebuilt from the parents only then
    stack: list[tuple[Any, int, Any, Any]] = [(raw, 1, None, None)]
    while stack:
        entry = stack.pop()
        value, depth = entry[0], entry[1]
        if depth > MAX_DEPTH:
            raise _value_error(
                label, raw, entry, f"nested deeper than {MAX_DEPTH}; {_DEPTH_ADVICE}"
            )
        is_map = isinstance(value, Mapping)
        for k, v in value.items() if is_map else enumerate(value):
            if is_map:
                if isinstance(k, str):
                    size += len(k) + 4
                    if not k.isascii() and _has_surrogate(k):
                        raise _value_error(label, raw, (k, depth, entry, k), _surrogate_reason(k))
                else:
                    size += 8
            kind = type(v)
            if kind is str:
                size += len(v) + 3
                if not v.isascii() and _has_surrogate(v):
                    raise _value_error(label, raw, (v, depth, entry, k), _surrogate_reason(v))
            elif kind is dict or kind is list or isinstance(v, Mapping | list | tuple):
                size += 3
                stack.append((v, depth + 1, entry, k))
            else:
                size += 8
                why = _scalar_problem(v)
                if why is not None:
                    raise _value_error(label, raw, (v, depth, entry, k), why)
        if size > MAX_BYTES:
            why = f"larger than {_mib(MAX_BYTES)} as JSON; {_SIZE_ADVICE}"
            raise workflow_error([f"{label}: {why}"])


def _scalar_problem(value: Any) -> str | None:
    """Why JSON or the wire cannot carry this scalar (not a str), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return None
        return (
            f"an integer of {value.bit_length()} bits; numbers are at most 64-bit integers: "
            "write it as a string or a float"
        )
    if isinstance(value, float) and not math.isfinite(value):
        shown = "NaN" if math.isnan(value) else f"{value:f}".replace("inf", "Infinity")
        return f"{shown} is not a JSON number: write null, a string or a finite number"
    if isinstance(value, str) and not value.isascii() and _has_surrogate(value):
        return _surrogate_reason(value)
    return None


def long_integer(label: str) -> Exception:
    """The error for text holding an integer Python will not read (over 4,300 digits)."""
    why = "holds an integer of over 4,300 digits; numbers are at most 64-bit integers"
    return workflow_error([f"{label}: {why}: write it as a string"])


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_reason(text: str) -> str:
    bad = next(c for c in text if "\ud800" <= c <= "\udfff")
    return (
        f"text holds a lone surrogate ({ascii(bad)[1:-1]}), which is not Unicode text and "
        "cannot be sent: remove it or pair it"
    )


def _value_error(label: str, raw: Mapping[str, Any], entry: Any, why: str) -> Exception:
    path: list[Any] = []
    while entry is not None and entry[2] is not None:
        path.append(entry[3])
        entry = entry[2]
    path.reverse()
    name = raw.get("name")
    where = (
        f"workflow '{name}'" if label == "workflow" and isinstance(name, str) and name else label
    )
    steps = raw.get("steps")
    if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
        item = steps[path[1]] if isinstance(steps, list) and path[1] < len(steps) else None
        sid = item.get("id") if isinstance(item, Mapping) else None
        where += f" step '{sid}'" if isinstance(sid, str) and sid else f" step #{path[1] + 1}"
        path = path[2:]
    if path:
        where += f": field '{_field(path)}'"
    return workflow_error([f"{where}: {why}"])


def _field(path: list[Any]) -> str:
    def part(p: Any) -> str:
        if isinstance(p, int):
            return f"[{p}]"
        return f".{ascii(p)[1:-1] if isinstance(p, str) and _has_surrogate(p) else p}"

    if len(path) > _SHOWN_PARTS:
        head = "".join(part(p) for p in path[: _SHOWN_PARTS - 2])
        tail = "".join(part(p) for p in path[-2:])
        return f"{head}...{tail}".lstrip(".")
    return "".join(part(p) for p in path).lstrip(".")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n % 2**20 else f"{n // 2**20} MiB"
