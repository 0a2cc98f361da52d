"""Provisioning: the streams, KV buckets and payload object store that ``wire.resources``
declares, created on the server, updated to their declaration when they are ours, adopted
as they are when they are someone else's.

One boot path, :func:`ensure_resources`, for a single server and a cluster alike.

**Never alter what we did not create.** A stream, bucket or object store is *ours* when
the engine runs the server itself (the embedded one: its data dir is ours), or when it
carries our mark (stream metadata ``dagnats-nb.owner``, set on everything we create).
Anything else that exists — a Go dagnats deployment's streams, an operator's — is adopted:
never updated, its replicas never changed. If it would break correctness (another
retention, a subject we publish on missing) the start is refused with one line naming the
stream, the field, both values and what to do. What is missing is created, with the mark.

For ours:

- every stream and KV bucket is created or updated to its declaration (``wire.resources``:
  the Go engine's defaults), so a data dir made with other defaults, or a deployment moving
  to a cluster, is brought in line in place at start. Every such update is one NATS allows
  on a stream of ours (limits, dedup window, discard policy, ``allow_atomic``, direct gets,
  replicas; never retention or storage), except turning per-message TTLs off: nats-py
  created our buckets with them, NATS cannot take them back, so they stay on. An update
  that drops stored messages (a tighter limit) says how many in a warning;
- the object store is created, or given the wanted replica count;
- a replica count the server cannot place is one ConfigError naming
  ``nats_jetstream_replicas``, limits the server has not the storage for one naming
  ``max_store_bytes``; a stream update the server refuses (e.g. a retention change) is one
  ConfigError naming the stream.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, BadRequestError, NotFoundError

from dagnats_nb.errors import ConfigError
from dagnats_nb.wire import protocol
from dagnats_nb.wire.resources import BUCKETS, STREAMS, BucketSpec, StreamSpec

__all__ = ["OWNER_KEY", "ensure_resources"]

log = logging.getLogger("dagnats_nb.transport.provision")

OWNER_KEY = "dagnats-nb.owner"  # stream metadata on everything dagnats-nb creates
OWNER = "dagnats-nb"

# JetStream error codes: "replicas > 1 not supported in non-clustered mode" (10074), "no
# suitable peers for placement" (10005), "insufficient storage resources available" (10047:
# the byte limits, which NATS reserves, do not fit the server's store).
_CANNOT_PLACE = (10074, 10005)
_NO_STORAGE = 10047


async def ensure_resources(
    js: JetStreamContext,
    streams: tuple[StreamSpec, ...] = STREAMS,
    replicas: int = 1,
    where: str = "this server",
    buckets: tuple[BucketSpec, ...] = BUCKETS,
    *,
    owned: bool = True,
) -> None:
    """Create what is missing, update what is ours, adopt what is not (see the module
    docstring); ``owned``: the engine runs this server, so everything on it is ours."""
    try:
        infos = await _existing(js, streams, buckets)
        mine = {name for name, info in infos.items() if owned or _marked(info)}
        level = await _api_level(js)
        configs = [(s.config(replicas, level), s) for s in streams]
        configs += [(b.config(replicas), None) for b in buckets]
        for cfg, spec in configs:
            await _ensure_stream(js, cfg, infos.get(cfg.name), cfg.name in mine, spec, where)
        await _ensure_object_store(js, infos, mine, replicas)
    except APIError as exc:
        if exc.err_code == _NO_STORAGE:
            raise ConfigError(
                f"NATS at {where} has not the storage for the streams' byte limits "
                f"({exc.description}): they are shares of max_store_bytes, which must not "
                "exceed what the server offers (its max_file_store); lower it, or lower "
                "history_max_bytes"
            ) from None
        if exc.err_code not in _CANNOT_PLACE:
            raise
        raise ConfigError(
            f"nats_jetstream_replicas = {replicas}: NATS at {where} cannot place {replicas} "
            f"replicas ({exc.description}); use 1 on a single server, at most the number of "
            "servers of a cluster"
        ) from None


async def _api_level(js: JetStreamContext) -> int:
    """The server's JetStream API level (2 from nats-server 2.12: ``allow_atomic``)."""
    return getattr((await js.account_info()).api, "level", None) or 0


def _store_names(buckets: tuple[BucketSpec, ...]) -> list[str]:
    return [b.stream for b in buckets] + [f"OBJ_{protocol.PAYLOAD_BUCKET}"]


