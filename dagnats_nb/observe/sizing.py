"""Disk and memory sizing of a dagnats engine, from a workload (pure: no I/O;
docs/sizing.md has the figures and why).

It starts from the production checklist's rules of thumb (``WORKFLOW_HISTORY`` ~500 bytes
an event, ~12 events for a 10-step workflow; the streams' byte limits as shares of
``max_store_bytes``, ``wire.resources``; ~2 KiB of memory an active run; the minimums table)
and can be calibrated with what a live engine measured. Our own choices where the checklist
is silent: events per run = 2 + events per step × steps, each retry adds 2; a task message
is its payload + 300 bytes, a dead letter its payload + 400.

The store is history + records + snapshots: (runs/day × events × bytes an event + runs/day
× record bytes) × ``runs_max_age`` + active runs × snapshot bytes. A ``workflow_runs``
record, and an active run's snapshot on ``DAGNATS_SNAPSHOTS``, is ``RECORD_BASE`` + bytes a
step × steps: the rule's 400 B a step gives ~5 KB for 10 steps (measured 2026-12-01: records
760 B + 190 B a step with small values, each step's output adding 4/3 of its size as
base64; snapshots 4.0 KB for 10 steps). The recovery window: ``observe.recovery``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import DagnatsError
from ..wire.resources import DEAD_LETTER_SHARE, TASK_QUEUE_SHARE, TELEMETRY_SHARE
from . import recovery

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DAY = 86400.0

RULE_BYTES_PER_EVENT = 500.0
RULE_EVENTS_PER_STEP = 1.0  # with RUN_EVENTS: ~12 events for a 10-step workflow
RUN_EVENTS = 2.0  # workflow.started + workflow.completed/failed
EVENTS_PER_RETRY = 2.0
RULE_BYTES_PER_ACTIVE_RUN = 2 * KiB
NATS_MIN_MEMORY = 256 * MiB
TASK_ENVELOPE = 300
DEAD_ENVELOPE = 400
DEAD_LETTER_DAYS = 30.0
TELEMETRY_DAYS = 7.0
RECORD_BASE = 1000  # a record's or snapshot's bytes besides its steps (ids, times, input)
RULE_RECORD_BYTES_PER_STEP = 400.0  # ~5 KB for a 10-step run
RULE_SNAPSHOT_BYTES_PER_STEP = 400.0


class SizingError(DagnatsError):
    """A sizing parameter is out of range."""


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    max_concurrent_runs: float  # exclusive upper bound
    cpu: str
    memory_bytes: int
    disk_bytes: int


TIERS: tuple[Tier, ...] = (
    Tier("development", 10, "1 core", 512 * MiB, 1 * GiB),
    Tier("small", 100, "2 cores", 2 * GiB, 20 * GiB),
    Tier("medium", 10_000, "4 cores", 8 * GiB, 100 * GiB),
    Tier("large", math.inf, "8+ cores", 16 * GiB, 500 * GiB),
)


@dataclass(frozen=True, slots=True)
class Calibration:
    """Per-event and per-run figures: the rules of thumb, or what an engine measured."""

    bytes_per_event: float = RULE_BYTES_PER_EVENT
    events_per_step: float = RULE_EVENTS_PER_STEP
    run_events: float = RUN_EVENTS
    bytes_per_active_run: float = RULE_BYTES_PER_ACTIVE_RUN
    source: str = "rule of thumb"
    record_bytes_per_step: float = RULE_RECORD_BYTES_PER_STEP
    snapshot_bytes_per_step: float = RULE_SNAPSHOT_BYTES_PER_STEP

    @classmethod
    def measured(
        cls,
        *,
        bytes_per_event: float,
        events_per_run: float,
        steps: int,
        bytes_per_active_run: float | None = None,
        runs: int | None = None,
    ) -> Calibration:
        """A calibration from a workflow that ran: its events per run and bytes per event."""
        _positive(bytes_per_event=bytes_per_event, events_per_run=events_per_run, steps=steps)
        per_step = max(0.0, (events_per_run - RUN_EVENTS) / steps)
        what = f"measured ({runs} runs)" if runs else "measured"
        return cls(
            bytes_per_event=bytes_per_event,
            events_per_step=per_step,
            bytes_per_active_run=bytes_per_active_run or RULE_BYTES_PER_ACTIVE_RUN,
            source=what,
        )

    def events_per_run(self, steps: float, retry_rate: float = 0.0) -> float:
        return self.run_events + steps * (self.events_per_step + retry_rate * EVENTS_PER_RETRY)

    def record_bytes(self, steps: float) -> float:
        """A ``workflow_runs`` record of a run of ``steps`` steps."""
        return RECORD_BASE + self.record_bytes_per_step * steps

    def snapshot_bytes(self, steps: float) -> float:
        """An active run's snapshot on ``DAGNATS_SNAPSHOTS``."""
        return RECORD_BASE + self.snapshot_bytes_per_step * steps

    def with_stores(
        self, record: tuple[float, float] | None, snapshot: tuple[float, float] | None
    ) -> Calibration:
        """With record and snapshot bytes measured: ``(mean bytes, mean steps)`` of the
        records in the bucket, of the snapshots in the stream (None: the rule's)."""
        per = {}
        for key, got in (("record_bytes_per_step", record), ("snapshot_bytes_per_step", snapshot)):
            if got and got[1] > 0:
                per[key] = max(0.0, (got[0] - RECORD_BASE) / got[1])
        what = " and ".join(k.split("_")[0] + "s" for k in per)
        return replace(self, **per, source=f"{self.source}; {what} measured") if per else self


