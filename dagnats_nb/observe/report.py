"""An engine's status (``Engine.status()``) as text: the terminal's ``dagnats status`` and a
notebook's plain-text display both show it."""

from __future__ import annotations

from typing import Any

from dagnats_nb.observe.units import human_bytes
from dagnats_nb.wire.workers import read_entry


def format_status(status: dict[str, Any]) -> str:
    """Health warnings first, then connection, streams, workers, engines and pending
    tasks."""
    lines = [
        f"engine   {status['url']}  ({'connected' if status['connected'] else 'DISCONNECTED'})",
        f"data_dir {status['data_dir']}",
    ]
    warnings = [
        f"{h['level'].upper()}: {h['check']} of {h['subject']} is {h['value']} "
        f"(threshold {h['threshold']}): {h['action']}"
        for h in status.get("health", [])
    ]
    lines = warnings + lines
    lines.append("")
    lines.append(f"{'stream':<18}{'messages':>10}{'bytes':>12}")
    for s in status["streams"]:
        lines.append(f"{s['stream']:<18}{s['messages']:>10,}{human_bytes(s['bytes']):>12}")
    lines.append("")
    lines.append("workers:" if status["workers"] else "workers: none")
    for w in map(read_entry, status["workers"]):
        tasks = ", ".join(t if c is None else f"{t} (x{c})" for t, c in w.tasks.items())
        lang = "" if w.language == "python" else f" ({w.language})"
        lines.append(f"  {w.worker_id}{lang}  pid {w.pid}  {tasks or '(no tasks)'}")
    engines = status.get("engines") or []
    lines.append("engines:" if engines else "engines: none heartbeating")
    for e in engines:
        role = "orchestrates" if e["orchestrates"] else "works tasks and reads"
        me = "  (this one)" if e.get("self") else ""
        lines.append(
            f"  {e['engine_id']}  {e['host']} pid {e['pid']}  {role}  "
            f"{e['state']}, heartbeat {e['age']:g}s ago{me}"
        )
    pending = status.get("pending_tasks", {})
    lines.append("pending tasks: " + (", ".join(f"{t}={n}" for t, n in pending.items()) or "none"))
    orch = status.get("orchestrator")
    if orch:
        gone = orch.get("runs_left_memory", 0)
        lines.append(
            f"runs: {orch['active_runs']} active, {orch['runs']} in memory"
            + (f", {gone:,} ended since start (their records answer)" if gone else "")
        )
        if orch.get("checkpoint_seq"):
            lines.append(f"checkpoint: history message {orch['checkpoint_seq']:,}")
    return "\n".join(lines)
