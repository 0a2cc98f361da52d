"""What an executed quickstart shows: live views end as static renderings, tables render."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

QUICKSTART = Path(__file__).resolve().parents[1] / "notebooks" / "01-quickstart.ipynb"


def test_a_no_wait_view_keeps_moving_while_another_cell_runs(tmp_path):
    nb = nbformat.read(QUICKSTART, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    no_wait = next(c for c in cells if "--no-wait" in c.source)
    views = [o for o in no_wait.outputs if o.output_type == "display_data"]
    # the view was displayed by this cell and finished while the next cell executed: its
    # output is now the static rendering of the completed run (no widget left behind)
    assert len(views) == 1
    html = views[0]["data"]["text/html"]
    assert 'class="dagnats-run" data-status="completed"' in html and "<svg" in html
    assert "40/40" in html
    assert "application/vnd.jupyter.widget-view+json" not in views[0]["data"]
    waited = next(c for c in cells if c.source.startswith("%dagnats run digest"))
    assert 'data-status="completed"' in waited.outputs[0]["data"]["text/html"]
    frames = [
        o["data"]["text/html"]
        for c in cells
        for o in c.outputs
        if "<table" in o.get("data", {}).get("text/html", "")
        and "dataframe" in o["data"]["text/html"]
    ]
    assert len(frames) >= 4  # runs, steps, events, status tables


WIDGET = "application/vnd.jupyter.widget-view+json"
CELLS = [
    # 0
    "%load_ext dagnats_nb\nimport asyncio, tempfile, time\nimport dagnats_nb as dn\n"
    "%dagnats start --data-dir {tempfile.mkdtemp()}",
    # 1
    '@dn.task("nap")\nasync def nap(ctx):\n    await asyncio.sleep(0.3)\n    return ctx.input',
    # 2
    "%%dagnats workflow naps\nnap -> again\nagain: task=nap",
    # 3: returns the Run: the cell shows its live view only
    "%dagnats run naps --input 1 --no-wait",
    # 4
    "time.sleep(1.5)",
    # 5: a waiting run: one rendering
    "%dagnats run naps --input 2",
    # 6
    "r = %dagnats run naps --input 3 --no-wait",
    # 7: watch returns the Run too
    "%dagnats watch $r",
    # 8: an ended run displayed later: its final state
    "r.wait(10)\nr",
    # 9: a running Run displayed without a magic: a live view
    'fresh = dn.engine().start_run("naps", 4)\nfresh',
    # 10
    "fresh.wait(10)\ntime.sleep(0.5)",
    # 11
    "%%dagnats workflow orphan\nnap -> enrich",
    # 12
    "%dagnats run orphan --input 1 --no-wait",
    # 13: the hint comes once the step waited 2 s
    "time.sleep(3.5)",
    # 14
    'board = dn.dashboard(every="100ms", refresh=0.2)\nboard',
    # 15: a Figure is an image without %matplotlib inline
    "time.sleep(1.5)\nfig = board.stop()\nfig",
    # 16: live until the next cell runs
    "from dagnats_nb.adapters.notebook.explorer import sizing_explorer\n"
    "explorer = sizing_explorer()\nexplorer",
    # 17: one progress bar per stream
    "backup = dn.engine().backup(tempfile.mkdtemp() + '/backup')",
    # 18: the engine stops: the orphan's view leaves its last state
    "%dagnats stop",
]


def test_one_status_per_run_and_every_widget_leaves_a_static_rendering(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outs = [c.outputs for c in nb.cells]
    errors = [o for cell in outs for o in cell if o.output_type in ("error", "stream")]
    assert not [o for o in errors if o.output_type == "error"], errors
    left = [(i, o) for i, cell in enumerate(outs) for o in cell if WIDGET in o.get("data", {})]
    assert not left  # every widget was replaced by its static rendering

    def html(i: int) -> str:
        shown = [o for o in outs[i] if o.output_type in ("display_data", "execute_result")]
        assert len(shown) == 1, (i, CELLS[i], shown)  # one status per run
        return shown[0]["data"]["text/html"]

    for i in (3, 5, 6, 7, 9):
        assert outs[i][0].output_type == "display_data", (i, outs[i])
        view = html(i)
        assert 'class="dagnats-run" data-status="completed"' in view and "<svg" in view
        assert view.count("dagnats-status") == 1  # one header
    final = html(8)
    assert outs[8][0].output_type == "execute_result"
    assert 'data-status="completed"' in final and "<table" in final
    orphan = html(12)
    assert "enrich: no worker serves this task — define <code>@dn.task(" in orphan
    assert "the engine stopped" in orphan
    board = html(14)
    assert 'class="dagnats-dashboard"' in board and '<img src="data:image/png;base64,' in board
    assert any("image/png" in o.get("data", {}) for o in outs[15])
    explorer = html(16)
    assert 'class="dagnats-explorer"' in explorer and "runs per day" in explorer
    bars = [o["data"]["text/html"] for o in outs[17] if o.output_type == "display_data"]
    assert len(bars) >= 3 and all('class="dagnats-progress"' in b for b in bars)
    assert all("done" in b for b in bars)
