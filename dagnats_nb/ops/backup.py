"""Stream backup and restore through the JetStream snapshot/restore API (no external CLI).

nats-py has no snapshot API, so this module speaks the messages of ``shared/BACKUP.md``
directly: ``$JS.API.STREAM.SNAPSHOT.<stream>`` (chunks to an inbox, each full chunk acked on
its reply subject, an empty 204 message at the end) and ``$JS.API.STREAM.RESTORE.<stream>``
(the data file published in pieces to the deliver subject, each piece answered, an empty
EOF answered with the created stream).

On-disk layout, identical to ``nats stream backup STREAM DIR`` (one folder per stream)::

    DIR/                       mode 0700
      WORKFLOW_HISTORY/        mode 0700
        backup.json            {"config": ..., "state": ...} of the snapshot (indented), 0600
        stream.tar.s2          the snapshot chunks as received (S2-compressed archive), 0600
      TASK_QUEUES/ ...

- A stream's folder is written as ``DIR/.<STREAM>.partial-<pid>`` and renamed into place
  only once the server has sent the whole snapshot (``backup.json`` is written last, through
  a temporary file): a failed backup leaves no folder that looks complete. An existing
  ``DIR/<STREAM>`` folder is never overwritten (the backup refuses before it starts).
- Restore accepts the data file named ``stream.tar.s2`` (today's nats CLI) or
  ``stream.arc.s2`` (a later jsm.go) and refuses a folder that has both.
- KV and object-store buckets (``KV_*``, ``OBJ_*``) are snapshotted with
  ``no_consumers: true`` (a watcher's temporary consumer must not come back); other streams
  keep their durable consumers (``TASK_QUEUES``' ``worker-<task>`` with their ack state).

Restore checks a folder fully before it touches the server: ``backup.json`` readable, its
``config.name`` equal to the folder name, one data file, non-empty, and its S2 framing whole
(a truncated file is refused here). The server checks the rest (a corrupt archive is refused
when the EOF is answered); then a half-created stream is deleted. With ``force`` an existing
stream is first snapshotted to a safety copy, then deleted and restored; if the server
refuses the backup, the safety copy is restored, so a bad backup never destroys a stream.
Remaining risk: if the process or the server dies between the delete and the end of the
restore, the stream is gone (its safety copy stays in the scratch folder named in the error).

Consistency of a live engine (BACKUP.md caveat): messages appended after a snapshot starts
are excluded, but removals are not isolated. ``WORKFLOW_HISTORY`` only appends, so its backup
is a consistent cut; ``TASK_QUEUES`` is a work queue whose acks during the snapshot leave
gaps, and streams are snapshotted one after another. For an exact copy, back up a stopped
engine (``dagnats backup`` then starts the server alone); a live backup is like a crash: after
restore a task may run again (at-least-once), which the engine already tolerates.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dagnats_nb.errors import BackupError
from dagnats_nb.server.files import fsync_dir, make_private_dir, write_private
from dagnats_nb.transport import api as jetstream_api

__all__ = [
    "DATA_NAMES",
    "DEFAULT_STREAMS",
    "StreamResult",
    "backup_streams",
    "results_frame",
]

# The set plus the payload object store: a run's values larger than one message live
# there as ``$ref``s, and a history restored without them could not rebuild those runs.
DEFAULT_STREAMS = (
    "WORKFLOW_HISTORY",
    "TASK_QUEUES",
    "KV_workflow_defs",
    "KV_workflow_runs",
    "OBJ_payloads",
)
DATA_NAMES = ("stream.tar.s2", "stream.arc.s2")
BACKUP_JSON = "backup.json"
CHUNK_SIZE = 128 * 1024  # snapshot chunk size asked of the server (1 KiB - 1 MiB)
PIECE_SIZE = 64 * 1024  # restore piece size
WINDOW = 8  # restore pieces in flight
IDLE_TIMEOUT = 10.0  # seconds without a chunk / an answer before giving up
MB = 1_000_000

Progress = Callable[[str, int, int], None]
_S2_MAGIC = b"\xff\x06\x00\x00S2sTwO"


@dataclass(slots=True)
class StreamResult:
    """One stream's backup or restore: its size and sequences, time taken and speed.

    ``bytes`` is the stream's stored size (state.bytes), ``file_bytes`` the data file's;
    ``mb_per_s`` is ``bytes`` / 10^6 per second."""

    stream: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    seconds: float
    mb_per_s: float
    file_bytes: int
    path: str


def results_frame(rows: Iterable[StreamResult]):
    """The results as a pandas DataFrame, one row per stream."""
    import pandas as pd

    cols = list(StreamResult.__dataclass_fields__)
    return pd.DataFrame([asdict(r) for r in rows], columns=cols)


def api_prefix(domain: str | None = None) -> str:
    """``$JS.API``, or ``$JS.<domain>.API`` for a JetStream domain."""
    return jetstream_api.api_prefix(domain)


def _check_name(name: str) -> str:
    if not name or any(c in name for c in " .*>/\\\t\r\n") or name.startswith("-"):
        raise BackupError(
            f"stream name {name!r} is not valid: use a JetStream stream name such as "
            "WORKFLOW_HISTORY (no spaces, dots, wildcards or slashes)"
        )
    return name


def _progress_call(progress: Progress | None, stream: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stream, done, total)


async def _api(nc, subject: str, body: dict[str, Any] | bytes, timeout: float = 10.0) -> dict:
    """A JetStream API request; the decoded reply (``error`` key included, not raised)."""
    try:
        return await jetstream_api.js_api(nc, subject, body, prefix="", timeout=timeout)
    except jetstream_api.JetStreamAPIError as exc:
        if exc.reply is None:  # no answer, a late or a non-JSON one
            raise BackupError(str(exc)) from None
        return exc.reply


def _api_error(resp: dict) -> str | None:
    return jetstream_api.error_text(resp)


async def stream_exists(nc, name: str, api: str = "$JS.API") -> bool:
    try:
        return await jetstream_api.stream_exists(nc, name, prefix=api)
    except jetstream_api.JetStreamAPIError as exc:
        why = _api_error(exc.reply) if exc.reply else str(exc)
        raise BackupError(f"stream {name}: info failed: {why}") from None


async def delete_stream(nc, name: str, api: str = "$JS.API") -> None:
    try:
        await jetstream_api.delete_stream(nc, name, prefix=api)
    except jetstream_api.JetStreamAPIError as exc:
        why = _api_error(exc.reply) if exc.reply else str(exc)
        raise BackupError(f"stream {name}: delete failed: {why}") from None


# -- backup ----------------------------------------------------------------------------------


async def backup_streams(
    nc,
    dir: str | os.PathLike,
    streams: Iterable[str] | None = None,
    progress: Progress | None = None,
    *,
    api: str = "$JS.API",
    chunk_size: int = CHUNK_SIZE,
) -> list[StreamResult]:
    """Snapshot each stream (default :data:`DEFAULT_STREAMS`) to ``dir/<STREAM>/``.

    ``progress(stream, done_bytes, total_bytes)`` is called at the start (done 0), after
    each chunk and exactly once with done == total, at the end. While the snapshot runs,
    total is the stream's stored size, an estimate of the (compressed) data file's size."""
    names = [_check_name(s) for s in (streams or DEFAULT_STREAMS)]
    if len(set(names)) != len(names):
        raise BackupError(f"streams {names}: a stream is named twice; name each once")
    root = Path(dir).expanduser()
    for name in names:
        if (root / name).exists():
            raise BackupError(
                f"backup folder {root / name} already exists: choose an empty directory "
                "or remove that folder"
            )
    _make_private_dir(root)
    out = []
    for name in names:
        out.append(await backup_stream(nc, name, root, progress, api=api, chunk_size=chunk_size))
    return out


async def backup_stream(
    nc,
    name: str,
    root: Path,
    progress: Progress | None = None,
    *,
    api: str = "$JS.API",
    chunk_size: int = CHUNK_SIZE,
    no_consumers: bool | None = None,
) -> StreamResult:
    """Snapshot one stream to ``root/<name>/`` (see :func:`backup_streams`)."""
    _check_name(name)
    final = root / name
    if final.exists():
        raise BackupError(f"backup folder {final} already exists: remove it or choose another")
    if no_consumers is None:
        no_consumers = name.startswith(("KV_", "OBJ_"))
    partial = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    _make_private_dir(partial)
    started = time.perf_counter()
    try:
        data_path = partial / DATA_NAMES[0]
        meta, size = await _snapshot(nc, name, data_path, progress, api, chunk_size, no_consumers)
        doc = {"config": meta.get("config", {}), "state": meta.get("state", {})}
        write_private(partial / BACKUP_JSON, json.dumps(doc, indent=2).encode(), fsync=True)
        fsync_dir(partial)
        os.rename(partial, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return _result(name, doc["state"], started, size, final)


async def _snapshot(
    nc, name: str, path: Path, progress, api: str, chunk_size: int, no_consumers: bool
) -> tuple[dict, int]:
    inbox = nc.new_inbox()
    # No pending limits: a dropped chunk would silently corrupt the backup.
    sub = await nc.subscribe(inbox, pending_msgs_limit=-1, pending_bytes_limit=-1)
    try:
        req = {"deliver_subject": inbox, "no_consumers": no_consumers, "chunk_size": chunk_size}
        resp = await _api(nc, f"{api}.STREAM.SNAPSHOT.{name}", req)
        err = resp.get("error")
        if err:
            if err.get("err_code") == 10059 or err.get("code") == 404:
                raise BackupError(
                    f"stream {name} does not exist: list streams with `dagnats stats streams`"
                )
            raise BackupError(f"stream {name}: snapshot refused: {_api_error(resp)}")
        total = int((resp.get("state") or {}).get("bytes") or 0)
        _progress_call(progress, name, 0, total)
        size = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as file:
            while True:
                try:
                    msg = await sub.next_msg(timeout=IDLE_TIMEOUT)
                except TimeoutError:
                    raise BackupError(
                        f"stream {name}: no snapshot data for {IDLE_TIMEOUT:g} s; try again"
                    ) from None
                if not msg.data:
                    status = (msg.headers or {}).get("Status")
                    if status in (None, "204"):
                        break
                    desc = (msg.headers or {}).get("Description", "")
                    raise BackupError(
                        f"stream {name}: the server aborted the snapshot ({status} {desc}); "
                        "try again"
                    )
                file.write(msg.data)
                size += len(msg.data)
                if msg.reply:  # a full chunk: free window space (no ack for 5 s aborts)
                    await nc.publish(msg.reply, b"")
                _progress_call(progress, name, size, max(total, size + 1))
            file.flush()
            os.fsync(file.fileno())
        _progress_call(progress, name, size, size)
        return resp, size
    finally:
        with contextlib.suppress(Exception):  # connection gone: nothing to unsubscribe
            await sub.unsubscribe()


# -- restore ---------------------------------------------------------------------------------


def _why(msg) -> str:
    try:
        resp = json.loads(msg.data)
    except ValueError:
        return msg.data[:200].decode(errors="replace")
    return _api_error(resp) or str(resp)[:200]


# -- helpers ---------------------------------------------------------------------------------


def _result(name: str, state: dict, started: float, size: int, path: Path) -> StreamResult:
    seconds = max(time.perf_counter() - started, 1e-9)
    nbytes = int(state.get("bytes") or 0)
    return StreamResult(
        stream=name,
        messages=int(state.get("messages") or 0),
        bytes=nbytes,
        first_seq=int(state.get("first_seq") or 0),
        last_seq=int(state.get("last_seq") or 0),
        seconds=round(seconds, 4),
        mb_per_s=round(nbytes / MB / seconds, 2),
        file_bytes=size,
        path=str(path),
    )


def _make_private_dir(path: Path) -> None:
    try:
        make_private_dir(path)
    except OSError as exc:
        raise BackupError(f"backup folder {path}: cannot create it ({exc.strerror})") from None
