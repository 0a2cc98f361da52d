"""Run records in KV ``workflow_runs`` as the Go engine keeps them: key ``run.{run_id}``,
value Go's ``dag.WorkflowRun`` JSON (``run_id``, ``workflow_id``, ``status``, ``steps`` with
each step's ``status``, ``attempts``, ``iterations``, ``output`` (base64 of its JSON, Go's
``[]byte``), ``error``, ``map_instances`` (their statuses), ``wake_at`` (a sleep),
``child_run_id`` (a sub_workflow) and ``loop_started_at`` (a loop past its first
iteration); ``input``, ``created_at``, ``completed_at``, ``dynamic_steps``, the parent and
root run ids), so ``dagnats run list / status`` show our runs. Our own fields ride along
(Go ignores them): ``workflow``, ``version``, ``started_at``, ``ended_at``, ``error``, and
``nb``: what our reads of a run that has left memory need and Go's fields cannot hold
(exact times, the run's output, its definition's hash, counts, fork and cache marks, the
compensation under way, each step's times, worker, map counts; see :func:`run_record`).
:func:`record_state` turns a finished run's record back into the state memory holds for it
(``dag.advance.compact``); a record without ``nb`` (Go's, or an older one) gives None and
the caller rebuilds the run from its history.

Size, measured on a 10-step linear run (200 B input, ~210 B output a step, our workers):
3,898 B without ``nb``, ~5,125 B with it (+1,228 B, more than the ~0.8 KB the design
expected: ~84 B a step for its four times and worker id, 241 B the handlers' versions,
~100 B the rest; the run's output is the last step's, so it is named, not copied). A map
step adds ~22 B an item (Go's ``map_instances``).

dagnats-nb < 0.2 wrote a smaller summary under the bare run id; :func:`read_record`
reads both.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from dagnats_nb.dag.advance import compact
from dagnats_nb.dag.events import dumps, format_time, loads
from dagnats_nb.dag.snapshot import _detail, _gate
from dagnats_nb.dag.state import (
    COMPLETED,
    RETRYING,
    RUN_TERMINAL,
    RUNNING,
    WAITING,
    Failure,
    MapState,
    RunState,
    StepState,
)

NB_VERSION = 1  # the ``nb`` block's format: another one is not read (history instead)

# Step statuses Go does not have, as Go would show the step: a failed attempt waiting for
# its retry is queued again, an agent loop between iterations is still running.
_GO_STEP_STATUS = {RETRYING: "queued", WAITING: "running"}

# RunState fields ``nb`` holds when they differ from their default (the others are Go's
# fields, ours beside them, or structured below).
_RUN_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(RunState)
    if f.name
    in (
        "output",
        "event_count",
        "last_seq",
        "reopened",
        "resumed_at",
        "bound_worker",
        "legacy",
        "depth",
        "forked_from",
        "fork_step",
        "cached",
        "versions",
    )
}


def run_key(run_id: str) -> str:
    return f"run.{run_id}"


def run_record(state: RunState) -> dict[str, Any]:
    """The record of a run (see the module docstring)."""
    steps: dict[str, Any] = {}
    nb_steps: dict[str, list[Any]] = {}
    for sid, st in state.steps.items():
        steps[sid] = _go_step(st)
        nb_steps[sid] = _nb_step(st)
    out: dict[str, Any] = {
        "run_id": state.run_id,
        "workflow_id": state.workflow,
        "status": state.status,
        "steps": steps,
        "created_at": format_time(state.started_at),
        "root_run_id": state.root_run_id or state.run_id,
    }
    if state.extended is not None:  # Go's dynamic_steps: what planners added
        out["dynamic_steps"] = [s.to_dict() for s in state.extended.steps if "." in s.id]
    if state.parent_run_id:
        out["parent_run_id"] = state.parent_run_id
        out["parent_step_id"] = state.parent_step_id
    if state.input is not None:
        out["input"] = state.input
    if state.ended_at is not None:
        out["completed_at"] = format_time(state.ended_at)
    out |= {
        "workflow": state.workflow,
        "version": state.version,
        "started_at": out["created_at"],
        "ended_at": out.get("completed_at"),
        "error": state.error,
        "nb": _nb(state, nb_steps),
    }
    return out


def _go_step(st: StepState) -> dict[str, Any]:
    """A step as Go's ``dag.StepState``."""
    step: dict[str, Any] = {
        "status": _GO_STEP_STATUS.get(st.status, st.status),
        "attempts": st.attempt,
    }
    if st.iteration:
        step["iterations"] = st.iteration
        if st.first_at is not None:  # Go's loop start: our first dispatch of the step
            step["loop_started_at"] = format_time(st.first_at)
    if st.output is not None and st.status == COMPLETED:
        step["output"] = base64.b64encode(dumps(st.output)).decode()
    if st.error:
        step["error"] = st.error
    if st.map is not None:
        step["map_instances"] = _instances(st)
    if isinstance(st.detail, str):  # a sub_workflow step waits for (or waited for) it
        step["child_run_id"] = st.detail
    elif st.status == RUNNING and st.detail is None and st.due_at is not None:
        step["wake_at"] = format_time(st.due_at)  # a sleeping step (gates hold a detail)
    return step


