"""Reading the step forms earlier versions of this package wrote to fit the published JSON
schema, which has no `config`: agent-loop settings under `loop` (read by the model itself)
and settings kept in reserved metadata, `dagnats.map.<key>`, `dagnats.config.<key>` (JSON
text) and `dagnats.loop.<key>`. Nothing writes these forms any more (see `model`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

MAP_PREFIX = "dagnats.map."
LOOP_PREFIX = "dagnats.loop."
CONFIG_PREFIX = "dagnats.config."


def read_reserved_metadata(data: Any) -> Any:
    """Move `dagnats.map.*`, `dagnats.config.*` and `dagnats.loop.*` metadata of a raw step
    back into `config` and `loop` (explicit `config` / `loop` values win)."""
    meta = data.get("metadata") if isinstance(data, Mapping) else None
    if not isinstance(meta, Mapping) or not any(
        isinstance(k, str) and k.startswith("dagnats.") for k in meta
    ):
        return data
    config: dict[str, Any] = {}
    loop: dict[str, Any] = {}
    rest: dict[Any, Any] = {}
    targets = ((MAP_PREFIX, config), (CONFIG_PREFIX, config), (LOOP_PREFIX, loop))
    for key, text in meta.items():
        for prefix, target in targets:
            if isinstance(key, str) and key.startswith(prefix):
                target[key[len(prefix) :]] = _decode(text)
                break
        else:
            rest[key] = text
    data = dict(data)
    data["metadata"] = rest or None
    if config and isinstance(data.get("config") or {}, Mapping):
        data["config"] = {**config, **(data.get("config") or {})}
    old_loop = data.get("loop")
    if isinstance(old_loop, BaseModel):
        old_loop = old_loop.model_dump(exclude_none=True)
    if loop and isinstance(old_loop or {}, Mapping):
        data["loop"] = {**loop, **(old_loop or {})}
    return data


def _decode(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
