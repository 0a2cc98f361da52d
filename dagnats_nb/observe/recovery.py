"""The recovery window of an engine: how long a restart takes and how much history it needs
(pure; ``observe.sizing`` puts it in an estimate, ``observe.health`` watches it live).

With ``snapshot_restart`` a restart loads the last checkpoint's active runs from their
snapshots (``runtime.snapshots``) and replays only the history after the checkpoint. So the
engine's part takes ``RESTART_BASE_S`` + active runs × ``LOAD_PER_RUN_S`` + events since the
checkpoint ÷ ``REPLAY_EVENTS_PER_S``, and the history it needs is what was written since the
checkpoint: (checkpoint period + downtime) × event rate. Neither depends on the store size:
retention (``runs_max_age``, ``history_max_bytes``) may remove any event at or before the
checkpoint. What still grows with the store is nats-server's own start (it recovers its
store: ``SERVER_S_PER_GIB``). Without it a restart replays the whole history.
"""

from __future__ import annotations

from .units import human_bytes

# Measured 2026-12-01 (2-core VM, embedded engine, Engine.start on a stopped data dir): 0.13 s
# with nothing to load; 2,000 waiting runs restored from their snapshots in 0.31-0.49 s more.
RESTART_BASE_S = 0.5  # an engine's start with nothing to load (server, connect, streams)
LOAD_PER_RUN_S = 2.5e-4  # one active run's snapshot read, decoded and resumed
REPLAY_EVENTS_PER_S = 20_000.0  # history replay: 100,000 events in 3.5-6.6 s (docs/sizing.md)
CHECKPOINT_PERIOD_S = 1.0  # runtime.snapshots.TICK
# nats-server recovering its store at start: 0.07 s empty, 0.9-1.0 s alone on 2.3 GB, 1.74 s
# of a 2.07 s restart on a loaded machine (benchmarks/README.md, benchmarks/history.py)
SERVER_S_PER_GIB = 0.5


def window(
    *,
    events_per_s: float,
    active_runs: float,
    bytes_per_event: float,
    downtime_s: float,
    history_bytes: float,
    store_bytes: float = 0.0,
) -> dict[str, float]:
    """The recovery window of a workload writing ``events_per_s`` history events with
    ``active_runs`` runs active, down ``downtime_s`` seconds, its history holding
    ``history_bytes`` of a store of ``store_bytes``: with ``snapshot_restart``, the events
    written since the last checkpoint, the history bytes a restart needs (what retention must
    keep) and the restart's time (nats-server's start, ``server_s``, included); without it,
    the whole history's replay."""
    events = (CHECKPOINT_PERIOD_S + downtime_s) * events_per_s
    whole = history_bytes / bytes_per_event if bytes_per_event else 0.0
    server = store_bytes / (1 << 30) * SERVER_S_PER_GIB
    return {
        "events_per_s": events_per_s,
        "events_since_checkpoint": events,
        "history_needed_bytes": events * bytes_per_event,
        "server_s": server,
        "restart_s": RESTART_BASE_S
        + server
        + active_runs * LOAD_PER_RUN_S
        + events / REPLAY_EVENTS_PER_S,
        "full_replay_events": whole,
        "full_replay_s": RESTART_BASE_S + server + whole / REPLAY_EVENTS_PER_S,
    }


def describe(w: dict[str, float], downtime_minutes: float) -> str:
    """One line: the restart's time and the history it needs, and the full replay's."""
    return (
        f"recovery (snapshot_restart): restart ~{w['restart_s']:.3g} s after "
        f"{downtime_minutes:g} min down (nats-server's store {w['server_s']:.2g} s of it), "
        f"needing the last {human_bytes(w['history_needed_bytes'])} of history "
        f"({w['events_since_checkpoint']:,.0f} events); full replay: ~{w['full_replay_s']:.3g} s"
    )
