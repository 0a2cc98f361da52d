"""The live run view: a widget that follows a run from the engine thread.

``Engine.watch`` calls :meth:`RunView._on_state` on the engine loop after every change of the
run. The view copies what it draws into a :class:`Frame` there and one refresher, also on the
engine loop, publishes at most one frame per ``interval`` (0.1 s: ≤ 10 updates/s), assigning
only changed traits inside ``hold_sync()``. When the run ends, the widget's output is
replaced by a static HTML/SVG rendering, so a saved or exported notebook still shows it.
Output from the engine thread is sent in an empty ``contextvars`` context: ipykernel then
attributes it to the cell executing at that moment, which is where Jupyter (and nbclient)
expect display updates to come from.

A step queued for more than :data:`HINT_AFTER` seconds has its task type checked once
(this process's handlers, then the ``workers`` KV through ``Engine.status()``, on a thread of
its own, never per frame); when no worker serves it, the view says so under the drawing:
``enrich: no worker serves this task — define `@dn.task('enrich')```.

The views the notebook opens are kept in :data:`VIEWS` with the cell that opened them, so a
``Run`` returned in that cell displays nothing more (:func:`on_screen`): one status per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import html
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from dagnats_nb.adapters.notebook import render
from dagnats_nb.adapters.notebook.render import Frame
from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.state import RunState
from dagnats_nb.facade.engine import Engine
from dagnats_nb.facade.run import Run
from dagnats_nb.wire.workers import read_entry

MAX_FRAMES = 2000
HINT_AFTER = 2.0  # seconds a step is queued before its task type is checked for a worker
RECHECK = 5.0  # seconds before an unserved task type is checked again


class RunView:
    """Follow one run: ``frames`` (what was published, oldest first) and, in a kernel, a
    widget (DAG with step states, progress bar, elapsed time, last error)."""

    def __init__(
        self,
        engine: Engine,
        run: Run,
        defn: WorkflowDef | None = None,
        *,
        interval: float = 0.1,
        widgets: bool = False,
        tick: float = 1.0,
        cell: int | None = None,
    ) -> None:
        self.engine = engine
        self.run = run
        orch = engine.orchestrator
        self.defn = defn or (orch and orch.run_defs.get(run.id)) or engine.workflow(run.workflow)
        self.interval = interval
        self.tick = tick
        self.frames: list[Frame] = []
        self.updates = 0
        self.done = threading.Event()
        self._latest: Frame | None = None
        self._last_publish = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._unwatch: Callable[[], None] | None = None
        self._finished = False
        self._handle: Any = None
        self.children: list[RunView] = []  # views of child runs opened from this one
        self.cell = cell  # the cell that displayed this view (see current_cell)
        self._queued_since: dict[str, float] = {}
        self._served: dict[str, tuple[bool | None, float]] = {}  # task -> (served?, checked at)
        self._widgets: dict[str, Any] | None = self._make_widgets() if widgets else None

    # -- life cycle (kernel thread) ------------------------------------------------------

    def start(self) -> RunView:
        """Display the widget (if any) and follow the run."""
        if self._widgets is not None:
            from IPython.display import display

            self._handle = display(self._widgets["box"], display_id=True)
        unwatch = self.engine.watch(self.run.id, self._on_state)
        if self._finished:
            unwatch()
        else:
            self._unwatch = unwatch
        return self

    def wait(self, timeout: float | None = 60) -> Frame | None:
        """Block until the final frame is published; return it (None on timeout)."""
        self.done.wait(timeout)
        return self.final

    @property
    def final(self) -> Frame | None:
        """The last frame, once the run has ended."""
        return self.frames[-1] if self.done.is_set() and self.frames else None

    def stop(self, note: str = "the engine stopped: this view no longer follows the run") -> None:
        """Stop following the run; the widget is replaced by a static rendering of the last
        frame with ``note``."""
        if self._unwatch is not None:
            with contextlib.suppress(RuntimeError):  # the engine's loop is already closed
                self._unwatch()
            self._unwatch = None
        if self.done.is_set() or self._finished:
            return
        self._finished = True
        frame = self._latest
        if frame is not None:
            frame.error = frame.error or note
            self._hint(frame, check=False)
            contextvars.Context().run(self._publish, frame, final=True)
        elif self._widgets is not None:
            for w in self._widgets.values():
                w.close()
        self.done.set()

    # -- engine thread -------------------------------------------------------------------

    def _on_state(self, state: RunState) -> None:
        if self._finished:
            return
        defn = (self.engine.orchestrator.run_defs.get(state.run_id)) or self.defn
        self.defn = defn
        self._latest = render.frame_of(defn, state)
        if self._latest.terminal:
            self._finish()
            return
        if self._timer is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._last_publish + self.interval - time.monotonic())
            self._timer = loop.call_later(wait, self._refresh)

    def _refresh(self) -> None:
        self._timer = None
        if self._finished or self._latest is None:
            return
        frame = self._latest
        frame.at = time.time()
        self._hint(frame)
        self._publish(frame)
        if self._ticker is not None:
            self._ticker.cancel()
        if self.tick:  # keep the elapsed time moving while nothing else happens
            self._ticker = asyncio.get_running_loop().call_later(self.tick, self._refresh)

    def _finish(self) -> None:
        self._finished = True
        for handle in (self._timer, self._ticker):
            if handle is not None:
                handle.cancel()
        frame = self._latest
        try:
            contextvars.Context().run(self._publish, frame, final=True)
        finally:
            if self._unwatch is not None:
                self._unwatch()
                self._unwatch = None
            self.done.set()

    def _hint(self, frame: Frame, check: bool = True) -> None:
        """Name the steps queued for a while whose task type no worker serves (with
        ``check``, on the engine loop: start the checks that are due)."""
        now = time.monotonic()
        tasks = {s.id: s.task for s in self.defn.steps if s.task}
        hints = []
        for sid, st in frame.steps.items():
            if st.status != "queued" or sid not in tasks:
                self._queued_since.pop(sid, None)
                continue
            task = tasks[sid]
            since = self._queued_since.setdefault(sid, now)
            served, checked = self._served.get(task, (None, 0.0))
            due = task not in self._served or (served is False and now - checked > RECHECK)
            if check and due and now - since >= HINT_AFTER:
                self._served[task] = (served, now)  # one check at a time per task type
                loop = asyncio.get_running_loop()
                threading.Thread(
                    target=self._check, args=(task, loop), name="dagnats-hint", daemon=True
                ).start()
            if served is False:
                st.note = "no worker serves this task"
                hints.append(f"{sid}: no worker serves this task — define `@dn.task('{task}')`")
        frame.hints = hints

    def _check(self, task: str, loop: asyncio.AbstractEventLoop) -> None:
        """Does a worker (this process's, or one in the ``workers`` KV) serve ``task``?"""
        served = task in self.engine.workers
        if not served:
            try:
                entries = self.engine.status().get("workers", [])
                served = any(task in read_entry(e).tasks for e in entries)
            except Exception:  # cannot tell (the engine is stopping): say nothing
                served = True
        self._served[task] = (served, time.monotonic())
        if not served and not self._finished:
            with contextlib.suppress(RuntimeError):  # the engine's loop closed meanwhile
                loop.call_soon_threadsafe(self._refresh)

    def _publish(self, frame: Frame, final: bool = False) -> None:
        self._last_publish = time.monotonic()
        self.updates += 1
        self.frames.append(frame)
        del self.frames[:-MAX_FRAMES]
        if self._widgets is None:
            return
        contextvars.Context().run(self._set_traits, frame)
        if not final:
            return
        if self._handle is not None:
            html = render.run_html(self.defn, frame)
            self._handle.update({"text/html": html, "text/plain": render.run_text(frame)}, raw=True)
        for w in self._widgets.values():
            w.close()

    # -- widgets -------------------------------------------------------------------------

    def _make_widgets(self) -> dict[str, Any]:
        import ipywidgets as W

        w = {
            "header": W.HTML(),
            "bar": W.FloatProgress(min=0.0, max=1.0, value=0.0, bar_style="info"),
            "drawing": W.HTML(value=render.dag_svg(self.defn)),
            "error": W.HTML(),
        }
        rows = [self._gate_row(W, w, s.id) for s in self.defn.steps if s.type == "approval"]
        rows += [self._child_row(W, w, s.id) for s in self.defn.steps if s.type == "sub_workflow"]
        w["children"] = W.Output()
        w["box"] = W.VBox([w["header"], w["bar"], w["drawing"], *rows, w["error"], w["children"]])
        w["box"].add_class("dagnats-live")
        return w

    def _gate_row(self, W: Any, w: dict[str, Any], sid: str) -> Any:
        """Approve / Reject for an approval step, shown while it awaits a decision."""
        label = W.HTML(f"<b>{sid}</b> awaits approval")
        comment = W.Text(placeholder="comment (optional)")
        yes = W.Button(description="Approve", button_style="success", icon="check")
        no = W.Button(description="Reject", button_style="danger", icon="times")
        row = W.HBox([label, comment, yes, no], layout=W.Layout(display="none"))
        yes.on_click(lambda _b: self._decide(sid, True))
        no.on_click(lambda _b: self._decide(sid, False))
        for part, widget in (("label", label), ("comment", comment), ("approve", yes)):
            w[f"gate:{sid}:{part}"] = widget
        w[f"gate:{sid}:reject"], w[f"gate:{sid}"] = no, row
        return row

    def _decide(self, sid: str, approve: bool) -> None:
        """A click on Approve or Reject (kernel thread): the decision, or why not."""
        w = self._widgets
        comment = w[f"gate:{sid}:comment"].value.strip() or None
        decide = self.engine.approve if approve else self.engine.reject
        try:
            decision = decide(self.run.id, sid, comment)
        except Exception as exc:  # shown where the person clicked, not as a traceback
            w[f"gate:{sid}:label"].value = f"<b>{sid}</b>: {html.escape(str(exc))}"
            return
        verb = "approved" if approve else "rejected"
        who = decision.get("by") if isinstance(decision, dict) else None
        w[f"gate:{sid}:label"].value = f"<b>{sid}</b> {verb}" + (f" by {who}" if who else "")

    def _child_row(self, W: Any, w: dict[str, Any], sid: str) -> Any:
        """A sub_workflow step's child run, with a button that opens its own live view."""
        label = W.HTML()
        button = W.Button(description="Open child run", icon="external-link")
        row = W.HBox([label, button], layout=W.Layout(display="none"))
        button.on_click(lambda _b: self._open_child(sid))
        w[f"child:{sid}:label"], w[f"child:{sid}:open"], w[f"child:{sid}"] = label, button, row
        return row

    def _open_child(self, sid: str) -> None:
        frame = self._latest
        child = frame.steps[sid].child if frame is not None else ""
        if not child:
            return
        with self._widgets["children"]:
            self.children.append(
                RunView(self.engine, self.engine.get_run(child), widgets=True).start()
            )

    def _set_traits(self, frame: Frame) -> None:
        w = self._widgets
        style = {"completed": "success", "failed": "danger", "cancelled": "warning"}
        values = {
            "header": render.run_header_html(frame),
            "drawing": render.dag_svg(self.defn, frame),
            "error": render.error_html(frame),
        }
        for key, value in values.items():
            if w[key].value != value:
                with w[key].hold_sync():
                    w[key].value = value
        for sid, st in frame.steps.items():
            row = w.get(f"gate:{sid}")
            if row is not None:
                _show(row, st.note == "awaits approval")
            row = w.get(f"child:{sid}")
            if row is not None:
                _show(row, bool(st.child))
                text = f"<b>{sid}</b>: child run <code>{st.child}</code>" if st.child else ""
                if w[f"child:{sid}:label"].value != text:
                    w[f"child:{sid}:label"].value = text
        bar = w["bar"]
        with bar.hold_sync():
            if bar.value != frame.progress:
                bar.value = frame.progress
            bar_style = style.get(frame.status, "info")
            if bar.bar_style != bar_style:
                bar.bar_style = bar_style


def _show(widget: Any, visible: bool) -> None:
    display = None if visible else "none"
    if widget.layout.display != display:
        widget.layout.display = display


def in_kernel(shell: Any) -> bool:
    """True when ``shell`` runs in a Jupyter kernel with ipywidgets installed."""
    if getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


# -- the views on screen (kernel thread) -------------------------------------------------

VIEWS: dict[str, RunView] = {}  # run id -> the newest live view the notebook opened of it
DASHBOARDS: weakref.WeakSet[Any] = weakref.WeakSet()  # live dashboards (they have .engine)
_cells: dict[int, int] = {}  # id(shell) -> cells it has run since the extension came


def track_cells(shell: Any) -> None:
    """Count the cells ``shell`` runs (idempotent), so a view knows the cell it is in."""
    key = id(shell)
    if key in _cells or getattr(shell, "events", None) is None:
        return
    _cells[key] = 0

    def pre_run_cell(info: Any = None) -> None:
        _cells[key] += 1

    shell.events.register("pre_run_cell", pre_run_cell)


def current_cell(shell: Any) -> int:
    """The number of the cell ``shell`` is running (0 before the first one)."""
    return _cells.get(id(shell), 0)


def follow(shell: Any, run: Run, defn: WorkflowDef | None = None, interval: float = 0.1) -> RunView:
    """Display a live view of ``run`` in the running cell and keep it in :data:`VIEWS`."""
    cell = current_cell(shell)
    for run_id in [k for k, v in VIEWS.items() if v.done.is_set() and v.cell != cell]:
        del VIEWS[run_id]
    view = RunView(run.engine, run, defn, interval=interval, widgets=True, cell=cell)
    VIEWS[run.id] = view
    return view.start()


def on_screen(shell: Any, run_id: str) -> bool:
    """True when the running cell already shows a live view of the run (then a ``Run`` the
    cell returns displays nothing: one status per run)."""
    view = VIEWS.get(run_id)
    return view is not None and view.cell == current_cell(shell)


def finalize(engine: Engine) -> None:
    """The engine stops: its live views and dashboards leave their static renderings."""
    for view in [v for v in VIEWS.values() if v.engine is engine]:
        view.stop()
    for board in [b for b in DASHBOARDS if b.engine is engine]:
        board.stop()


class _Finalizer:
    """An engine extension whose stop replaces the engine's widgets by static renderings."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        contextvars.Context().run(finalize, self.engine)


def finalizer(engine: Engine) -> _Finalizer:
    """The factory given to ``Engine.add_extension`` (see :func:`install`)."""
    return _Finalizer(engine)


def install(shell: Any) -> None:
    """Count the shell's cells; engines started from now on finalize their views at stop."""
    track_cells(shell)
    Engine.add_extension(finalizer)
