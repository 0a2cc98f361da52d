"""A live dashboard widget over a :class:`~dagnats_nb.observe.sampler.Sampler`.

One daemon thread redraws the sampler's figure (matplotlib ``Figure`` + Agg into PNG, never
pyplot) into an ``Image`` widget at most every ``refresh`` seconds, and only when new samples
came; drawing happens off the engine loop so the engine never waits for matplotlib. Without
ipywidgets (a terminal, a plain script) ``show()`` returns the static figure instead.
"""

from __future__ import annotations

import threading
from typing import Any

from dagnats_nb.adapters.notebook.explorer import png
from dagnats_nb.observe.sampler import Sampler, plot

MIN_REFRESH = 0.1  # at most 10 redraws a second


class Dashboard:
    def __init__(self, sampler: Sampler, refresh: float = 2.0) -> None:
        import ipywidgets as w

        self.sampler = sampler
        self.refresh = max(MIN_REFRESH, refresh)
        self.image = w.Image(format="png")
        self.caption = w.HTML("<i>waiting for samples...</i>")
        self.widget = w.VBox([self.caption, self.image])
        self.redraws = 0
        self._seen = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dagnats-dashboard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh):
            self.redraw()

    def redraw(self) -> bool:
        """Draw the latest samples if any came since the last drawing; True if it drew."""
        rows = len(self.sampler.rows)
        if rows == self._seen or rows < 2:
            return False
        self._seen = rows
        df = self.sampler.frame()
        image = png(plot(df))
        last = df.iloc[-1]
        text = (
            f"{rows} samples every {self.sampler.every:g}s; last at "
            f"{df.index[-1].strftime('%H:%M:%S')}: "
            f"{last.get('active_runs', 0):.0f} active runs, "
            f"{last.get('steps_per_s', 0):.1f} steps/s, {last.get('dead_letters', 0):.0f} "
            "dead letters"
        )
        with self.widget.hold_sync():
            self.image.value = image
            self.caption.value = text
        self.redraws += 1
        return True

    def stop(self) -> Any:
        """Stop redrawing (the last image stays); returns the final static figure."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.redraw()
        return plot(self.sampler.frame())


def show(sampler: Sampler, refresh: float = 2.0) -> Dashboard | Any:
    """A live :class:`Dashboard` when ipywidgets is there, else the static figure."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return plot(sampler.frame())
    return Dashboard(sampler, refresh)


def dashboard(engine: Any = None, every: float | str = "1s", refresh: float = 2.0):
    """A live dashboard (ipywidgets) of ``engine``'s (default: the kernel's engine) stream
    bytes, consumer lag, run and step rates and dead letters, from a sampler started now
    (``engine.sample(every)``); redrawn at most every ``refresh`` seconds. Without ipywidgets:
    the static figure. ``.stop()`` ends the redrawing."""
    if engine is None:
        from dagnats_nb.facade import default

        engine = default.engine()
    return show(engine.sample(every), refresh)
