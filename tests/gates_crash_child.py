"""Child process of the waiting-steps crash test: starts a sleeping, an approval-waiting,
an event-waiting and a child-waiting run (its child sleeps), prints one JSON line once all
four wait, then waits to be SIGKILLed."""

from __future__ import annotations

import json
import sys
import time

from conftest import until  # tests/ is this script's directory, first on sys.path

import dagnats_nb as dn


def flow(name: str, gate: dict) -> dict:
    return {
        "name": name,
        "steps": [
            {"id": "gate", **gate},
            {"id": "after", "task": "after", "depends_on": ["gate"]},
        ],
    }


CHILD = {"name": "kid", "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "4s"}}]}
WORKFLOWS = [
    flow("parent", {"type": "sub_workflow", "config": {"workflow": "kid"}}),
    flow("nap", {"type": "sleep", "config": {"duration": "6s"}}),
    flow("review", {"type": "approval", "config": {"subject": "approvals.x", "timeout": "1h"}}),
    flow(
        "hold",
        {
            "type": "wait_for_event",
            "config": {
                "event": "shipped",
                "match": {"left": "order", "op": "eq", "right": "input.order"},
                "timeout": "1h",
            },
        },
    ),
]


def main(data_dir: str, restart: str) -> None:
    snapshots = restart == "snapshots"
    eng = dn.Engine.start(data_dir=data_dir, ack_wait="2s", snapshot_restart=snapshots)

    @eng.task("after")
    def after(ctx):
        return {"after": ctx.input}

    eng.register(CHILD)
    for wf in WORKFLOWS:
        eng.register(wf)
    ids = {wf["name"]: eng.start_run(wf["name"], input={"order": 42}).id for wf in WORKFLOWS}

    def waiting() -> bool:
        ok = all(eng.run_state(r)["state"].step("gate").status == "running" for r in ids.values())
        child = f"{ids['parent']}-gate"
        ok = ok and eng.run_state(child)["state"].step("nap").status == "running"
        types = set(eng.events(ids["review"])["type"])
        return ok and "approval.requested" in types

    until(waiting, timeout=30, every=0.05, what="four waiting runs")
    if snapshots:  # a checkpoint was written: the restart begins after it
        until(lambda: eng.orchestrator.snapshots.checkpoint_seq, timeout=10, what="a checkpoint")
    wake = eng.run_state(ids["nap"])["state"].step("gate").due_at
    print(json.dumps({"runs": ids, "wake": wake, "server_pid": eng.server.pid}), flush=True)
    time.sleep(600)  # waits to be SIGKILLed by the test


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