@dataclass(frozen=True, slots=True)
class Workload:
    """What the engine is asked to do. Sizes in bytes, durations in days."""

    runs_per_day: float
    steps: float = 10  # per run; a mix of workflows has a mean (1.5)
    payload_bytes: int = 1 * KiB
    largest_payload_bytes: int | None = None  # default: 4 × payload_bytes
    retry_rate: float = 0.0  # retries per step (0.1 = one step in ten retries once)
    failure_rate: float = 0.0  # share of runs that dead-letter a task
    concurrent_runs: int = 10
    in_flight_tasks: int = 32
    max_ack_pending: int = 64
    history_max_age_days: float | None = None  # runs_max_age
    history_max_bytes: int | None = None
    telemetry_bytes_per_step: float = 0.0
    max_store_bytes: int = 10 * GiB
    downtime_minutes: float = 5.0  # how long an engine may be down (the recovery window)

    def __post_init__(self) -> None:
        _positive(steps=self.steps, max_store_bytes=self.max_store_bytes)
        _not_negative(
            runs_per_day=self.runs_per_day,
            payload_bytes=self.payload_bytes,
            retry_rate=self.retry_rate,
            concurrent_runs=self.concurrent_runs,
            in_flight_tasks=self.in_flight_tasks,
            max_ack_pending=self.max_ack_pending,
            telemetry_bytes_per_step=self.telemetry_bytes_per_step,
            downtime_minutes=self.downtime_minutes,
        )
        if not 0.0 <= self.failure_rate <= 1.0:
            raise SizingError(f"failure_rate = {self.failure_rate}: must be between 0 and 1")
        for key in ("history_max_age_days", "history_max_bytes", "largest_payload_bytes"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise SizingError(f"{key} = {value}: must be positive, or None for no limit")


@dataclass(frozen=True, slots=True)
class Estimate:
    """Disk per stream (at ``days``), growth, memory, the recommended tier."""

    workload: Workload
    calibration: Calibration
    days: float
    events_per_run: float
    history_bytes_per_day: float
    streams: dict[str, float] = field(default_factory=dict)  # bytes at ``days``
    memory: dict[str, float] = field(default_factory=dict)  # bytes
    days_until_cap: float | None = None  # None: the store never fills
    tier: Tier = TIERS[0]
    recovery: dict[str, float] = field(default_factory=dict)  # recovery.window

    @property
    def disk_bytes(self) -> float:
        return sum(self.streams.values())

    @property
    def memory_bytes(self) -> float:
        return sum(self.memory.values())

    @property
    def store_share(self) -> float:
        return self.disk_bytes / self.workload.max_store_bytes

    def rows(self) -> list[dict[str, Any]]:
        """One row per stream and memory item: whole bytes (``7.6 GiB``, not ``8.17e+09``)."""
        out: list[dict[str, Any]] = [
            {"kind": "disk", "item": name, "bytes": round(b), "GiB": b / GiB}
            for name, b in self.streams.items()
        ]
        out += [
            {"kind": "memory", "item": name, "bytes": round(b), "GiB": b / GiB}
            for name, b in self.memory.items()
        ]
        return out

    def to_frame(self):
        from dagnats_nb.observe import tables

        return tables.frame(self.rows(), "sizing")


def estimate(
    workload: Workload, calibration: Calibration | None = None, days: float = 30.0
) -> Estimate:
    """Disk and memory of ``workload`` after ``days`` days of running."""
    _positive(days=days)
    cal = calibration or Calibration()
    w = workload
    per_run = cal.events_per_run(w.steps, w.retry_rate)
    history_day = history_per_day(w, cal)
    largest = w.largest_payload_bytes or 4 * w.payload_bytes
    memory = {
        "engine (active runs)": w.concurrent_runs * cal.bytes_per_active_run,
        "workers (largest payload x MaxAckPending)": float(largest * w.max_ack_pending),
        "nats-server": float(NATS_MIN_MEMORY),
    }
    est = Estimate(
        workload=w,
        calibration=cal,
        days=days,
        events_per_run=per_run,
        history_bytes_per_day=history_day,
        streams=stream_bytes(w, history_day, days, cal),
        memory=memory,
    )
    return replace(
        est,
        days_until_cap=days_until_cap(w, history_day, cal),
        tier=recommend_tier(est),
        recovery=recovery.window(
            events_per_s=w.runs_per_day * per_run / DAY,
            active_runs=w.concurrent_runs,
            bytes_per_event=cal.bytes_per_event,
            downtime_s=60.0 * w.downtime_minutes,
            history_bytes=est.streams["WORKFLOW_HISTORY"],
            store_bytes=est.disk_bytes,
        ),
    )


def history_per_day(w: Workload, cal: Calibration) -> float:
    """Bytes ``WORKFLOW_HISTORY`` grows by per day."""
    return w.runs_per_day * cal.events_per_run(w.steps, w.retry_rate) * cal.bytes_per_event


def stream_bytes(
    w: Workload, history_day: float, days: float, cal: Calibration | None = None
) -> dict[str, float]:
    """Bytes each stream holds after ``days`` days (history growing ``history_day``/day)."""
    cal = cal or Calibration()
    return {
        "WORKFLOW_HISTORY": retained(
            history_day, days, w.history_max_age_days, w.history_max_bytes
        ),
        "TASK_QUEUES": float(
            min(w.in_flight_tasks * (w.payload_bytes + TASK_ENVELOPE), share(w, TASK_QUEUE_SHARE))
        ),
        "DEAD_LETTERS": retained(
            w.runs_per_day * w.failure_rate * (w.payload_bytes + DEAD_ENVELOPE),
            days,
            DEAD_LETTER_DAYS,
            share(w, DEAD_LETTER_SHARE),
        ),
        "TELEMETRY": retained(
            w.runs_per_day * w.steps * w.telemetry_bytes_per_step,
            days,
            TELEMETRY_DAYS,
            share(w, TELEMETRY_SHARE),
        ),
        "KV_workflow_runs": retained(
            w.runs_per_day * cal.record_bytes(w.steps), days, w.history_max_age_days, None
        ),
        "DAGNATS_SNAPSHOTS": w.concurrent_runs * cal.snapshot_bytes(w.steps),
    }


def share(w: Workload, fraction: float) -> int:
    """A stream's byte limit: ``fraction`` of the store, as the engine sets it."""
    return int(w.max_store_bytes * fraction)


def retained(
    per_day: float, days: float, max_age_days: float | None, max_bytes: float | None
) -> float:
    """Bytes a stream holds after ``days`` days of ``per_day`` growth under its limits."""
    held = per_day * (min(days, max_age_days) if max_age_days else days)
    return float(min(held, max_bytes) if max_bytes else held)


def days_until_cap(w: Workload, history_day: float, cal: Calibration | None = None) -> float | None:
    """Days until the streams together reach ``max_store_bytes``; None when limits keep them
    below it for ever. The total only grows with time, so bisection finds the day."""

    def total(days: float) -> float:
        return sum(stream_bytes(w, history_day, days, cal).values())

    horizon = 1e7  # days: past every retention limit
    if total(horizon) < w.max_store_bytes:
        return None
    lo, hi = 0.0, horizon
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < w.max_store_bytes else (lo, mid)
    return hi


def disk_over_time(
    workload: Workload,
    calibration: Calibration | None = None,
    days: float = 365.0,
    points: int = 60,
) -> list[tuple[float, float]]:
    """``(day, total disk bytes)`` from day 0 to ``days``, for plots."""
    cal = calibration or Calibration()
    w = workload
    history_day = history_per_day(w, cal)
    step = days / max(1, points - 1)
    return [
        (i * step, sum(stream_bytes(w, history_day, i * step, cal).values())) for i in range(points)
    ]


def recommend_tier(est: Estimate) -> Tier:
    """The smallest tier of the checklist's minimums that fits runs, memory and disk."""
    for tier in TIERS:
        if (
            est.workload.concurrent_runs < tier.max_concurrent_runs
            and est.memory_bytes <= tier.memory_bytes
            and est.disk_bytes <= tier.disk_bytes
        ):
            return tier
    return TIERS[-1]


def compare(measured: Calibration, steps: float = 10) -> list[dict[str, Any]]:
    """Rows "rule of thumb vs measured" for a workflow of ``steps`` steps."""
    n = f"{steps:.3g} steps"
    items: dict[str, Callable[[Calibration], float]] = {
        "bytes per event": lambda c: c.bytes_per_event,
        f"events per run ({n})": lambda c: c.events_per_run(steps),
        f"bytes per run ({n})": lambda c: c.events_per_run(steps) * c.bytes_per_event,
        f"bytes per record ({n})": lambda c: c.record_bytes(steps),
        f"bytes per snapshot ({n})": lambda c: c.snapshot_bytes(steps),
        "bytes per active run (memory)": lambda c: c.bytes_per_active_run,
    }
    rule = Calibration()
    return [
        {
            "item": item,
            "rule_of_thumb": (r := f(rule)),
            "measured": (m := f(measured)),
            "measured_over_rule": m / r if r else math.nan,
        }
        for item, f in items.items()
    ]


def _positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise SizingError(f"{key} = {value}: must be positive")


def _not_negative(**values: float) -> None:
    for key, value in values.items():
        if value < 0:
            raise SizingError(f"{key} = {value}: must not be negative")


@dataclass(frozen=True, slots=True)
class Report:
    """``eng.sizing()``: the estimate, the calibration it used, rule vs measured, the
    measured workflows (``workflows``: one row each) and what the workload's runs are
    (``runs_of``: one workflow's, the measured mix, or an assumed step count)."""

    estimate: Estimate
    calibration: Calibration
    comparison: list[dict[str, Any]]
    workflows: list[dict[str, Any]] = field(default_factory=list)
    runs_of: str = ""

    def comparison_frame(self):
        from dagnats_nb.observe import tables

        return tables.frame(self.comparison, "sizing comparison")

    def workflows_frame(self):
        """Per measured workflow: runs, steps, events, bytes per event and per run."""
        from dagnats_nb.observe import tables

        return tables.frame(self.workflows, "sizing workflows")

    def summary(self) -> str:
        """Four lines: the runs estimated, disk/memory/tier, recovery, the calibration."""
        from dagnats_nb.observe.units import human_bytes, human_duration

        est = self.estimate
        full = "never" if est.days_until_cap is None else human_duration(est.days_until_cap * DAY)
        runs = f"{est.workload.runs_per_day:,.0f} per day" + (
            f" of {self.runs_of}" if self.runs_of else ""
        )
        return (
            f"runs: {runs}\n"
            f"disk: {human_bytes(est.disk_bytes)} after {est.days:g} days "
            f"({est.store_share:.1%} of max_store_bytes; full in {full}); "
            f"memory: {human_bytes(est.memory_bytes)}; tier {est.tier.name} ({est.tier.cpu})\n"
            f"{recovery.describe(est.recovery, est.workload.downtime_minutes)}\n"
            f"calibration: {self.calibration.source}"
        )

    def _tables(self) -> list[tuple[str, Any]]:
        out = [("estimate", self.estimate.to_frame())]
        if self.workflows:
            out.append(("measured per workflow", self.workflows_frame()))
        out.append(("rule of thumb vs measured", self.comparison_frame()))
        return out

    def __repr__(self) -> str:
        from dagnats_nb.observe import tables

        parts = [self.summary()]
        parts += [
            f"{title}:\n{tables.render_text(df, with_notes=False)}" for title, df in self._tables()
        ]
        return "\n\n".join(parts)

    def _repr_html_(self) -> str:
        import html

        from dagnats_nb.observe import tables

        lines = "<br>".join(html.escape(line) for line in self.summary().splitlines())
        return f"<p>{lines}</p>" + "".join(
            f"<p><b>{title}</b></p>{tables.render_html(df, with_notes=False)}"
            for title, df in self._tables()
        )


HEADER_LINE = len(b"NATS/1.0\r\n")


def header_bytes(headers: dict[str, str] | None) -> int:
    """The length of a message's NATS header block, from its parsed headers."""
    if not headers:
        return 0
    return HEADER_LINE + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2


def stored_bytes(subject: str, headers: int, data: int) -> int:
    """What one message adds to a file stream's ``bytes``, as nats-server counts it
    (``fileStoreMsgSizeRaw``): a 22-byte record head, the subject, 4 + the header block
    when there is one, the data, an 8-byte checksum."""
    return 22 + len(subject) + (4 + headers if headers else 0) + data + 8


def workflow_rows(
    runs: list[tuple[str, int, float]], sampled: dict[str, tuple[int, int]]
) -> list[dict[str, Any]]:
    """Per workflow of the finished runs ``(workflow, events, steps)``: runs, steps and
    events per run, and bytes per event of the runs whose history was read (``sampled``:
    workflow -> (events, bytes)); most runs first."""
    by: dict[str, list[tuple[int, float]]] = {}
    for workflow, events, steps in runs:
        by.setdefault(workflow, []).append((events, steps))
    rows = []
    for workflow, its in by.items():
        events = sum(e for e, _ in its) / len(its)
        read, size = sampled.get(workflow, (0, 0))
        per_event = size / read if read else None
        rows.append(
            {
                "workflow": workflow,
                "runs": len(its),
                "steps": sum(s for _, s in its) / len(its),
                "events_per_run": events,
                "bytes_per_event": per_event,
                "bytes_per_run": None if per_event is None else per_event * events,
            }
        )
    return sorted(rows, key=lambda r: (-r["runs"], r["workflow"]))


def mix(rows: list[dict[str, Any]]) -> str:
    """The measured mix in words: ``the measured mix of 2 workflows (etl: 60 runs of 5
    steps; ping: 40 runs of 1 step), 3.4 steps per run``."""
    runs = sum(r["runs"] for r in rows)
    steps = sum(r["steps"] * r["runs"] for r in rows) / runs
    each = "; ".join(
        f"{r['workflow']}: {r['runs']} run{'s' * (r['runs'] != 1)} of {r['steps']:g} "
        f"step{'s' * (r['steps'] != 1)}"
        for r in rows
    )
    return f"the measured mix of {len(rows)} workflows ({each}), {steps:.3g} steps per run"


def calibrate(runs: list[tuple[int, float]], bytes_per_event: float | None) -> Calibration | None:
    """A calibration from finished runs ``(events, steps)`` and the bytes an event takes;
    None when nothing has run yet. Events per step is the ratio of the totals, so a mix's
    mean steps per run gives its mean events per run."""
    if not runs or not bytes_per_event:
        return None
    events = sum(e for e, _ in runs) / len(runs)
    steps = sum(s for _, s in runs) / len(runs)
    return Calibration(
        bytes_per_event=bytes_per_event,
        events_per_step=max(0.0, (events - RUN_EVENTS) / steps) if steps else 0.0,
        source=f"measured ({len(runs)} runs, {events:.1f} events per run of {steps:.3g} steps)",
    )
