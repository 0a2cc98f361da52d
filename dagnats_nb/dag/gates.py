"""Steps that wait without a worker (pure: the time is a parameter): ``sleep``,
``wait_for_event`` and ``approval``, as the Go engine reads their ``config`` (Go
`dag/config.go`, `sleep.go`, `waitforevent.go`, `approval.go`).

- sleep: exactly one of ``duration`` (Go duration: nanoseconds or "30s"), ``cron`` (the
  next occurrence after the step starts, UTC) or ``until_input_path`` (a dot path into the
  run's input naming an RFC 3339 instant, or a number of milliseconds to sleep); at most
  365 days. Its output is null, as in Go.
- wait_for_event: ``event`` (the type: events arrive on ``event.{type}``), ``match``
  ``{left, op: "eq", right}`` where ``left`` is a dot path into the event's data and
  ``right`` is ``input.<path>`` or ``step.<id>.output.<path>``, resolved when the step
  starts; ``timeout`` (required). Its output is the event's data, or ``{"timeout": true}``.
- approval: ``subject`` (where the request is announced), ``timeout`` (at most 168 h),
  ``description``, ``metadata``; ours, which Go ignores: ``approvers`` (who may decide).
  Granted: its output is the decision; rejected or expired: the step fails.
"""

from __future__ import annotations

import math
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from .durations import parse_duration
from .model import StepDef

SUB_WORKFLOW_MAX_DEPTH = 3  # children of children of children, no deeper
SLEEP_MAX_S = 365 * 24 * 3600.0
APPROVAL_MAX_S = 168 * 3600.0
WAITING_TYPES = frozenset({"sleep", "wait_for_event", "approval"})


class GateError(ValueError):
    """A waiting step's config cannot be read or resolved (one line)."""


def _config(step: StepDef) -> dict[str, Any]:
    return step.config if isinstance(step.config, dict) else {}


def _seconds(step: StepDef, key: str) -> float:
    raw = _config(step).get(key)
    if raw is None or raw == 0 or raw == "":
        return 0.0
    try:
        return parse_duration(raw).total_seconds()
    except Exception as exc:  # WorkflowError or ValueError: one line either way
        raise GateError(f"step '{step.id}': config.{key}: {exc}") from None


# -- problems at registration ------------------------------------------------------------


def config_problems(step: StepDef, step_ids: AbstractSet[str]) -> list[tuple[str, str]]:
    """``(field, why)`` for each problem of a waiting step's config (Go's validation)."""
    try:
        if step.type == "sleep":
            return _sleep_problems(step)
        if step.type == "wait_for_event":
            return _wait_problems(step, step_ids)
        if step.type == "approval":
            return _approval_problems(step)
        if step.type == "sub_workflow":
            return _child_problems(step)
        if step.type == "respond":
            return _respond_problems(step)
        if step.type == "planner":
            from .planner import config_problems as planner_problems

            return planner_problems(step)
    except GateError as exc:  # "step 's': config.<key>: why"
        _, field, why = (str(exc).split(": ", 2) + ["", ""])[:3]
        return [(field or "config", why or str(exc))]
    return []


def _sleep_problems(step: StepDef) -> list[tuple[str, str]]:
    cfg = _config(step)
    forms = [k for k in ("duration", "cron", "until_input_path") if cfg.get(k) not in (None, "", 0)]
    if len(forms) != 1:
        got = ", ".join(forms) if forms else "none"
        return [
            (
                "config",
                f"a sleep step sets exactly one of duration, cron, until_input_path (got {got})",
            )
        ]
    if forms[0] == "cron":
        try:
            from .cron import parse_cron

            parse_cron(str(cfg["cron"]))
        except ValueError as exc:
            return [("config.cron", str(exc))]
        return []
    if forms[0] == "duration":
        secs = _seconds(step, "duration")
        if secs <= 0:
            return [("config.duration", "must be positive")]
        if secs > SLEEP_MAX_S:
            return [("config.duration", "exceeds the maximum sleep of 365 days")]
    return []


def _wait_problems(step: StepDef, step_ids: AbstractSet[str]) -> list[tuple[str, str]]:
    cfg = _config(step)
    out = []
    if not cfg.get("event") or not isinstance(cfg.get("event"), str):
        out.append(("config.event", "must name the event type to wait for"))
    match = cfg.get("match")
    if not isinstance(match, dict):
        match = {}
    for key in ("left", "op", "right"):
        if not match.get(key) or not isinstance(match.get(key), str):
            out.append((f"config.match.{key}", "must not be empty"))
    if match.get("op") and match["op"] != "eq":
        out.append(("config.match.op", f"'{match['op']}' is not an operator; use eq"))
    right = match.get("right")
    if isinstance(right, str) and right:
        if right.startswith("step."):
            parts = right.split(".", 3)
            if len(parts) < 4:
                out.append(("config.match.right", f"'{right}': use step.<id>.output.<field>"))
            elif parts[1] not in step_ids:
                out.append(("config.match.right", f"names step '{parts[1]}', which does not exist"))
        elif not right.startswith("input."):
            out.append(("config.match.right", f"'{right}' must start with input. or step."))
    if _seconds(step, "timeout") <= 0:
        out.append(("config.timeout", "must be positive (how long to wait for the event)"))
    return out


