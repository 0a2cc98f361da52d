"""``%dagnats compare RUN_A RUN_B``: two runs side by side, as static HTML.

:class:`CompareView` shows both DAGs (the steps whose output or definition changed
outlined, with a legend), the per-step table of ``eng.compare`` and the diffs of the
changed outputs, each collapsible. It is a plain ``_repr_html_`` object: what a notebook
saves is that HTML, so the view is there again when the notebook is reopened, without a
kernel.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from dagnats_nb.adapters.notebook import render
from dagnats_nb.dag.compare import Comparison, Side
from dagnats_nb.facade.comparing import DIFFS, comparison_frame, comparison_text
from dagnats_nb.observe import tables

MAX_DIFF_CHARS = 100_000  # of one diff shown in HTML; eng.diff(a, b, step) has all of it


class CompareView:
    """Two runs compared: ``.table`` (the DataFrame of ``eng.compare``), ``.diffs``
    (step id -> unified diff of its outputs), ``.comparison`` (the data); HTML in Jupyter,
    text elsewhere."""

    def __init__(self, comparison: Comparison) -> None:
        self.comparison = comparison
        self.table: pd.DataFrame = comparison_frame(comparison)
        self.diffs: dict[str, str] = dict(self.table.attrs[DIFFS])

    def _repr_html_(self) -> str:
        return compare_html(self.comparison, self.table)

    def __repr__(self) -> str:
        return comparison_text(self.table)


def legend_html() -> str:
    """What the outlines of the drawings mean."""
    out, defn = render.CHANGE_OUTLINE["output"], render.CHANGE_OUTLINE["definition"]

    def swatch(colour: str, dash: str) -> str:
        attr = f' stroke-dasharray="{dash}"' if dash else ""
        return (
            '<svg width="26" height="14" style="vertical-align:middle">'
            f'<rect x="2" y="2" width="22" height="10" rx="3" fill="none" stroke="{colour}" '
            f'stroke-width="2.5"{attr}/></svg>'
        )

    return (
        '<div class="dagnats-legend" style="font-size:smaller">'
        f"{swatch(out, '')} output changed &nbsp; "
        f"{swatch(defn, render.DEFINITION_DASH)} step definition changed &nbsp; "
        f"{swatch(out, render.DEFINITION_DASH)} both</div>"
    )


def _side_html(side: Side, which: str, marks: dict[str, tuple[str, ...]]) -> str:
    frame = render.frame_of(side.defn, side.state)
    version = html.escape(side.defn.version)
    head = (
        f"<div><b>{which}</b> · {render.run_header_html(frame)} · v{version}"
        + (" · fork" if side.state.forked_from else "")
        + "</div>"
    )
    mine = {sid: what for sid, what in marks.items() if sid in side.defn.step_ids}
    return (
        f'<div class="dagnats-compare-side" data-run="{html.escape(side.run_id)}" '
        f'style="flex:1 1 0;min-width:260px">{head}{render.dag_svg(side.defn, frame, mine)}'
        "</div>"
    )


def _diff_html(step: str, text: str) -> str:
    clipped = text[:MAX_DIFF_CHARS]
    lines = []
    for line in clipped.splitlines():
        colour = ""
        if line.startswith("+") and not line.startswith("+++"):
            colour = "#15803d"
        elif line.startswith("-") and not line.startswith("---"):
            colour = "#b91c1c"
        elif line.startswith("@@"):
            colour = "#6b7280"
        style = f' style="color:{colour}"' if colour else ""
        lines.append(f"<span{style}>{html.escape(line)}</span>")
    more = len(text) - len(clipped)
    note = f"\n… {more:,} more characters: eng.diff(a, b, {step!r}) has all" if more else ""
    return (
        f'<details class="dagnats-diff" data-step="{html.escape(step)}">'
        f"<summary>{html.escape(step)}: output changed</summary>"
        f'<pre style="font-size:smaller">{chr(10).join(lines)}{html.escape(note)}</pre>'
        "</details>"
    )


def compare_html(comparison: Comparison, table: pd.DataFrame) -> str:
    """Both DAGs side by side with the changes outlined, the table and the diffs."""
    a, b = comparison.a, comparison.b
    marks = comparison.marks
    changed = list(comparison.diffs)
    edited = [r["step_id"] for r in comparison.rows if r["definition_changed"]]
    summary = (
        f"runs of <b>{html.escape(a.defn.name)}</b>: "
        + (f"output changed in {_names(changed)}" if changed else "no output changed")
        + (f"; definition changed in {_names(edited)}" if edited else "")
    )
    sides = _side_html(a, "a", marks) + _side_html(b, "b", marks)
    diffs = "".join(_diff_html(step, text) for step, text in comparison.diffs.items())
    return (
        f'<div class="dagnats-compare"><div>{summary}</div>'
        f'<div style="display:flex;gap:16px;flex-wrap:wrap">{sides}</div>'
        f"{legend_html()}{tables.render_html(table)}{diffs}</div>"
    )


def _names(steps: list[Any]) -> str:
    return ", ".join(f"<code>{html.escape(str(s))}</code>" for s in steps)
