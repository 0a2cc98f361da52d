"""Rich display of WorkflowDef, Run and Engine (HTML in Jupyter, text in a terminal).

They are registered as IPython display formatters, so the classes themselves stay free of
presentation code (and ``dag/`` stays pure). Two more rules come with them:

- a displayed ``Run`` shows one status: nothing when the running cell already shows a live
  view of it (``%dagnats run``, ``watch``), a live view when it is still going (in Jupyter
  with ipywidgets), else its final state;
- a matplotlib ``Figure`` (``sampler.figure()``, ``dashboard.stop()``, one a cell builds)
  displays as a PNG image, with or without ``%matplotlib inline`` (which, when it runs,
  installs its own formatter in place of ours).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import pandas as pd

from dagnats_nb.adapters.notebook import live, render
from dagnats_nb.adapters.notebook.render import Frame
from dagnats_nb.dag import WorkflowDef
from dagnats_nb.errors import DagnatsError
from dagnats_nb.facade.engine import Engine
from dagnats_nb.facade.run import Run
from dagnats_nb.observe import tables
from dagnats_nb.observe.report import format_status
from dagnats_nb.wire.workers import read_entry


def engine_info(eng: Engine) -> dict[str, Any]:
    """What the engine card shows."""
    info: dict[str, Any] = {
        "mode": "embedded" if eng.embedded else "attached",
        "state": "running" if eng.running else "stopped",
        "url": eng.url,
        "data_dir": str(eng.settings.data_dir),
        "monitor_url": getattr(eng.server, "monitor_url", None),
        "handlers": sorted(eng.workers),
        "streams": [],
    }
    if eng.running:
        try:
            info["streams"] = eng.status()["streams"]
        except Exception as exc:  # a card must render even when NATS is away
            info["state"] = f"running (status unavailable: {exc})"
    return info


def snapshot(run: Run) -> tuple[WorkflowDef | None, Frame]:
    """The run's definition and a Frame of its current state, copied on the engine thread."""
    eng = run.engine
    orch = eng.orchestrator
    defn = orch.run_defs.get(run.id) if orch is not None else None
    if defn is not None and eng.running:
        box: list[Frame] = []
        unwatch = eng.watch(run.id, lambda st: box or box.append(render.frame_of(defn, st)))
        unwatch()
        if box:
            return defn, box[0]
    if defn is None and orch is not None and eng.running:  # ended, left memory: its record
        try:
            defn, state = eng._call(eng._steps(run.id))
        except DagnatsError:
            defn = None
        else:
            return defn, render.frame_of(defn, state)
    summary = eng.run_state(run.id) if eng.running else None
    summary = summary or {"status": "pending", "error": None}
    return defn, Frame(run.id, run.workflow, summary["status"], error=summary.get("error"))


def _output(run: Run, frame: Frame) -> Any:
    if frame.status != "completed":
        return None
    try:
        return run.output
    except Exception:
        return None


def run_html(run: Run) -> str:
    """A run: status line, progress, error, output preview, steps table."""
    if not run.engine.running:
        return f"<code>{html.escape(repr(run))}</code> (engine stopped)"
    defn, frame = snapshot(run)
    if not frame.terminal:  # a moment's snapshot: one line (a live view shows the rest)
        return f'<div class="dagnats-run" data-status="{frame.status}">' + (
            render.run_header_html(frame) + "</div>"
        )
    head = render.run_html(None, frame, _output(run, frame))
    return head + (_steps_table(run) if defn is not None else "")


def _steps_table(run: Run) -> str:
    try:
        df = run.engine.steps(run.id)
    except Exception:
        return ""
    cols = ["step_id", "task", "type", "status", "attempt", "items", "duration_s", "error"]
    return df[cols].to_html(index=False, na_rep="", float_format=lambda v: f"{v:.3f}")


def run_text(run: Run) -> str:
    """A run in a few lines of text."""
    if not run.engine.running:
        return repr(run) + " (engine stopped)"
    _, frame = snapshot(run)
    return render.run_text(frame, _output(run, frame))


