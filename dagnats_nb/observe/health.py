"""Health rules of the production checklist, evaluated on a snapshot of the engine (pure).

Each rule gives rows ``{check, level, subject, value, threshold, action}``; ``level`` is
``ok``, ``warning`` or ``critical``. The engine gathers the :class:`Snapshot` (I/O); this
module only decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK, WARNING, CRITICAL = "ok", "warning", "critical"
COLUMNS = ["check", "level", "subject", "value", "threshold", "action"]
LEVEL_ORDER = {CRITICAL: 0, WARNING: 1, OK: 2}


@dataclass(frozen=True, slots=True)
class Thresholds:
    consumer_pending: int = 1000
    dlq_per_min: float = 1.0
    dlq_window_s: float = 300.0
    store_share: float = 0.8
    worker_gap_s: float = 60.0
    orchestrator_lag: int = 500
    retention_share: float = 0.5  # of the limits, the history a restart needs may take
    checkpoint_age_s: float = 300.0  # a checkpoint older, with runs active: the cycle is stuck
    start_margin: float = 0.1  # of runs_max_age: an active run's start that close to aging out

    @classmethod
    def from_settings(cls, s: Any) -> Thresholds:
        return cls(
            consumer_pending=s.health_consumer_pending,
            dlq_per_min=s.health_dlq_per_min,
            dlq_window_s=s.health_dlq_window.total_seconds(),
            store_share=s.health_store_share,
            worker_gap_s=s.health_worker_gap.total_seconds(),
            orchestrator_lag=s.health_orchestrator_lag,
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    consumers: list[dict[str, Any]]  # observe.stats.consumer_rows of TASK_QUEUES
    store_bytes: int  # JetStream file storage in use
    max_store_bytes: int
    dlq_samples: list[tuple[float, int]]  # (time, DEAD_LETTERS messages), oldest first
    workers: list[dict[str, Any]]  # entries of the workers KV (heartbeat_at as POSIX s)
    history_last_seq: int | None = None
    orchestrator_seq: int | None = None  # None: no orchestrator in this process
    served_tasks: set[str] = field(default_factory=set)
    disk_free_bytes: int | None = None  # free space where the embedded server stores
    refused: str | None = None  # why JetStream refused this host's last result, if it did
    retention: Retention | None = None  # None: no orchestrator in this process


@dataclass(frozen=True, slots=True)
class Retention:
    """What the ``history retention`` rule reads: WORKFLOW_HISTORY's state and limits, the
    checkpoint a restart would use, and the active runs of this process's orchestrator."""

    first_seq: int
    last_seq: int
    messages: int
    bytes: int
    first_at: float | None  # POSIX time of the history's first message (None: empty)
    max_age_s: float | None  # runs_max_age (None: no age limit)
    max_bytes: int | None  # history_max_bytes (None: no byte limit)
    snapshot_restart: bool  # a restart starts from the checkpoint (else: full replay)
    checkpoint_seq: int | None  # S of the checkpoint in DAGNATS_SNAPSHOTS (None: none usable)
    checkpoint_at: float | None
    applied_seq: int  # the orchestrator's last applied history sequence
    active_runs: int
    oldest_active_at: float | None  # when the oldest active run started
    snapshots_failed: int = 0  # snapshot writes (or cycles) that failed since the start
    snapshots_too_large: int = 0  # snapshots not written: over the message size


def evaluate(snap: Snapshot, t: Thresholds) -> list[dict[str, Any]]:
    """Every rule's rows, warnings and criticals first."""
    rows = (
        consumer_pending(snap, t)
        + dead_letters(snap, t)
        + storage(snap, t)
        + disk(snap)
        + worker_heartbeats(snap, t)
        + orchestrator_lag(snap, t)
        + history_retention(snap, t)
    )
    return sorted(rows, key=lambda r: LEVEL_ORDER[r["level"]])


def _row(check: str, level: str, subject: str, value: Any, threshold: Any, action: str):
    return {
        "check": check,
        "level": level,
        "subject": subject,
        "value": value,
        "threshold": threshold,
        "action": action if level != OK else "",
    }


def _task_of(consumer: dict[str, Any]) -> str:
    """The task type a TASK_QUEUES consumer serves, from its filter ``task.{t}[.{group}].>``
    (its name ``workers-{t}`` is lossy: Go's sanitising maps dots to dashes)."""
    parts = (consumer.get("filter") or "").split(".")
    if len(parts) >= 3 and parts[0] == "task":
        return parts[1]
    return (consumer.get("consumer") or "").removeprefix("workers-")