def _approval_problems(step: StepDef) -> list[tuple[str, str]]:
    cfg = _config(step)
    out = []
    if not cfg.get("subject") or not isinstance(cfg.get("subject"), str):
        out.append(("config.subject", "must name the NATS subject that announces the request"))
    secs = _seconds(step, "timeout")
    if secs <= 0:
        out.append(("config.timeout", "must be positive (how long the approval may take)"))
    elif secs > APPROVAL_MAX_S:
        out.append(("config.timeout", "exceeds the maximum of 168h (7 days)"))
    approvers = cfg.get("approvers")
    if approvers is not None and (
        not isinstance(approvers, list) or not all(isinstance(a, str) and a for a in approvers)
    ):
        out.append(("config.approvers", "must be a list of names"))
    return out


def _child_problems(step: StepDef) -> list[tuple[str, str]]:
    cfg = _config(step)
    out = []
    if not isinstance(cfg.get("workflow"), str) or not cfg.get("workflow"):
        out.append(("config.workflow", "must name the workflow the child run follows"))
    if "detach" in cfg and not isinstance(cfg["detach"], bool):
        out.append(("config.detach", "must be true or false"))
    return out


def _respond_problems(step: StepDef) -> list[tuple[str, str]]:
    cfg = _config(step)
    out = []
    status = cfg.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        out.append(("config.status", f"must be an HTTP status 100..599, got {status!r}"))
    headers = cfg.get("headers")
    if headers is not None and (
        not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values())
    ):
        out.append(("config.headers", "must map header names to strings"))
    for key in ("body_from", "content_type"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            out.append((f"config.{key}", "must be a string"))
    return out


@dataclass(frozen=True, slots=True)
class Response:
    """What a respond step answers the HTTP request that started its run with."""

    status: int
    headers: dict[str, str]
    content_type: str
    body: Any


def response(step: StepDef, value: Any, run_input: Any, has_parent: bool) -> Response:
    """A respond step's reply (Go's respond_step.go): its body is the single parent's
    output (else the run's input), or the value at ``body_from`` in it."""
    cfg = _config(step)
    source = value if has_parent and value is not None else run_input
    body = source
    if cfg.get("body_from"):
        try:
            body = dot_path(source, str(cfg["body_from"]))
        except KeyError as exc:
            raise GateError(f"step '{step.id}': body_from: {exc.args[0]}") from None
    return Response(
        status=int(cfg.get("status") or 200),
        headers=dict(cfg.get("headers") or {}),
        content_type=str(cfg.get("content_type") or "application/json"),
        body=body,
    )


def child_workflow(step: StepDef) -> tuple[str, bool]:
    """A sub_workflow step's child workflow and whether it is detached."""
    cfg = _config(step)
    return str(cfg.get("workflow") or ""), bool(cfg.get("detach"))


def child_run_id(run_id: str, step_id: str) -> str:
    """The child run of a sub_workflow step: one per step of a run, named after both (so
    deciding it again after a crash names the same run)."""
    return f"{run_id}-{step_id.replace('.', '_')}"


# -- resolution when the step starts -----------------------------------------------------


def sleep_seconds(step: StepDef, run_input: Any, now: float) -> float:
    """How long a sleep step that starts at ``now`` sleeps (Go's ResolveSleepDuration)."""
    cfg = _config(step)
    if cfg.get("cron"):
        from .cron import parse_cron

        try:
            delay = parse_cron(str(cfg["cron"])).next_after(now) - now
        except ValueError as exc:
            raise GateError(f"sleep cron {cfg['cron']!r}: {exc}") from None
    elif cfg.get("until_input_path"):
        delay = _until(str(cfg["until_input_path"]), run_input, now)
    else:
        delay = _seconds(step, "duration")
        if delay <= 0:
            raise GateError(f"step '{step.id}': sleep duration must be positive")
    if delay > SLEEP_MAX_S:
        raise GateError(f"step '{step.id}': sleep of {delay:.0f}s exceeds the maximum of 365 days")
    return delay


def _until(path: str, run_input: Any, now: float) -> float:
    if run_input is None:
        raise GateError(f"sleep until_input_path {path!r}: run input is empty")
    try:
        value = dot_path(run_input, path)
    except KeyError as exc:
        raise GateError(f"sleep until_input_path {path!r}: {exc.args[0]}") from None
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise GateError(
                f"sleep until_input_path {path!r}: {value!r} is not an RFC 3339 instant"
            ) from None
        if at.tzinfo is None:
            raise GateError(f"sleep until_input_path {path!r}: {value!r} has no time zone")
        return max(0.0, at.timestamp() - now)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not value >= 0:  # NaN too
            raise GateError(f"sleep until_input_path {path!r}: milliseconds must not be negative")
        if value / 1000.0 > SLEEP_MAX_S:
            raise GateError(f"sleep until_input_path {path!r}: {value} ms exceeds 365 days")
        return math.floor(value) / 1000.0
    kind = type(value).__name__
    raise GateError(
        f"sleep until_input_path {path!r}: expected an RFC 3339 string or milliseconds, got {kind}"
    )


def dot_path(data: Any, path: str) -> Any:
    """The value at ``a.b.c`` in nested objects (Go's ExtractDotPath); KeyError (one line)
    when a key is missing or a non-object is in the way."""
    current = data
    for part in path.split("."):
        if not isinstance(current, dict):
            raise KeyError(f"path {path!r}: expected an object at {part!r}")
        if part not in current:
            raise KeyError(f"path {path!r}: key {part!r} not found")
        current = current[part]
    return current


@dataclass(frozen=True, slots=True)
class EventWait:
    """A wait_for_event step's resolved condition (Go's EventWaiter)."""

    event: str
    left: str
    right: Any
    timeout_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_type": self.event,
            "match": {"left": self.left, "op": "eq", "right": self.right},
        }

    def matches(self, data: Any) -> bool:
        """Whether event data satisfies the condition: Go compares ``%v`` texts."""
        try:
            left = dot_path(data, self.left)
        except KeyError:
            return False
        return go_text(left) == go_text(self.right)


