"""Chaos (issue 16): poison messages on every subject the engine consumes, written by a raw
nats-py client with the engine's token: the task queues (shared and sticky), the run
histories, the events stream and the KV buckets the engine reads (signals, triggers,
workflow definitions, workers). Then a good workload: every good run completes, each step
once, no slot is held; the reads answer; the engine starts again, its replay skipping
what it cannot apply and saying so, and runs again."""

from __future__ import annotations

import asyncio
import json

import nats
from conftest import until
from harness import (
    EngineChild,
    Tally,
    check_executions,
    check_runs,
    finish,
    read_log,
)

DEEP = b"[" * 5000 + b"]" * 5000  # past every JSON parser's nesting limit
BIG = b'{"pad": "' + b"x" * (900 * 1024) + b'"}'  # near max_payload (1 MiB)
JUNK = [b"", b"not json", b"\xff\xfe\x00", b"[1, 2]", b"5", b'"x"', b"null", b"{}", DEEP, BIG]


def objects(*bodies: dict) -> list[bytes]:
    return [json.dumps(b).encode() for b in bodies]


# Right shape, wrong content, for each kind of message.
BAD_TASKS = objects(
    {"run_id": "p1"},  # no step_id
    {"step_id": "a"},  # no run_id
    {"run_id": "p1", "step_id": 5},
    {"run_id": "p1", "step_id": None, "task": "chaos"},
    {"run_id": ["p1"], "step_id": "a"},
    {"run_id": "p1", "step_id": "a", "task": "chaos", "attempt": "x", "input": {"n": 1}},
    {"run_id": "has space", "step_id": "a", "task": "chaos", "input": {"n": 1}},
    {"run_id": "p1", "step_id": "a", "task": "chaos", "timeout_s": "soon", "input": {"n": 1}},
    # well-formed, of no run: a worker holds no run state and runs it; the result is ignored
    {"run_id": "p1", "step_id": "a", "task": "chaos", "input": {"n": 1}},
)
BAD_EVENTS = objects(
    {"type": "workflow.started", "run_id": "p2"},
    {"type": "workflow.started", "run_id": "p2", "payload": 5},
    {"type": "workflow.started", "run_id": "p2", "payload": {"workflow_def": {"steps": "x"}}},
    {"type": 5, "run_id": "p2"},
    {"type": "step.completed", "run_id": ["p2"], "step_id": "a"},
    {"type": "step.completed", "run_id": "other", "step_id": "a"},  # not its subject's run
)
BAD_RECORDS = [
    *JUNK,
    *objects(
        [1],
        {"id": ["t"]},
        {"id": "t1", "enabled": True, "cron": "every minute"},
        {"id": "t2", "enabled": True, "cron": {"expression": 5}},
        {"id": "t3", "enabled": True, "subject": "not an object"},
        {"id": "t4", "enabled": True, "workflow_id": ["x"], "subject": {"subject": "p.>"}},
        {"tasks": [1]},
        {"tasks": {"chaos": 5}, "task_types": 5, "heartbeat_at": 5},
        {"worker_id": "w", "tasks": {"chaos": {"concurrency": "many"}}},
    ),
]


def on_run(run_id: str) -> list[bytes]:
    """Messages on a waiting run's history that must not move it, nor break reading it
    (eng.events): no JSON, an unknown step, a wrong attempt, a payload or time that is no
    event's."""
    return [b"not json", DEEP] + objects(
        {"type": "step.completed", "run_id": run_id, "step_id": "nope"},
        {"type": "step.completed", "run_id": run_id, "step_id": "w", "attempt_number": "x"},
        {"type": "step.wait.matched", "run_id": run_id, "step_id": "w", "timestamp": "x"},
        {"type": "step.failed", "run_id": run_id, "step_id": "w", "payload": [5]},
    )


