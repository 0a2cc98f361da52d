"""The sizing teaching widget, driven without a browser."""

from __future__ import annotations

from dagnats_nb.adapters.notebook.explorer import SizingExplorer, describe, figure_for
from dagnats_nb.observe import sizing

PNG = b"\x89PNG\r\n\x1a\n"


def test_sliders_redraw_the_estimate_the_tier_and_the_plot():
    x = SizingExplorer()
    assert bytes(x.image.value).startswith(PNG)
    assert "rule of thumb" in x.source.value
    first_png, first = bytes(x.image.value), x.estimate
    assert first.workload.runs_per_day == 10_000 and first.workload.steps == 10
    x.runs.value = 1_000_000
    assert x.estimate.history_bytes_per_day == 1_000_000 * 12 * 500
    assert bytes(x.image.value) != first_png
    assert "tier <b>large</b>" in x.summary.value  # 30 days of 1 M runs/day needs > 100 GiB
    # 30 days x 1 M runs x (12 events x 500 B of history + a ~5 KB record): in units, not
    # 306.96 GiB; and the hours before the store is full, not "in 1 day"
    assert "<b>307 GiB</b> after 30 days" in x.summary.value
    assert "store full <b>in 23 h</b>" in x.summary.value
    x.retention.value = 3
    assert x.estimate.streams["WORKFLOW_HISTORY"] == 3 * 1_000_000 * 12 * 500
    x.cap.value = 1024.0
    assert x.estimate.days_until_cap is None and "store full <b>never</b>" in x.summary.value
    x.steps.value = 20
    assert x.estimate.events_per_run == 22


def test_measured_calibration_is_used_and_shown():
    cal = sizing.Calibration.measured(bytes_per_event=300, events_per_run=22, steps=10, runs=7)
    x = SizingExplorer(cal)
    assert "measured (7 runs)" in x.source.value and "300 bytes per event" in x.source.value
    assert x.estimate.history_bytes_per_day == 10_000 * 22 * 300


def test_plot_shows_the_cap_and_flattens_under_retention():
    w = sizing.Workload(runs_per_day=100_000, history_max_age_days=30)
    fig = figure_for(w, sizing.Calibration())
    ax = fig.axes[0]
    total, cap = ax.get_lines()
    ys = total.get_ydata()
    assert ys[-1] == ys[-10]  # flat once the 30-day window is full
    assert cap.get_ydata()[0] == 10.0


def test_displayed_it_stays_live_until_the_next_cell_then_leaves_a_picture():
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    x = SizingExplorer()
    with capture_output() as shown:
        display(x)
    view = "application/vnd.jupyter.widget-view+json"
    assert [view in o.data for o in shown.outputs] == [True]  # the live widget
    x.runs.value = 100_000  # played with while live
    with capture_output() as updated:
        shell.events.trigger("pre_run_cell", None)  # the next cell runs
    assert x.frozen and x.widget.comm is None
    static = updated.outputs[-1].data["text/html"]
    assert view not in updated.outputs[-1].data
    assert 'class="dagnats-explorer"' in static and "<td>100,000</td>" in static
    assert '<img src="data:image/png;base64,' in static and describe(x.estimate) in static
    with capture_output() as again:
        shell.events.trigger("pre_run_cell", None)
        display(x)  # displayed once more: the picture, no widget
    assert [o.data.keys() == {"text/html"} for o in again.outputs] == [True]
