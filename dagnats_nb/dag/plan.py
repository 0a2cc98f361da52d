"""What a workflow definition implies for its runs, computed once per definition: the
step order, dependencies, handlers and limits (`Plan`), and what a step's input and a
run's output are made of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import AgentLoopConfig, MapConfig, StepDef, WorkflowDef
from .state import RunState


@dataclass(frozen=True, slots=True)
class Plan:
    """Facts about a definition that every event needs, computed once."""

    defn: WorkflowDef  # the definition they are about (the cache checks it is the same)
    order: tuple[str, ...]
    scheduled: tuple[str, ...]  # ``order`` without the handlers: the steps the DAG starts
    steps: dict[str, StepDef]
    deps: dict[str, tuple[str, ...]]
    handlers: frozenset[str]  # on_failure / compensate targets: never scheduled by the DAG
    terminals: tuple[str, ...]
    max_steps: int  # 0 = unlimited
    maps: dict[str, MapConfig]
    loops: dict[str, AgentLoopConfig | None]


_plans: dict[int, Plan] = {}  # by id() of the definition


def plan(defn: WorkflowDef) -> Plan:
    """The plan of `defn`, from a small cache (a run's every event needs it)."""
    hit = _plans.get(id(defn))
    if hit is not None and hit.defn is defn:
        return hit
    p = Plan(
        defn=defn,
        order=tuple(defn.topological_order),
        scheduled=tuple(s for s in defn.topological_order if s not in defn.handler_steps),
        steps={s.id: s for s in defn.steps},
        deps={s.id: tuple(s.depends_on) for s in defn.steps},
        handlers=frozenset(defn.handler_steps),
        terminals=tuple(defn.terminal_steps),
        max_steps=(defn.concurrency.max_steps or 0) if defn.concurrency else 0,
        maps={s.id: s.map_config for s in defn.steps if s.type == "map"},
        loops={s.id: s.loop_config for s in defn.steps if s.type == "agent_loop"},
    )
    if len(_plans) > 1024:
        _plans.clear()
    _plans[id(defn)] = p
    return p


def resolve_input(defn: WorkflowDef, state: RunState, step_id: str) -> Any:
    """A step's input (WIRE.md): run input, the single parent's output, or ``{parent: output}``."""
    deps = plan(defn).deps[step_id]
    if not deps:
        return state.input
    if len(deps) == 1:
        return state.step(deps[0]).output
    return {d: state.step(d).output for d in deps}


def run_output(defn: WorkflowDef, state: RunState) -> Any:
    terminals = plan(defn).terminals
    if len(terminals) == 1:
        return state.step(terminals[0]).output
    return {t: state.step(t).output for t in terminals}