def _instances(st: StepState) -> list[dict[str, str]]:
    """A map step's items as Go's ``map_instances`` (statuses only: the outputs are the
    step's): active ones as they are, dispatched ones completed, the rest pending."""
    m = st.map
    if st.status == COMPLETED:
        return [{"status": COMPLETED}] * m.count
    out = []
    for i in range(m.count):
        inst = m.active.get(i)
        if inst is not None:
            status = _GO_STEP_STATUS.get(inst.status, inst.status)
        else:
            status = COMPLETED if i < m.next_index else "pending"
        out.append({"status": status})
    return out


def _nb_step(st: StepState) -> list[Any]:
    """``[queued_at, started_at, ended_at, first_at, worker_id, map, due_at, status,
    detail]`` without its trailing nulls: ``map`` is ``[next_index, done, count]``,
    ``status`` is there only when Go's cannot say it, ``detail`` only for a gate."""
    m = st.map
    detail = st.detail if st.detail is None or isinstance(st.detail, str) else _detail(st.detail)
    out = [
        st.queued_at,
        st.started_at,
        st.ended_at,
        st.first_at,
        st.worker_id,
        None if m is None else [m.next_index, m.done, m.count],
        st.due_at,
        st.status if st.status in _GO_STEP_STATUS else None,
        detail if isinstance(detail, dict) else None,
    ]
    while len(out) > 5 and out[-1] is None:
        out.pop()
    return out


def _nb(state: RunState, steps: dict[str, list[Any]]) -> dict[str, Any]:
    nb: dict[str, Any] = {
        "v": NB_VERSION,
        "def_hash": state.def_hash,
        "t": [state.started_at, state.ended_at],
        # a run that ended is written when the core decides it, before the events it
        # published (its end among them) are stored: each will count once
        "event_count": state.event_count + len(state.outbox),
    }
    for name, default in _RUN_DEFAULTS.items():
        value = getattr(state, name)
        if value != default and name != "event_count":
            nb[name] = value
    output_of = _output_of(state)
    if output_of is not None:  # the step outputs Go's fields hold already: named, not copied
        del nb["output"]
        nb["output_of"] = output_of
    if state.reused:
        nb["reused"] = sorted(state.reused)
    if state.failure is not None:
        nb["failure"] = dataclasses.asdict(state.failure)
    if state.extended is not None:
        nb["extended"] = True
    nb["steps"] = steps
    return nb


def _output_of(state: RunState) -> str | list[str] | None:
    """The step whose output the run's output is (its one terminal step), or the steps
    whose outputs it holds by step id, when each is a completed step's own output."""

    def held(sid: Any) -> bool:
        st = state.steps.get(sid)
        return st is not None and st.status == COMPLETED and st.output is not None

    out = state.output
    if out is None:
        return None
    for sid, st in state.steps.items():
        if st.output is out and held(sid):
            return sid
    if (
        isinstance(out, dict)
        and out
        and all(held(k) and state.steps[k].output is v for k, v in out.items())
    ):
        return list(out)
    return None


def record_state(raw: Any, defn: Any = None) -> RunState | None:
    """The state memory holds for the finished run whose record is ``raw``
    (``dag.advance.compact``: no step inputs or outputs, the run's output kept), with the
    planner-extended definition rebuilt on ``defn`` (the run's ``WorkflowDef``) when a
    planner added steps. None when ``raw`` holds no ``nb`` block this version reads, or
    the run has not ended (its record may be behind): read its history instead.

    ``event_count`` counts the events the run published at its end (see
    :func:`run_record`); ``last_seq`` is the run's last stored event before them."""
    if not isinstance(raw, dict) or raw.get("status") not in RUN_TERMINAL:
        return None
    nb = raw.get("nb")
    if not isinstance(nb, dict) or nb.get("v") != NB_VERSION:
        return None
    try:
        return _state(raw, nb, defn)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None


