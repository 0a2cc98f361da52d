"""The engine's read-only views, mixed into :class:`~dagnats_nb.facade.engine.Engine`: JetStream
stats, NATS monitoring, health rules, the sampler, sizing, status and ``/health``/``/ready``.

Thin: each view is a private coroutine that gathers with ``dagnats_nb.observe`` on the engine
loop (a snapshot), and its public pair from :func:`~dagnats_nb.facade.twins.twins` shapes the
result in the caller's thread; nothing here changes engine state.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import deque
from typing import Any

from nats.js.errors import KeyNotFoundError, NotFoundError

from dagnats_nb.dag import parse_duration
from dagnats_nb.dag.events import parse_time
from dagnats_nb.dag.state import RUN_TERMINAL
from dagnats_nb.facade.twins import twins
from dagnats_nb.observe import health, monitor, sampler, sizing, stats, tables
from dagnats_nb.runtime import membership, snapshots
from dagnats_nb.server.datadir import read_engine_info
from dagnats_nb.transport.reading import last_data
from dagnats_nb.transport.stores import json_values, kv_keys
from dagnats_nb.wire import protocol, resources
from dagnats_nb.wire.runs import read_record
from dagnats_nb.wire.workers import read_entry

SIZING_SAMPLE = 200  # finished runs an attached engine reads to calibrate sizing()
SIZING_BYTES_SAMPLE = 10  # runs per workflow whose history sizing() reads for its bytes
SIZING_SNAPSHOTS = 10  # run snapshots sizing() reads for their bytes


def _table(name: str):
    """The shape of a view: its rows as the human-readable frame of table ``name``."""

    def shape(rows: list[dict[str, Any]]) -> tables.HumanFrame:
        return tables.frame(rows, name)

    return shape


def _lag_frame(reply: tuple[list[dict[str, Any]], bool]) -> tables.HumanFrame:
    rows, include_internal = reply
    df = tables.frame(rows, "lag")
    if include_internal or df.empty:
        return df
    keep = ~df.apply(stats.internal_consumer, axis=1).astype(bool)
    return tables.hide_rows(df, keep, stats.INTERNAL_CONSUMERS, "all")


def _monitor_frame(reply: tuple[str, dict[str, Any]]):
    return monitor.flatten(*reply)


class Observing:
    """Views of a running engine (see the module docstring)."""

    _dlq_samples: deque[tuple[float, int]]
    _sampler: sampler.Sampler | None
    membership: membership.Membership | None

    # -- stats (read-only views; see dagnats_nb.observe.stats) ------------------------

    async def _stream_stats(self) -> list[dict[str, Any]]:
        """Per stream: messages, bytes, first/last sequence and time, subjects, consumers,
        limits, retention, storage, share of ``max_store_bytes``, dedup window."""
        return await stats.stream_rows(
            self._nc, self.settings.max_store_bytes, api=self.jetstream_api
        )

    stream_stats, stream_stats_async = twins(_stream_stats, _table("streams"))

    async def _consumer_lag(
        self, include_internal: bool = False
    ) -> tuple[list[dict[str, Any]], bool]:
        """Per consumer: stream, filter, pending, ack pending, redelivered, waiting pulls,
        last delivered/acked sequence, last active. The ephemeral consumers (KV watchers,
        ordered readers, with random names) only with ``include_internal=True``."""
        return await stats.consumer_rows(self._nc, api=self.jetstream_api), include_internal

    consumer_lag, consumer_lag_async = twins(_consumer_lag, _lag_frame)

    async def _kv_stats(self) -> list[dict[str, Any]]:
        """Per KV bucket: keys, values, bytes, history, TTL."""
        return await stats.kv_rows(self._nc, api=self.jetstream_api)

    kv_stats, kv_stats_async = twins(_kv_stats, _table("kv"))

    async def _account(self) -> list[dict[str, Any]]:
        """JetStream account usage against its limits and ``max_store_bytes``."""
        return await stats.account_rows(
            self._nc, self.settings.max_store_bytes, api=self.jetstream_api
        )

    account, account_async = twins(_account, _table("account"))

    async def _monitor(self, endpoint: str = "varz", **params: Any) -> tuple[str, dict]:
        """A NATS monitoring endpoint (``varz``, ``jsz``, ``connz``, ``subsz``) flattened into
        a DataFrame; ``params`` are its query parameters (e.g. ``subs=1``). Needs
        ``monitor_port`` (a clear error says so when monitoring is off)."""
        return endpoint, await monitor.fetch(self.monitor_url, endpoint, params)

    monitor, monitor_async = twins(_monitor, _monitor_frame)

    async def _sizing(
        self, workflow: str | None = None, *, days: float = 30.0, **workload: Any
    ) -> sizing.Report:
        """Disk and memory estimate of a workload (``sizing.Workload`` fields as keywords,
        e.g. ``runs_per_day=50_000``), calibrated with what this engine measured on its
        finished runs. With ``workflow``: runs of that workflow (its steps, events per run
        and bytes per event); without: the measured mix of every workflow that ran (the
        report names them, a row each). With nothing run yet the rules of thumb are used
        (for 10-step runs unless ``steps`` or a workflow is given)."""
        if self.orchestrator is not None:
            runs, counted = self._finished_runs(workflow)
        else:  # attached (a notebook looking at a Go deployment): from its records
            runs = await self._recorded_runs(workflow)
            counted = [(w, e, n) for _, w, e, n in runs]
        rows = sizing.workflow_rows(counted, await self._sampled_bytes(runs))
        info = (
            await stats.api(
                self._nc, f"STREAM.INFO.{protocol.HISTORY_STREAM}", api=self.jetstream_api
            )
        )["state"]
        per_event = info.get("bytes", 0) / info["messages"] if info.get("messages") else None
        if workflow is not None and rows and rows[0]["bytes_per_event"]:
            per_event = rows[0]["bytes_per_event"]  # this workflow's events, not the mix's
        cal = sizing.calibrate([(e, n) for _, e, n in counted], per_event)
        steps = sum(n for *_, n in counted) / len(counted) if counted else 0.0
        record, snapshot = await self._record_bytes(steps), await self._snapshot_bytes()
        if record or snapshot:
            cal = (cal or sizing.Calibration()).with_stores(record, snapshot)
        if "steps" in workload:
            runs_of = f"{workload['steps']:g}-step runs (as given)"
        elif workflow is not None:
            workload["steps"] = n = len((await self._workflow(workflow)).steps)
            runs_of = f"'{workflow}' ({n} step{'s' * (n != 1)})"
        elif rows:
            workload["steps"] = steps
            runs_of = sizing.mix(rows) if len(rows) > 1 else f"'{rows[0]['workflow']}'"
        else:
            runs_of = "10-step runs (nothing has run to measure: name a workflow or give steps)"
        workload.setdefault("runs_per_day", 1000)
        workload.setdefault("max_store_bytes", self.settings.max_store_bytes)
        if self.settings.runs_max_age and "history_max_age_days" not in workload:
            workload["history_max_age_days"] = self.settings.runs_max_age.total_seconds() / 86400
        if self.settings.history_max_bytes and "history_max_bytes" not in workload:
            workload["history_max_bytes"] = self.settings.history_max_bytes
        w = sizing.Workload(**workload)
        est = sizing.estimate(w, cal, days)
        comparison = sizing.compare(est.calibration, w.steps)
        return sizing.Report(est, est.calibration, comparison, rows, runs_of)

    sizing, sizing_async = twins(_sizing)

    def _finished_runs(
        self, workflow: str | None
    ) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, int, float]]]:
        """The orchestrator's finished runs (of ``workflow``): ``(run_id, workflow, events,
        steps)`` of those it holds, in memory or among the recently evicted (their history
        is read for bytes), and ``(workflow, events, steps)`` of every run it measured: the
        ones held, and each workflow's sample of the runs that left memory."""
        o = self.orchestrator
        held = [
            (r, s.workflow, s.event_count, len(o.run_defs[r].steps))
            for r, s in o.runs.items()
            if s.terminal and not s.outbox and (workflow is None or s.workflow == workflow)
        ]
        gone = [
            (r, s.workflow, s.event_count, len(s.steps))
            for r, s in o.recent.items()  # runtime.eviction: ended runs that left memory
            if workflow is None or s.workflow == workflow
        ]
        counted = [(w, e, n) for w, its in o.finished_sample.items() for e, n in its if n]
        counted = [c for c in counted if workflow is None or c[0] == workflow]
        return gone + held, counted + [(w, e, n) for _, w, e, n in held]

    async def _record_bytes(self, steps: float) -> tuple[float, float] | None:
        """``(mean bytes, steps)`` of a ``workflow_runs`` record: the bucket's bytes over its
        records, for runs of ``steps`` (the measured runs' mean); None with nothing to
        measure."""
        try:
            state = (await self._js.stream_info("KV_workflow_runs")).state
        except NotFoundError:
            return None
        if not state.messages or not steps:
            return None
        return state.bytes / state.messages, steps

    async def _snapshot_bytes(self, limit: int = SIZING_SNAPSHOTS) -> tuple[float, float] | None:
        """``(mean bytes, mean steps)`` of up to ``limit`` run snapshots on DAGNATS_SNAPSHOTS,
        bytes as the file store counts them; None when there is none."""
        sizes, steps, seq = [], [], 1
        while len(sizes) < limit:
            try:
                msg = await self._js.get_msg(
                    snapshots.STREAM, seq=seq, subject=snapshots.RUN + ">", next=True
                )
            except NotFoundError:
                break
            seq = msg.seq + 1
            try:
                body = json.loads(msg.data or b"")["state"]
            except (ValueError, KeyError, TypeError):
                continue
            headers = sizing.header_bytes(msg.headers)
            sizes.append(sizing.stored_bytes(msg.subject, headers, len(msg.data or b"")))
            steps.append(len(body.get("steps") or {}))
        if not sizes or not sum(steps):
            return None
        return sum(sizes) / len(sizes), sum(steps) / len(steps)

    async def _sampled_bytes(
        self, runs: list[tuple[str, str, int, int]], per_workflow: int = SIZING_BYTES_SAMPLE
    ) -> dict[str, tuple[int, int]]:
        """``workflow -> (events, bytes)`` of the history of the last ``per_workflow``
        finished runs of each workflow, bytes as the file store counts them."""
        latest: dict[str, list[str]] = {}
        for run_id, workflow, _, _ in runs:
            latest.setdefault(workflow, []).append(run_id)
        out: dict[str, tuple[int, int]] = {}
        for workflow, ids in latest.items():
            events = size = 0
            for run_id in ids[-per_workflow:]:
                n, b = await self._history_bytes(run_id)
                events, size = events + n, size + b
            out[workflow] = (events, size)
        return out

    async def _history_bytes(self, run_id: str) -> tuple[int, int]:
        """``(events, bytes)`` of one run's history on WORKFLOW_HISTORY."""
        subject = protocol.history_subject(run_id)
        info = await self._js.stream_info(protocol.HISTORY_STREAM, subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0)
        if not count:
            return 0, 0
        sub = await self._js.subscribe(
            subject, stream=protocol.HISTORY_STREAM, ordered_consumer=True
        )
        events = size = 0
        try:
            while events < count:
                msg = await sub.next_msg(timeout=5)
                events += 1
                headers = sizing.header_bytes(msg.headers)
                size += sizing.stored_bytes(msg.subject, headers, len(msg.data))
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return events, size

    async def _recorded_runs(
        self, workflow: str | None, limit: int = SIZING_SAMPLE
    ) -> list[tuple[str, str, int, int]]:
        """``(run_id, workflow, events, steps)`` of up to ``limit`` finished runs (of
        ``workflow``), from the ``workflow_runs`` records (Go's or ours) and the run's
        message count on WORKFLOW_HISTORY: what an engine without an orchestrator can
        measure."""
        kv = await self._js.key_value("workflow_runs")
        try:
            keys = sorted(await kv_keys(self._js, "workflow_runs"))
        except NotFoundError:
            return []
        out: list[tuple[str, str, int, int]] = []
        for key in reversed(keys):  # newest ids last in ULID order: recent runs first
            if len(out) >= limit:
                break
            try:
                summary = read_record(json.loads((await kv.get(key)).value))
            except (KeyNotFoundError, NotFoundError, ValueError):
                continue
            if summary is None or summary["status"] not in RUN_TERMINAL:
                continue
            if workflow is not None and summary["workflow"] != workflow:
                continue
            subject = protocol.history_subject(summary["run_id"])
            info = await self._js.stream_info(protocol.HISTORY_STREAM, subjects_filter=subject)
            events = (info.state.subjects or {}).get(subject, 0)
            if events and summary["steps"]:
                run = (summary["run_id"], summary["workflow"], events, len(summary["steps"]))
                out.append(run)
        out.reverse()  # oldest first, as an orchestrator lists them
        return out

    async def _sample(self, every: float | str = "1s", keep: int = 3600) -> sampler.Sampler:
        """Record stream sizes, consumer lag, dead letters and run/step rates every
        ``every`` (seconds or a Go duration) in the background; ``.frame()`` is the time
        series, ``.figure()`` its plots, ``.stop()`` ends it. One sampler per engine: a new
        call replaces the previous one."""
        seconds = every if isinstance(every, int | float) else parse_duration(every).total_seconds()
        if self._sampler is not None:
            await self._sampler.stop()
        s = sampler.Sampler(
            lambda: sampler.collect_row(self._nc, self.orchestrator, self.jetstream_api),
            float(seconds),
            keep,
        )
        s.start()
        self._sampler = s
        return s

    sample, sample_async = twins(_sample)

    async def _stop_sampling(self) -> None:
        """Stop the sampler of :meth:`sample` (its rows stay readable)."""
        if self._sampler is not None:
            await self._sampler.stop()
            self._sampler = None

    stop_sampling, stop_sampling_async = twins(_stop_sampling)

    @property
    def monitor_url(self) -> str | None:
        """The NATS monitoring URL (None when ``monitor_port`` is unset)."""
        if self.server is not None:
            return self.server.monitor_url
        info = read_engine_info(self.settings.data_dir) if not self.embedded else None
        return (info or {}).get("monitor_url")

    # -- status --------------------------------------------------------------------------

    async def _status(self) -> dict[str, Any]:
        """Connection, streams (messages, bytes), workers, pending tasks per task type and
        the dagnats-nb engines heartbeating there (``engines``: id, host, pid, orchestrates,
        seconds since its last heartbeat, live/dead/unknown)."""
        streams = []
        for spec in resources.STREAMS:
            try:
                info = await self._js.stream_info(spec.name)
            except NotFoundError:
                continue
            streams.append(
                {"stream": spec.name, "messages": info.state.messages, "bytes": info.state.bytes}
            )
        info = await self._js.stream_info(protocol.TASK_STREAM, subjects_filter="task.>")
        pending: dict[str, int] = {}
        for subject, n in (info.state.subjects or {}).items():
            task = subject.split(".")[1]
            pending[task] = pending.get(task, 0) + n
        workers = await self._workers()
        served = {t for w in workers for t in read_entry(w).tasks}
        out = {
            "url": self.url,
            "data_dir": str(self.settings.data_dir),
            "connected": bool(self._nc and self._nc.is_connected),
            "streams": streams,
            "workers": workers,
            "pending_tasks": pending,
            "tasks_without_worker": sorted(t for t, n in pending.items() if n and t not in served),
            "engines": await self._engines(),
        }
        if self.orchestrator is not None:
            o = self.orchestrator
            out["orchestrator"] = {
                "runs": len(o.runs),  # held in memory: the active ones, a few just ended
                "active_runs": sum(1 for s in o.runs.values() if not s.terminal),
                "runs_left_memory": o.counters["runs_evicted"],  # ended: records answer
                "checkpoint_seq": o.snapshots.checkpoint_seq if o.snapshots else 0,
                "restored_from": o.restored_from,  # 0: the start replayed the whole history
                "last_seq": o.last_seq,
                "replayed_events": o.replayed_events,
                "replay_seconds": round(o.replay_seconds, 3),
                "errors": list(o.errors)[-5:],
            }
        rows = await self._health_rows(workers)
        out["health"] = [r for r in rows if r["level"] != health.OK]
        return out

    status, status_async = twins(_status)

    async def _engines(self) -> list[dict[str, Any]]:
        """The dagnats-nb engines' heartbeats in KV ``dagnats_engines``
        (:func:`~dagnats_nb.runtime.membership.engine_rows`): as this engine follows them,
        or, attached without a heartbeat of its own (``Engine.connect``), as read once."""
        if self.membership is not None:
            await self.membership.observe()
            return self.membership.engines()
        return await membership.seen_once(self._js)

    async def _workers(self) -> list[dict[str, Any]]:
        """The entries of the ``workers`` KV bucket (live workers of every process)."""
        return [v for v in (await json_values(self._js, "workers")).values() if isinstance(v, dict)]

    async def _health(self) -> list[dict[str, Any]]:
        """The checklist's health rules as a table (check, level, subject, value, threshold,
        action), warnings first. Thresholds are the ``health_*`` settings."""
        return await self._health_rows()

    health, health_async = twins(_health, _table("health"))

    def _disk_free(self) -> int | None:
        """Free bytes on the embedded server's store disk (None when NATS is elsewhere)."""
        if self.server is None:
            return None
        try:
            return shutil.disk_usage(self.server.store_dir.parent).free
        except OSError:
            return None

    async def _health_rows(
        self, workers: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        # The history's end and the orchestrator's position, read at the same moment.
        history = await stats.api(
            self._nc, f"STREAM.INFO.{protocol.HISTORY_STREAM}", api=self.jetstream_api
        )
        applied = self.orchestrator.last_seq if self.orchestrator else None
        consumers = await stats.consumer_rows(
            self._nc, [protocol.TASK_STREAM], api=self.jetstream_api
        )
        account = await stats.api(self._nc, "INFO", api=self.jetstream_api)
        dead = await stats.api(
            self._nc, f"STREAM.INFO.{protocol.DEAD_STREAM}", api=self.jetstream_api
        )
        now = time.time()
        self._dlq_samples.append((now, dead["state"].get("messages", 0)))
        if workers is None:
            workers = await self._workers()
        entries = [read_entry(w) for w in workers]  # ours and Go's, heartbeats as POSIX s
        workers = [
            {"worker_id": e.worker_id, "heartbeat_at": e.heartbeat_at or now, "tasks": e.tasks}
            for e in entries
        ]
        snap = health.Snapshot(
            now=now,
            consumers=consumers,
            store_bytes=account.get("storage", 0),
            max_store_bytes=self.settings.max_store_bytes,
            dlq_samples=list(self._dlq_samples),
            workers=workers,
            history_last_seq=history["state"].get("last_seq", 0),
            orchestrator_seq=applied,
            served_tasks={t for e in entries for t in e.tasks},
            disk_free_bytes=self._disk_free(),
            refused=self.host.gate.reason if self.host is not None else None,
            retention=await self._retention(history["state"]),
        )
        return health.evaluate(snap, health.Thresholds.from_settings(self.settings))

    async def _retention(self, state: dict[str, Any]) -> health.Retention | None:
        """What the ``history retention`` rule reads (None without an orchestrator here):
        the history's state (``STREAM.INFO``'s) and limits, the checkpoint a restart would
        read (one get on DAGNATS_SNAPSHOTS) and the active runs in memory."""
        o = self.orchestrator
        if o is None or o.snapshots is None:
            return None
        s = self.settings
        active = [st.started_at for st in o.runs.values() if not st.terminal]
        head = await self._checkpoint(o.snapshots.history_id)
        first_ts = state.get("first_ts")
        return health.Retention(
            first_seq=state.get("first_seq", 0),
            last_seq=state.get("last_seq", 0),
            messages=state.get("messages", 0),
            bytes=state.get("bytes", 0),
            first_at=parse_time(first_ts) if state.get("messages") and first_ts else None,
            max_age_s=s.runs_max_age.total_seconds() if s.runs_max_age else None,
            max_bytes=s.history_max_bytes or None,
            snapshot_restart=s.snapshot_restart,
            checkpoint_seq=head[0] if head else None,
            checkpoint_at=head[1] if head else None,
            applied_seq=o.last_seq,
            active_runs=len(active),
            oldest_active_at=min(active, default=None),
            snapshots_failed=o.snapshots.failed,
            snapshots_too_large=o.snapshots.too_large,
        )

    async def _checkpoint(self, history_id: str) -> tuple[int, float] | None:
        """``(seq, at)`` of the checkpoint in DAGNATS_SNAPSHOTS, as a restart reads it; None
        when there is none it can use (none written, another version or history)."""
        try:
            head = json.loads(
                await last_data(self._js, snapshots.STREAM, snapshots.CHECKPOINT) or b""
            )
        except ValueError:
            return None
        if not isinstance(head, dict) or head.get("v") != snapshots.CHECKPOINT_VERSION:
            return None
        if head.get("history") != history_id or not isinstance(head.get("seq"), int):
            return None
        return head["seq"], float(head.get("at") or 0.0)
