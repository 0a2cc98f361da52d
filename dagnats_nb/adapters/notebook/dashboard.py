"""A live dashboard widget over a :class:`~dagnats_nb.observe.sampler.Sampler`.

One daemon thread redraws the sampler's figure (matplotlib ``Figure`` + Agg into PNG, never
pyplot) into an ``Image`` widget at most every ``refresh`` seconds, and only when new samples
came; drawing happens off the engine loop so the engine never waits for matplotlib. Without
ipywidgets (a terminal, a plain script) ``show()`` returns the static figure instead.

Display the :class:`Dashboard` itself (the value of a cell): it shows its widget through a
display handle, and ``stop()`` (or the engine's stop) replaces the widget by the last image
and caption as static HTML, so a saved notebook shows it after reopening.
"""

from __future__ import annotations

import base64
import html
import threading
from typing import Any

from dagnats_nb.adapters.notebook import live
from dagnats_nb.adapters.notebook.explorer import png
from dagnats_nb.observe.sampler import Sampler, plot

MIN_REFRESH = 0.1  # at most 10 redraws a second


class Dashboard:
    """The widget (``.widget``), its redrawing thread and, once displayed, its handle."""

    def __init__(self, sampler: Sampler, refresh: float = 2.0, engine: Any = None) -> None:
        import ipywidgets as w

        self.sampler = sampler
        self.engine = engine
        self.refresh = max(MIN_REFRESH, refresh)
        self.image = w.Image(format="png")
        self.caption = w.HTML("<i>waiting for samples...</i>")
        self.widget = w.VBox([self.caption, self.image])
        self.redraws = 0
        self._seen = -1
        self._png: bytes | None = None
        self._handle: Any = None
        self._stopped = False
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
        self._png = image
        with self.widget.hold_sync():
            self.image.value = image
            self.caption.value = text
        self.redraws += 1
        return True

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self._stopped:
            display({"text/html": self.static_html()}, raw=True)
        else:
            self._handle = display(self.widget, display_id=True)
            live.DASHBOARDS.add(self)

    def static_html(self) -> str:
        """The caption and the last image as HTML (what stays once the dashboard stopped)."""
        img = ""
        if self._png is not None:
            data = base64.b64encode(self._png).decode("ascii")
            img = f'<img src="data:image/png;base64,{data}" alt="dagnats dashboard"/>'
        caption = self.caption.value
        caption = caption if caption.startswith("<") else html.escape(caption)
        return f'<div class="dagnats-dashboard"><div>{caption}</div>{img}</div>'

    def stop(self) -> Any:
        """Stop redrawing (the last image stays, as static HTML where it was displayed);
        returns the final static figure."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.redraw()
        if not self._stopped:
            self._stopped = True
            live.DASHBOARDS.discard(self)
            if self._handle is not None:  # displayed as itself: the picture replaces it
                self._handle.update({"text/html": self.static_html()}, raw=True)
                for widget in (self.image, self.caption, self.widget):
                    widget.close()
        return plot(self.sampler.frame())


def show(sampler: Sampler, refresh: float = 2.0, engine: Any = None) -> Dashboard | Any:
    """A live :class:`Dashboard` when ipywidgets is there, else the static figure."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return plot(sampler.frame())
    return Dashboard(sampler, refresh, engine)


def dashboard(engine: Any = None, every: float | str = "1s", refresh: float = 2.0):
    """A live dashboard (ipywidgets) of ``engine``'s (default: the kernel's engine) stream
    bytes, consumer lag, run and step rates and dead letters, from a sampler started now
    (``engine.sample(every)``); redrawn at most every ``refresh`` seconds. Without ipywidgets:
    the static figure. ``.stop()`` ends the redrawing and leaves the last image in the
    notebook; so does stopping the engine."""
    if engine is None:
        from dagnats_nb.facade import default

        engine = default.engine()
    return show(engine.sample(every), refresh, engine)
