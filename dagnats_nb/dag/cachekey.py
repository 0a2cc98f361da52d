"""Cached steps, the pure part: whether a step is cached, its cache key, a handler's version.

A step's result may be served from the cache (``runtime.cache``) when the step asks for it
(``metadata: {cache: "true"}``) or its handler does (``cache=True``), unless the step opts
out (``metadata: {cache: "false"}``). The key is a sha256 over canonical JSON (sorted keys,
no spaces) of:

- ``task``: the task type;
- ``config``: the step's ``config``;
- ``metadata``: its ``metadata`` without the cache-control key ``cache``;
- ``input``: the resolved input (large values read back from the payload store);
- ``version``: the handler's version (:func:`code_version`, or the one its author gave);
- ``extra``: what else a built-in handler says shapes its output (the ``llm`` task: the
  resolved model, provider, system, prompt template, temperature, max_tokens,
  response_format).

So a changed handler, config, input or metadata never gets an old value.

**What a handler's version sees.** :func:`code_version` hashes the handler's own code: its
bytecode, constants (nested functions' and lambdas' code included), the names it uses, its
default arguments and the values it captured from an enclosing function (a handler made by a
factory: plain values, and captured functions' code); not line numbers, comments or where the
file is. It cannot see a
change in a function or global the handler calls or reads: pass ``version="..."`` to the
decorator and change it when such a change should invalidate the cache.
"""

from __future__ import annotations

import functools
import hashlib
import types
from collections.abc import Mapping
from typing import Any

import orjson

CACHE_KEY = "cache"  # the step metadata key that turns caching on ("true") or off ("false")
_FLAGS = {"true": True, "false": False}
_PLAIN = (str, int, float, bool, bytes, type(None))


def step_flag(metadata: Mapping[str, str] | None) -> bool | None:
    """What the step's ``metadata.cache`` asks: True, False, or None (not said / not
    ``true`` or ``false``)."""
    value = (metadata or {}).get(CACHE_KEY)
    return _FLAGS.get(value.strip().lower()) if isinstance(value, str) else None


def wants_cache(flag: bool | None, by_default: bool) -> bool:
    """Whether a step is cached: its own ``metadata.cache`` first, else the handler's
    default."""
    return by_default if flag is None else flag


def canonical(value: Any) -> bytes:
    """``value`` as canonical JSON: sorted keys, no spaces (what the key hashes)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def cache_key(
    task: str,
    config: Mapping[str, Any] | None,
    metadata: Mapping[str, str] | None,
    value: Any,
    version: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The sha256 (hex) of one step's cache key (see the module docstring). TypeError when
    the input or config is not JSON."""
    material = {
        "task": task,
        "config": dict(config or {}),
        "metadata": {k: v for k, v in (metadata or {}).items() if k != CACHE_KEY},
        "input": value,
        "version": version,
        "extra": dict(extra or {}),
    }
    return hashlib.sha256(canonical(material)).hexdigest()


def code_version(fn: Any) -> str:
    """A handler's version: 16 hex digits of a sha256 over its code (see the module
    docstring). A bound method, ``functools.partial`` or callable object counts as the
    function it calls (a partial's arguments too, when plain values)."""
    h = hashlib.sha256()
    _feed(h, fn, set())
    return h.hexdigest()[:16]


def _feed(h: Any, fn: Any, seen: set[int]) -> None:
    if isinstance(fn, functools.partial):
        h.update(b"partial")
        _const(h, fn.args, seen)
        _const(h, tuple(sorted(fn.keywords.items())), seen)
        _feed(h, fn.func, seen)
        return
    fn = getattr(fn, "__func__", fn)  # a bound method
    code = getattr(fn, "__code__", None)
    if code is None and not isinstance(fn, type) and callable(fn):
        # a callable object: its class's __call__
        call = next((vars(c)["__call__"] for c in type(fn).__mro__ if "__call__" in vars(c)), None)
        code = getattr(call, "__code__", None)
    if code is None:  # a builtin: its name is all there is
        h.update(repr(getattr(fn, "__qualname__", type(fn).__qualname__)).encode())
        return
    _code(h, code, seen)
    _const(h, getattr(fn, "__defaults__", None), seen)
    _const(h, tuple(sorted((getattr(fn, "__kwdefaults__", None) or {}).items())), seen)
    for cell in getattr(fn, "__closure__", None) or ():  # a factory's captured values
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not filled yet
            continue
        if callable(value) and hasattr(value, "__code__"):
            if id(value.__code__) not in seen:
                _feed(h, value, seen)
        else:
            _const(h, value, seen)


def _code(h: Any, code: types.CodeType, seen: set[int]) -> None:
    if id(code) in seen:
        return
    seen.add(id(code))
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_argcount)).encode())
    h.update(repr((code.co_kwonlyargcount, code.co_flags)).encode())
    for const in code.co_consts:
        _const(h, const, seen)


def _const(h: Any, value: Any, seen: set[int]) -> None:
    if isinstance(value, types.CodeType):
        _code(h, value, seen)
    elif isinstance(value, tuple | frozenset | list):
        h.update(b"(")
        for item in sorted(value, key=repr) if isinstance(value, frozenset) else value:
            _const(h, item, seen)
        h.update(b")")
    elif isinstance(value, _PLAIN):
        h.update(repr(value).encode())
    else:  # an object: its repr may hold an address, which changes at every start
        h.update(f"<{type(value).__qualname__}>".encode())
    h.update(b",")


__all__ = [
    "CACHE_KEY",
    "cache_key",
    "canonical",
    "code_version",
    "step_flag",
    "wants_cache",
]
