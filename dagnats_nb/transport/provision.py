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

- existing KV buckets and the object store first get the wanted replica count (creating a
  bucket again with another count is refused: "already in use with a different
  configuration"), so a deployment moving to a cluster updates them in place;
- then every stream is created or updated to the spec, every bucket and the object store
  created;
- a replica count the server cannot place is one ConfigError naming
  ``nats_jetstream_replicas``; a stream update the server refuses (e.g. a retention
  change) is one ConfigError naming the stream.
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
# suitable peers for placement" (10005).
_CANNOT_PLACE = (10074, 10005)


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
        await _set_replicas(js, [infos[n] for n in mine if _is_store(n)], replicas)
        await _ensure_streams(js, streams, infos, mine, replicas, where)
        await _ensure_stores(js, buckets, infos, replicas)
    except APIError as exc:
        if exc.err_code not in _CANNOT_PLACE:
            raise
        raise ConfigError(
            f"nats_jetstream_replicas = {replicas}: NATS at {where} cannot place {replicas} "
            f"replicas ({exc.description}); use 1 on a single server, at most the number of "
            "servers of a cluster"
        ) from None


def _store_names(buckets: tuple[BucketSpec, ...]) -> list[str]:
    return [b.stream for b in buckets] + [f"OBJ_{protocol.PAYLOAD_BUCKET}"]


def _is_store(name: str) -> bool:
    return name.startswith(("KV_", "OBJ_"))


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


async def _set_replicas(
    js: JetStreamContext, infos: list[js_api.StreamInfo], replicas: int
) -> None:
    """Give our existing KV buckets and object store ``replicas``."""
    for info in infos:
        if info.config.num_replicas != replicas:
            info.config.num_replicas = replicas
            await js.update_stream(_with_mark(info.config))


async def _ensure_streams(
    js: JetStreamContext,
    streams: tuple[StreamSpec, ...],
    infos: dict[str, js_api.StreamInfo],
    mine: set[str],
    replicas: int,
    where: str,
) -> None:
    for spec in streams:
        cfg = _with_mark(spec.config(replicas))
        info = infos.get(spec.name)
        if info is None:
            await js.add_stream(cfg)
        elif spec.name in mine:
            try:
                await js.update_stream(cfg)
            except BadRequestError as e:  # e.g. a retention change the server refuses
                raise ConfigError(
                    f"stream {spec.name} cannot be updated: {e.description}"
                ) from None
        else:
            _check_adoptable(spec, info.config, where)


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


async def _ensure_stores(
    js: JetStreamContext,
    buckets: tuple[BucketSpec, ...],
    infos: dict[str, js_api.StreamInfo],
    replicas: int,
) -> None:
    """Create the missing KV buckets and object store, with our mark; existing ones (ours
    already updated, others adopted) are left as they are."""
    for bucket in buckets:
        if bucket.stream in infos:
            continue
        await js.create_key_value(
            bucket=bucket.name,
            ttl=bucket.ttl,
            history=bucket.history,
            storage=js_api.StorageType(bucket.storage),
            replicas=replicas,
        )
        await _mark(js, bucket.stream)
    if f"OBJ_{protocol.PAYLOAD_BUCKET}" not in infos:
        await js.create_object_store(protocol.PAYLOAD_BUCKET, replicas=replicas)
        await _mark(js, f"OBJ_{protocol.PAYLOAD_BUCKET}")


async def _mark(js: JetStreamContext, name: str) -> None:
    info = await js.stream_info(name)
    await js.update_stream(_with_mark(info.config))
