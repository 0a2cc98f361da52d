"""An engine's status (``Engine.status()``) as text: the terminal's ``dagnats status`` and a
notebook's plain-text display both show it."""

from __future__ import annotations

from typing import Any


def format_status(status: dict[str, Any]) -> str:
    """Health warnings first, then connection, streams, workers and pending tasks."""
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
    lines.append(f"{'stream':<18}{'messages':>10}{'bytes':>14}")
    for s in status["streams"]:
        lines.append(f"{s['stream']:<18}{s['messages']:>10}{s['bytes']:>14}")
    lines.append("")
    lines.append("workers:" if status["workers"] else "workers: none")
    for w in status["workers"]:
        tasks = ", ".join(f"{t} (x{v['concurrency']})" for t, v in w.get("tasks", {}).items())
        lines.append(f"  {w['worker_id']}  pid {w['pid']}  {tasks or '(no tasks)'}")
    pending = status.get("pending_tasks", {})
    lines.append("pending tasks: " + (", ".join(f"{t}={n}" for t, n in pending.items()) or "none"))
    orch = status.get("orchestrator")
    if orch:
        lines.append(f"runs: {orch['runs']} ({orch['active_runs']} active)")
    return "\n".join(lines)
