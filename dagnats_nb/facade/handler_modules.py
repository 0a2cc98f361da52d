"""Which handlers a worker process runs: ``MODULE[:ATTR]`` imported (or a ``.py`` file
loaded), its ``@dn.task`` handlers, filtered by task names."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from dagnats_nb.errors import DagnatsError
from dagnats_nb.facade import default
from dagnats_nb.runtime.handlers import unpack_spec

BUILTIN_LLM = "llm"

# task -> (fn, concurrency), or (fn, concurrency, {"cache": bool, "version": str})
HandlerMap = dict[str, tuple[Any, ...]]


def import_module(name: str):
    """Import ``name`` (a dotted module, cwd on sys.path) or load a ``.py`` file."""
    path = Path(name)
    try:
        if name.endswith(".py"):
            if not path.is_file():
                raise DagnatsError(f"module file {name} not found: check the path")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            sys.path.insert(0, str(path.resolve().parent))  # its sibling modules import too
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(path.stem, None)
                raise
            return module
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        return importlib.import_module(name)
    except DagnatsError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise DagnatsError(
                f"no module named {name!r}: run from its directory or pass a .py path"
            ) from None
        raise DagnatsError(f"importing module {name!r} failed: {exc}") from None
    except Exception as exc:
        raise DagnatsError(
            f"importing module {name!r} failed: {type(exc).__name__}: {exc}"
        ) from None


def load_handlers(
    spec: str | None,
    tasks: list[str] | None = None,
    concurrency: int | None = None,
) -> tuple[HandlerMap, bool]:
    """The handlers ``MODULE[:ATTR]`` names, filtered by ``tasks``, with ``concurrency`` (when
    given) for each; and whether the built-in ``llm`` handler is asked for."""
    found: HandlerMap = {}
    if spec:
        modname, _, attr = spec.partition(":")
        if not modname:
            raise DagnatsError(f"{spec!r}: write MODULE or MODULE:ATTR, e.g. tasks:handlers")
        module = import_module(modname)
        if default.current() is not None:
            raise DagnatsError(
                f"importing {modname} started a dagnats engine: a worker module must only "
                "define handlers; start engines under `if __name__ == '__main__':`"
            )
        registered = dict(default._handlers)
        found = _from_attr(spec, module, attr, registered) if attr else registered
        if not found:
            raise DagnatsError(
                f"module {modname} registers no handlers: decorate functions with "
                "@dn.task('name') (or name them with MODULE:ATTR)"
            )
    llm = False
    if tasks:
        picked: HandlerMap = {}
        for t in tasks:
            if t in found:
                picked[t] = found[t]
            elif t == BUILTIN_LLM:
                llm = True
            else:
                have = ", ".join(sorted(found)) or "none"
                raise DagnatsError(
                    f"unknown task {t!r}: {spec or 'no module'} handles {have} "
                    f"(or --task {BUILTIN_LLM} for the built-in llm handler)"
                )
        found = picked
    elif not spec:
        raise DagnatsError(
            "name the handlers' module: dagnats worker MODULE[:ATTR] (or --task llm alone)"
        )
    if concurrency is not None:
        found = {name: (spec[0], concurrency, *spec[2:]) for name, spec in found.items()}
    return found, llm


def _from_attr(spec: str, module: Any, attr: str, registered: HandlerMap) -> HandlerMap:
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DagnatsError(f"{spec}: module has no attribute {attr!r}") from None
    if isinstance(obj, dict):
        out: HandlerMap = {}
        for name, value in obj.items():
            fn, conc, options = unpack_spec(str(name), value)
            if not callable(fn):
                raise DagnatsError(f"{spec}: the handler of task {name!r} is not callable")
            out[str(name)] = (fn, conc, options) if options else (fn, conc)
        return out
    items = list(obj) if isinstance(obj, list | tuple) else [obj]
    out = {}
    for fn in items:
        names = [n for n, spec in registered.items() if spec[0] is fn]
        if not names:
            what = getattr(fn, "__name__", repr(fn))
            raise DagnatsError(
                f"{spec}: {what} is not a @dn.task handler: decorate it with "
                "@dn.task('name'), or make ATTR a dict {task: function}"
            )
        out.update({n: registered[n] for n in names})
    return out
