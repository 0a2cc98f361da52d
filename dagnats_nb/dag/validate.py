"""Structural rules of a workflow definition (WIRE.md, plus the reference's rules: map and
handler steps, and Go's `dag.Validate` / trigger checks for the fields we accept but do not
enforce yet, so that what we accept the Go engine accepts). Each problem is one line naming
the workflow, the step and the field."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import UnsupportedStepType, WorkflowError
from .cron import trigger_spec_problems
from .durations import parse_duration, to_nanoseconds
from .gates import config_problems
from .graph import cycle_problem, find_cycles
from .model import (
    LOOP_KEYS,
    MAP_KEYS,
    SUPPORTED_STEP_TYPES,
    AgentLoopConfig,
    MapConfig,
    StepDef,
    WorkflowDef,
)
from .problems import problem, reason, workflow_error

_NOT_IN_TOKEN = re.compile(r"[.*>\s\x00-\x1f\x7f]")
_TASK_TYPES = ("normal", "map", "agent_loop", "agent", "planner")
_OPS = ("==", "!=", "<", ">", "<=", ">=")
_TRIGGER_KINDS = {
    "cron": ("expression",),
    "subject": ("subject",),
    "webhook": ("path",),
    "http": ("path", "method", "timeout_ms", "max_body_bytes"),
    "external": ("kind",),
}
_TRIGGER_KEYS = {"id", "workflow_id", "enabled", "debounce", "source", *_TRIGGER_KINDS}
_DEBOUNCE_KEYS = ("period", "timeout", "key")
_DEBOUNCE_MAX_NS = 7 * 24 * 3600 * 10**9


def model_problems(
    model: type[BaseModel], data: Any, workflow: str, step: str | int, prefix: str
) -> list[str]:
    """Problems of validating `data` as `model`, fields named `prefix.<field>`."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"])
            out.append(problem(workflow, step, f"{prefix}.{path}" if path else prefix, reason(err)))
        return out
    return []


def validate(defn: WorkflowDef) -> list[str]:
    """All structural problems of `defn` (empty when it is valid)."""
    name = defn.name
    out: list[str] = []
    if not name:
        out.append(problem(None, None, "name", "must not be empty"))
    else:
        out += _token_problems(name, name, None, "name")
    # An empty version is Go's too: its dag.Validate accepts it (a file without one is
    # stored with "version": "" by the Go CLI), so a run of it must start here as well.
    if not defn.steps:
        out.append(problem(name, None, "steps", "at least one step is required"))
    by_id: dict[str, StepDef] = {}
    first_index: dict[str, int] = {}
    for i, s in enumerate(defn.steps):
        label: str | int = s.id or i
        if not s.id:
            out.append(problem(name, i, "id", "must not be empty"))
        elif s.id in first_index:
            dup = f"duplicate step id (also step #{first_index[s.id] + 1}); ids must be unique"
            out.append(problem(name, s.id, "id", dup))
        else:
            out += _token_problems(s.id, name, s.id, "id")
            first_index[s.id] = i
            by_id[s.id] = s
        if s.type in _TASK_TYPES and not s.task:
            out.append(problem(name, label, "task", f"a '{s.type}' step needs a task name"))
        elif s.task is not None:
            out += _token_problems(s.task, name, label, "task")
    handlers = {t for x in defn.steps for t in (x.on_failure, x.compensate) if t}
    for i, s in enumerate(defn.steps):
        out += _step_problems(defn, s, s.id or i, by_id, handlers)
    out += _idempotency_key_problems(defn)
    out += _trigger_problems(defn)
    out += _sticky_problems(defn)
    out += [cycle_problem(name, cycle) for cycle in find_cycles(defn.steps)]
    return out


def check(defn: WorkflowDef, *, allow_unsupported: bool = False) -> None:
    """Raise WorkflowError listing every problem, then UnsupportedStepType for step types
    this engine does not run (unless `allow_unsupported`)."""
    problems = validate(defn)
    if problems:
        raise workflow_error(problems)
    if allow_unsupported:
        return
    supported = ", ".join(sorted(SUPPORTED_STEP_TYPES))
    unsupported = [
        problem(
            defn.name,
            s.id,
            None,
            f"step type '{s.type}' is not supported yet (supported: {supported})",
        )
        for s in defn.steps
        if s.type not in SUPPORTED_STEP_TYPES
    ]
    if unsupported:
        raise workflow_error(unsupported, UnsupportedStepType)


