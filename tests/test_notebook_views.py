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
