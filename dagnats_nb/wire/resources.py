"""The NATS layout (streams and KV buckets of WIRE.md) declared as data.

``transport.provision.ensure_resources`` creates them on the server; ``observe`` code reads
the same declarations to compare configured limits with usage.

**The Go engine's defaults.** Every stream and bucket we create is configured as the Go
dagnats creates its own (``internal/natsutil/conn.go`` at the reference commit, and what a
running ``dagnats serve`` reports in ``$JS.API.STREAM.INFO``): the same names, subjects,
retention, storage, max ages, dedup windows and ``allow_atomic``; byte limits are the same
fractions of the store budget (our ``max_store_bytes``, Go's ``max_store_bytes`` too);
buckets as nats.go's ``CreateKeyValue`` makes them. What a setting of ours overrides:
``runs_max_age`` / ``history_max_bytes`` (WORKFLOW_HISTORY) and ``nats_jetstream_replicas``
(every stream; Go leaves TELEMETRY and STICKY_TASKS at one replica). Deliberate differences,
one rule: what a run still needs is never dropped to make room, a full stream or store
refuses the write instead ("storage is full", naming what to do):

- ``TASK_QUEUES`` discards *new* messages at its byte limit, Go's discards the oldest: a
  dropped pending task is a run that waits for ever (nothing of ours sends a stored task
  again);
- ``WORKFLOW_HISTORY`` has no byte limit unless ``history_max_bytes`` sets one (Go's: 30 %
  of the store, oldest events dropped first). Go recovers from its run snapshots; we replay
  the history, so a byte limit drops the ``workflow.started`` of whatever runs are oldest —
  waiting or running ones too — as soon as newer runs fill 30 % of the store (minutes on a
  notebook's small store);
- ``WORKFLOW_HISTORY`` answers direct gets (on one replica), so one run's events are read
  in a few batched requests instead of through a consumer made for each read (Go's has none:
  our reads of its stream fall back to that consumer);
- we do not create what nothing of ours uses (Go's SLEEP_TIMERS: our timers are rebuilt from
  the history; TRIGGER_HISTORY and its other buckets); our object store ``payloads``, the step
  cache ``task_cache`` and the engines' heartbeats ``dagnats_engines`` are ours alone.
  EVENTS (what ``wait_for_event`` steps wait for), ``approval_tokens`` and ``signals`` are
  Go's.

**History max age vs recovery by replay** (the trade-off, chosen as the Go engine): the
history keeps 30 days, Go's max age and the default of ``runs_max_age``. A run whose
``workflow.started`` aged out is gone from the engine at the next start (its record in KV
``workflow_runs`` stays; Go's own pruner deletes terminal runs after 30 days too), so a run,
running or waiting, must not outlive 30 days. In exchange the history stops growing on a
steady load. ``runs_max_age: 0`` keeps everything, as before. docs/operations.md, "Retention and
recovery", says the same.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from nats.js import api as js_api

from dagnats_nb.wire import protocol

DAY = 86400.0
GiB = 1 << 30

DEFAULT_STORE_BYTES = 10 * GiB  # the default max_store_bytes, Go's and ours
# Go's byte ceilings: fractions of the store budget, floor(budget * fraction). Go's
# WORKFLOW_HISTORY (0.30, not ours: see above), EVENTS (0.15), TRIGGER_HISTORY (0.04) and
# SLEEP_TIMERS (0.04) make its total 0.80.
GO_HISTORY_SHARE = 0.30
TASK_QUEUE_SHARE = 0.12
TELEMETRY_SHARE = 0.10
EVENTS_SHARE = 0.15
DEAD_LETTER_SHARE = 0.05
HISTORY_MAX_AGE = 30 * DAY  # Go's historyMaxAge; the default of our runs_max_age (720h)
KV_DUPLICATE_WINDOW = 120.0  # nats.go's KV dedup window (the bucket's TTL when shorter)
MIN_STREAM_BYTES = 1 << 20  # a share squeezed by history_max_bytes keeps at least this


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: str = "limits"  # limits | workqueue
    storage: str = "file"  # file | memory
    max_age: float | None = None  # seconds
    max_bytes: int | None = None
    store_share: float | None = None  # max_bytes as this share of max_store_bytes
    duplicate_window: float | None = None  # seconds; None: the server's (2 min)
    discard: str = "old"  # old | new
    allow_atomic: bool = False  # atomic batch publish (nats-server >= 2.12, API level 2)
    max_msgs_per_subject: int | None = None  # None: no limit
    allow_direct: bool = False  # direct gets, on a single replica only (see the docstring)

    def config(self, replicas: int = 1, api_level: int | None = 2) -> js_api.StreamConfig:
        """The stream config to send; ``allow_atomic`` only to a server that knows it,
        ``allow_direct`` only on one replica: a follower of a replicated stream answers
        direct gets too, and may not hold a run's newest events yet."""
        kw: dict[str, Any] = {
            "name": self.name,
            "subjects": list(self.subjects),
            "retention": js_api.RetentionPolicy(self.retention),
            "storage": js_api.StorageType(self.storage),
            "discard": js_api.DiscardPolicy(self.discard),
            "num_replicas": replicas,
            "max_age": self.max_age or 0,
            "max_bytes": self.max_bytes or -1,
            "duplicate_window": self.duplicate_window or 0,
            "max_msgs_per_subject": self.max_msgs_per_subject or -1,
        }
        if self.allow_atomic and (api_level or 0) >= 2:
            kw["allow_atomic"] = True
        if self.allow_direct and replicas == 1:
            kw["allow_direct"] = True
        return js_api.StreamConfig(**kw)


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    ttl: float | None = None  # seconds
    history: int = 1
    storage: str = "file"
    max_bytes: int | None = None  # ours only (the step cache): Go's buckets have none
    discard: str = "new"  # Go's; the step cache drops its oldest entries when full

    @property
    def stream(self) -> str:
        return f"KV_{self.name}"

    def config(self, replicas: int = 1) -> js_api.StreamConfig:
        """The bucket's stream as nats.go's ``CreateKeyValue`` makes it (Go's buckets): direct
        gets, rollups, no message deletes, discard new, ``history`` values a key. (nats-py's
        ``create_key_value`` turns per-message TTLs on and direct gets off instead.) The
        step cache alone has a byte limit and discards its oldest values at it."""
        window = min(self.ttl, KV_DUPLICATE_WINDOW) if self.ttl else KV_DUPLICATE_WINDOW
        return js_api.StreamConfig(
            name=self.stream,
            subjects=[f"$KV.{self.name}.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType(self.storage),
            discard=js_api.DiscardPolicy(self.discard),
            num_replicas=replicas,
            max_age=self.ttl or 0,
            max_bytes=self.max_bytes or -1,
            max_msgs=-1,
            max_consumers=-1,
            max_msg_size=-1,
            max_msgs_per_subject=self.history,
            duplicate_window=window,
            deny_delete=True,
            allow_rollup_hdrs=True,
            allow_direct=True,
        )


# Go's SetupStreams / SetupTelemetryStream / SetupStickyStream; see the module docstring.
_DECLARED: tuple[StreamSpec, ...] = (
    StreamSpec(  # no byte limit but history_max_bytes (Go's: 30 % of the store, see above)
        protocol.HISTORY_STREAM,
        ("history.>",),
        max_age=HISTORY_MAX_AGE,  # runs_max_age
        duplicate_window=5.0,
        allow_direct=True,  # a run's events in batched direct gets (transport.reading)
    ),
    StreamSpec(
        protocol.TASK_STREAM,
        ("task.>",),
        retention="workqueue",  # no max age: a pending task must not age out
        store_share=TASK_QUEUE_SHARE,
        discard="new",  # Go: old (see the module docstring)
        allow_atomic=True,
    ),
    StreamSpec(
        protocol.DEAD_STREAM,
        ("dead.>",),
        max_age=30 * DAY,
        store_share=DEAD_LETTER_SHARE,
        duplicate_window=DAY,
    ),
    StreamSpec(
        protocol.TELEMETRY_STREAM,
        ("telemetry.>",),
        max_age=7 * DAY,
        store_share=TELEMETRY_SHARE,
        duplicate_window=5.0,
    ),
    StreamSpec(protocol.STICKY_STREAM, ("sticky.>",), storage="memory", max_age=30 * 60.0),
    StreamSpec(protocol.EVENTS_STREAM, ("event.>",), max_age=14 * DAY, store_share=EVENTS_SHARE),
)

BUCKETS: tuple[BucketSpec, ...] = (
    BucketSpec("workflow_defs"),
    BucketSpec("workflow_runs"),
    BucketSpec("sticky_bindings", ttl=25 * 3600.0),
    BucketSpec("workers", ttl=60.0),
    BucketSpec("checkpoints"),
    BucketSpec("approval_tokens", ttl=168 * 3600.0),
    BucketSpec("signals"),
    BucketSpec("triggers"),  # Go's trigger records by trigger id (runtime.triggers)
    BucketSpec("trigger_state"),  # "{id}.last_run_at": the minute a cron trigger last fired
)


# Ours (Go never reads it): the snapshots of the runs an orchestrator holds, one message a
# subject (``runtime.snapshots``). It holds O(active runs), so no age or byte limit: a full
# store refuses a snapshot, and the checkpoint stops advancing (restart reads more history).
SNAPSHOTS = StreamSpec(protocol.SNAPSHOT_STREAM, ("dagnats_nb.snapshot.>",), max_msgs_per_subject=1)

# Ours (Go never reads it): every started engine's heartbeat ``engine.{id}``, put every 0.5 s
# (``runtime.membership``). One value a key; a killed engine's entry, never deleted, leaves
# after an hour.
ENGINES = BucketSpec("dagnats_engines", ttl=3600.0)

CACHE_BUCKET = "task_cache"  # the step cache (ours: Go has none), runtime.cache
CACHE_MAX_SHARE = 0.10  # the cache's byte limit never takes more of max_store_bytes


def cache_bucket(
    ttl: float, max_bytes: int, streams: tuple[StreamSpec, ...], max_store_bytes: int | None
) -> BucketSpec:
    """The step cache's bucket: ``ttl`` seconds a value, at most ``max_bytes``, its oldest
    values dropped when full. NATS reserves a byte limit in the store, so the limit is also
    kept within what ``streams`` (their limits resolved) leave of ``max_store_bytes``, and
    within ``CACHE_MAX_SHARE`` of it (see :func:`cache_limit`)."""
    limit = cache_limit(max_bytes, streams, max_store_bytes)
    return BucketSpec(CACHE_BUCKET, ttl=ttl, max_bytes=limit, discard="old")


def cache_limit(
    max_bytes: int, streams: tuple[StreamSpec, ...], max_store_bytes: int | None
) -> int:
    """``max_bytes``, or less when the store budget has not the room (at least 64 KiB)."""
    budget = max_store_bytes or DEFAULT_STORE_BYTES
    taken = sum(s.max_bytes or 0 for s in streams if s.storage == "file")
    room = min(budget - taken, int(budget * CACHE_MAX_SHARE))
    return max(64 * 1024, min(max_bytes, room))


def streams_for(
    runs_max_age: float | None = HISTORY_MAX_AGE,
    history_max_bytes: int | None = None,
    max_store_bytes: int | None = None,
) -> tuple[StreamSpec, ...]:
    """The stream declarations with the limits a user configured, byte limits resolved.

    ``runs_max_age`` (seconds) and ``history_max_bytes`` bound WORKFLOW_HISTORY, None or 0
    for no limit (``runs_max_age``'s setting defaults to Go's 720h itself). The other byte
    limits are shares of ``max_store_bytes`` (default 10 GiB). NATS reserves every byte limit
    in the store and refuses a stream whose limit does not fit: when ``history_max_bytes``
    leaves the shares too little room, they give it up in proportion.
    """
    budget = max_store_bytes or DEFAULT_STORE_BYTES
    specs = []
    for spec in _DECLARED:
        if spec.name == protocol.HISTORY_STREAM:
            spec = replace(spec, max_age=runs_max_age or None, max_bytes=history_max_bytes or None)
        specs.append(spec)
    fixed = sum(s.max_bytes or 0 for s in specs if s.storage == "file" and not s.store_share)
    shares = sum(s.store_share or 0.0 for s in specs)
    scale = min(1.0, max(0.0, budget - fixed) / (shares * budget))
    return tuple(_resolved(s, budget, scale) for s in specs)


def _resolved(spec: StreamSpec, budget: int, scale: float) -> StreamSpec:
    if not spec.store_share:
        return spec
    if scale >= 1.0:  # Go's int64(float64(budget) * fraction), to the byte
        return replace(spec, max_bytes=int(budget * spec.store_share))
    return replace(spec, max_bytes=max(MIN_STREAM_BYTES, int(budget * spec.store_share * scale)))


STREAMS: tuple[StreamSpec, ...] = streams_for()  # at the default store budget