async def _existing(
    js: JetStreamContext, streams: tuple[StreamSpec, ...], buckets: tuple[BucketSpec, ...]
) -> dict[str, js_api.StreamInfo]:
    """The streams (KV and object stores included) of the layout that exist now."""
    out = {}
    for name in [s.name for s in streams] + _store_names(buckets):
        try:
            out[name] = await js.stream_info(name)
        except NotFoundError:
            continue
    return out


def _marked(info: js_api.StreamInfo) -> bool:
    return (info.config.metadata or {}).get(OWNER_KEY) == OWNER


def _with_mark(cfg: js_api.StreamConfig) -> js_api.StreamConfig:
    cfg.metadata = {**(cfg.metadata or {}), OWNER_KEY: OWNER}
    return cfg


async def _ensure_stream(
    js: JetStreamContext,
    cfg: js_api.StreamConfig,
    info: js_api.StreamInfo | None,
    mine: bool,
    spec: StreamSpec | None,
    where: str,
) -> None:
    """Create the stream (or KV bucket) ``cfg`` with our mark, update it when it is ours,
    adopt it when it is not (a stream checked against ``spec``; a bucket as it is)."""
    cfg = _with_mark(cfg)
    if info is None:
        await js.add_stream(cfg)
    elif mine:
        if info.config.allow_msg_ttl:
            cfg.allow_msg_ttl = True  # NATS: "message TTL status can not be disabled"
        try:
            after = await js.update_stream(cfg)
        except BadRequestError as e:  # e.g. a retention change the server refuses
            raise ConfigError(f"stream {cfg.name} cannot be updated: {e.description}") from None
        _tell_dropped(info, after)
    elif spec is not None:
        _check_adoptable(spec, info.config, where)
    else:  # a bucket of another deployment: adopted as it is when a KV bucket can use it
        _check_adoptable(StreamSpec(cfg.name, tuple(cfg.subjects or ())), info.config, where)


def _tell_dropped(before: js_api.StreamInfo, after: js_api.StreamInfo) -> None:
    """Warn when an update's tighter limits dropped stored messages (a work queue is left
    out: a worker may have taken a task meanwhile)."""
    if before.config.retention == js_api.RetentionPolicy.WORK_QUEUE:
        return
    dropped = (before.state.messages or 0) - (after.state.messages or 0)
    if dropped > 0:
        cfg = after.config
        keep = (
            "; runs_max_age: 0 and history_max_bytes: 0 keep it all"
            if cfg.name == protocol.HISTORY_STREAM
            else ""
        )
        log.warning(
            "stream %s: its limits, applied at start (max_age %ss, max_bytes %s), dropped "
            "%d stored messages (%d bytes)%s",
            cfg.name,
            cfg.max_age,
            cfg.max_bytes,
            dropped,
            (before.state.bytes or 0) - (after.state.bytes or 0),
            keep,
        )


def _check_adoptable(spec: StreamSpec, have: js_api.StreamConfig, where: str) -> None:
    """Refuse, in one line, a stream of another deployment that dagnats cannot work on."""
    retention = str(getattr(have.retention, "value", have.retention) or "limits")
    if retention != spec.retention:
        raise ConfigError(
            f"stream {spec.name} on NATS at {where} has retention {retention}, dagnats needs "
            f"{spec.retention}; it belongs to another deployment and is left as it is: fix it "
            "there, or point nats_url at another server"
        )
    subjects = set(have.subjects or ())
    missing = [s for s in spec.subjects if s not in subjects and ">" not in subjects]
    if missing:
        raise ConfigError(
            f"stream {spec.name} on NATS at {where} has subjects {sorted(subjects)}, dagnats "
            f"needs {list(spec.subjects)}; it belongs to another deployment and is left as it "
            "is: fix it there, or point nats_url at another server"
        )
    if spec.max_age and have.max_age and abs(have.max_age - spec.max_age) > 1:
        log.warning(
            "adopting stream %s of another deployment as it is: max_age %ss (ours would be %ss)",
            spec.name,
            have.max_age,
            spec.max_age,
        )


async def _ensure_object_store(
    js: JetStreamContext, infos: dict[str, js_api.StreamInfo], mine: set[str], replicas: int
) -> None:
    """Create the payload object store with our mark, or give ours ``replicas``."""
    name = f"OBJ_{protocol.PAYLOAD_BUCKET}"
    info = infos.get(name)
    if info is None:
        await js.create_object_store(protocol.PAYLOAD_BUCKET, replicas=replicas)
        info = await js.stream_info(name)
    elif name not in mine or (info.config.num_replicas == replicas and _marked(info)):
        return
    info.config.num_replicas = replicas
    await js.update_stream(_with_mark(info.config))
