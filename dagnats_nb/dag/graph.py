"""The dependency graph of a workflow's steps: an order that puts every dependency before
its dependents, and the cycles that prevent one.

It reads only each step's `id` and `depends_on`, so the models (`model`) can use it and it
needs none of them. Unknown dependencies and self-dependencies are ignored here; `validate`
reports them.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Protocol

from .problems import problem, workflow_error


class Node(Protocol):
    """What the graph reads of a step (a `StepDef` has both)."""

    @property
    def id(self) -> str: ...

    @property
    def depends_on(self) -> Sequence[str]: ...


def find_cycles(steps: Sequence[Node]) -> list[list[str]]:
    """Dependency cycles, each as its steps in run order with the first repeated at the end.

    Linear in steps and dependencies, plus that again for each cycle found."""
    order, succ, pred = _graph(steps)
    index = {sid: i for i, sid in enumerate(order)}
    remaining = set(order)
    cycles: list[list[str]] = []
    _peel(remaining, succ, pred)
    first_left = 0  # order[:first_left] are all gone: remaining only shrinks
    while remaining:
        while order[first_left] not in remaining:
            first_left += 1
        node = order[first_left]
        path: list[str] = []
        seen: dict[str, int] = {}
        while node not in seen:
            seen[node] = len(path)
            path.append(node)
            node = min((m for m in succ[node] if m in remaining), key=index.__getitem__)
        cycle = path[seen[node] :]
        first = cycle.index(min(cycle, key=index.__getitem__))
        cycle = cycle[first:] + cycle[:first]
        cycles.append([*cycle, cycle[0]])
        remaining -= set(cycle)
        _peel(remaining, succ, pred)
    return cycles


def cycle_problem(workflow: str, cycle: list[str]) -> str:
    """The problem line of one cycle found by `find_cycles`."""
    return problem(workflow, None, None, "cycle between steps " + " -> ".join(cycle))


def topological_order(workflow: str, steps: Sequence[Node]) -> list[str]:
    """Step ids with every dependency before its dependents, ties in definition order.

    Raises WorkflowError naming each cycle (`workflow` is the name the problems carry)."""
    order, succ, pred = _graph(steps)
    index = {sid: i for i, sid in enumerate(order)}
    waiting = {sid: len(pred[sid]) for sid in order}
    ready = [(index[sid], sid) for sid in order if not waiting[sid]]
    out: list[str] = []
    while ready:
        _, sid = heapq.heappop(ready)
        out.append(sid)
        for nxt in succ[sid]:
            waiting[nxt] -= 1
            if not waiting[nxt]:
                heapq.heappush(ready, (index[nxt], nxt))
    if len(out) != len(order):
        raise workflow_error([cycle_problem(workflow, c) for c in find_cycles(steps)])
    return out


def _graph(steps: Sequence[Node]) -> tuple[list[str], dict[str, list[str]], dict[str, set[str]]]:
    order = list(dict.fromkeys(s.id for s in steps))
    succ: dict[str, list[str]] = {sid: [] for sid in order}
    pred: dict[str, set[str]] = {sid: set() for sid in order}
    for s in steps:
        for dep in dict.fromkeys(s.depends_on):
            if dep in succ and dep != s.id and dep not in pred[s.id]:
                succ[dep].append(s.id)
                pred[s.id].add(dep)
    return order, succ, pred


def _peel(remaining: set[str], succ: dict[str, list[str]], pred: dict[str, set[str]]) -> None:
    """Drop nodes that cannot be on a cycle: no remaining predecessor or successor (and so
    on, as each drop leaves others without one), in one pass over nodes and edges."""
    ins = {n: sum(1 for p in pred[n] if p in remaining) for n in remaining}
    outs = {n: sum(1 for m in succ[n] if m in remaining) for n in remaining}
    drop = [n for n in remaining if not ins[n] or not outs[n]]
    while drop:
        node = drop.pop()
        if node not in remaining:
            continue
        remaining.discard(node)
        for m in succ[node]:
            if m in remaining:
                ins[m] -= 1
                if not ins[m]:
                    drop.append(m)
        for p in pred[node]:
            if p in remaining:
                outs[p] -= 1
                if not outs[p]:
                    drop.append(p)
