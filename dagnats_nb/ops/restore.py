"""Restoring streams from a backup folder through ``$JS.API.STREAM.RESTORE.<stream>`` (the
data file published in pieces to the deliver subject, each piece answered, an empty EOF
answered with the created stream). The folder layout and the checks made before anything
is touched are described in :mod:`dagnats_nb.ops.backup`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dagnats_nb.errors import BackupError
from dagnats_nb.ops.backup import (
    _S2_MAGIC,
    BACKUP_JSON,
    DATA_NAMES,
    IDLE_TIMEOUT,
    MB,
    PIECE_SIZE,
    WINDOW,
    Progress,
    StreamResult,
    _api,
    _api_error,
    _check_name,
    _make_private_dir,
    _progress_call,
    _result,
    _why,
    backup_stream,
    delete_stream,
    stream_exists,
)

__all__ = [
    "RestorePlan",
    "check_backup",
    "check_s2_framing",
    "plan_restore",
    "restore_streams",
    "run_restore",
]


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
