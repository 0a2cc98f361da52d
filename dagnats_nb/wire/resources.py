"""The NATS layout (streams and KV buckets of WIRE.md) declared as data.

``transport.provision.ensure_resources`` creates them on the server; ``observe`` code reads
the same declarations to compare configured limits with usage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from nats.js import api as js_api

from dagnats_nb.wire import protocol

DAY = 86400.0
GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: str = "limits"  # limits | workqueue
    storage: str = "file"  # file | memory
    max_age: float | None = None  # seconds
    max_bytes: int | None = None
    duplicate_window: float | None = None  # seconds

    def config(self, replicas: int = 1) -> js_api.StreamConfig:
        kw: dict[str, Any] = {
            "name": self.name,
            "subjects": list(self.subjects),
            "retention": js_api.RetentionPolicy(self.retention),
            "storage": js_api.StorageType(self.storage),
            "num_replicas": replicas,
            "max_age": self.max_age or 0,
            "max_bytes": self.max_bytes or -1,
        }
        if self.duplicate_window is not None:
            kw["duplicate_window"] = self.duplicate_window
        return js_api.StreamConfig(**kw)


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    ttl: float | None = None  # seconds
    history: int = 1
    storage: str = "file"

    @property
    def stream(self) -> str:
        return f"KV_{self.name}"


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(protocol.HISTORY_STREAM, ("history.>",), duplicate_window=5.0),
    StreamSpec(protocol.TASK_STREAM, ("task.>",), retention="workqueue"),
    StreamSpec(protocol.DEAD_STREAM, ("dead.>",), max_age=30 * DAY),
    StreamSpec(
        protocol.TELEMETRY_STREAM,
        ("telemetry.>",),
        max_age=7 * DAY,
        max_bytes=GiB,
        duplicate_window=5.0,
    ),
    StreamSpec(protocol.STICKY_STREAM, ("sticky.>",), storage="memory", max_age=30 * 60.0),
)

BUCKETS: tuple[BucketSpec, ...] = (
    BucketSpec("workflow_defs"),
    BucketSpec("workflow_runs"),
    BucketSpec("sticky_bindings", ttl=25 * 3600.0),
    BucketSpec("workers", ttl=60.0),
    BucketSpec("checkpoints"),
)


def streams_for(
    runs_max_age: float | None = None,
    history_max_bytes: int | None = None,
    max_store_bytes: int | None = None,
) -> tuple[StreamSpec, ...]:
    """The stream declarations with the limits a user configured.

    A stream's ``max_bytes`` may not exceed the store: with a small ``max_store_bytes``
    (a teaching set-up) TELEMETRY is capped at a tenth of it.
    """
    out = []
    for spec in STREAMS:
        if spec.name == protocol.HISTORY_STREAM:
            spec = replace(spec, max_age=runs_max_age, max_bytes=history_max_bytes)
        if max_store_bytes and spec.max_bytes and spec.max_bytes > max_store_bytes // 2:
            spec = replace(spec, max_bytes=max(1 << 20, max_store_bytes // 10))
        out.append(spec)
    return tuple(out)