async def publish_poison(url: str, worker_id: str, waiting: list[str]) -> int:
    """Every poison message; how many were written."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sent = 0
    try:
        subjects = {
            "task.chaos.p1": JUNK + BAD_TASKS,
            f"sticky.chaos.{worker_id}.p1": JUNK + BAD_TASKS,
            "history.p2": JUNK + BAD_EVENTS,
            "event.go": JUNK + objects({"n": [1]}, {"m": 1}),
        }
        for run_id in waiting:
            subjects[f"history.{run_id}"] = on_run(run_id)
        for subject, bodies in subjects.items():
            for body in bodies:
                await js.publish(subject, body)
                sent += 1
        keys = {
            "signals": ["nosuchrun.go", "nodot", f"{waiting[0]}.other"],
            "triggers": ["p-trigger"],
            "workflow_defs": ["poison"],
            "workers": ["p-worker"],
        }
        for bucket, names in keys.items():
            kv = await js.key_value(bucket)
            for name in names:
                for i, body in enumerate(BAD_RECORDS):
                    await kv.put(f"{name}{i}" if bucket != "signals" else name, body)
                    sent += 1
    finally:
        await nc.close()
    return sent


def test_poison_on_every_subject_we_consume(tmp_path):
    tally = Tally("poison messages")
    log = tmp_path / "effects.log"
    child = EngineChild(tmp_path / "engine", log).start()
    try:
        waiting = child.start_runs([{"n": 1}, {"n": 2}], workflow="wait")
        until(
            lambda: all(
                s == "running" for s in child.ask("statuses", runs=waiting)["statuses"].values()
            ),
            what="two waiting runs",
        )
        tally.faults = asyncio.run(
            publish_poison(child.info["url"], child.info["worker_id"], waiting)
        )

        # The good workload, an event and a signal: each run completes.
        inputs = [{"n": i, "sleep": 0.02} for i in range(10)]
        runs = dict(zip(child.start_runs(inputs), range(10), strict=True))
        child.ask("call", method="publish_event", args=["go", {"n": 1}])
        child.ask("signal", run=waiting[1], name="go", value={"n": 2, "via": "signal"})
        report = finish(child, runs | dict.fromkeys(waiting, 0), timeout=30)
        # the good event and signal, not the poison, ended the waits: {"n": 1} and {"n": 2}
        assert [report[r]["output"]["n"] for r in waiting] == [2, 3], [report[r] for r in waiting]

        # The reads answer; the poison definition is refused in one line.
        for method in ("health", "status", "workflows", "runs", "consumer_lag", "triggers"):
            child.ask("call", method=method)
        refused = child.ask("start", workflow="poison0", inputs=[{}])
        assert refused["runs"] == [] and "\n" not in refused["error"], refused
        lag = {r["consumer"]: r for r in child.ask("lag")["rows"]}
        assert lag["workers-chaos"]["pending"] == 0 == lag["workers-chaos"]["ack_pending"], lag

        # A copy of a task done already is not run again.
        done = next(iter(runs))
        copy = {"run_id": done, "step_id": "a", "task": "chaos", "input": {"n": 0}}
        before = child.ask("errors")["stale"]
        child.ask("publish", subject=f"task.chaos.{done}", body=json.dumps(copy))
        until(lambda: child.ask("errors")["stale"] > before, what="the copy to be dropped")

        # The engine starts again: a replay of the whole history skips the poison and says
        # so (a snapshot restart does not read it again); it runs again.
        child.stop()
        child.start(snapshot_restart=False)
        skipped = [e for e in child.ask("errors")["errors"] if "skipped" in e]
        assert len(skipped) >= len(JUNK) + len(BAD_EVENTS), skipped
        more = dict(zip(child.start_runs([{"n": 100}, {"n": 101}]), (100, 101), strict=True))
        report |= finish(child, more)
    finally:
        child.stop()
    check_runs({r: report[r] for r in runs | more}, runs | more)
    keys = {(r, s) for r in runs | more for s in "abc"} | {(r, "a") for r in waiting}
    tally.executions, tally.duplicates, _ = check_executions(log, keys, set())
    forged = sum(1 for x in read_log(log) if x.phase == "start" and (x.run, x.step) not in keys)
    tally.runs, tally.allowed = len(runs) + len(more) + len(waiting), 0
    tally.notes.append(f"{forged} forged well-formed task(s) of no run executed")
    print(tally.line())