def _token_problems(value: str, workflow: str | None, step: str | int | None, field: str) -> list:
    bad = sorted(set(_NOT_IN_TOKEN.findall(value)))
    if not bad:
        return []
    shown = ", ".join("whitespace" if c.isspace() else repr(c) for c in bad)
    why = (
        f"'{value}' contains {shown}; ids, task names and workflow names are NATS subject "
        "tokens and must not contain '.', '*', '>' or whitespace"
    )
    return [problem(workflow, step, field, why)]


def _step_problems(
    defn: WorkflowDef, s: StepDef, label: str | int, by_id: dict[str, StepDef], handlers: set[str]
) -> list[str]:
    """Problems of one step (`handlers`: the steps named as on_failure/compensate)."""
    name = defn.name
    out: list[str] = []
    if s.retries is not None and s.retries < 0:
        out.append(problem(name, label, "retries", f"must be >= 0, got {s.retries}"))
    seen: set[str] = set()
    for dep in s.depends_on:
        if dep == s.id:
            out.append(problem(name, label, "depends_on", "a step may not depend on itself"))
        elif dep not in by_id:
            out.append(problem(name, label, "depends_on", f"unknown step '{dep}'"))
        elif dep in seen:
            out.append(problem(name, label, "depends_on", f"lists '{dep}' twice"))
        elif dep in handlers:
            why = (
                f"'{dep}' is an on_failure/compensate handler, which runs only on failure, so "
                "this step would never start; depend on the step it handles instead"
            )
            out.append(problem(name, label, "depends_on", why))
        seen.add(dep)
    for key in ("on_failure", "compensate"):
        target = getattr(s, key)
        if target is None:
            continue
        if target == s.id:
            out.append(problem(name, label, key, "a step may not be its own handler"))
        elif target not in by_id:
            out.append(problem(name, label, key, f"unknown step '{target}'"))
        elif by_id[target].depends_on:
            why = f"handler step '{target}' must not have depends_on; it runs only on failure"
            out.append(problem(name, label, key, why))
    if s.skip_if is not None:
        cond = s.skip_if
        if cond.op not in _OPS:
            out.append(problem(name, label, "skip_if.op", f"must be one of {' '.join(_OPS)}"))
        if not cond.field:
            out.append(problem(name, label, "skip_if.field", "must not be empty"))
        if cond.step_id not in s.depends_on:
            why = f"'{cond.step_id}' must be one of this step's depends_on"
            out.append(problem(name, label, "skip_if.step_id", why))
    if s.rate_limit is not None and s.keyed_rate_limit is not None:
        why = "set one of rate_limit and keyed_rate_limit, not both"
        out.append(problem(name, label, "keyed_rate_limit", why))
    if s.type == "agent_loop":
        out += _loop_problems(name, s, label)
    elif s.loop is not None:
        why = f"only agent_loop steps take loop settings; this step is '{s.type}'"
        out.append(problem(name, label, "loop", why))
    if s.type == "map":
        out += _map_problems(name, s, label, by_id)
    for field, why in config_problems(s, by_id.keys()):
        out.append(problem(name, label, field, why))
    return out


def _loop_problems(name: str, s: StepDef, label: str | int) -> list[str]:
    in_config = {k: v for k, v in (s.config or {}).items() if k in LOOP_KEYS}
    if s.loop is not None:
        out = []
        if in_config:
            why = f"loop settings given under both 'loop' and 'config' ({', '.join(in_config)})"
            out.append(problem(name, label, "config", why + "; keep one"))
        if s.loop.max_iterations <= 0:
            why = f"agent_loop steps need max_iterations > 0, got {s.loop.max_iterations}"
            out.append(problem(name, label, "loop.max_iterations", why))
        return out
    if not in_config:
        why = "agent_loop steps need config.max_iterations > 0 (e.g. config: {max_iterations: 10})"
        return [problem(name, label, "config", why)]
    return model_problems(AgentLoopConfig, in_config, name, label, "config")