def event_wait(step: StepDef, run_input: Any, outputs: dict[str, Any]) -> EventWait:
    """Resolve a wait_for_event step's condition against the run's input and outputs."""
    cfg = _config(step)
    match = cfg.get("match") if isinstance(cfg.get("match"), dict) else {}
    right = str(match.get("right") or "")
    try:
        if right.startswith("step."):
            _, sid, _, rest = (right.split(".", 3) + ["", "", ""])[:4]
            if sid not in outputs or outputs[sid] is None:
                raise KeyError(f"step {sid} has no output")
            value = dot_path(outputs[sid], rest)
        elif right.startswith("input."):
            value = dot_path(run_input, right.removeprefix("input."))
        else:
            raise KeyError(f"unknown path prefix in {right!r}")
    except KeyError as exc:
        raise GateError(f"step '{step.id}': match.right {right!r}: {exc.args[0]}") from None
    timeout = _seconds(step, "timeout")
    return EventWait(str(cfg.get("event")), str(match.get("left")), value, timeout)


def go_text(value: Any) -> str:
    """A JSON value as Go's ``fmt.Sprintf("%v")`` writes it after ``json.Unmarshal``
    (numbers are float64 there: ``%g`` with the shortest digits, 1e6 is ``1e+06``)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _go_float(float(value))
    if isinstance(value, str):
        return value
    return repr(value)


def _go_float(f: float) -> str:
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "0"
    sign, digits, exp = Decimal(repr(f)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    x = len(ds) + int(exp) - 1  # the decimal exponent of the first digit
    out = "-" if sign else ""
    if x < -4 or x >= 6:
        mantissa = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{out}{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if x < 0:
        return f"{out}0.{'0' * (-x - 1)}{ds}"
    whole, frac = ds[: x + 1].ljust(x + 1, "0"), ds[x + 1 :]
    return f"{out}{whole}.{frac}" if frac else f"{out}{whole}"


@dataclass(frozen=True, slots=True)
class ApprovalGate:
    """An approval step's settings."""

    subject: str
    timeout_s: float
    description: str = ""
    metadata: dict[str, str] | None = None
    approvers: tuple[str, ...] = ()
    token: str = ""  # set once its approval.requested event is in the history

    def issued(self, token: str) -> ApprovalGate:
        return ApprovalGate(
            self.subject, self.timeout_s, self.description, self.metadata, self.approvers, token
        )


def approval_gate(step: StepDef) -> ApprovalGate:
    cfg = _config(step)
    approvers = cfg.get("approvers") if isinstance(cfg.get("approvers"), list) else []
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else None
    return ApprovalGate(
        subject=str(cfg.get("subject") or ""),
        timeout_s=_seconds(step, "timeout"),
        description=str(cfg.get("description") or ""),
        metadata=meta,
        approvers=tuple(str(a) for a in approvers),
    )
