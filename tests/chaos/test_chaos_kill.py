"""Chaos (issue 16): ``kill -9`` of the engine at random points of a workload (the last
kill takes its nats-server down at the same instant; otherwise the server gets SIGTERM
from its dying parent), and of its nats-server alone. Every accepted run completes after a
restart, each result is applied once, and only tasks in flight in the killed process run
twice."""

from __future__ import annotations

import os
import random
import signal

from conftest import until
from harness import (
    SLOTS,
    EngineChild,
    Tally,
    check_executions,
    check_runs,
    executions,
    finish,
    pid_alive,
)

SEED = 16  # the kill points; CHAOS_SEED=... for others
KILLS = 3
BATCH = 10  # runs started before each kill: 30 runs of a 3-step chain in all


def test_kill_9_of_the_engine_at_random_points(tmp_path):
    tally = Tally("kill -9 of the engine")
    rng = random.Random(int(os.environ.get("CHAOS_SEED", SEED)))
    log = tmp_path / "effects.log"
    child = EngineChild(tmp_path / "engine", log).start()
    runs: dict[str, int] = {}
    killed: set[int] = set()
    try:
        for k in range(KILLS):
            inputs = [{"n": len(runs) + i, "sleep": 0.1} for i in range(BATCH)]
            runs |= dict(zip(child.start_runs(inputs), (v["n"] for v in inputs), strict=True))
            # A random point: right after the start (0: while the restarted engine resumes
            # and dispatches) or after a few more executions, up to 15.
            target = executions(log) + rng.randint(0, 15)
            until(lambda t=target: executions(log) >= t, timeout=20, what="the kill point")
            tally.notes.append(f"kill {k + 1} at execution {executions(log)}")
            if k == KILLS - 1:  # the last one takes the server down at the same instant
                os.kill(child.info["server_pid"], signal.SIGKILL)
            killed.add(child.proc.pid)
            child.kill()
            tally.faults += 1
            child.start()  # the engine starts again after each kill
        report = finish(child, runs)
    finally:
        child.stop()
    check_runs(report, runs)
    keys = {(r, s) for r in runs for s in "abc"}
    tally.executions, tally.duplicates, _ = check_executions(log, keys, killed)
    tally.runs, tally.allowed = len(runs), SLOTS * KILLS
    print(tally.line())


def test_kill_9_of_the_nats_server_alone(tmp_path):
    """The engine says so in one line (every wait ends); stopped and started again, it
    resumes every run."""
    tally = Tally("kill -9 of nats-server")
    log = tmp_path / "effects.log"
    child = EngineChild(tmp_path / "engine", log).start()
    try:
        inputs = [{"n": i, "sleep": 0.1} for i in range(12)]
        runs = dict(zip(child.start_runs(inputs), range(12), strict=True))
        waiting = child.send("watch", runs=list(runs))
        until(lambda: executions(log) >= 8, timeout=20, what="eight executions")
        server = child.info["server_pid"]
        os.kill(server, signal.SIGKILL)
        tally.faults += 1
        until(lambda: not pid_alive(server), timeout=5, what="nats-server to die")
        ended = child.answer(waiting, timeout=15, what="the waits to end")
        error = ended.get("error", "")
        assert "the embedded nats-server has exited" in error, ended
        assert "start it again" in error and "\n" not in error, error
        assert len(ended["ended"]) < len(runs), "the workload ended before the kill"
        tally.notes.append(f"waits ended with {error[:60]!r}...")
        child.stop(timeout=20)  # eng.stop() with its server gone: it must not hang
        assert child.proc.returncode == 0, child.stderr()
        child.start()
        report = finish(child, runs)
    finally:
        child.stop()
    check_runs(report, runs)
    keys = {(r, s) for r in runs for s in "abc"}
    tally.executions, tally.duplicates, _ = check_executions(log, keys, set(child.pids[:1]))
    tally.runs, tally.allowed = len(runs), SLOTS
    print(tally.line())
