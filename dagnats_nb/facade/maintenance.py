"""Backup and restore of the engine's streams (:mod:`dagnats_nb.ops`): a mixin of
:class:`~dagnats_nb.facade.engine.Engine`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dagnats_nb.errors import BackupError
from dagnats_nb.facade import extensions
from dagnats_nb.facade.twins import twins
from dagnats_nb.ops import backup, restore
from dagnats_nb.ops.backup import results_frame


def _default_progress(verb: str) -> Callable[[Any, dict[str, Any]], None]:
    """Fill ``progress`` in the caller's thread: a notebook bar is drawn by the cell's."""

    def prepare(engine: Any, kwargs: dict[str, Any]) -> None:
        if kwargs.get("progress") is None:
            kwargs["progress"] = extensions.default_progress(verb)

    return prepare


class Maintenance:
    """Stream backups and restores (see the module docstring)."""

    async def _backup(
        self, dir: str | os.PathLike, streams: list[str] | None = None, *, progress=None
    ) -> list:
        """Snapshot the engine's streams (default: history, task queues, definitions, runs,
        payloads) to ``dir/<STREAM>/`` as ``nats stream backup`` does; a DataFrame, one row
        per stream (stream, messages, bytes, first_seq, last_seq, seconds, mb_per_s). A
        progress bar shows in Jupyter; ``progress(stream, done_bytes, total_bytes)`` replaces
        it."""
        api = self.jetstream_api
        return await backup.backup_streams(self._nc, dir, streams, progress, api=api)

    backup, backup_async = twins(_backup, results_frame, prepare=_default_progress("backing up"))

    async def _restore(
        self,
        dir: str | os.PathLike,
        force: bool = False,
        streams: list[str] | None = None,
        *,
        progress=None,
    ) -> list:
        """Restore the streams backed up in ``dir`` (or only ``streams``); existing streams
        only with ``force``. Once every folder is checked the engine pauses (:meth:`pause`),
        restores, and resumes whatever happened: runs are rebuilt by replay; waits on runs in
        progress end with CancelledError. Same DataFrame as :meth:`backup`."""
        if self.orchestrator is None:
            raise BackupError(
                "cannot restore through an attached engine: the engine that owns the data dir "
                "would keep its old state; call restore in that engine's process, or stop it "
                "and run `dagnats restore`"
            )
        api = self.jetstream_api
        plan = await restore.plan_restore(self._nc, dir, force, streams, api)
        await self._pause()
        try:
            scratch = self.settings.data_dir
            return await restore.run_restore(self._nc, plan, progress, api, scratch=scratch)
        finally:
            await self._resume()

    restore, restore_async = twins(_restore, results_frame, prepare=_default_progress("restoring"))
