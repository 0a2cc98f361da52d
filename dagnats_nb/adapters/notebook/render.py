"""HTML, SVG and text renderings of workflows and runs, in pure Python (no Graphviz).

A run is drawn from a :class:`Frame`, a small copy of its state taken at one moment, so the
live view, ``Run`` reprs and the final static output all share one drawing.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.state import RUN_TERMINAL, STEP_TERMINAL, RunState
from dagnats_nb.observe.units import human_bytes

COLORS = {
    "pending": ("#f3f4f6", "#9ca3af"),
    "queued": ("#fef3c7", "#d97706"),
    "running": ("#dbeafe", "#2563eb"),
    "retrying": ("#ffedd5", "#ea580c"),
    "waiting": ("#ede9fe", "#7c3aed"),
    "completed": ("#dcfce7", "#16a34a"),
    "failed": ("#fee2e2", "#dc2626"),
    "skipped": ("#f3f4f6", "#6b7280"),
    "cancelled": ("#e7e5e4", "#57534e"),
}
BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 132, 40, 56, 16, 8


@dataclass(slots=True)
class StepView:
    """One step at one moment."""

    status: str = "pending"
    attempt: int = 0
    done: int | None = None  # map steps: instances completed
    count: int | None = None  # map steps: instances in all
    error: str | None = None
    note: str = ""  # what a running step without a worker waits for ("awaits approval")
    child: str = ""  # a sub_workflow step: its child run


@dataclass(slots=True)
class Frame:
    """A run at one moment: what the live view and the static rendering draw."""

    run_id: str
    workflow: str
    status: str
    steps: dict[str, StepView] = field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    at: float = 0.0
    error: str | None = None
    hints: list[str] = field(default_factory=list)  # "enrich: no worker serves this task ..."

    @property
    def progress(self) -> float:
        """Finished share of the steps, 0..1 (map steps count their finished instances)."""
        if not self.steps:
            return 0.0
        total = 0.0
        for st in self.steps.values():
            if st.status in STEP_TERMINAL:
                total += 1
            elif st.count:
                total += (st.done or 0) / st.count
        return total / len(self.steps)

    @property
    def elapsed(self) -> float:
        """Seconds since the run started (until it ended)."""
        if self.started_at is None:
            return 0.0
        return max(0.0, (self.ended_at or self.at) - self.started_at)

    @property
    def last_error(self) -> str | None:
        """The run's error, else the error of the step that failed last."""
        if self.error:
            return self.error
        for sid, st in reversed(self.steps.items()):
            if st.error:
                return f"{sid}: {st.error}"
        return None

    @property
    def terminal(self) -> bool:
        return self.status in RUN_TERMINAL


def frame_of(defn: WorkflowDef, state: RunState, now: float | None = None) -> Frame:
    """A Frame copied from a run state (call it where the state lives: the engine thread)."""
    steps = {}
    for s in defn.steps:
        st = state.step(s.id)
        view = StepView(st.status, st.attempt, error=st.error)
        if st.map is not None:
            view.done, view.count = st.map.done, st.map.count
        if st.status == "running" and s.type in WAITS_FOR:
            view.note = waits_for(s.type, st)
            if s.type == "sub_workflow":
                view.child = str(st.detail or "")
        steps[s.id] = view
    return Frame(
        state.run_id,
        state.workflow,
        state.status,
        steps,
        state.started_at,
        state.ended_at,
        time.time() if now is None else now,
        state.error,
    )


WAITS_FOR = frozenset({"sleep", "wait_for_event", "approval", "sub_workflow"})


def waits_for(kind: str, st: Any) -> str:
    """What a running sleep, wait_for_event, approval or sub_workflow step waits for."""
    if kind == "sleep" and st.due_at:
        return "asleep until " + time.strftime("%H:%M:%S", time.localtime(st.due_at))
    if kind == "wait_for_event":
        event = getattr(st.detail, "event", "")
        return f"awaits event {event}" if event else "awaits an event"
    if kind == "approval":
        return "awaits approval"
    return "awaits child run"