def _map_problems(name: str, s: StepDef, label: str | int, by_id: dict[str, StepDef]) -> list[str]:
    settings = {k: v for k, v in (s.config or {}).items() if k in MAP_KEYS}
    out = model_problems(MapConfig, settings, name, label, "config")
    if len(s.depends_on) != 1:
        why = (
            "a map step needs exactly one dependency, the step whose output array it maps "
            f"over; it has {len(s.depends_on)}"
        )
        out.append(problem(name, label, "depends_on", why))
    for dep in s.depends_on:
        if dep in by_id and by_id[dep].type == "map":
            why = f"depends on map step '{dep}'; nested map steps are not supported"
            out.append(problem(name, label, "depends_on", why))
    return out


def _idempotency_key_problems(defn: WorkflowDef) -> list[str]:
    """Go's rule for the dot-path: no leading or trailing dot, no empty segment."""
    key = defn.idempotency_key
    if not key:
        return []
    if key.startswith(".") or key.endswith("."):
        why = f"'{key}' must not start or end with '.'"
    elif ".." in key:
        why = f"'{key}' has an empty segment ('..')"
    else:
        return []
    return [problem(defn.name, None, "idempotency_key", why)]


def _trigger_problems(defn: WorkflowDef) -> list[str]:
    out: list[str] = []
    for j, trig in enumerate(defn.triggers or []):
        field = f"triggers[{j}]"
        tid = trig.get("id")
        if not isinstance(tid, str) or not tid:
            out.append(problem(defn.name, None, f"{field}.id", "must be a non-empty string"))
        owner = trig.get("workflow_id")
        if owner not in (None, "", defn.name):
            why = f"'{owner}' does not match the workflow's name '{defn.name}'"
            out.append(problem(defn.name, None, f"{field}.workflow_id", why))
        unknown = [k for k in trig if k not in _TRIGGER_KEYS]
        if unknown:
            out.append(problem(defn.name, None, field, f"unknown field(s) {', '.join(unknown)}"))
        kinds = [k for k in _TRIGGER_KINDS if k in trig]
        if len(kinds) != 1:
            why = f"needs exactly one of {', '.join(_TRIGGER_KINDS)}"
            out.append(problem(defn.name, None, field, f"{why}; got {len(kinds)}"))
        for kind in kinds:
            spec = trig[kind]
            if not isinstance(spec, dict):
                out.append(problem(defn.name, None, f"{field}.{kind}", "must be a mapping"))
                continue
            for key in _TRIGGER_KINDS[kind]:
                if key not in spec:
                    out.append(problem(defn.name, None, f"{field}.{kind}.{key}", "is required"))
            for key, why in trigger_spec_problems(kind, spec):
                out.append(problem(defn.name, None, f"{field}.{kind}.{key}", why))
        if "debounce" in trig:
            why = _debounce_problem(trig["debounce"], "cron" in trig)
            if why:
                out.append(problem(defn.name, None, f"{field}.debounce", why))
    return out


def _debounce_problem(spec: Any, cron: bool) -> str | None:
    """Go's DebounceConfig rules: 0 < period <= 7 days, timeout 0 or period..7 days, and no
    debounce on a cron trigger."""
    if not isinstance(spec, dict):
        return "must be a mapping with period (and timeout, key)"
    unknown = [k for k in spec if k not in _DEBOUNCE_KEYS]
    if unknown:
        return f"unknown field(s) {', '.join(map(str, unknown))} (allowed: period, timeout, key)"
    if cron:
        return "debounce does not apply to a cron trigger"
    try:
        period = to_nanoseconds(parse_duration(spec.get("period", 0), where="period"))
        timeout = to_nanoseconds(parse_duration(spec.get("timeout", 0), where="timeout"))
    except WorkflowError as exc:
        return str(exc)
    if not period:
        return "period must be > 0"
    if max(period, timeout) > _DEBOUNCE_MAX_NS:
        return "period and timeout must be at most 7 days"
    if timeout and timeout < period:
        return "timeout must be 0 or >= period"
    return None


def _sticky_problems(defn: WorkflowDef) -> list[str]:
    """The reference's rules: hard affinity needs a timeout (a run waits for its worker),
    and per-step worker groups would contradict the binding."""
    if defn.sticky is None:
        return []
    out = []
    if defn.sticky == "hard" and defn.timeout is None:
        why = "hard affinity needs a workflow timeout (a run waits for its bound worker)"
        out.append(problem(defn.name, None, "sticky", why))
    for s in defn.steps:
        if s.worker_group:
            why = "sticky workflows cannot route steps to a worker_group; remove one of them"
            out.append(problem(defn.name, s.id, "worker_group", why))
    return out
