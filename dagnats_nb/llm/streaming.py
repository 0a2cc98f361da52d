"""Reading back the chunks a streaming ``llm`` step sends (:class:`~dagnats_nb.llm.handler.
TokenPublisher`) on ``stream.{run_id}.{step_id}``: pure functions on one chunk. Subscribing
needs the engine's connection and loop: that is the facade's (``dagnats_nb.facade.tokens``).

A chunk is ``{"delta", "seq", "attempt"[, "map_index"]}``, and ``{"done": true, "attempt",
"finish_reason" | "error"[, "map_index"]}`` at the end of each attempt.
"""

from __future__ import annotations

import json
from typing import Any


def decode_chunk(data: bytes) -> dict[str, Any] | None:
    """The chunk of a message, or None when it is not one (not a JSON object)."""
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def ends_stream(chunk: dict[str, Any], map_index: int | None) -> bool:
    """The step's attempt (of one map instance, for ``map_index``) ended well: no more
    tokens come. An attempt that failed is followed by a retry's tokens."""
    if not chunk.get("done") or chunk.get("error"):
        return False
    if map_index is None:
        return "map_index" not in chunk
    return chunk.get("map_index") == map_index


def token_of(chunk: dict[str, Any], map_index: int | None) -> str | None:
    """The chunk's text when it is a token of the stream read (all instances, or one)."""
    if "delta" not in chunk:
        return None
    if map_index is not None and chunk.get("map_index") != map_index:
        return None
    return chunk["delta"]
