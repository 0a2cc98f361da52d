"""Every notebook in notebooks/ executes top to bottom; its figures come out as images and
its widgets leave static renderings (what a saved and reopened notebook shows)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# cells whose value is a matplotlib Figure (no `%matplotlib inline` in these notebooks)
FIGURES = {"02-llm-pipeline.ipynb": 1, "03-sizing-and-retention.ipynb": 2}
WIDGET = "application/vnd.jupyter.widget-view+json"


def shows_a_figure(cell) -> bool:
    last = cell.source.strip().splitlines()[-1] if cell.source.strip() else ""
    return last == "fig" or last.endswith(".figure()")


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    assert any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")
    # a Figure comes out as an image, not as "<Figure size 1100x650 with 4 Axes>"
    figures = [c for c in nb.cells if c.cell_type == "code" and shows_a_figure(c)]
    assert len(figures) == FIGURES.get(path.name, len(figures))
    for cell in figures:
        assert any("image/png" in out.get("data", {}) for out in cell.outputs), cell.source
    # every widget left a static rendering: a saved notebook shows no "model not found"
    widgets = [
        cell.source
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if WIDGET in out.get("data", {})
    ]
    assert not widgets
