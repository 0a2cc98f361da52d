"""The chaos suite's engine, in a child process the test can SIGKILL or SIGSTOP.

``python tests/chaos/engine_child.py DATA_DIR OPTIONS_JSON``: starts ``Engine.start`` on
``DATA_DIR`` (settings from the options; ``"serve": false`` leaves the ``chaos`` task to
worker processes), registers the suite's workflows, prints one JSON line ``{"ready": ...}``,
then answers commands: one JSON object a line on stdin (``{"id", "cmd", ...}``), one JSON
line on stdout for each (``{"re": id, ...}``; ``{"re": id, "error": "..."}`` when it
fails). ``watch`` answers once its runs end, from a thread, so other commands go on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
import warnings
from typing import Any

from chaos_tasks import SLOTS, work  # tests/chaos/ is this script's directory

import dagnats_nb as dn
from dagnats_nb.errors import DagnatsError

CHAIN = {  # three steps of one task: a -> b -> c, each n + 1
    "name": "chain",
    "steps": [
        {"id": "a", "task": "chaos"},
        {"id": "b", "task": "chaos", "depends_on": ["a"]},
        {"id": "c", "task": "chaos", "depends_on": ["b"]},
    ],
}
ONE = {"name": "one", "steps": [{"id": "a", "task": "chaos"}]}
WAIT = {  # waits for event `go` (a message on event.go, or a signal `go` to the run)
    "name": "wait",
    "steps": [
        {
            "id": "w",
            "type": "wait_for_event",
            "config": {
                "event": "go",
                "match": {"left": "n", "op": "eq", "right": "input.n"},
                "timeout": "1h",
            },
        },
        {"id": "a", "task": "chaos", "depends_on": ["w"]},
    ],
}

_out = threading.Lock()

TERMINAL = {"workflow.completed", "workflow.failed", "workflow.cancelled"}


def say(**fields: Any) -> None:
    with _out:
        sys.stdout.write(json.dumps(fields, default=str) + "\n")
        sys.stdout.flush()


def report(eng: dn.Engine, run_ids: list[str]) -> dict[str, Any]:
    """What the test checks of each run, read from this engine (the one that runs them)."""
    out = {}
    for rid in run_ids:
        state = eng.run_state(rid)
        if state is None:
            out[rid] = {"status": None}
            continue
        events = eng.history(rid)
        completed: dict[str, int] = {}
        queued: dict[str, int] = {}
        for e in events:
            if e.type == "step.completed":
                completed[e.step_id] = completed.get(e.step_id, 0) + 1
            elif e.type == "step.queued":
                queued[e.step_id] = queued.get(e.step_id, 0) + 1
        run = state["state"]
        output = eng.run_output(rid)
        if isinstance(output, dict) and "data" in output:
            output = {**output, "data": len(output["data"])}  # its size, not 1 MiB of x
        out[rid] = {
            "status": state["status"],
            "error": state["error"],
            "output": output,
            "steps": {
                sid: {"status": st.status, "attempt": st.attempt, "worker": st.worker_id}
                for sid, st in run.steps.items()
            },
            "completed_events": completed,
            "queued_events": queued,
            "ended": sum(1 for e in events if e.type == "workflow.completed"),
            # events up to the run's end: one that left memory applies none after it
            "history_to_end": next(
                (i + 1 for i, e in enumerate(events) if e.type in TERMINAL), len(events)
            ),
            "applied": run.event_count,
            "history": len(events),
        }
    return out


def handle(eng: dn.Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    what = cmd["cmd"]
    if what == "start":
        ids = []
        try:
            for value in cmd["inputs"]:
                ids.append(eng.start_run(cmd.get("workflow", "chain"), value).id)
        except DagnatsError as exc:
            return {"runs": ids, "error": str(exc)}
        return {"runs": ids}
    if what == "report":
        return {"runs": report(eng, cmd["runs"])}
    if what == "health":
        return {"rows": eng.health().to_dict("records")}
    if what == "gate":
        return {"refusing": eng.host.gate.refusing, "reason": eng.host.gate.reason}
    if what == "errors":
        scheduler = eng.trigger_scheduler
        triggers = list(scheduler.errors) if scheduler is not None else []
        return {
            "errors": list(eng.orchestrator.errors),
            "triggers": triggers,
            "requeued": eng.orchestrator.counters["tasks_requeued"],
            "stale": sum(w.stale for w in eng.workers.values()),
        }
    if what == "statuses":
        return {"statuses": {r: (eng.run_state(r) or {}).get("status") for r in cmd["runs"]}}
    if what == "signal":
        eng.signal(cmd["run"], cmd["name"], cmd["value"])
        return {}
    if what == "lag":
        return {"rows": eng.consumer_lag().to_dict("records")}
    if what == "publish":  # a raw message, as any client of the engine's NATS may send
        eng._call(eng._js.publish(cmd["subject"], cmd["body"].encode()))
        return {}
    if what == "call":  # a read-only facade method that must answer (the poison test)
        value = getattr(eng, cmd["method"])(*cmd.get("args", []))
        return {"value": repr(value)[:200]}
    raise ValueError(f"unknown command {what!r}")


def watch(eng: dn.Engine, re: int, run_ids: list[str]) -> None:
    """Wait on each run with no timeout; say how they ended, or the one line that ended the
    wait (a dead server)."""
    ended: dict[str, str] = {}
    try:
        for rid in run_ids:
            ended[rid] = eng.get_run(rid).wait(timeout=None).status
    except DagnatsError as exc:
        say(re=re, ended=ended, error=str(exc))
        return
    say(re=re, ended=ended)


def main(data_dir: str, options: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    opts = json.loads(options)
    serve = opts.pop("serve", True)
    opts.setdefault("ack_wait", "2s")
    opts.setdefault("llm_enabled", False)
    handlers = {"chaos": (work, SLOTS)} if serve else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a stale engine.json, tasks unserved until workers come
        eng = dn.Engine.start(data_dir=data_dir, handlers=handlers, **opts)
        for wf in (CHAIN, ONE, WAIT):
            eng.register(wf)
    say(
        ready=True,
        pid=os.getpid(),
        server_pid=eng.server.pid,
        url=eng.connect_url,
        worker_id=eng.worker_id,
    )
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "stop":
            eng.stop()
            say(re=cmd["id"], stopped=True)
            return
        if cmd["cmd"] == "watch":
            threading.Thread(target=watch, args=(eng, cmd["id"], cmd["runs"]), daemon=True).start()
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                say(re=cmd["id"], **handle(eng, cmd))
        except Exception as exc:
            say(re=cmd["id"], error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
    eng.stop()  # stdin closed: the test is gone


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
