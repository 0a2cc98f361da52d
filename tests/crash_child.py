"""Child process of the crash-recovery test: runs an engine with runs in flight, then waits
to be SIGKILLed. Prints one JSON line once the runs are in the state the test needs."""

from __future__ import annotations

import json
import sys
import time

from conftest import until  # tests/ is this script's directory, first on sys.path

import dagnats_nb as dn

WORKFLOW = {
    "name": "crashy",
    "steps": [
        {"id": "a", "task": "quick"},
        {"id": "b", "task": "slow", "depends_on": ["a"]},
        {
            "id": "c",
            "task": "flaky",
            "retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "5s"},
        },
        {"id": "d", "task": "quick", "depends_on": ["b", "c"]},
    ],
}


def main(data_dir: str, runs: int, restart: str) -> None:
    snapshots = restart == "snapshots"
    eng = dn.Engine.start(data_dir=data_dir, ack_wait="2s", snapshot_restart=snapshots)

    @eng.task("quick")
    def quick(ctx):
        return {"step": ctx.step_id, "input": ctx.input}

    @eng.task("slow", concurrency=8)
    def slow(ctx):
        time.sleep(600)  # in flight when the process is SIGKILLed

    @eng.task("flaky")
    def flaky(ctx):
        raise ConnectionError("first attempt always fails")

    eng.register(WORKFLOW)
    ids = [eng.start_run("crashy", input={"n": i}).id for i in range(runs)]

    def in_the_wanted_state() -> bool:
        states = [eng.run_state(r)["state"] for r in ids]
        return all(
            s.step("a").status == "completed"
            and s.step("b").status == "running"
            and s.step("c").status == "retrying"
            for s in states
        )

    until(in_the_wanted_state, timeout=30, every=0.05, what="runs in the wanted state")
    if snapshots:  # a checkpoint was written: the restart begins after it
        until(lambda: eng.orchestrator.snapshots.checkpoint_seq, timeout=10, what="a checkpoint")
    print(json.dumps({"runs": ids, "server_pid": eng.server.pid}), flush=True)
    time.sleep(600)  # waits to be SIGKILLed by the test


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
