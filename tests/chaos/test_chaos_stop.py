"""Chaos (issue 16): a worker process SIGSTOPped for longer than ``ack_wait``. Its tasks go
to the other worker; once it continues, its late results are duplicates the core ignores:
each result is applied once, and only the stopped tasks ran twice."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from conftest import until
from harness import (
    SLOTS,
    EngineChild,
    Tally,
    WorkerProc,
    check_executions,
    check_runs,
    finish,
    in_flight,
    read_log,
)

HISTORY_DEDUP = 5.0  # WORKFLOW_HISTORY's duplicate window (wire/resources.py)


def stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_sigstop_of_a_worker_longer_than_ack_wait(tmp_path):
    tally = Tally("SIGSTOP of a worker")
    log = tmp_path / "effects.log"
    data = tmp_path / "engine"
    child = EngineChild(data, log, serve=False).start()  # the workers are processes
    workers = [WorkerProc(data, log, f"w{i}") for i in (1, 2)]
    try:
        for w in workers:
            w.wait_ready()
        w1, w2 = workers
        inputs = [{"n": i, "sleep": 0.3} for i in range(12)]
        runs = dict(zip(child.start_runs(inputs), range(12), strict=True))
        until(lambda: in_flight(log, w1.pid), timeout=20, what="a task in flight in w1")
        w1.proc.send_signal(signal.SIGSTOP)
        tally.faults += 1
        until(lambda: stopped(w1.pid), timeout=5, what="w1 to stop")
        held = in_flight(log, w1.pid)

        def redone() -> bool:  # each held task ran to its end in w2
            ends = {(x.run, x.step) for x in read_log(log) if x.pid == w2.pid and x.phase == "end"}
            return held <= ends

        until(redone, timeout=20, what="w2 to run w1's tasks after the ack wait")
        redone_at = time.monotonic()
        # Held past the history's duplicate window, w1's results are stored when it
        # continues (not dropped by JetStream as duplicates): the core itself must ignore
        # them. Polled as a condition on the clock: nothing else marks the window's end.
        until(
            lambda: time.monotonic() > redone_at + HISTORY_DEDUP + 0.5,
            timeout=HISTORY_DEDUP + 2,
            what="the history's duplicate window to pass",
        )
        assert stopped(w1.pid)
        w1.proc.send_signal(signal.SIGCONT)
        report = finish(child, runs)

        def late_results_stored() -> bool:  # w1's late step.completed reached the history
            got = child.ask("report", runs=sorted({r for r, _ in held}))["runs"]
            return all(got[r]["completed_events"].get(s) == 2 for r, s in held)

        until(late_results_stored, timeout=15, what="w1's late results in the history")
        report = child.ask("report", runs=list(runs))["runs"]
    finally:
        for w in workers:
            w.stop()
        child.stop()
    check_runs(report, runs)
    for r, s in held:  # the result applied is w2's; w1's later one changed nothing
        assert report[r]["steps"][s]["worker"] == "w2", report[r]["steps"]
    keys = {(r, s) for r in runs for s in "abc"}
    tally.executions, tally.duplicates, again = check_executions(log, keys, {w1.pid})
    assert held <= again and tally.duplicates <= SLOTS, (held, again)
    tally.runs, tally.allowed = len(runs), SLOTS
    tally.notes.append(f"{len(held)} held by the stopped worker, late results ignored")
    print(tally.line())
