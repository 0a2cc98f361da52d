"""A bytes progress bar per stream for ``eng.backup`` / ``eng.restore`` in Jupyter."""

from __future__ import annotations

import time
from collections.abc import Callable

MB = 1_000_000


def widget_progress(verb: str = "") -> Callable[[str, int, int], None]:
    """A ``progress(stream, done, total)`` callback that shows one ipywidgets bar per stream
    (``IntProgress`` + an ``HTML`` label with MB and MB/s), displayed on its first call."""
    import ipywidgets as w
    from IPython.display import display

    bars: dict[str, tuple[w.IntProgress, w.HTML, float]] = {}

    def update(stream: str, done: int, total: int) -> None:
        if stream not in bars:
            bar = w.IntProgress(min=0, max=max(total, 1), description=stream[:20])
            label = w.HTML()
            bars[stream] = (bar, label, time.perf_counter())
            display(w.HBox([bar, label]))
        bar, label, started = bars[stream]
        bar.max = max(total, 1)
        bar.value = min(done, bar.max)
        secs = max(time.perf_counter() - started, 1e-9)
        state = "done" if done == total else verb
        label.value = (
            f"{done / MB:.1f} / {total / MB:.1f} MB, {done / MB / secs:.1f} MB/s {state}".strip()
        )
        if done == total:
            bar.bar_style = "success"

    return update


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
