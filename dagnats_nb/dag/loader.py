"""The wire form of a workflow definition: reading it from a dict, JSON or YAML text or a
.json/.yaml/.yml file (the only I/O in `dag/`), and writing it back as a dict.

The published schema lacks `config` on steps although real files use it (type-specific
settings such as `max_iterations` or `max_items` live there). So `to_dict` writes them
where the schema has room, and loading reads them back from there:

- agent_loop settings go under `loop`; `budget_warn_at` / `budget_force_at`, which the
  schema's AgentLoopConfig lacks, go in `metadata` as `dagnats.loop.<key>`;
- a map step's MapConfig goes in `metadata` as `dagnats.map.max_items` /
  `dagnats.map.concurrency` (string values);
- any other `config` key goes in `metadata` as `dagnats.config.<key>` = JSON text.

Metadata keys starting with `dagnats.` are therefore reserved, and
`load(d.to_dict()) == d`. Steps of types we do not run (`respond`, `sub_workflow`...)
carry no task in the reference's files although the schema requires one; we do not write
such definitions, so that gap does not reach our output.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .durations import format_duration
from .model import (
    CONFIG_PREFIX,
    LOOP_KEYS,
    LOOP_PREFIX,
    MAP_KEYS,
    MAP_PREFIX,
    AgentLoopConfig,
    StepDef,
    WorkflowDef,
)
from .validate import check, problem, reason, workflow_error

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
    raw = _read(source, fmt)
    defn = _build(raw)
    check(defn, allow_unsupported=allow_unsupported)
    return defn


def _read(source: Any, fmt: str | None) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return _as_mapping(dict(source), "workflow")
    if isinstance(source, bytes | bytearray):
        source = bytes(source).decode("utf-8")
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _is_path(source)):
        path = Path(source)
        label = f"workflow file '{path}'"
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "not found"
            raise workflow_error([f"{label}: {what}"])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise workflow_error([f"{label}: cannot read: {exc}"]) from None
        return _parse(text, fmt or _SUFFIX_FORMAT.get(path.suffix.lower()), label)
    if isinstance(source, str):
        return _parse(source, fmt, "workflow text")
    raise TypeError(
        "a workflow source is a WorkflowDef, dict, JSON or YAML text, or a file path; "
        f"got {type(source).__name__}"
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
    if fmt == "json" or (fmt is None and text.lstrip().startswith("{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{label} line {exc.lineno} column {exc.colno}"
            raise workflow_error([f"{where}: invalid JSON: {exc.msg}"]) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{label} line {mark.line + 1} column {mark.column + 1}" if mark else label
            what = getattr(exc, "problem", None) or str(exc)
            raise workflow_error([f"{where}: invalid YAML: {what}"]) from None
    return _as_mapping(data, label)


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


def workflow_to_dict(defn: WorkflowDef) -> dict[str, Any]:
    """`defn` as a dict that validates against the published workflow schema."""
    out: dict[str, Any] = {
        "name": defn.name,
        "version": defn.version,
        "steps": [step_to_dict(s) for s in defn.steps],
    }
    if defn.default_retry is not None:
        out["default_retry"] = defn.default_retry.to_dict()
    if defn.concurrency is not None:
        out["concurrency"] = defn.concurrency.to_dict()
    if defn.timeout is not None:
        out["timeout"] = format_duration(defn.timeout)
    for key in ("input_schema", "output_schema"):
        if getattr(defn, key) is not None:
            out[key] = copy.deepcopy(getattr(defn, key))
    if defn.triggers:
        out["triggers"] = copy.deepcopy(defn.triggers)
    if defn.sticky:  # the reference's field; its published schema does not list it yet
        out["sticky"] = defn.sticky
    return out


def step_to_dict(step: StepDef) -> dict[str, Any]:
    """`step` as the published schema allows it: settings without a place go in metadata."""
    out: dict[str, Any] = {"id": step.id}
    if step.task is not None:
        out["task"] = step.task
    if step.depends_on:
        out["depends_on"] = list(step.depends_on)
    out["type"] = step.type
    if step.timeout is not None:
        out["timeout"] = format_duration(step.timeout)
    if step.retries is not None:
        out["retries"] = step.retries
    if step.retry is not None:
        out["retry"] = step.retry.to_dict()
    meta = dict(step.metadata or {})
    config = dict(step.config or {})
    loop = step.loop_config if step.type == "agent_loop" else step.loop
    if loop is not None:
        out["loop"] = loop.to_dict()
        for key in ("budget_warn_at", "budget_force_at"):
            if getattr(loop, key) is not None:
                meta[LOOP_PREFIX + key] = str(getattr(loop, key))
        if step.loop is None:
            config = {k: v for k, v in config.items() if k not in LOOP_KEYS}
    if step.type == "map":
        for key in MAP_KEYS:
            if key in config:
                meta[MAP_PREFIX + key] = json.dumps(config.pop(key))
    for key, value in config.items():
        meta[CONFIG_PREFIX + key] = json.dumps(value, ensure_ascii=False)
    if step.skip_if is not None:
        out["skip_if"] = copy.deepcopy(step.skip_if.to_dict())
    if meta:
        out["metadata"] = meta
    for key in ("worker_group", "on_failure", "compensate"):
        if getattr(step, key) is not None:
            out[key] = getattr(step, key)
    if step.required_capabilities:
        out["required_capabilities"] = list(step.required_capabilities)
    return out


def read_reserved_metadata(data: Any) -> Any:
    """Move `dagnats.map.*`, `dagnats.config.*` and `dagnats.loop.*` metadata of a raw step
    back into `config` and `loop` (explicit `config` / `loop` values win)."""
    meta = data.get("metadata") if isinstance(data, Mapping) else None
    if not isinstance(meta, Mapping) or not any(
        isinstance(k, str) and k.startswith("dagnats.") for k in meta
    ):
        return data
    config: dict[str, Any] = {}
    loop: dict[str, Any] = {}
    rest: dict[Any, Any] = {}
    targets = ((MAP_PREFIX, config), (CONFIG_PREFIX, config), (LOOP_PREFIX, loop))
    for key, text in meta.items():
        for prefix, target in targets:
            if isinstance(key, str) and key.startswith(prefix):
                target[key[len(prefix) :]] = _decode(text)
                break
        else:
            rest[key] = text
    data = dict(data)
    data["metadata"] = rest or None
    if config and isinstance(data.get("config") or {}, Mapping):
        data["config"] = {**config, **(data.get("config") or {})}
    old_loop = data.get("loop")
    if isinstance(old_loop, AgentLoopConfig):
        old_loop = old_loop.model_dump(exclude_none=True)
    if loop and isinstance(old_loop or {}, Mapping):
        data["loop"] = {**loop, **(old_loop or {})}
    return data


def _decode(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
