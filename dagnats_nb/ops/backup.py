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
import tempfile
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
    "check_backup",
    "check_s2_framing",
    "restore_streams",
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


def check_backup(folder: str | os.PathLike, name: str | None = None) -> tuple[dict, Path]:
    """Check a stream's backup folder without the server: the ``backup.json`` document and
    the data file's path. Raises :class:`BackupError` naming what is wrong."""
    folder = Path(folder).expanduser()
    name = name or folder.name
    if not folder.is_dir():
        raise BackupError(f"backup folder {folder} not found: pass the directory `backup` wrote")
    meta = folder / BACKUP_JSON
    try:
        doc = json.loads(meta.read_bytes())
    except FileNotFoundError:
        raise BackupError(f"{meta} is missing: the backup of {name} is incomplete") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{meta} is not readable JSON ({exc}): take the backup again") from None
    cfg = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(cfg, dict) or not isinstance(doc.get("state", {}), dict):
        raise BackupError(f"{meta} has no config object: it is not a stream backup")
    if cfg.get("name") != name:
        raise BackupError(
            f"{meta} is the backup of stream {cfg.get('name')!r}, not {name!r}: the folder "
            "must be named after its stream"
        )
    found = [folder / n for n in DATA_NAMES if (folder / n).exists()]
    if len(found) > 1:
        raise BackupError(
            f"{folder} holds both {DATA_NAMES[0]} and {DATA_NAMES[1]}: keep only the one "
            "that belongs to backup.json"
        )
    if not found:
        raise BackupError(f"{folder} has no {DATA_NAMES[0]}: the backup of {name} is incomplete")
    data = found[0]
    if data.stat().st_size == 0:
        raise BackupError(f"{data} is empty: the backup of {name} is incomplete")
    problem = check_s2_framing(data)
    if problem:
        raise BackupError(f"{data} is damaged ({problem}): restore another backup")
    return doc, data


def check_s2_framing(path: str | os.PathLike) -> str | None:
    """What is wrong with the S2 stream framing of a snapshot file (None when whole).

    Walks the chunk headers only (no decompression): it finds a truncated or padded file and
    a damaged header, not flipped bytes inside a chunk (the server finds those)."""
    with open(path, "rb") as file:
        head = file.read(len(_S2_MAGIC))
        if head != _S2_MAGIC:
            return "it does not start with the S2 stream identifier"
        size = os.fstat(file.fileno()).st_size
        pos = len(_S2_MAGIC)
        while pos < size:
            file.seek(pos)
            header = file.read(4)
            if len(header) < 4:
                return f"truncated chunk header at byte {pos}"
            kind, length = header[0], int.from_bytes(header[1:4], "little")
            if 0x02 <= kind <= 0x7F:
                return f"unknown chunk type {kind:#x} at byte {pos}"
            if kind == 0xFF and length != 6:
                return f"bad stream identifier at byte {pos}"
            pos += 4 + length
            if pos > size:
                return f"truncated: a chunk at byte {pos - 4 - length} ends past the file's end"
    return None


async def restore_streams(
    nc,
    dir: str | os.PathLike,
    force: bool = False,
    progress: Progress | None = None,
    *,
    streams: Iterable[str] | None = None,
    api: str = "$JS.API",
    scratch: str | os.PathLike | None = None,
) -> list[StreamResult]:
    """Restore every stream backed up in ``dir`` (or only ``streams``).

    Each folder is checked first (:func:`check_backup`); all are checked before any is
    restored. A stream that exists is refused unless ``force``; with ``force`` it is first
    saved to a safety copy under ``scratch`` (default: a temp dir), which is restored back
    if the server refuses the backup. ``progress(stream, done, total)`` counts data file
    bytes sent (done == total once, when the server has ingested the stream)."""
    plan = await plan_restore(nc, dir, force, streams, api)
    return await run_restore(nc, plan, progress, api, scratch)


@dataclass(slots=True)
class RestorePlan:
    """Checked backup folders (name, backup.json document, data file) and which exist."""

    items: list[tuple[str, dict, Path]]
    existing: list[str]


async def plan_restore(
    nc,
    dir: str | os.PathLike,
    force: bool = False,
    streams: Iterable[str] | None = None,
    api: str = "$JS.API",
) -> RestorePlan:
    """Check every folder and refuse existing streams without ``force``; changes nothing."""
    root = Path(dir).expanduser()
    if not root.is_dir():
        raise BackupError(f"backup directory {root} not found: pass the directory `backup` wrote")
    if streams:
        names = [_check_name(s) for s in streams]
    else:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise BackupError(f"{root} holds no stream backup folders: is it a backup directory?")
    items = [(name, *check_backup(root / name, name)) for name in names]
    existing = [name for name in names if await stream_exists(nc, name, api)]
    if existing and not force:
        verb = "exist" if len(existing) > 1 else "exists"
        raise BackupError(
            f"stream{'s' if len(existing) > 1 else ''} {', '.join(existing)} already {verb}: "
            "restore with force (--force) to replace, or into a fresh data dir"
        )
    return RestorePlan(items, existing)


