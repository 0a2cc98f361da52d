"""Reading a workflow definition from a dict, JSON or YAML text or a .json/.yaml/.yml file
(the only I/O in `dag/`), with every problem told on one line.

Every field of Go's `dag.WorkflowDef` / `dag.StepDef` (and a file's `triggers`) is
accepted, with Go's JSON types; a field Go does not have is refused, naming it (the only
extras: `$schema`, dropped, and a step's `loop`, the form earlier versions wrote). Writing a
definition back, in the form the Go engine reads, is the models' own business
(`WorkflowDef.to_dict`, in `model`), as is reading the older forms (`oldform`). What a
definition may hold besides its fields (depth, size, JSON-able values) is `limits`'.
"""

from __future__ import annotations

import difflib
import json
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from . import limits
from .model import WorkflowDef
from .problems import problem, reason, workflow_error
from .validate import check
from .yamltext import read_yaml

_SUFFIX_FORMAT = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def load_workflow(
    source: Any, *, fmt: str | None = None, allow_unsupported: bool = False
) -> WorkflowDef:
    """Build and check a WorkflowDef from a WorkflowDef (returned as is), a dict, JSON or YAML
    text, or a path to a .json/.yaml/.yml file.

    A string naming an existing path (or ending in .json/.yaml/.yml) is a path; a string
    starting with `{` is JSON; any other string is YAML. `fmt` ("json" or "yaml") forces the
    parser. Raises WorkflowError (with `.problems`, one line each) or UnsupportedStepType.
    """
    if isinstance(source, WorkflowDef):
        return source
    if fmt not in (None, "json", "yaml"):
        raise ValueError(f"fmt must be 'json', 'yaml' or None, got {fmt!r}")
    raw, label = _read(source, fmt)
    limits.check_values(raw, label)
    defn = _build(raw)
    check(defn, allow_unsupported=allow_unsupported)
    return defn


def load_extended(raw: Any) -> WorkflowDef:
    """A run's definition with the steps its planners added, as a snapshot or a record
    keeps it (``to_dict``): built, not checked again, as ``planner.extended`` makes it
    (planned step ids hold the planner's name and a dot, which files may not)."""
    return _build(_as_mapping(raw, "workflow"))


def _read(source: Any, fmt: str | None) -> tuple[dict[str, Any], str]:
    """The definition's mapping and how problems name its source."""
    if isinstance(source, Mapping):
        return _as_mapping(dict(source), "workflow"), "workflow"
    if isinstance(source, bytes | bytearray):
        try:
            source = bytes(source).decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = f"byte 0x{source[exc.start]:02x} at offset {exc.start}"
            why = f"not UTF-8 ({bad}): pass JSON or YAML text encoded as UTF-8"
            raise workflow_error([f"workflow bytes: {why}"]) from None
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _is_path(source)):
        path = Path(source)
        label = f"workflow file '{path}'"
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "not found"
            raise workflow_error([f"{label}: {what}"])
        try:
            if (size := path.stat().st_size) > limits.MAX_BYTES:  # not read at all
                raise limits.too_large(size, label)
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            why = f"not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
            raise workflow_error([f"{label}: cannot read: {why}"]) from None
        except OSError as exc:
            raise workflow_error([f"{label}: cannot read: {exc}"]) from None
        return _parse(text, fmt or _SUFFIX_FORMAT.get(path.suffix.lower()), label), label
    if isinstance(source, str):
        return _parse(source, fmt, "workflow text"), "workflow text"
    raise TypeError(
        "a workflow source is a WorkflowDef, dict, JSON or YAML text (str or UTF-8 bytes), or "
        f"a file path; got {type(source).__name__}"
    )


def _is_path(text: str) -> bool:
    if not text.strip() or "\n" in text or text.lstrip().startswith("{"):
        return False
    if text.lower().endswith(tuple(_SUFFIX_FORMAT)):
        return True
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def _parse(text: str, fmt: str | None, label: str) -> dict[str, Any]:
    limits.check_text(text, label)
    if fmt == "json" or (fmt is None and text.lstrip().startswith("{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{label} line {exc.lineno} column {exc.colno}"
            raise workflow_error([f"{where}: invalid JSON: {exc.msg}"]) from None
        except RecursionError:
            raise limits.json_too_deep(text, label) from None
        except ValueError:  # an integer of more than 4,300 digits
            raise limits.long_integer(label) from None
    else:
        data = _parse_yaml(text, label)
    return _as_mapping(data, label)


def _parse_yaml(text: str, label: str) -> Any:
    """YAML text as data (`yamltext`: measured as it is built, an alias bomb is refused,
    not expanded); its problems as one line."""
    try:
        return read_yaml(text, label)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label} line {mark.line + 1} column {mark.column + 1}" if mark else label
        what = getattr(exc, "problem", None) or str(exc)
        if "nesting depth" in what:  # libyaml's limit, 1,000
            what += f"; a workflow definition nests at most {limits.MAX_DEPTH} levels"
        raise workflow_error([f"{where}: invalid YAML: {what}"]) from None
    except RecursionError:  # PyYAML's composer, without libyaml's nesting limit
        why = f"nested too deep to read; a workflow definition nests at most {limits.MAX_DEPTH}"
        raise workflow_error([f"{label}: {why}"]) from None
    except ValueError as exc:  # a bad timestamp, an integer of more than 4,300 digits
        if "digits" in str(exc):
            raise limits.long_integer(label) from None
        raise workflow_error([f"{label}: invalid YAML: {exc}"]) from None


def _as_mapping(data: Any, label: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        got = "nothing" if data is None else type(data).__name__
        raise workflow_error(
            [f"{label}: a workflow is a mapping with name, version and steps; got {got}"]
        )
    return data


def _build(raw: dict[str, Any]) -> WorkflowDef:
    try:
        return WorkflowDef.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err, raw) for err in exc.errors()]
        raise workflow_error(list(dict.fromkeys(problems))) from None


def _describe(err: Any, raw: dict[str, Any]) -> str:
    loc = [p for p in err["loc"] if isinstance(p, int) or "[" not in str(p)]
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    step: str | int | None = None
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        step = loc[1]
        steps = raw.get("steps")
        item = steps[step] if isinstance(steps, list) and step < len(steps) else None
        if isinstance(item, Mapping) and isinstance(item.get("id"), str) and item["id"]:
            step = item["id"]
        loc = loc[2:]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if err["type"] == "extra_forbidden":
        return problem(name, step, field, _unknown_field(err["loc"], str(loc[-1])))
    return problem(name, step, field or None, reason(err))


def _unknown_field(loc: Any, key: str) -> str:
    model: type[BaseModel] = WorkflowDef
    for part in list(loc)[:-1]:
        if isinstance(part, str) and part in model.model_fields:
            model = _submodel(model.model_fields[part].annotation) or model
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown field{hint} (allowed: {', '.join(allowed)})"


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None
