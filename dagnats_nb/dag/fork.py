"""Forking a run (pure): a new run that keeps the recorded outputs of a finished (or failed,
or running) run's steps and runs the rest, from a chosen step on.

`plan_fork` decides which steps are reused: the source run's completed steps that are none of

- the step the fork starts from, nor any step that depends on it (directly or not);
- a step whose definition differs between the source's version and the fork's (its task,
  config, dependencies...: any field of its ``to_dict``), a step new in the fork's version,
  a planner step (its steps are planned anew), nor anything depending on those;
- with a different run input, a step that reads the input (one without dependencies), nor
  anything depending on it: in a DAG that is every step, so such a fork reuses nothing;
- an on_failure or compensate handler (they run only when a step fails).

A map step is reused whole or run whole: forking from it runs every item again, forking
from a step after it keeps its list of outputs. The engine cannot see a handler's code: a
changed handler is rerun by forking from its step.

The decision is recorded in the new run's ``workflow.started`` payload (``forked_from``:
``{run_id, step_id, def_hash}`` of the source; ``reused``: ``{step_id: output}``, large
outputs as the fork's own ``$ref``), which Go ignores; ``Fold.on_fork`` completes those
steps at the run's start, before anything is scheduled, and writes a ``step.completed`` for
each (so Go's readers see them completed), and replay does the same from the same payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RunError
from .model import WorkflowDef
from .state import COMPLETED, SKIPPED, RunState

FORKED_FROM = "forked_from"  # keys of a fork's workflow.started payload
REUSED = "reused"


@dataclass(frozen=True, slots=True)
class Fork:
    """What a fork keeps and what it runs (see the module docstring)."""

    reused: dict[str, Any]  # step id -> the source's recorded output, in run order
    runs: tuple[str, ...]  # the fork's other steps (handlers aside), in run order
    changed: tuple[str, ...]  # steps whose definition differs from the source's (or new)


def plan_fork(
    source: WorkflowDef,
    state: RunState,
    target: WorkflowDef,
    from_step: str,
    *,
    new_input: bool = False,
    also: tuple[str, ...] = (),
) -> Fork:
    """The steps a fork of the run ``state`` (of definition ``source``) from ``from_step``
    (and from the steps ``also``) reuses, run against ``target``; RunError (one line) when
    one of them is no step of ``target`` or is a handler."""
    for sid in (from_step, *also):
        check_from_step(state.run_id, target, sid)
    changed = changed_steps(source, target)
    seeds = {from_step, *also, *changed}
    seeds |= {s.id for s in target.steps if s.type == "planner"}
    if new_input:
        seeds |= {s.id for s in target.steps if not s.depends_on}
    dirty = downstream(target, seeds)
    handlers = set(target.handler_steps)
    reused: dict[str, Any] = {}
    runs: list[str] = []
    for sid in target.topological_order:
        if sid in handlers:
            continue
        st = state.step(sid)
        deps_kept = all(
            d in reused or (d not in dirty and state.step(d).status == SKIPPED)
            for d in target.step(sid).depends_on
        )
        if sid not in dirty and st.status == COMPLETED and deps_kept:
            reused[sid] = st.output
        else:
            runs.append(sid)
    return Fork(reused, tuple(runs), changed)


def changed_steps(source: WorkflowDef, target: WorkflowDef) -> tuple[str, ...]:
    """The steps of ``target`` whose definition differs from ``source``'s, or new in it."""
    before = {s.id: s for s in source.steps}
    return tuple(
        s.id for s in target.steps if s.id not in before or before[s.id].to_dict() != s.to_dict()
    )


def rerun_seeds(
    source: WorkflowDef,
    target: WorkflowDef,
    ran_with: dict[str, str],
    serving: dict[str, str],
) -> tuple[str, ...]:
    """What a rerun of a run of ``source`` against ``target`` starts from, in run order:
    the steps whose definition changed (or are new), and the steps whose task is now served
    by a handler of another version than the one that ran them (``ran_with``: step id ->
    the handler version its result event recorded; ``serving``: task -> the version of the
    handler that serves it here). Steps without a recorded version (a Go worker's) or whose
    task is not served here are taken as unchanged. A changed on_failure or compensate
    handler stands for the steps it handles (it runs only when one of them fails)."""
    changed = set(changed_steps(source, target))
    for s in target.steps:
        was, now = ran_with.get(s.id), serving.get(s.task)
        if was and now and was != now:
            changed.add(s.id)
    for s in target.steps:
        if changed & {s.on_failure, s.compensate}:
            changed.add(s.id)
    handlers = set(target.handler_steps)
    return tuple(sid for sid in target.topological_order if sid in changed - handlers)


def check_from_step(run_id: str, target: WorkflowDef, from_step: str) -> None:
    """RunError naming what to do when a run cannot be forked from ``from_step``."""
    if from_step not in target.step_ids:
        raise RunError(
            f"cannot fork run {run_id} from step '{from_step}': workflow '{target.name}' "
            f"has no such step (its steps: {', '.join(target.step_ids)}); name one of them"
        )
    if from_step in target.handler_steps:
        handled = [s.id for s in target.steps if from_step in (s.on_failure, s.compensate)]
        raise RunError(
            f"cannot fork run {run_id} from step '{from_step}': it is an on_failure or "
            f"compensate handler, which runs only when a step fails; fork from the step it "
            f"handles ({', '.join(repr(h) for h in handled)})"
        )


def downstream(defn: WorkflowDef, seeds: set[str]) -> set[str]:
    """``seeds`` and every step of ``defn`` that depends on one of them, directly or not."""
    children: dict[str, list[str]] = {}
    for s in defn.steps:
        for d in s.depends_on:
            children.setdefault(d, []).append(s.id)
    out = set(seeds)
    stack = list(seeds)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


def fork_payload(payload: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(forked_from, reused)`` of a ``workflow.started`` payload (both empty when the run
    is no fork, or the payload is not the shape a fork writes)."""
    if not isinstance(payload, dict):
        return {}, {}
    source = payload.get(FORKED_FROM)
    reused = payload.get(REUSED)
    if not isinstance(source, dict) or not isinstance(reused, dict):
        return {}, {}
    return source, reused
