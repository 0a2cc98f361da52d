"""A bytes progress bar per stream for ``eng.backup`` / ``eng.restore`` in Jupyter.

Each bar is displayed with a display handle; when its stream is done the widget is replaced
by a static HTML bar with the same label, so a saved notebook shows it after reopening.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

MB = 1_000_000


def widget_progress(verb: str = "") -> Callable[[str, int, int], None]:
    """A ``progress(stream, done, total)`` callback that shows one ipywidgets bar per stream
    (``IntProgress`` + an ``HTML`` label with MB and MB/s), displayed on its first call and
    replaced by its static HTML rendering when the stream is done."""
    import ipywidgets as w
    from IPython.display import display

    bars: dict[str, tuple[w.IntProgress, w.HTML, float, Any]] = {}

    def update(stream: str, done: int, total: int) -> None:
        if stream not in bars:
            bar = w.IntProgress(min=0, max=max(total, 1), description=stream[:20])
            label = w.HTML()
            box = w.HBox([bar, label])
            bars[stream] = (bar, label, time.perf_counter(), display(box, display_id=True))
        bar, label, started, handle = bars[stream]
        bar.max = max(total, 1)
        bar.value = min(done, bar.max)
        secs = max(time.perf_counter() - started, 1e-9)
        state = "done" if done == total else verb
        label.value = (
            f"{done / MB:.1f} / {total / MB:.1f} MB, {done / MB / secs:.1f} MB/s {state}".strip()
        )
        if done == total:
            bar.bar_style = "success"
            if handle is not None:
                handle.update({"text/html": static_bar(stream, 1.0, label.value)}, raw=True)
            for widget in (bar, label):
                widget.close()

    return update


def static_bar(stream: str, share: float, label: str) -> str:
    """A finished bar as HTML: the stream, a full bar and its label (no widget)."""
    pct = round(max(0.0, min(1.0, share)) * 100)
    return (
        '<div class="dagnats-progress" style="display:flex;gap:8px;align-items:center">'
        f'<span style="width:150px;text-align:right">{html.escape(stream[:20])}</span>'
        '<div style="background:#e5e7eb;height:8px;border-radius:4px;width:160px">'
        f'<div style="background:#16a34a;height:8px;border-radius:4px;width:{pct}%"></div>'
        f"</div><span>{label}</span></div>"
    )


def in_kernel() -> bool:
    """True inside an IPython kernel (Jupyter), where a widget can show progress."""
    try:
        import IPython
    except ImportError:
        return False
    shell = IPython.get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def default_progress(verb: str = "") -> Callable[[str, int, int], None] | None:
    """A widget progress bar in a Jupyter kernel (None elsewhere, or without ipywidgets)."""
    if not in_kernel():
        return None
    try:
        return widget_progress(verb)
    except ImportError:
        return None
