"""Run records in KV ``workflow_runs`` as the Go engine keeps them: key ``run.{run_id}``,
value Go's ``dag.WorkflowRun`` JSON (``run_id``, ``workflow_id``, ``status``, ``steps`` with
each step's ``status``, ``attempts``, ``output`` (base64 of its JSON, Go's ``[]byte``) and
``error``, ``input``, ``created_at``, ``completed_at``), so ``dagnats run list / status``
show our runs. Our own fields ride along (Go ignores them): ``workflow``, ``version``,
``started_at``, ``ended_at``, ``error``.

dagnats-nb < 0.2 wrote a smaller summary under the bare run id; :func:`read_record`
reads both.
"""

from __future__ import annotations

import base64
from typing import Any

from dagnats_nb.dag.events import dumps, format_time
from dagnats_nb.dag.state import RETRYING, WAITING, RunState

# Step statuses Go does not have, as Go would show the step: a failed attempt waiting for
# its retry is queued again, an agent loop between iterations is still running.
_GO_STEP_STATUS = {RETRYING: "queued", WAITING: "running"}


def run_key(run_id: str) -> str:
    return f"run.{run_id}"


def run_record(state: RunState) -> dict[str, Any]:
    """The record of a run (see the module docstring)."""
    steps: dict[str, Any] = {}
    for sid, st in state.steps.items():
        step: dict[str, Any] = {
            "status": _GO_STEP_STATUS.get(st.status, st.status),
            "attempts": st.attempt,
        }
        if st.iteration:
            step["iterations"] = st.iteration
        if st.output is not None and st.status == "completed":
            step["output"] = base64.b64encode(dumps(st.output)).decode()
        if st.error:
            step["error"] = st.error
        steps[sid] = step
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
    }
    return out


def read_record(raw: Any) -> dict[str, Any] | None:
    """A ``workflow_runs`` value, ours or Go's, in any version, as a run summary:
    ``run_id``, ``workflow``, ``version``, ``status``, ``started_at``, ``ended_at``,
    ``error``, ``steps`` (step id -> status); None when it is not a run record."""
    if not isinstance(raw, dict) or not isinstance(raw.get("run_id"), str):
        return None
    steps = raw.get("steps") if isinstance(raw.get("steps"), dict) else {}
    errors = [
        f"step '{sid}' failed: {st['error']}"
        for sid, st in steps.items()
        if isinstance(st, dict) and st.get("error") and st.get("status") == "failed"
    ]
    return {
        "run_id": raw["run_id"],
        "workflow": raw.get("workflow") or raw.get("workflow_id"),
        "version": raw.get("version"),
        "status": raw.get("status"),
        "started_at": raw.get("started_at") or raw.get("created_at"),
        "ended_at": raw.get("ended_at") or raw.get("completed_at"),
        "error": raw.get("error") or (errors[0] if errors else None),
        "steps": {
            sid: st.get("status") if isinstance(st, dict) else st for sid, st in steps.items()
        },
    }
