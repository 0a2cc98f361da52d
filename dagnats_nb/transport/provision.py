"""Provisioning: the streams, KV buckets and payload object store that ``wire.resources``
declares, created on the server or updated to their declaration.

One boot path, :func:`ensure_resources`, for a single server and a cluster alike:

- existing KV buckets and the object store first get the wanted replica count (creating a
  bucket again with another count is refused: "already in use with a different
  configuration"), so a deployment moving to a cluster updates them in place;
- then every stream is created or updated, every bucket and the object store created (an
  existing one with the same configuration is left as it is);
- a replica count the server cannot place is one ConfigError naming
  ``nats_jetstream_replicas``; a stream update the server refuses (e.g. a retention
  change) is one RuntimeError naming the stream.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, BadRequestError, NotFoundError

from dagnats_nb.errors import ConfigError
from dagnats_nb.wire import protocol
from dagnats_nb.wire.resources import BUCKETS, STREAMS, BucketSpec, StreamSpec

__all__ = ["ensure_resources"]

# JetStream error codes: "replicas > 1 not supported in non-clustered mode" (10074), "no
# suitable peers for placement" (10005).
_CANNOT_PLACE = (10074, 10005)


async def ensure_resources(
    js: JetStreamContext,
    streams: tuple[StreamSpec, ...] = STREAMS,
    replicas: int = 1,
    where: str = "this server",
    buckets: tuple[BucketSpec, ...] = BUCKETS,
) -> None:
    """Create every stream, bucket and the payload object store with ``replicas``, or update
    them to the spec (see the module docstring)."""
    try:
        await _set_replicas(js, buckets, replicas)
        await _ensure(js, streams, buckets, replicas)
    except APIError as exc:
        if exc.err_code not in _CANNOT_PLACE:
            raise
        raise ConfigError(
            f"nats_jetstream_replicas = {replicas}: NATS at {where} cannot place {replicas} "
            f"replicas ({exc.description}); use 1 on a single server, at most the number of "
            "servers of a cluster"
        ) from None


async def _set_replicas(
    js: JetStreamContext, buckets: tuple[BucketSpec, ...], replicas: int
) -> None:
    """Give existing KV buckets and the payload object store ``replicas``."""
    for name in [b.stream for b in buckets] + [f"OBJ_{protocol.PAYLOAD_BUCKET}"]:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            continue
        if info.config.num_replicas != replicas:
            info.config.num_replicas = replicas
            await js.update_stream(info.config)


async def _ensure(
    js: JetStreamContext,
    streams: tuple[StreamSpec, ...],
    buckets: tuple[BucketSpec, ...],
    replicas: int,
) -> None:
    for spec in streams:
        cfg = spec.config(replicas)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(cfg)
        else:
            try:
                await js.update_stream(cfg)
            except BadRequestError as e:  # e.g. a retention change the server refuses
                raise RuntimeError(f"stream {spec.name} cannot be updated: {e.description}") from e
    for bucket in buckets:
        await js.create_key_value(
            bucket=bucket.name,
            ttl=bucket.ttl,
            history=bucket.history,
            storage=js_api.StorageType(bucket.storage),
            replicas=replicas,
        )
    try:
        await js.object_store(protocol.PAYLOAD_BUCKET)
    except NotFoundError:
        await js.create_object_store(protocol.PAYLOAD_BUCKET, replicas=replicas)
