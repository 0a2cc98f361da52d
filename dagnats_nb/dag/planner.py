"""Planner steps (pure): a planner is a task whose output, ``{"steps": [step, ...]}``, is
a fragment of workflow that joins the running run, as Go's engine materialises it
(`internal/engine/planner.go`):

- each step is a normal step (any ``type`` is forced to ``normal``) needing a ``task``;
  its id and ``depends_on`` entries are namespaced ``{planner}.{id}``; a step that depends on
  nothing depends on the planner (its input is the planner's output);
- the fragment is refused, failing the planner step, when it has more steps than the
  planner's ``config.max_steps`` (1..100, default 10), an id empty, repeated or taken, a task
  outside ``config.allowed_tasks`` (when set), a dependency outside the fragment, a cycle, a
  chain longer than ``config.max_depth`` (0 = any), or would bring the run past 500 planned
  steps;
- steps of the run that depend on the planner start when it completes, with the fragment's
  steps (they do not wait for them); the run completes when every step has.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .graph import find_cycles
from .model import StepDef, WorkflowDef

MAX_STEPS_DEFAULT = 10
MAX_STEPS_LIMIT = 100
MAX_DEPTH_LIMIT = 10
MAX_DYNAMIC_STEPS = 500


class PlanError(ValueError):
    """A planner's output cannot join the run (one line)."""


def planner_config(step: StepDef) -> tuple[int, int, list[str]]:
    """``(max_steps, max_depth, allowed_tasks)`` of a planner step."""
    cfg = step.config if isinstance(step.config, dict) else {}
    max_steps = cfg.get("max_steps", MAX_STEPS_DEFAULT)
    max_depth = cfg.get("max_depth", 0)
    allowed = cfg.get("allowed_tasks") or []
    return max_steps, max_depth, list(allowed)


def config_problems(step: StepDef) -> list[tuple[str, str]]:
    """``(field, why)`` for each problem of a planner step's config (Go's validation)."""
    max_steps, max_depth, allowed = planner_config(step)
    out = []
    if not isinstance(max_steps, int) or isinstance(max_steps, bool):
        out.append(("config.max_steps", "must be an integer"))
    elif not 1 <= max_steps <= MAX_STEPS_LIMIT:
        out.append(("config.max_steps", f"must be 1..{MAX_STEPS_LIMIT}, got {max_steps}"))
    if not isinstance(max_depth, int) or isinstance(max_depth, bool):
        out.append(("config.max_depth", "must be an integer"))
    elif not 0 <= max_depth <= MAX_DEPTH_LIMIT:
        out.append(("config.max_depth", f"must be 0..{MAX_DEPTH_LIMIT}, got {max_depth}"))
    if not all(isinstance(t, str) and t for t in allowed):
        out.append(("config.allowed_tasks", "must be a list of task names"))
    return out


def fragment(defn: WorkflowDef, planner: StepDef, output: Any, planned: int) -> list[StepDef]:
    """The steps a planner's output adds to the run (``planned``: steps it has already);
    PlanError when the output cannot join it."""
    if output is None:
        return []
    raw = output.get("steps") if isinstance(output, dict) else None
    if isinstance(output, dict) and raw is None:
        return []
    if not isinstance(raw, list):
        kind = type(output).__name__ if not isinstance(output, dict) else "steps"
        raise PlanError(f'parse planner output: expected {{"steps": [...]}}, got {kind}')
    max_steps, max_depth, allowed = planner_config(planner)
    if len(raw) > max_steps:
        raise PlanError(f"validate fragment: {len(raw)} steps, more than max_steps {max_steps}")
    if planned + len(raw) > MAX_DYNAMIC_STEPS:
        raise PlanError(
            f"validate fragment: the run would have over {MAX_DYNAMIC_STEPS} planned steps"
        )
    taken = {s.id for s in defn.steps}
    local: dict[str, StepDef] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise PlanError(f"validate fragment: step #{i + 1} is not an object")
        item = {**item, "type": "normal"}
        try:
            step = StepDef.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PlanError(f"validate fragment: step #{i + 1} {where}: {first['msg']}") from None
        if not step.id or "." in step.id:
            raise PlanError(f"validate fragment: step #{i + 1} needs an id without dots")
        full = f"{planner.id}.{step.id}"
        if step.id in local or full in taken:
            raise PlanError(f"validate fragment: step id '{step.id}' is used twice")
        if not step.task:
            raise PlanError(f"validate fragment: step '{step.id}' needs a task")
        if allowed and step.task not in allowed:
            raise PlanError(
                f"validate fragment: step '{step.id}' task '{step.task}' is not one of "
                f"allowed_tasks ({', '.join(allowed)})"
            )
        local[step.id] = step
    for step in local.values():
        for dep in step.depends_on:
            if dep not in local:
                raise PlanError(
                    f"validate fragment: step '{step.id}' depends on '{dep}', not in the plan"
                )
    cycles = find_cycles(list(local.values()))
    if cycles:
        raise PlanError(f"validate fragment: cycle {' -> '.join(cycles[0])}")
    if max_depth and _depth(local) > max_depth:
        raise PlanError(f"validate fragment: a chain is longer than max_depth {max_depth}")
    out = []
    for step in local.values():
        deps = [f"{planner.id}.{d}" for d in step.depends_on] or [planner.id]
        out.append(step.model_copy(update={"id": f"{planner.id}.{step.id}", "depends_on": deps}))
    return out


def _depth(steps: dict[str, StepDef]) -> int:
    memo: dict[str, int] = {}

    def depth(sid: str) -> int:
        if sid not in memo:
            memo[sid] = 1 + max((depth(d) for d in steps[sid].depends_on), default=0)
        return memo[sid]

    return max((depth(s) for s in steps), default=0)


def extended(defn: WorkflowDef, steps: list[StepDef]) -> WorkflowDef:
    """The run's definition with planned steps added (not validated again: their ids hold
    the planner's name and a dot, which files may not)."""
    return defn.model_copy(update={"steps": [*defn.steps, *steps]})
