"""A run's state as a snapshot (pure): plain JSON data that decodes to an equal ``RunState``.

The first piece of issue 15 (a restart that loads active runs from their snapshots and
replays only the history after them; design/history-at-scale.md). ``encode(state)`` is
``{"v": VERSION, "state": {...}}`` holding every ``RunState`` field, its step states (map
instances, gate details), its outbox (events and tasks, field by field: a task's worker
group is in no wire form) and the planner-extended definition; values are kept as the state
holds them, large ones already ``{"$ref", "size"}``. ``decode`` returns an equal state, or
None for a snapshot it cannot read (another format version, a broken body): the caller then
rebuilds the run from its history, as today.

A field added to a state class later gets its default when an older snapshot lacks it;
``tests/test_snapshot.py`` fails when a field has no place here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .events import Event, TaskPayload
from .gates import ApprovalGate, EventWait
from .state import Failure, Instance, MapState, RunState, StepState

VERSION = 1

_EVENT = tuple(f.name for f in dataclasses.fields(Event))
_TASK = tuple(f.name for f in dataclasses.fields(TaskPayload))
_STEP = tuple(f.name for f in dataclasses.fields(StepState) if f.name not in ("map", "detail"))
_RUN_PLAIN = tuple(
    f.name
    for f in dataclasses.fields(RunState)
    if f.name not in ("failure", "steps", "outbox", "extended", "reused")
)


def encode(state: RunState) -> dict[str, Any]:
    """The snapshot of ``state`` (JSON data; the state is not changed)."""
    body: dict[str, Any] = {name: getattr(state, name) for name in _RUN_PLAIN}
    body["steps"] = {sid: _step(st) for sid, st in state.steps.items()}
    body["outbox"] = {
        msg_id: [_fields(e, _EVENT), None if t is None else _fields(t, _TASK)]
        for msg_id, (e, t) in state.outbox.items()
    }
    body["reused"] = sorted(state.reused)
    if state.failure is not None:
        body["failure"] = dataclasses.asdict(state.failure)
    if state.extended is not None:
        body["extended"] = state.extended.to_dict()
    return {"v": VERSION, "state": body}


def decode(snapshot: Any) -> RunState | None:
    """The state a snapshot holds; None when it is not one this version reads."""
    if not isinstance(snapshot, dict) or snapshot.get("v") != VERSION:
        return None
    body = snapshot.get("state")
    if not isinstance(body, dict):
        return None
    try:
        return _run(body)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _run(body: dict[str, Any]) -> RunState:
    known = {name: body[name] for name in _RUN_PLAIN if name in body}
    state = RunState(**known)
    state.steps = {sid: _step_state(raw) for sid, raw in body.get("steps", {}).items()}
    state.outbox = {
        msg_id: (Event(**_known(e, _EVENT)), None if t is None else _task(t))
        for msg_id, (e, t) in body.get("outbox", {}).items()
    }
    state.reused = frozenset(body.get("reused", ()))
    if body.get("failure") is not None:
        raw = body["failure"]
        undo = tuple(tuple(pair) for pair in raw.get("undo", ()))
        state.failure = Failure(**{**_known(raw, _FAILURE), "undo": undo})
    if body.get("extended") is not None:
        from .loader import load_extended  # the loader reads files too: only when needed

        state.extended = load_extended(body["extended"])
    return state


_FAILURE = tuple(f.name for f in dataclasses.fields(Failure))


def _step(st: StepState) -> dict[str, Any]:
    out = {name: getattr(st, name) for name in _STEP}
    if st.map is not None:
        m = st.map
        out["map"] = {
            "count": m.count,
            "outputs": m.outputs,
            "next_index": m.next_index,
            "done": m.done,
            "active": {str(i): [x.status, x.attempt, x.due_at] for i, x in m.active.items()},
        }
    if st.detail is not None:
        out["detail"] = _detail(st.detail)
    return out


def _step_state(raw: dict[str, Any]) -> StepState:
    st = StepState(**_known(raw, _STEP))
    m = raw.get("map")
    if m is not None:
        active = {int(i): Instance(*x) for i, x in m["active"].items()}
        st.map = MapState(m["count"], m["outputs"], m["next_index"], m["done"], active)
    if raw.get("detail") is not None:
        st.detail = _gate(raw["detail"])
    return st


def _detail(detail: Any) -> dict[str, Any]:
    """A waiting step's resolved gate: an event wait, an approval, or a child run's id."""
    if isinstance(detail, EventWait):
        return {"kind": "event", **dataclasses.asdict(detail)}
    if isinstance(detail, ApprovalGate):
        return {"kind": "approval", **dataclasses.asdict(detail)}
    if isinstance(detail, str):
        return {"kind": "text", "value": detail}
    raise TypeError(f"no snapshot form for a step detail of type {type(detail).__name__}")


def _gate(raw: dict[str, Any]) -> Any:
    kind = raw["kind"]
    if kind == "event":
        return EventWait(raw["event"], raw["left"], raw["right"], raw["timeout_s"])
    if kind == "approval":
        fields = {k: v for k, v in raw.items() if k != "kind"}
        return ApprovalGate(**{**fields, "approvers": tuple(fields.get("approvers", ()))})
    if kind == "text":
        return raw["value"]
    raise ValueError(f"unknown step detail {kind!r}")


def _task(raw: dict[str, Any]) -> TaskPayload:
    return TaskPayload(**_known(raw, _TASK))


def _fields(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in names}


def _known(raw: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: raw[name] for name in names if name in raw}
