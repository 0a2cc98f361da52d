"""The compact edge syntax for quick workflow sketches (the body of ``%%dagnats workflow``).

Pure: text in, a workflow dict (``parse_edges``) or a checked WorkflowDef (``load_edges``)
out. Grammar, one statement per line, ``#`` starts a comment::

    fetch -> [summarize, classify] -> report    # a chain; [a, b] is a group (fan out / in)
    notify                                      # a step alone (no dependencies)
    summarize: task=llm retry=3 timeout=30s     # settings of one step, key=value
    classify:  cache=true                       # its result from the step cache
    classify:  type=map concurrency=4
    workflow:  retry=2 delay=50ms timeout=5m    # settings of the workflow

In a chain every step of a group depends on every step of the group before it. A step's
task defaults to its id. Every step must appear in a chain or alone on a line; a settings
line for a step that appears nowhere is an error (a typo, usually). ``workflow`` is not a
step name. Values may be quoted (``skip_if="fetch.count == 0"``). Every error names the
line and the step.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
import shlex
from typing import Any

from ..errors import WorkflowError
from .loader import load_workflow
from .model import WorkflowDef
from .problems import workflow_error

STEP_KEYS: dict[str, str] = {
    "task": "task name (default: the step id)",
    "type": "normal | map | agent_loop | sleep | wait_for_event | approval | sub_workflow"
    " | planner | agent | respond",
    "retry": "retries after a failure (an integer)",
    "delay": "delay before a retry (default 1s)",
    "backoff": "fixed | linear | exponential (default fixed)",
    "max_delay": "cap on the retry delay",
    "timeout": "time limit of one attempt (30s, 5m...)",
    "concurrency": "map: instances at once",
    "max_items": "map: most input elements",
    "max_iterations": "agent_loop: most iterations",
    "max_duration": "agent_loop: longest total time",
    "loop_delay": "agent_loop: pause between iterations",
    "on_failure": "step to run when this one fails for good",
    "compensate": "step that undoes this one when the run fails later",
    "duration": "sleep: how long (5s, 2h)",
    "until": "sleep: a field of the run input holding an RFC 3339 time",
    "cron": 'sleep: until the next time of a cron expression ("0 8 * * *")',
    "event": "wait_for_event: the event type",
    "match": 'wait_for_event: "field == input.path" (or step.<id>.output.<path>)',
    "subject": "approval: the NATS subject that announces the request",
    "approvers": "approval: who may decide, comma-separated",
    "description": "approval: what is asked",
    "workflow": "sub_workflow: the child run's workflow",
    "detach": "sub_workflow: true to not wait for the child",
    "max_steps": "planner: most steps in a plan",
    "max_depth": "planner: longest chain in a plan",
    "allowed_tasks": "planner: tasks a plan may use, comma-separated",
    "status": "respond: the HTTP status (default 200)",
    "body_from": "respond: the field of the input to answer with",
    "skip_if": "skip when a parent's output field matches: parent.field == value",
    "worker_group": "worker group that runs the task",
    "cache": "true | false: serve the step from the step cache (metadata cache)",
}
WORKFLOW_KEYS: dict[str, str] = {
    "version": "workflow version (default 1.0)",
    "retry": "default retries of every step",
    "delay": "default retry delay (default 1s)",
    "backoff": "default retry backoff",
    "max_delay": "cap on the default retry delay",
    "timeout": "time limit of the whole run",
    "max_steps": "steps of one run queued or running at once",
    "sticky": "worker affinity of a run's steps: soft or hard",
}
_INT_KEYS = (
    "retry",
    "concurrency",
    "max_items",
    "max_iterations",
    "max_steps",
    "max_depth",
    "status",
)
# Step types that take no task (nothing runs on a worker), and the step keys that go to
# their `config` (a `timeout` too: how long they wait, not a task's time limit).
_NO_TASK = ("sleep", "wait_for_event", "approval", "sub_workflow", "respond")
_CONFIG_TEXT = ("duration", "cron", "event", "subject", "description", "workflow", "body_from")
_MATCH = re.compile(r"^\s*([^\s=]+)\s*==\s*((?:input|step)\.\S+)\s*$")
_STEP = re.compile(r"[A-Za-z0-9_-]+")
_SETTINGS_LINE = re.compile(r"^\s*([^\s:]+)\s*:(.*)$")
_SKIP_IF = re.compile(r"^\s*([A-Za-z0-9_-]+)\.([^\s=!<>]+)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")
_PROBLEM = re.compile(r"^workflow '((?:[^']|'')*)' step '([^']*)'")
_CYCLE = re.compile(r"cycle between steps (.+)$")


class _Parser:
    def __init__(self, name: str, first_line: int) -> None:
        self.name = name
        self.first_line = first_line
        self.order: list[str] = []  # steps in order of first mention
        self.line_of: dict[str, int] = {}  # step -> line of its settings, else first mention
        self.deps: dict[str, dict[str, int]] = {}  # step -> {dependency: line of the edge}
        self.settings: dict[str, tuple[int, dict[str, str]]] = {}
        self.workflow: dict[str, str] = {}
        self.workflow_line = 0

    def fail(self, line: int, message: str, step: str | None = None) -> WorkflowError:
        where = f"workflow '{self.name}' line {line}"
        if step:
            where += f" step '{step}'"
        return workflow_error([f"{where}: {message}"])

    def mention(self, step: str, line: int) -> None:
        if step not in self.deps:
            self.order.append(step)
            self.deps[step] = {}
            self.line_of[step] = line

    # -- statements ----------------------------------------------------------------------

    def statement(self, text: str, line: int) -> None:
        try:
            tokens = shlex.split(text, comments=True)
        except ValueError as exc:
            raise self.fail(line, f"cannot read the line: {exc}") from None
        if not tokens:
            return
        m = _SETTINGS_LINE.match(text)
        if m and "->" not in text.split("#")[0]:
            self.settings_line(m.group(1), m.group(2), line)
        else:
            self.chain(text, line)

    def chain(self, text: str, line: int) -> None:
        code = text.split("#", 1)[0]
        groups = [g.strip() for g in code.split("->")]
        previous: list[str] = []
        for i, group in enumerate(groups):
            if not group:
                where = "before '->'" if i == 0 else "after '->'"
                raise self.fail(line, f"expected a step or [a, b] {where}")
            steps = self.group(group, line)
            for step in steps:
                self.mention(step, line)
                for dep in previous:
                    if dep == step:
                        raise self.fail(line, "a step cannot depend on itself", step)
                    self.deps[step].setdefault(dep, line)
            previous = steps

    def group(self, text: str, line: int) -> list[str]:
        if text.startswith("["):
            if not text.endswith("]"):
                raise self.fail(line, f"unclosed group {text!r}: write [a, b]")
            names = [n.strip() for n in text[1:-1].split(",")]
            if not names or any(not n for n in names):
                raise self.fail(line, f"empty name in group {text!r}: write [a, b]")
        else:
            names = [text]
        for n in names:
            if not _STEP.fullmatch(n):
                hint = " (separate steps with '->', group them with [a, b])" if " " in n else ""
                raise self.fail(
                    line, f"{n!r} is not a step name: use letters, digits, '_' and '-'{hint}"
                )
            if n == "workflow":
                raise self.fail(line, "'workflow' is reserved for workflow settings")
        return names

    def settings_line(self, head: str, rest: str, line: int) -> None:
        if not _STEP.fullmatch(head):
            raise self.fail(line, f"{head!r} is not a step name: use letters, digits, '_', '-'")
        step = None if head == "workflow" else head
        allowed = WORKFLOW_KEYS if step is None else STEP_KEYS
        try:
            tokens = shlex.split(rest, comments=True)
        except ValueError as exc:
            raise self.fail(line, f"cannot read the settings: {exc}", step) from None
        values: dict[str, str] = {}
        for tok in tokens:
            key, sep, value = tok.partition("=")
            if not sep or not key:
                raise self.fail(line, f"expected key=value, got {tok!r}", step)
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise self.fail(
                    line, f"unknown key '{key}' ({hint}keys: {', '.join(allowed)})", step
                )
            if key in _INT_KEYS and not re.fullmatch(r"\d+", value):
                raise self.fail(line, f"{key}={value!r}: expected a whole number", step)
            if key == "cache" and value.lower() not in ("true", "false"):
                raise self.fail(line, f"cache={value!r}: write cache=true or cache=false", step)
            values[key] = value
        if step is None:
            self.workflow.update(values)
            self.workflow_line = self.workflow_line or line
            return
        if step in self.settings:
            self.settings[step][1].update(values)
        else:
            self.settings[step] = (line, values)

    # -- building ------------------------------------------------------------------------

    def build(self, version: str | None) -> dict[str, Any]:
        for step, (line, _) in self.settings.items():
            if step not in self.deps:
                raise self.fail(line, self.unknown(step), step)
            self.line_of[step] = line
        if not self.order:
            raise self.fail(self.first_line, "no steps: write a chain such as a -> b -> c")
        steps = [self.step(s) for s in self.order]
        out: dict[str, Any] = {"name": self.name, "steps": steps}
        wf = self.workflow
        if version or "version" in wf:
            out["version"] = version or wf["version"]
        retry = _retry(wf)
        if retry:
            out["default_retry"] = retry
        if "timeout" in wf:
            out["timeout"] = wf["timeout"]
        if "max_steps" in wf:
            out["concurrency"] = {"max_steps": int(wf["max_steps"])}
        if "sticky" in wf:
            out["sticky"] = wf["sticky"]
        return out

    def unknown(self, step: str, what: str = "unknown step") -> str:
        close = difflib.get_close_matches(step, self.order, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return (
            f"{what} '{step}' ({hint}steps: {', '.join(self.order) or 'none'}); "
            "a step must appear in a chain such as a -> b, or alone on a line"
        )

    def step(self, sid: str) -> dict[str, Any]:
        line, s = self.settings.get(sid, (self.line_of[sid], {}))
        kind = s.get("type", "normal")
        out: dict[str, Any] = {"id": sid}
        if kind not in _NO_TASK or "task" in s:
            out["task"] = s.get("task", sid)
        if self.deps[sid]:
            out["depends_on"] = list(self.deps[sid])
        if "type" in s:
            out["type"] = s["type"]
        if "timeout" in s and kind not in ("wait_for_event", "approval"):
            out["timeout"] = s["timeout"]
        retry = _retry(s)
        if retry:
            out["retry"] = retry
        config: dict[str, Any] = {}
        for key in ("concurrency", "max_items", "max_iterations"):
            if key in s:
                config[key] = int(s[key])
        for key in ("max_duration", "loop_delay", *_CONFIG_TEXT):
            if key in s:
                config[key] = s[key]
        config.update(self.gate_config(sid, kind, s, line))
        if config:
            out["config"] = config
        for key in ("on_failure", "compensate", "worker_group"):
            if key in s:
                out[key] = s[key]
        if "cache" in s:
            out["metadata"] = {"cache": s["cache"].lower()}
        if s.get("on_failure") and s["on_failure"] not in self.deps:
            raise self.fail(line, "on_failure: " + self.unknown(s["on_failure"]), sid)
        if "skip_if" in s:
            out["skip_if"] = self.skip_if(sid, s["skip_if"], line)
        return out

    def gate_config(self, sid: str, kind: str, s: dict[str, str], line: int) -> dict[str, Any]:
        """The `config` of the step types that wait, plan or answer, from their keys."""
        out: dict[str, Any] = {}
        if "until" in s:
            out["until_input_path"] = s["until"]
        if kind in ("wait_for_event", "approval") and "timeout" in s:
            out["timeout"] = s["timeout"]
        if "match" in s:
            m = _MATCH.match(s["match"])
            if not m:
                why = f'match={s["match"]!r}: write match="field == input.path"'
                raise self.fail(line, why, sid)
            out["match"] = {"left": m.group(1), "op": "eq", "right": m.group(2)}
        for key in ("approvers", "allowed_tasks"):
            if key in s:
                out[key] = [x.strip() for x in s[key].split(",") if x.strip()]
        for key in ("max_steps", "max_depth", "status"):
            if key in s:
                out[key] = int(s[key])
        if "detach" in s:
            out["detach"] = s["detach"].lower() in ("true", "yes", "1")
        return out

    def skip_if(self, sid: str, text: str, line: int) -> dict[str, Any]:
        m = _SKIP_IF.match(text)
        if not m:
            raise self.fail(line, f'skip_if={text!r}: write skip_if="parent.field == value"', sid)
        parent, field, op, raw = m.groups()
        if parent not in self.deps:
            raise self.fail(line, "skip_if: " + self.unknown(parent), sid)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.strip("'\"")
        return {"step_id": parent, "field": field, "op": op, "value": value}

    def locate(self, problems: list[str]) -> list[str]:
        """Put the line of the step (or of the edge closing a cycle) into each problem."""
        out = []
        for text in problems:
            m = _PROBLEM.match(text)
            if m and m.group(2) in self.line_of:
                line = self.line_of[m.group(2)]
                text = f"workflow '{m.group(1)}' line {line} step '{m.group(2)}'" + text[m.end() :]
            elif (c := _CYCLE.search(text)) is not None:
                ring = [s.strip() for s in c.group(1).split("->")]
                lines = [self.deps.get(b, {}).get(a, 0) for a, b in itertools.pairwise(ring)]
                text = f"workflow '{self.name}' line {max(lines)}: cycle between steps " + (
                    " -> ".join(ring)
                )
            out.append(text)
        return out


def _retry(s: dict[str, str]) -> dict[str, Any] | None:
    if "retry" not in s:
        return None
    policy: dict[str, Any] = {
        "max_attempts": int(s["retry"]),
        "strategy": s.get("backoff", "fixed"),
        "initial_delay": s.get("delay", "1s"),
    }
    if "max_delay" in s:
        policy["max_delay"] = s["max_delay"]
    return policy


def parse_edges(
    text: str, name: str, *, version: str | None = None, first_line: int = 1
) -> dict[str, Any]:
    """The workflow dict the edge syntax ``text`` describes (not yet validated).

    ``first_line`` is the number given to the first line of ``text`` in error messages
    (2 for the body of a cell whose first line is the magic)."""
    parser = _Parser(name, first_line)
    for i, line in enumerate(text.splitlines()):
        parser.statement(line, first_line + i)
    return parser.build(version)


def load_edges(
    text: str, name: str, *, version: str | None = None, first_line: int = 1
) -> WorkflowDef:
    """Parse the edge syntax and check the workflow; WorkflowError names the line and step."""
    parser = _Parser(name, first_line)
    for i, line in enumerate(text.splitlines()):
        parser.statement(line, first_line + i)
    raw = parser.build(version)
    try:
        return load_workflow(raw)
    except WorkflowError as exc:
        problems = parser.locate(exc.problems)
        raise workflow_error(problems, type(exc)) from None


def looks_like_edges(text: str) -> bool:
    """True unless ``text`` is JSON (starts with ``{``) or YAML (has a top-level ``steps:``)."""
    stripped = text.lstrip()
    return not stripped.startswith("{") and not re.search(r"^steps\s*:", text, re.MULTILINE)


__all__ = ["STEP_KEYS", "WORKFLOW_KEYS", "load_edges", "looks_like_edges", "parse_edges"]