def consumer_pending(snap: Snapshot, t: Thresholds) -> list[dict[str, Any]]:
    rows = []
    for c in snap.consumers:
        task = _task_of(c)
        pending = c.get("pending", 0)
        if pending > t.consumer_pending:
            level = WARNING
            action = f"add workers for task '{task}' or raise its concurrency"
        elif pending and snap.served_tasks is not None and task not in snap.served_tasks:
            level = WARNING
            action = f"no worker serves task '{task}': register a handler for it"
        else:
            level, action = OK, ""
        rows.append(
            _row(
                "consumer pending",
                level,
                c.get("consumer", ""),
                pending,
                t.consumer_pending,
                action,
            )
        )
    return rows


def dlq_rate(samples: list[tuple[float, int]], window_s: float, now: float) -> float | None:
    """Dead letters per minute over the last ``window_s`` seconds (None: too few samples)."""
    recent = [(ts, n) for ts, n in samples if now - ts <= window_s]
    if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
        return None
    (t0, n0), (t1, n1) = recent[0], recent[-1]
    return max(0.0, (n1 - n0) / (t1 - t0) * 60.0)


def dead_letters(snap: Snapshot, t: Thresholds) -> list[dict[str, Any]]:
    rate = dlq_rate(snap.dlq_samples, t.dlq_window_s, snap.now)
    steady = rate is not None and rate >= t.dlq_per_min and t.dlq_per_min > 0
    return [
        _row(
            "dead letters per minute",
            WARNING if steady else OK,
            "DEAD_LETTERS",
            None if rate is None else round(rate, 3),
            t.dlq_per_min,
            "tasks fail for good steadily: look at eng.dlq() / DEAD_LETTERS and fix the cause",
        )
    ]


def storage(snap: Snapshot, t: Thresholds) -> list[dict[str, Any]]:
    share = snap.store_bytes / snap.max_store_bytes if snap.max_store_bytes else 0.0
    level = CRITICAL if share >= 0.95 else WARNING if share > t.store_share else OK
    return [
        _row(
            "storage share of max_store_bytes",
            level,
            "JetStream file store",
            round(share, 4),
            t.store_share,
            "raise max_store_bytes, set runs_max_age / history_max_bytes, or delete old runs",
        )
    ]


DISK_CRITICAL = 64 * 1024**2  # below this, nats-server's writes fail any moment


def disk(snap: Snapshot) -> list[dict[str, Any]]:
    """The disk under the store, which fills before ``max_store_bytes`` when it has less
    room than the store may still take; and JetStream refusing results right now."""
    if snap.refused is not None:
        action = (
            "free disk space or raise max_store_bytes, then restart the engine (runs resume; "
            "a held result is stored, or its step runs again)"
        )
        why = snap.refused.split(": raise max_store_bytes")[0]  # store_error's advice is below
        return [_row("results refused by JetStream", CRITICAL, why, None, None, action)]
    if snap.disk_free_bytes is None:
        return []
    headroom = max(snap.max_store_bytes - snap.store_bytes, 0)
    free = snap.disk_free_bytes
    level = CRITICAL if free < DISK_CRITICAL else WARNING if free < headroom else OK
    return [
        _row(
            "disk free under the store",
            level,
            "data_dir disk",
            free,
            headroom,
            "free disk space, or set max_store_bytes below the disk's free space",
        )
    ]


def worker_heartbeats(snap: Snapshot, t: Thresholds) -> list[dict[str, Any]]:
    rows = []
    for w in snap.workers:
        gap = snap.now - w.get("heartbeat_at", snap.now)
        level = WARNING if gap > t.worker_gap_s else OK
        rows.append(
            _row(
                "worker heartbeat gap (s)",
                level,
                w.get("worker_id", "?"),
                round(gap, 1),
                t.worker_gap_s,
                "the worker stopped heartbeating: check its process; its tasks are "
                "redelivered after ack_wait",
            )
        )
    return rows


def orchestrator_lag(snap: Snapshot, t: Thresholds) -> list[dict[str, Any]]:
    if snap.orchestrator_seq is None or snap.history_last_seq is None:
        return []
    lag = max(0, snap.history_last_seq - snap.orchestrator_seq)
    return [
        _row(
            "orchestrator lag (events)",
            WARNING if lag > t.orchestrator_lag else OK,
            "WORKFLOW_HISTORY",
            lag,
            t.orchestrator_lag,
            "the orchestrator falls behind the history: it is CPU-bound; fewer runs in "
            "flight, or faster handlers in other processes",
        )
    ]


RETENTION = "history retention"
START_SLACK_S = 5.0  # an event's own time and its stream time differ (clocks, publish delay)
LIMITS = "free store space, or raise max_store_bytes / runs_max_age / history_max_bytes"