def _state(raw: dict[str, Any], nb: dict[str, Any], defn: Any) -> RunState:
    run_id = raw["run_id"]
    started, ended = _times(nb["t"], 2)
    root = raw.get("root_run_id") or ""
    state = RunState(
        run_id=run_id,
        workflow=raw.get("workflow") or raw["workflow_id"],
        version=raw.get("version") or "",
        def_hash=nb["def_hash"],
        input=raw.get("input"),
        started_at=started,
        status=raw["status"],
        ended_at=ended,
        error=raw.get("error"),
        parent_run_id=raw.get("parent_run_id") or "",
        parent_step_id=raw.get("parent_step_id") or "",
        root_run_id="" if root == run_id else root,
        reused=frozenset(nb.get("reused", ())),
        **{name: nb.get(name, default) for name, default in _RUN_DEFAULTS.items()},
    )
    if "output_of" in nb:
        state.output = _output(raw, nb["output_of"])
    if nb.get("failure") is not None:
        f = nb["failure"]
        undo = tuple(tuple(pair) for pair in f.get("undo", ()))
        state.failure = Failure(f["step_id"], f["error"], undo, f["cause"], f["saga"])
    go_steps = raw.get("steps") or {}
    state.steps = {sid: _step_state(go_steps[sid], row) for sid, row in nb["steps"].items()}
    if nb.get("extended") and defn is not None:
        state.extended = _extended(defn, raw.get("dynamic_steps") or [])
    return compact(state)  # marked as compacted, as memory's (a failed run is as it is)


def _times(values: Any, n: int) -> list[float | None]:
    """``values``, a list of ``n`` POSIX times (or nulls); TypeError when it is not (a
    record any client may have written: its times go into DataFrames)."""
    if not isinstance(values, list) or len(values) != n:
        raise TypeError("not a list of times")
    for v in values:
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise TypeError(f"not a time: {v!r}")
    return values


def _step_state(go: dict[str, Any], row: list[Any]) -> StepState:
    row = [*row, *[None] * (9 - len(row))]
    queued, started, ended, first, worker, m, due, status, detail = row
    _times([queued, started, ended, first, due], 5)
    if not isinstance(worker, str):
        raise TypeError("not a worker id")
    st = StepState(
        status=status or go["status"],
        attempt=go.get("attempts", 0),
        iteration=go.get("iterations", 0),
        error=go.get("error") or None,
        first_at=first,
        queued_at=queued,
        started_at=started,
        ended_at=ended,
        due_at=due,
        worker_id=worker,
    )
    if m is not None:
        st.map = MapState(m[2], [], m[0], m[1])
    if detail is not None:
        st.detail = _gate(detail)
    elif go.get("child_run_id"):
        st.detail = go["child_run_id"]
    return st


def _extended(defn: Any, dynamic: list[dict[str, Any]]) -> Any:
    from dagnats_nb.dag.loader import load_extended  # reads files too: only when needed

    body = defn.to_dict()
    body["steps"] = [*body["steps"], *dynamic]
    return load_extended(body)


def _output(raw: dict[str, Any], output_of: str | list[str]) -> Any:
    """The run's output rebuilt from the step outputs ``nb.output_of`` names."""
    if isinstance(output_of, str):
        return record_output(raw, output_of)
    return {sid: record_output(raw, sid) for sid in output_of}


def record_output(raw: Any, step_id: str) -> Any:
    """A completed step's output as its run's record holds it (Go's base64 of the JSON;
    a large value is the ``{"$ref", "size"}`` the run held); None when it holds none."""
    step = (raw.get("steps") or {}).get(step_id) if isinstance(raw, dict) else None
    if not isinstance(step, dict) or step.get("status") != COMPLETED or "output" not in step:
        return None
    return loads(base64.b64decode(step["output"]))


def read_record(raw: Any, exact: bool = False) -> dict[str, Any] | None:
    """A ``workflow_runs`` value, ours or Go's, in any version, as a run summary:
    ``run_id``, ``workflow``, ``version``, ``status``, ``started_at``, ``ended_at``,
    ``error``, ``steps`` (step id -> status); None when it is not a run record. Times are
    the record's RFC 3339 text or, ``exact``, the POSIX seconds ``nb`` holds (the run's
    own, as its state has them) where it has them."""
    if not isinstance(raw, dict) or not isinstance(raw.get("run_id"), str):
        return None
    steps = raw.get("steps") if isinstance(raw.get("steps"), dict) else {}
    errors = [
        f"step '{sid}' failed: {st['error']}"
        for sid, st in steps.items()
        if isinstance(st, dict) and st.get("error") and st.get("status") == "failed"
    ]
    nb = raw.get("nb")
    times = nb.get("t") if exact and isinstance(nb, dict) and nb.get("v") == NB_VERSION else None
    if not (isinstance(times, list) and len(times) == 2):
        times = [
            raw.get("started_at") or raw.get("created_at"),
            raw.get("ended_at") or raw.get("completed_at"),
        ]
    return {
        "run_id": raw["run_id"],
        "workflow": raw.get("workflow") or raw.get("workflow_id"),
        "version": raw.get("version"),
        "status": raw.get("status"),
        "started_at": times[0],
        "ended_at": times[1],
        "error": raw.get("error") or (errors[0] if errors else None),
        "steps": {
            sid: st.get("status") if isinstance(st, dict) else st for sid, st in steps.items()
        },
    }