async def run_restore(
    nc,
    plan: RestorePlan,
    progress: Progress | None = None,
    api: str = "$JS.API",
    scratch: str | os.PathLike | None = None,
) -> list[StreamResult]:
    """Restore the streams of a :func:`plan_restore` one after another."""
    out = []
    for name, doc, data in plan.items:
        if name in plan.existing:
            out.append(await _replace(nc, name, doc, data, progress, api, scratch))
        else:
            out.append(await restore_stream(nc, name, doc, data, progress, api=api))
    return out


async def _replace(nc, name, doc, data, progress, api, scratch) -> StreamResult:
    """Restore over an existing stream, keeping a safety copy until the restore succeeded."""
    base = Path(scratch) if scratch else Path(tempfile.gettempdir())
    _make_private_dir(base)
    safety = Path(tempfile.mkdtemp(prefix=f"dagnats-safety-{name}-", dir=base))
    try:
        await backup_stream(nc, name, safety, api=api)
        saved_doc, saved_data = check_backup(safety / name, name)
        await delete_stream(nc, name, api)
        try:
            result = await restore_stream(nc, name, doc, data, progress, api=api)
        except BackupError as exc:
            try:
                await restore_stream(nc, name, saved_doc, saved_data, api=api)
            except BaseException as again:
                keep = safety
                safety = None  # keep the copy: it is the only one left
                raise BackupError(
                    f"stream {name}: restore failed ({exc}) and putting the old stream back "
                    f"failed too ({again}); its copy is in {keep / name}"
                ) from None
            raise BackupError(f"{exc}; the existing stream {name} was put back unchanged") from None
    finally:
        if safety is not None:
            shutil.rmtree(safety, ignore_errors=True)
    return result


async def restore_stream(
    nc,
    name: str,
    doc: dict,
    data: Path,
    progress: Progress | None = None,
    *,
    api: str = "$JS.API",
) -> StreamResult:
    """Restore one checked backup (``doc`` = backup.json, ``data`` = its data file) into a
    stream that does not exist. On failure, a stream the server created is deleted."""
    started = time.perf_counter()
    resp = await _api(nc, f"{api}.STREAM.RESTORE.{name}", doc)
    err = resp.get("error")
    if err:
        if err.get("err_code") == 10130:
            raise BackupError(
                f"stream {name} already exists: restore with force (--force) to replace it"
            )
        raise BackupError(f"stream {name}: restore refused: {_api_error(resp)}")
    deliver = resp.get("deliver_subject")
    if not deliver:
        raise BackupError(f"stream {name}: the restore answer has no deliver_subject")
    try:
        final = await _send(nc, name, deliver, data, progress)
    except BaseException:
        try:  # never leave a half-restored stream behind
            if await stream_exists(nc, name, api):
                await delete_stream(nc, name, api)
        except Exception:
            pass
        raise
    size = data.stat().st_size
    return _result(name, final.get("state") or {}, started, size, data.parent)


async def _send(nc, name: str, deliver: str, data: Path, progress) -> dict:
    total = data.stat().st_size
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_msgs_limit=-1, pending_bytes_limit=-1)
    outstanding = 0

    async def answer() -> None:
        nonlocal outstanding
        try:
            msg = await sub.next_msg(timeout=IDLE_TIMEOUT)
        except TimeoutError:
            raise BackupError(
                f"stream {name}: the server stopped answering restore pieces; try again"
            ) from None
        outstanding -= 1
        status = (msg.headers or {}).get("Status")
        if status:
            raise BackupError(f"stream {name}: the server dropped the restore (status {status})")
        if msg.data:
            raise BackupError(f"stream {name}: the server refused the backup data: {_why(msg)}")

    try:
        _progress_call(progress, name, 0, total)
        done = 0
        with open(data, "rb") as file:
            while piece := file.read(PIECE_SIZE):
                while outstanding >= WINDOW:
                    await answer()
                await nc.publish(deliver, piece, reply=inbox)
                outstanding += 1
                done += len(piece)
                _progress_call(progress, name, min(done, total - 1), total)
        while outstanding:
            await answer()
        import nats.errors

        timeout = max(60.0, total / (5 * MB))  # ingest of the whole archive happens now
        try:
            msg = await nc.request(deliver, b"", timeout=timeout)
        except nats.errors.NoRespondersError:
            raise BackupError(f"stream {name}: the server dropped the restore; try again") from None
        except nats.errors.TimeoutError:
            raise BackupError(
                f"stream {name}: the server did not finish the restore within {timeout:g} s"
            ) from None
        if not msg.data:
            raise BackupError(f"stream {name}: the server answered the restore's end empty")
        final = json.loads(msg.data)
        if final.get("error"):
            raise BackupError(f"stream {name}: the server refused the backup: {_why(msg)}")
        _progress_call(progress, name, total, total)
        return final
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


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
