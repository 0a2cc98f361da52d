"""The notebook as the engine's console: ``%dagnats`` magics, live run views, rich display.

``%load_ext dagnats_nb`` calls :func:`load_ipython_extension`. IPython and ipywidgets are
imported only here and below, never by the engine.
"""

from __future__ import annotations

from typing import Any

_loaded: dict[int, Any] = {}


def load_ipython_extension(shell: Any) -> None:
    """Register ``%dagnats`` / ``%%dagnats`` and the rich displays (idempotent)."""
    from dagnats_nb.adapters.notebook.magics import Dagnats
    from dagnats_nb.adapters.notebook.reprs import register_formatters

    register_formatters(shell)
    if id(shell) in _loaded:
        return
    magics = Dagnats(shell=shell)  # Magics.__init__ adds it to shell.configurables (%config)
    shell.register_magics(magics)
    _loaded[id(shell)] = magics


def unload_ipython_extension(shell: Any) -> None:
    """Stop the engine the extension started and remove the magics."""
    from dagnats_nb.facade import default

    magics = _loaded.pop(id(shell), None)
    if magics is not None:
        for view in magics.views.values():
            view.stop()
        shell.magics_manager.magics["line"].pop("dagnats", None)
        shell.magics_manager.magics["cell"].pop("dagnats", None)
        while magics in shell.configurables:
            shell.configurables.remove(magics)
    default.stop_engine()


def register_if_ipython() -> None:
    """Register the rich displays when running under IPython (called at import)."""
    import sys

    if "IPython" not in sys.modules:
        return
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            from dagnats_nb.adapters.notebook.reprs import register_formatters

            register_formatters(shell)
    except Exception:  # display niceties must never break the import
        return
