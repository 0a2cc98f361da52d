"""Chaos (issue 16): no room to store. ENOSPC on a small tmpfs under the data dir (the
message path), and a store full at ``max_store_bytes`` when outputs go to the object store.
While nothing can be stored no step runs again (the workers hold their results), health()
says why; the engine is killed in that state, and once there is room again it starts and
every accepted run completes."""

from __future__ import annotations

import contextlib
import os
import time

from conftest import until
from harness import (
    SLOTS,
    EngineChild,
    Tally,
    check_executions,
    check_runs,
    executions,
    finish,
    in_flight,
    read_log,
)

MiB = 1024**2


def no_step_ran_twice_for(log, seconds: float) -> None:
    """Watch the log for ``seconds`` (two ack waits and a half: a task given up by its
    worker is delivered again after one): no (run, step) starts a second time."""

    def twice() -> bool:
        starts = [(x.run, x.step) for x in read_log(log) if x.phase == "start"]
        return len(starts) != len(set(starts))

    with contextlib.suppress(AssertionError):
        until(twice, timeout=seconds, every=0.1, what="a step to run twice")
    starts = [(x.run, x.step) for x in read_log(log) if x.phase == "start"]
    assert len(starts) == len(set(starts)), "a step ran again while its result was held"


def refused_row(child: EngineChild) -> dict:
    """health()'s row for the refused results, once it shows (a held result may get in
    when a run ends and frees a little room: the gate reopens, then refuses again)."""
    found: dict = {}

    def shown() -> bool:
        rows = {r["check"]: r for r in child.ask("health")["rows"]}
        found.update(rows.get("results refused by JetStream") or {})
        return bool(found)

    until(shown, timeout=30, what="health to name the refused results")
    return found


def test_enospc_on_a_small_tmpfs(tmp_path, small_disk):
    tally = Tally("ENOSPC (48 MiB tmpfs)")
    log = tmp_path / "effects.log"
    hold = tmp_path / "go"  # the first steps end once the disk is full
    filler = small_disk / "filler"
    child = EngineChild(small_disk / "engine", log).start()
    try:
        inputs = [{"n": i, "sleep": 0, "hold": str(hold)} for i in range(8)]
        runs = dict(zip(child.start_runs(inputs), range(8), strict=True))
        until(lambda: len(in_flight(log, child.proc.pid)) == SLOTS, what="every slot busy")
        stat = os.statvfs(small_disk)
        with open(filler, "wb") as f:
            f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 4096))
        hold.touch()
        until(lambda: child.ask("gate")["refusing"], timeout=30, what="the results held")
        tally.faults += 1
        no_step_ran_twice_for(log, 5)
        row = refused_row(child)
        assert row["level"] == "critical" and "free disk space" in row["action"], row
        refused = child.ask("start", inputs=[{"n": 99}])
        assert refused["runs"] == [] and "JetStream stores nothing now" in refused["error"]
        assert "\n" not in refused["error"]
        held = executions(log)
        child.kill()  # kill -9 while the disk is full: the held results are lost
        tally.faults += 1
        filler.unlink()
        child.start()  # with room again, the engine starts and resumes every run
        report = finish(child, runs)
        after = child.ask("errors")
    finally:
        filler.unlink(missing_ok=True)
        child.stop()
    check_runs(report, runs)
    keys = {(r, s) for r in runs for s in "abc"}
    tally.executions, tally.duplicates, _ = check_executions(log, keys, set(child.pids[:1]))
    tally.runs, tally.allowed = len(runs), SLOTS
    tally.notes.append(
        f"{held} executed before the kill; after it {after['requeued']} lost task(s) sent "
        f"again, {after['stale']} redelivered done task(s) not run"
    )
    print(tally.line())


def test_store_full_on_the_object_store_path(tmp_path):
    """Outputs of 1.5 MiB go to the object store (``$ref``) until the store, 24 MiB, is
    full: the object-store write (or the result's publish, whichever meets the full store
    first) fails, the worker holds the output and its step does not run again; restarted
    with 256 MiB, every run completes with its output read back from the object store."""
    tally = Tally("store full (object store)")
    log = tmp_path / "effects.log"
    child = EngineChild(tmp_path / "engine", log, max_store_bytes="24MiB").start()
    blob = 3 * MiB // 2
    try:
        inputs = [{"n": i, "sleep": 0, "blob": blob} for i in range(16)]
        runs = dict(zip(child.start_runs(inputs, workflow="one"), range(16), strict=True))
        until(lambda: child.ask("gate")["refusing"], timeout=30, what="the store to fill")
        tally.faults += 1
        # whichever write met the full store first: an output's object-store write or a
        # result event's publish (a run of 16 races for the last bytes)
        reason = child.ask("gate")["reason"] or ""
        assert "JetStream storage is full" in reason, reason
        no_step_ran_twice_for(log, 5)
        row = refused_row(child)
        assert row["level"] == "critical", row
        statuses = child.ask("statuses", runs=list(runs))["statuses"]
        waiting = sum(1 for s in statuses.values() if s != "completed")
        assert waiting, "every run completed: the store never filled"
        held = executions(log)
        began = time.monotonic()
        child.stop()
        tally.notes.append(f"stop took {time.monotonic() - began:.1f}s")
        child.start(max_store_bytes="256MiB")
        report = finish(child, runs)
    finally:
        child.stop()
    check_runs(report, runs, steps="a")
    for rid, r in report.items():
        assert r["output"]["data"] == blob, (rid, r["output"])
    keys = {(r, "a") for r in runs}
    tally.executions, tally.duplicates, _ = check_executions(log, keys, set(child.pids[:1]))
    tally.runs, tally.allowed = len(runs), SLOTS
    tally.notes.append(f"{waiting} runs waiting while full, {held} executed before the restart")
    print(tally.line())
