"""``dagnats backup`` and ``dagnats restore``: through the engine running on the data dir
(backup only), ``nats_url``, or a nats-server started alone for the data dir."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from dagnats_nb.errors import BackupError
from dagnats_nb.ops.backup import (
    MB,
    Progress,
    StreamResult,
    api_prefix,
    backup_streams,
)
from dagnats_nb.ops.restore import restore_streams
from dagnats_nb.server.datadir import engine_client_url, read_engine_info
from dagnats_nb.server.process import EmbeddedServer
from dagnats_nb.transport.connect import connect


def print_progress(verb: str, file=None) -> Progress:
    """A callback printing one line per stream when it is done: data file bytes, seconds,
    MB/s of the file."""
    starts: dict[str, float] = {}

    def report(stream: str, done: int, total: int) -> None:
        starts.setdefault(stream, time.perf_counter())
        if done == total:
            secs = max(time.perf_counter() - starts[stream], 1e-9)
            print(
                f"{verb} {stream}: {done} file bytes in {secs:.2f} s "
                f"({done / MB / secs:.1f} MB/s of file)",
                file=file or sys.stdout,
                flush=True,
            )

    return report


def run_command(
    action: str,
    settings,
    dir: str | os.PathLike,
    streams: list[str] | None = None,
    force: bool = False,
) -> list[StreamResult]:
    """``dagnats backup`` / ``dagnats restore`` on ``settings.data_dir``: through the engine
    running there (backup only), ``settings.nats_url``, or an embedded nats-server started
    alone for the data dir (no engine streams are created) and stopped afterwards."""
    server = None
    if settings.nats_url:
        url = settings.nats_url
    else:
        info = read_engine_info(settings.data_dir) or {}
        if info.get("alive"):
            if action == "restore":
                raise BackupError(
                    f"an engine is running on {settings.data_dir} (pid {info.get('pid')}): "
                    "stop it and run `dagnats restore` again, or call eng.restore(dir, "
                    "force=True) in that engine's process"
                )
            print(
                f"note: backing up the running engine at {info['url']}: tasks acked during "
                "the snapshot leave gaps in TASK_QUEUES (docs/operations.md, Backup and restore)",
                file=sys.stderr,
            )
            url = engine_client_url(info, settings.data_dir)
        else:
            server = EmbeddedServer(settings).start()
            url = server.client_url
    try:
        rows = asyncio.run(_command(action, url, settings, dir, streams, force))
    finally:
        if server is not None:
            server.stop()
    print(format_results(rows))
    return rows


def format_results(rows: list[StreamResult]) -> str:
    """The results as a text table (stream bytes; MB/s of stream bytes)."""
    head = f"{'stream':<20}{'messages':>10}{'bytes':>14}{'first_seq':>11}{'last_seq':>11}"
    lines = [head + f"{'seconds':>9}{'MB/s':>9}"]
    for r in rows:
        lines.append(
            f"{r.stream:<20}{r.messages:>10}{r.bytes:>14}{r.first_seq:>11}{r.last_seq:>11}"
            f"{r.seconds:>9.2f}{r.mb_per_s:>9.1f}"
        )
    return "\n".join(lines)


async def _command(action, url, settings, dir, streams, force) -> list[StreamResult]:
    nc = await connect(url, name="dagnats backup", persistent=False, error=BackupError)
    api = api_prefix(settings.jetstream_domain)
    try:
        if action == "backup":
            progress = print_progress("backed up")
            return await backup_streams(nc, dir, streams, progress, api=api)
        progress = print_progress("restored")
        scratch = None if settings.nats_url else settings.data_dir  # safety copies
        return await restore_streams(
            nc, dir, force, progress, streams=streams, api=api, scratch=scratch
        )
    finally:
        await nc.close()