class Status:
    """The engine's status: ``.data`` (the dict), ``.to_pandas()`` (streams), rich display."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_pandas(self) -> pd.DataFrame:
        """One row per stream: stream, messages, bytes (shown as ``5.6 KiB``)."""
        return tables.frame(self.data["streams"], "status streams")

    def workers(self) -> pd.DataFrame:
        """One row per worker: worker_id, tasks."""
        rows = [
            [e.worker_id, ", ".join(e.tasks)] for e in map(read_entry, self.data.get("workers", []))
        ]
        return pd.DataFrame(rows, columns=["worker_id", "tasks"])

    def _repr_html_(self) -> str:
        d = self.data
        conn = "connected" if d["connected"] else "DISCONNECTED"
        warn = "".join(
            f'<div style="color:#b91c1c">{html.escape(h["level"].upper())}: '
            f"{html.escape(h['check'])} of {html.escape(str(h['subject']))} is "
            f"{html.escape(str(h['value']))} (threshold {html.escape(str(h['threshold']))}): "
            f"{html.escape(h['action'])}</div>"
            for h in d.get("health", [])
        )
        pending = ", ".join(f"{k}: {v}" for k, v in d.get("pending_tasks", {}).items() if v)
        return (
            f"<div class='dagnats-status'>{warn}<b>dagnats</b> {html.escape(str(d['url']))} "
            f"({conn}) · data_dir {html.escape(d['data_dir'])}"
            f"<div>pending tasks: {html.escape(pending or 'none')}</div>"
            f"{tables.render_html(self.to_pandas())}{self.workers().to_html(index=False)}</div>"
        )

    def __repr__(self) -> str:
        return format_status(self.data)


def display_run(run: Run) -> None:
    """How IPython displays a Run (its ``_ipython_display_``): nothing when the running cell
    shows a live view of it, a live view while it runs (Jupyter), else the HTML/text forms."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise NotImplementedError  # IPython then uses the HTML / text formatters
    if live.on_screen(shell, run.id):
        return
    eng = run.engine
    if live.in_kernel(shell) and eng.running and eng.orchestrator is not None and not run.done:
        live.follow(shell, run)
        return
    raise NotImplementedError


def figure_png(fig: Any) -> str | None:
    """A matplotlib Figure as base64 PNG (what IPython's own figure formatter gives)."""
    if not fig.axes and not fig.lines:
        return None  # an empty figure shows as its text
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _has_figure_formatter(png: Any) -> bool:
    if ("matplotlib.figure", "Figure") in png.deferred_printers:
        return True
    return any(
        getattr(t, "__module__", "") == "matplotlib.figure" and t.__name__ == "Figure"
        for t in png.type_printers
    )


def register_formatters(shell: Any) -> None:
    """Show WorkflowDef, Run and Engine as HTML (and readable text) in this shell, Figures
    as PNG, and a Run once (see :func:`display_run`)."""
    formatters = shell.display_formatter.formatters
    png = formatters["image/png"]
    if not _has_figure_formatter(png):
        png.for_type_by_name("matplotlib.figure", "Figure", figure_png)
    shell.display_formatter.ipython_display_formatter.for_type(Run, display_run)
    live.install(shell)
    html_f, text_f = formatters["text/html"], formatters["text/plain"]
    html_f.for_type(WorkflowDef, render.workflow_html)
    html_f.for_type(Run, run_html)
    html_f.for_type(Engine, lambda e: render.engine_html(engine_info(e)))
    text_f.for_type(WorkflowDef, lambda d, p, cycle: p.text(render.workflow_text(d)))
    text_f.for_type(Run, lambda r, p, cycle: p.text(run_text(r)))
    text_f.for_type(Engine, lambda e, p, cycle: p.text(render.engine_text(engine_info(e))))


__all__ = [
    "Status",
    "display_run",
    "engine_info",
    "figure_png",
    "register_formatters",
    "run_html",
    "run_text",
    "snapshot",
]
