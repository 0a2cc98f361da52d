"""A SIGKILLed engine loses no run: a new engine on the same data_dir finishes them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import until

import dagnats_nb as dn


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


RESTARTS = ["history", "snapshots"]  # replay it all; or the snapshots and what follows


@pytest.mark.parametrize("restart", RESTARTS)
def test_sigkill_mid_run_then_restart_finishes_every_run(tmp_path, restart):
    data = tmp_path / "engine"
    script = str(Path(__file__).with_name("crash_child.py"))
    child = subprocess.Popen(
        [sys.executable, script, str(data), "4", restart],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line, f"child exited early with {child.wait()}"
        info = json.loads(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    server_pid = info["server_pid"]
    until(
        lambda: not pid_alive(server_pid),
        timeout=5,
        every=0.05,
        what="nats-server to die with its SIGKILLed parent",
    )

    calls: Counter = Counter()
    snapshots = restart == "snapshots"
    with pytest.warns(UserWarning, match=f"cleaned stale engine.json left by pid {child.pid}"):
        eng = dn.Engine.start(data_dir=data, ack_wait="2s", snapshot_restart=snapshots)
    with eng:
        assert bool(eng.orchestrator.restored_from) == snapshots

        @eng.task("quick")
        def quick(ctx):
            calls[ctx.step_id] += 1
            return {"step": ctx.step_id, "input": ctx.input}

        @eng.task("slow")
        def slow(ctx):
            calls["b"] += 1
            return "slow done"

        @eng.task("flaky")
        def flaky(ctx):
            calls["c"] += 1
            assert ctx.attempt == 2
            return "flaky done"

        runs = [eng.get_run(r) for r in info["runs"]]
        for run in runs:
            run.wait(timeout=60)
        for run in runs:
            assert run.status == "completed", run.error
            assert run.output == {"step": "d", "input": {"b": "slow done", "c": "flaky done"}}
            steps = eng.steps(run.id).set_index("step_id")
            assert list(steps["status"]) == ["completed"] * 4
            assert steps.loc["a", "attempt"] == 1
            assert steps.loc["c", "attempt"] == 2
            events = eng.events(run.id)
            completions = Counter(events.query("type == 'step.completed'")["step_id"])
            assert completions["a"] == 1 and completions["d"] == 1
        # Step a finished before the crash and never runs again; b (in flight) and c (retry
        # pending) run once more each per run; d runs once per run.
        assert calls == {"b": 4, "c": 4, "d": 4}
    assert not os.path.exists(data / "engine.json")


def test_a_forged_start_with_a_bad_run_id_neither_runs_nor_blocks_a_restart(tmp_path):
    """A ``workflow.started`` whose run id is not its subject's (here: with a space) is
    skipped with a line in the orchestrator's errors; the engine restarts and runs."""
    import json as _json

    import dagnats_nb as dn

    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False) as eng:
        eng.register({"name": "ok", "steps": [{"id": "a", "task": "t"}]})
        forged = {
            "type": "workflow.started",
            "run_id": "has space",
            "timestamp": "2026-11-30T10:00:00.000000Z",
            "payload": {"workflow_def": eng.workflow("ok").to_dict(), "input": 1},
        }
        eng._call(eng._js.publish("history.forged", _json.dumps(forged).encode()))
        wanted = "does not match subject history.forged"
        until(lambda: any(wanted in e for e in eng.orchestrator.errors), what="the skip")
    # a restart that reads the whole history meets it again (a snapshot restart would not)
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False, snapshot_restart=False) as eng:

        @eng.task("t")
        def t(ctx):
            return ctx.input + 1

        assert eng.run("ok", 1, timeout=20).output == 2
        assert any("does not match subject history.forged" in e for e in eng.orchestrator.errors)
        assert "has space" not in set(eng.runs()["run_id"])


@pytest.mark.parametrize("restart", RESTARTS)
def test_sigkill_while_runs_sleep_wait_for_an_event_for_approval_and_for_a_child(tmp_path, restart):
    """Each waiting run resumes after a kill -9 and finishes; each gate ends once: the
    sleep on time, the approval with the token issued before the crash, the event once,
    the child (asleep at the crash) once, reported to its parent once."""
    data = tmp_path / "engine"
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("gates_crash_child.py")), str(data), restart],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line, f"child exited early with {child.wait()}"
        info = json.loads(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    until(lambda: not pid_alive(info["server_pid"]), timeout=5, every=0.05, what="server death")
    runs = info["runs"]

    calls: Counter = Counter()
    snapshots = restart == "snapshots"
    with pytest.warns(UserWarning, match="cleaned stale engine.json"):
        eng = dn.Engine.start(data_dir=data, ack_wait="2s", snapshot_restart=snapshots)
    with eng:
        assert bool(eng.orchestrator.restored_from) == snapshots

        @eng.task("after")
        def after(ctx):
            calls[ctx.workflow_name] += 1
            return {"after": ctx.input}

        eng.approve(runs["review"], "gate", "after the crash", by="ada")
        eng.publish_event("shipped", {"order": 42})
        done = {name: eng.get_run(r).wait(timeout=60) for name, r in runs.items()}
        for name, run in done.items():
            assert run.status == "completed", (name, run.error)
        assert done["hold"].output == {"after": {"order": 42}}
        assert done["review"].output["after"]["comment"] == "after the crash"
        ended = {name: Counter(eng.events(r)["type"]) for name, r in runs.items()}
        assert ended["nap"]["step.sleep.started"] == 1 and ended["nap"]["step.sleep.completed"] == 1
        assert ended["review"]["approval.requested"] == 1
        assert ended["review"]["approval.granted"] == 1
        assert ended["hold"]["step.wait.matched"] == 1
        woke = eng.events(runs["nap"]).set_index("type").loc["step.sleep.completed", "time"]
        assert info["wake"] <= woke.timestamp() < info["wake"] + 2
        assert calls == {"nap": 1, "review": 1, "hold": 1, "parent": 1}
        assert ended["parent"]["workflow.spawn"] == 1
        assert ended["parent"]["workflow.child.completed"] == 1
        child = eng.get_run(f"{runs['parent']}-gate")
        assert child.status == "completed"
        assert Counter(eng.events(child.id)["type"])["step.sleep.completed"] == 1