# -- layout and drawing ------------------------------------------------------------------


def layers(defn: WorkflowDef) -> list[list[str]]:
    """Steps by topological depth (longest path from a root), definition order within."""
    depth: dict[str, int] = {}
    by_id = {s.id: s for s in defn.steps}
    for sid in defn.topological_order:
        deps = [d for d in by_id[sid].depends_on if d in depth]
        depth[sid] = 1 + max((depth[d] for d in deps), default=-1)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for s in defn.steps:
        out[depth[s.id]].append(s.id)
    for i in range(1, len(out)):  # fewer crossings: follow the mean position of the parents
        above = {sid: j for j, sid in enumerate(out[i - 1])}
        keyed = [(_mean_parent(by_id[x].depends_on, above, j), j, x) for j, x in enumerate(out[i])]
        out[i] = [sid for _, _, sid in sorted(keyed)]
    return out


def _mean_parent(deps: list[str], above: dict[str, int], default: int) -> float:
    spots = [above[d] for d in deps if d in above]
    return sum(spots) / len(spots) if spots else float(default)


# what changed in a step between two runs (%dagnats compare): its outline's colour and dash
CHANGE_OUTLINE = {"output": "#db2777", "definition": "#7c3aed"}
DEFINITION_DASH = "5 3"


def dag_svg(
    defn: WorkflowDef,
    frame: Frame | None = None,
    changed: Mapping[str, Collection[str]] | None = None,
) -> str:
    """The DAG as an SVG: left to right by depth, each box coloured by its step's status.
    ``changed`` (step id -> ``"output"`` and/or ``"definition"``) outlines those steps:
    :data:`CHANGE_OUTLINE`'s output colour when the output changed (else the definition
    colour), dashed when the definition changed."""
    cols = layers(defn)
    rows = max((len(c) for c in cols), default=1)
    width = PAD * 2 + len(cols) * BOX_W + (len(cols) - 1) * GAP_X
    height = PAD * 2 + rows * BOX_H + (rows - 1) * GAP_Y
    pos: dict[str, tuple[float, float]] = {}
    for i, col in enumerate(cols):
        offset = (rows - len(col)) * (BOX_H + GAP_Y) / 2
        for j, sid in enumerate(col):
            pos[sid] = (PAD + i * (BOX_W + GAP_X), PAD + offset + j * (BOX_H + GAP_Y))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="dagnats-dag" font-family="sans-serif" '
        'style="max-width:100%;height:auto">',  # shrinks to fit a narrow output (the widget)
        '<defs><marker id="dn-arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#6b7280"/></marker>'
        "</defs>",
    ]
    for s in defn.steps:
        for dep in s.depends_on:
            if dep not in pos:
                continue
            x1, y1 = pos[dep][0] + BOX_W, pos[dep][1] + BOX_H / 2
            x2, y2 = pos[s.id][0], pos[s.id][1] + BOX_H / 2
            mid = (x1 + x2) / 2
            parts.append(
                f'<path d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2 - 1},{y2}" fill="none" '
                'stroke="#9ca3af" stroke-width="1.5" marker-end="url(#dn-arrow)"/>'
            )
    for s in defn.steps:
        x, y = pos[s.id]
        st = frame.steps.get(s.id) if frame else None
        status = st.status if st else None
        fill, stroke = COLORS.get(status or "pending", COLORS["pending"])
        dash = ' stroke-dasharray="4 3"' if status == "skipped" else ""
        sub = _step_caption(s.type, s.task, st)
        said = f"{status or s.type}" + (f", {st.note}" if st and st.note else "")
        what = tuple((changed or {}).get(s.id, ()))
        said += "".join(f"; {w} changed" for w in what)
        title = html.escape(f"{s.id} ({s.task or s.type}): {said}")
        parts.append(
            f'<g class="dagnats-step" data-step="{html.escape(s.id)}" '
            f'data-status="{status or ""}"'
            + (f' data-changed="{" ".join(what)}"' if what else "")
            + f"><title>{title}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="1.5"{dash}/>'
            + (_outline(x, y, what) if what else "")
            + f'<text x="{x + BOX_W / 2}" y="{y + 16}" text-anchor="middle" font-size="12" '
            f'font-weight="bold" fill="#111827">{html.escape(_clip(s.id, 18))}</text>'
            f'<text x="{x + BOX_W / 2}" y="{y + 31}" text-anchor="middle" font-size="10" '
            f'fill="#374151">{html.escape(sub)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _outline(x: float, y: float, what: Collection[str]) -> str:
    """The outline of a step that changed between two runs (see :func:`dag_svg`)."""
    colour = CHANGE_OUTLINE["output" if "output" in what else "definition"]
    dash = f' stroke-dasharray="{DEFINITION_DASH}"' if "definition" in what else ""
    return (
        f'<rect class="dagnats-changed" x="{x - 4}" y="{y - 4}" width="{BOX_W + 8}" '
        f'height="{BOX_H + 8}" rx="9" fill="none" stroke="{colour}" stroke-width="2.5"{dash}/>'
    )


def _step_caption(kind: str, task: str | None, st: StepView | None) -> str:
    if st is None:
        if not task:  # approval, sleep, wait_for_event, sub_workflow: no task to name
            return kind
        return _clip(f"{kind} · {task}" if kind != "normal" else task, 22)
    if st.note:
        return _clip(st.note.replace("asleep until ", "asleep → "), 22)
    text = st.status
    if st.count is not None:
        text += f" {st.done}/{st.count}"
    if st.attempt > 1:
        text += f" #{st.attempt}"
    return text


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# -- workflows ---------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table class="dataframe"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _step_rows(defn: WorkflowDef) -> list[list[Any]]:
    rows = []
    for s in defn.steps:
        retry = defn.retry_policy(s.id)
        rows.append(
            [
                s.id,
                s.task,
                s.type,
                ", ".join(s.depends_on),
                f"{retry.max_attempts}× {retry.strategy}" if retry else "",
                str(s.timeout) if s.timeout else "",
            ]
        )
    return rows


def workflow_html(defn: WorkflowDef) -> str:
    """A workflow: title, DAG drawing and steps table."""
    title = f"workflow <b>{html.escape(defn.name)}</b> v{html.escape(defn.version)}"
    table = _table(["step", "task", "type", "depends_on", "retry", "timeout"], _step_rows(defn))
    return (
        f'<div class="dagnats-workflow"><div>{title} · {len(defn.steps)} steps</div>'
        f"{dag_svg(defn)}{table}</div>"
    )


def workflow_text(defn: WorkflowDef) -> str:
    """A workflow in a few lines of text (terminal IPython)."""
    lines = [f"workflow {defn.name} v{defn.version} ({len(defn.steps)} steps)"]
    for col in layers(defn):
        lines.append("  " + " | ".join(col))
    return "\n".join(lines)


# -- runs --------------------------------------------------------------------------------


def run_header_html(frame: Frame) -> str:
    """The status badge, run id, workflow, progress and elapsed time on one line."""
    fill, stroke = COLORS.get(frame.status, COLORS["running"])
    return (
        f'<span class="dagnats-status" style="background:{fill};border:1px solid {stroke};'
        f'border-radius:4px;padding:1px 6px">{html.escape(frame.status)}</span> '
        f"run <code>{html.escape(frame.run_id)}</code> of <b>{html.escape(frame.workflow)}</b>"
        f" · {round(frame.progress * 100)}% · {frame.elapsed:.1f}s"
    )


def error_html(frame: Frame) -> str:
    """The hints (a step no worker serves), then the last error, in red (empty when there
    is neither)."""
    red = '<div class="{}" style="color:#b91c1c">{}</div>'
    lines = [red.format("dagnats-hint", _code(h)) for h in frame.hints]
    if frame.last_error:
        lines.append(red.format("dagnats-error", html.escape(_clip(frame.last_error, 300))))
    return "".join(lines)


def _code(text: str) -> str:
    """Escaped text whose `backquoted` parts are shown as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def run_html(defn: WorkflowDef | None, frame: Frame, output: Any = None) -> str:
    """A run: status, progress, elapsed time, last error, DAG drawing, optional output."""
    _, stroke = COLORS.get(frame.status, COLORS["running"])
    pct = round(frame.progress * 100)
    bar = (
        '<div style="background:#e5e7eb;height:6px;border-radius:3px;margin:4px 0;width:320px">'
        f'<div style="background:{stroke};height:6px;border-radius:3px;width:{pct}%"></div></div>'
    )
    drawing = dag_svg(defn, frame) if defn is not None else ""
    out_html = ""
    if output is not None:
        preview = _clip(json.dumps(output, default=str, ensure_ascii=False), 400)
        out_html = f"<div>output: <code>{html.escape(preview)}</code></div>"
    return (
        f'<div class="dagnats-run" data-status="{frame.status}">'
        f"<div>{run_header_html(frame)}</div>{bar}{error_html(frame)}{drawing}{out_html}</div>"
    )


def run_text(frame: Frame, output: Any = None) -> str:
    """A run in a few lines of text."""
    done = sum(1 for s in frame.steps.values() if s.status in STEP_TERMINAL)
    lines = [
        f"run {frame.run_id} of {frame.workflow}: {frame.status} "
        f"({done}/{len(frame.steps)} steps, {frame.elapsed:.1f}s)"
    ]
    for sid, st in frame.steps.items():
        items = f" {st.done}/{st.count}" if st.count is not None else ""
        lines.append(f"  {sid:<20} {st.status}{items}")
    lines += [f"  {hint}" for hint in frame.hints]
    if frame.last_error:
        lines.append(f"  error: {_clip(frame.last_error, 200)}")
    if output is not None:
        lines.append(f"  output: {_clip(json.dumps(output, default=str), 200)}")
    return "\n".join(lines)


# -- engine ------------------------------------------------------------------------------


def engine_html(info: dict[str, Any]) -> str:
    """The engine card: state, URLs, data dir, streams (``info`` from :func:`engine_info`)."""
    rows = [["state", info["state"]], ["nats", info.get("url")], ["data_dir", info["data_dir"]]]
    if info.get("monitor_url"):
        rows.append(["monitoring", info["monitor_url"]])
    if info.get("handlers"):
        rows.append(["handlers", ", ".join(info["handlers"])])
    card = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(_cell(v))}</td>"
        "</tr>"
        for k, v in rows
    )
    streams = ""
    if info.get("streams"):
        streams = _table(
            ["stream", "messages", "bytes"],
            [[s["stream"], s["messages"], human_bytes(s["bytes"])] for s in info["streams"]],
        )
    return (
        f'<div class="dagnats-engine"><b>dagnats engine</b> ({html.escape(info["mode"])})'
        f"<table>{card}</table>{streams}</div>"
    )


def engine_text(info: dict[str, Any]) -> str:
    """The engine card as text."""
    lines = [f"dagnats engine ({info['mode']}, {info['state']})", f"  nats      {info.get('url')}"]
    lines.append(f"  data_dir  {info['data_dir']}")
    if info.get("monitor_url"):
        lines.append(f"  monitor   {info['monitor_url']}")
    for s in info.get("streams") or []:
        size = human_bytes(s["bytes"])
        lines.append(f"  {s['stream']:<18} {s['messages']:>8,} msgs {size:>10}")
    return "\n".join(lines)