def history_retention(snap: Snapshot, t: Thresholds) -> list[dict[str, Any]]:
    """Whether a restart finds the history it needs. With ``snapshot_restart`` and a
    checkpoint at S: the events after S (critical once retention cut one; warning when they
    take ``retention_share`` of a limit, or when the checkpoint stays behind what the
    orchestrator applied). Else (full replay): each active run's ``workflow.started``
    (warning within ``start_margin`` of ``runs_max_age``; critical once it is gone)."""
    r = snap.retention
    if r is None:
        return []
    if r.snapshot_restart and r.checkpoint_seq is not None:
        rows = [_from_checkpoint(snap.now, r, t)]
        if r.snapshots_too_large:  # those runs are rebuilt from their whole history
            rows.append(_full_replay(snap.now, r, t, "runs without a snapshot (too large)"))
        return rows
    why = "full replay (no checkpoint yet)" if r.snapshot_restart else "full replay"
    return [_full_replay(snap.now, r, t, why)]


def _from_checkpoint(now: float, r: Retention, t: Thresholds) -> dict[str, Any]:
    s = r.checkpoint_seq or 0
    subject = "restart from the checkpoint"
    if r.first_seq > s + 1:
        action = (
            f"retention removed history messages {s + 1}-{r.first_seq - 1} that a restart from "
            f"the checkpoint at {s} needs: do not restart until a newer checkpoint is written; "
            f"snapshot writes fail ({r.snapshots_failed} so far, see the engine log): {LIMITS}"
        )
        return _row(RETENTION, CRITICAL, subject, r.first_seq - s - 1, 0, action)
    age = now - (r.checkpoint_at or now)
    if age > t.checkpoint_age_s and r.active_runs and r.applied_seq > s:
        action = (
            f"the checkpoint is {age:.0f} s old with {r.active_runs} runs active: the snapshot "
            f"cycle is stuck or failing ({r.snapshots_failed} failed writes, see the engine "
            f"log); a restart reads the history after it, which retention may cut: {LIMITS}"
        )
        return _row(RETENTION, WARNING, subject, round(age, 1), t.checkpoint_age_s, action)
    share = needed_share(now, r)
    action = (
        f"the history a restart needs (after the checkpoint at {s}) takes {share:.0%} of "
        f"what the limits keep: the snapshot cycle lags or fails ({r.snapshots_failed} failed "
        f"writes); {LIMITS}"
    )
    level = WARNING if share >= t.retention_share else OK
    return _row(RETENTION, level, subject, round(share, 4), t.retention_share, action)


def needed_share(now: float, r: Retention) -> float:
    """The share of the limits the history after the checkpoint takes: its bytes (the mean
    message's, times the messages after S) against ``max_bytes``, the checkpoint's age
    against ``max_age_s``; 0 when nothing came after S."""
    after = max(0, r.last_seq - (r.checkpoint_seq or 0))
    if not after:
        return 0.0
    shares = [0.0]
    if r.max_bytes and r.messages:
        shares.append(after * r.bytes / r.messages / r.max_bytes)
    if r.max_age_s and r.checkpoint_at:
        shares.append(max(0.0, now - r.checkpoint_at) / r.max_age_s)
    return max(shares)


def _full_replay(now: float, r: Retention, t: Thresholds, subject: str) -> dict[str, Any]:
    """A restart replays the whole history: a run whose ``workflow.started`` aged out is
    lost. The value is the oldest active run's age as a share of ``runs_max_age``."""
    start = r.oldest_active_at
    if start is None or not r.active_runs:
        return _row(RETENTION, OK, subject, 0.0, 1 - t.start_margin, "")
    age = max(0.0, now - start)
    share = age / r.max_age_s if r.max_age_s else 0.0
    gone = share >= 1 or (r.first_at is not None and start < r.first_at - START_SLACK_S)
    lost = "a restart replays the whole history, and a run whose start has aged out is lost"
    fix = (
        "raise runs_max_age / history_max_bytes (these runs are rebuilt from their history)"
        if r.snapshot_restart
        else "set snapshot_restart (a restart from snapshots), or raise runs_max_age / "
        "history_max_bytes"
    )
    if gone:
        action = (
            f"the first event of the oldest active run (started {age:.0f} s ago) has aged out: "
            f"{lost} (its record stays); keep the engine running and {fix}"
        )
        return _row(RETENTION, CRITICAL, subject, round(share, 4), 1.0, action)
    margin = 1 - t.start_margin
    if share >= margin:
        why = f"ages out in {(r.max_age_s or 0) - age:.0f} s"
    elif r.max_bytes and r.first_at is not None and r.bytes >= margin * r.max_bytes:
        oldest = start - r.first_at < t.start_margin * (now - r.first_at)
        why = "is among the oldest 10 % of a full history_max_bytes" if oldest else ""
    else:
        why = ""
    action = f"the oldest active run's first event {why}: {lost}; {fix}"
    return _row(RETENTION, WARNING if why else OK, subject, round(share, 4), margin, action)
