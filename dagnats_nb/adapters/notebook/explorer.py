"""A teaching widget: sliders for a workload that redraw disk over time and the tier.

``sizing_explorer(calibration)`` returns an ipywidgets box: runs per day, steps per run,
payload size, history retention (days) and the store cap. Each change recomputes the pure
sizing model and redraws a matplotlib ``Figure`` rendered to PNG (Agg) into an ``Image``
widget (pyplot is not thread-safe and a PNG survives in a saved notebook). The calibration
in use (rules of thumb, or what an engine measured) is shown under the sliders.

Display the explorer itself (``explorer`` as a cell's value): it is live until another cell
runs, then it stays as a static picture of the values chosen (HTML and PNG, no widget), so a
saved notebook shows it after reopening; run its cell again to change it. ``freeze()`` does
that at once; ``sizing_explorer(..., freeze_on_next_cell=False)`` keeps it live (then a saved
notebook shows "Error displaying widget" where it was).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from dagnats_nb.observe import sizing
from dagnats_nb.observe.units import human_bytes, human_duration

GiB, DAY = sizing.GiB, sizing.DAY


def figure_for(workload: sizing.Workload, cal: sizing.Calibration, days: float = 365.0):
    """Disk over time against the store cap, one line per stream group."""
    from matplotlib.figure import Figure

    series = sizing.disk_over_time(workload, cal, days=days, points=80)
    fig = Figure(figsize=(7.5, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot([d for d, _ in series], [b / GiB for _, b in series], label="all streams")
    ax.axhline(
        workload.max_store_bytes / GiB, color="tab:red", linestyle=":", label="max_store_bytes"
    )
    ax.set_xlabel("days")
    ax.set_ylabel("GiB")
    ax.set_title("disk over time")
    ax.legend(fontsize="small")
    return fig


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def describe(est: sizing.Estimate) -> str:
    cap = (
        "never" if est.days_until_cap is None else "in " + human_duration(est.days_until_cap * DAY)
    )
    return (
        f"<b>{human_bytes(est.disk_bytes)}</b> after {est.days:g} days "
        f"({est.store_share:.0%} of the store), store full <b>{cap}</b>; "
        f"{est.events_per_run:.1f} events per run; memory {human_bytes(est.memory_bytes)}; "
        f"tier <b>{est.tier.name}</b> ({est.tier.cpu}, {est.tier.memory_bytes / GiB:g} GiB "
        f"RAM, {est.tier.disk_bytes / GiB:g} GiB disk)"
    )


class SizingExplorer:
    """The widget and its state; ``.widget`` is what a notebook displays."""

    def __init__(
        self,
        calibration: sizing.Calibration | None = None,
        days: float = 30.0,
        freeze_on_next_cell: bool = True,
    ):
        import ipywidgets as w

        self.calibration = calibration or sizing.Calibration()
        self.days = days
        self.freeze_on_next_cell = freeze_on_next_cell
        self.frozen = False
        self._handle: Any = None
        self._shell: Any = None
        self._png = b""
        style = {"description_width": "150px"}
        layout = w.Layout(width="480px")
        self.runs = w.FloatLogSlider(
            value=10_000,
            base=10,
            min=1,
            max=7,
            step=0.1,
            description="runs per day",
            style=style,
            layout=layout,
        )
        self.steps = w.IntSlider(
            value=10, min=1, max=50, description="steps per run", style=style, layout=layout
        )
        self.payload = w.FloatLogSlider(
            value=1024,
            base=2,
            min=6,
            max=20,
            step=0.5,
            description="payload bytes",
            style=style,
            layout=layout,
        )
        self.retention = w.IntSlider(
            value=0,
            min=0,
            max=365,
            description="runs_max_age (days, 0 = keep)",
            style=style,
            layout=layout,
        )
        self.cap = w.FloatLogSlider(
            value=10,
            base=2,
            min=0,
            max=12,
            step=0.5,
            description="max_store_bytes (GiB)",
            style=style,
            layout=layout,
        )
        self.summary = w.HTML()
        self.source = w.HTML(
            f"<i>calibration: {self.calibration.source} "
            f"({self.calibration.bytes_per_event:.0f} bytes per event)</i>"
        )
        self.image = w.Image(format="png")
        for slider in (self.runs, self.steps, self.payload, self.retention, self.cap):
            slider.observe(self._redraw, names="value")
        self.widget = w.VBox(
            [
                self.runs,
                self.steps,
                self.payload,
                self.retention,
                self.cap,
                self.source,
                self.summary,
                self.image,
            ]
        )
        self.estimate: sizing.Estimate | None = None
        self._redraw()

    def workload(self) -> sizing.Workload:
        return sizing.Workload(
            runs_per_day=self.runs.value,
            steps=self.steps.value,
            payload_bytes=int(self.payload.value),
            history_max_age_days=self.retention.value or None,
            max_store_bytes=int(self.cap.value * GiB),
        )

    def _redraw(self, change: Any = None) -> None:
        w = self.workload()
        self.estimate = sizing.estimate(w, self.calibration, self.days)
        self.summary.value = describe(self.estimate)
        self._png = png(figure_for(w, self.calibration))
        self.image.value = self._png

    # -- display: live, then static ------------------------------------------------------

    def _ipython_display_(self) -> None:
        from IPython import get_ipython
        from IPython.display import display

        if self.frozen:
            display({"text/html": self.static_html()}, raw=True)
            return
        self._handle = display(self.widget, display_id=True)
        shell = get_ipython()
        if self.freeze_on_next_cell and shell is not None and self._shell is None:
            self._shell = shell
            shell.events.register("pre_run_cell", self._next_cell)

    def _next_cell(self, info: Any = None) -> None:
        self.freeze()

    def static_html(self) -> str:
        """The chosen values, the estimate and the plot as HTML (no widget)."""
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(s.description)}</th>"
            f"<td>{s.value:,.6g}</td></tr>"
            for s in (self.runs, self.steps, self.payload, self.retention, self.cap)
        )
        data = base64.b64encode(self._png).decode("ascii")
        return (
            f'<div class="dagnats-explorer"><table>{rows}</table>{self.source.value}'
            f"<div>{self.summary.value}</div>"
            f'<img src="data:image/png;base64,{data}" alt="disk over time"/></div>'
        )

    def freeze(self) -> None:
        """Replace the displayed widget by its static rendering (idempotent)."""
        if self._shell is not None:
            self._shell.events.unregister("pre_run_cell", self._next_cell)
            self._shell = None
        if self.frozen or self._handle is None:
            return
        self.frozen = True
        self._handle.update({"text/html": self.static_html()}, raw=True)
        self.widget.close()


def sizing_explorer(
    calibration: sizing.Calibration | None = None,
    days: float = 30.0,
    freeze_on_next_cell: bool = True,
) -> SizingExplorer:
    """The sliders-and-plot explorer; display it (a cell's value) to use it. It stays live
    until another cell runs, then leaves a static picture of the values chosen (see the
    module's docstring); ``.widget`` is the widget itself."""
    return SizingExplorer(calibration, days, freeze_on_next_cell)
