"""The Go dagnats CLI on a dagnats-nb engine: what it lists, starts, shows and cancels is
what our engine holds and runs (workflow definitions, run records, history, dead letters,
workers), through the CLI's own commands."""

from __future__ import annotations

import base64
import json
import threading

from conftest import until
from goserve import go_cli

import dagnats_nb as dn

HELLO = {"name": "nb-hello", "steps": [{"id": "greet", "task": "hi", "timeout": "10s"}]}
BOOM = {"name": "nb-boom", "steps": [{"id": "bill", "task": "boom"}]}
# Registered by the Go CLI (its own file form: integer nanoseconds, config).
GO_FILE = {
    "name": "go-registered",
    "version": "2",
    "steps": [
        {"id": "first", "task": "hi", "timeout": 5_000_000_000},
        {"id": "wait", "task": "slow", "depends_on": ["first"], "timeout": 60_000_000_000},
    ],
}


def test_the_go_cli_lists_starts_shows_and_cancels_our_runs(tmp_path):
    release = threading.Event()
    with dn.Engine.start(data_dir=tmp_path / "nb", llm_enabled=False) as eng:

        @eng.task("hi")
        def hi(ctx):
            return {"hi": ctx.input}

        fixed = threading.Event()

        @eng.task("boom")
        def boom(ctx):
            if not fixed.is_set():
                raise dn.Permanent("card declined\nby the bank")
            return {"billed": ctx.input, "attempt": ctx.attempt}

        @eng.task("slow")
        def slow(ctx):
            release.wait(30)
            return "late"

        eng.register(HELLO)
        eng.register(BOOM)
        url = eng.connect_url
        path = tmp_path / "go-registered.json"
        path.write_text(json.dumps(GO_FILE))
        go_cli(url, "workflow", "register", str(path))
        assert {"nb-hello", "nb-boom", "go-registered"} <= set(eng.workflows())
        listed = go_cli(url, "workflow", "list")
        assert all(name in listed for name in ("nb-hello", "nb-boom", "go-registered"))

        ours = eng.run("nb-hello", {"x": 1}, timeout=30)
        failed = eng.run("nb-boom", None, timeout=30)
        assert failed.status == "failed"

        # A run the Go CLI starts runs on our engine.
        started = json.loads(go_cli(url, "run", "start", "nb-hello", '{"from": "go"}', "--json"))
        go_run = eng.get_run(started["run_id"])
        assert go_run.wait(30).status == "completed" and go_run.output == {"hi": {"from": "go"}}

        # a run's record is written when it ends (a running one: a second after its start)
        until(lambda: failed.id in go_cli(url, "run", "list"), what="the run records")
        listing = go_cli(url, "run", "list")
        for run_id in (ours.id, failed.id, started["run_id"]):
            assert run_id in listing
        status = json.loads(go_cli(url, "run", "status", ours.id, "--json"))
        assert status["status"] == "completed" and status["workflow_id"] == "nb-hello"
        greet = status["steps"]["greet"]
        assert greet["status"] == "completed" and greet["attempts"] == 1
        assert json.loads(base64.b64decode(greet["output"])) == {"hi": {"x": 1}}
        failed_status = json.loads(go_cli(url, "run", "status", failed.id, "--json"))
        assert failed_status["status"] == "failed"
        assert "card declined" in failed_status["steps"]["bill"]["error"]

        events = go_cli(url, "run", "events", ours.id)
        assert "workflow.started" in events and "step.completed" in events
        assert '{"hi":{"x":1}}' in events  # the raw output, as Go's workers write it

        dlq = go_cli(url, "dlq", "list")
        [row] = [line for line in dlq.splitlines() if failed.id in line]
        assert "bill" in row and "boom" in row and "card declined by the bank" in row

        # `dagnats dlq replay` (Go's: the task sent again) resumes the failed run here.
        seq = row.split()[0]
        fixed.set()
        go_cli(url, "dlq", "replay", seq)
        until(lambda: eng.get_run(failed.id).status == "completed", what="the run resumed")
        assert eng.get_run(failed.id).output == {"billed": None, "attempt": 2}

        workers = go_cli(url, "workers", "list")
        [mine] = [line for line in workers.splitlines() if eng.worker_id in line]
        assert "hi" in mine and "boom" in mine and "python" in mine

        assert "WORKFLOW_HISTORY" in go_cli(url, "status")

        # A run the Go CLI cancels stops on our engine.
        waiting = eng.start_run("go-registered", "ada")
        until(lambda: eng.steps(waiting.id).set_index("step_id").loc["wait", "status"] == "running")
        until(lambda: waiting.id in go_cli(url, "run", "list"), what="the running run's record")
        go_cli(url, "run", "cancel", waiting.id)
        assert waiting.wait(30).status == "cancelled"
        release.set()
        status = until(
            lambda: (
                (s := json.loads(go_cli(url, "run", "status", waiting.id, "--json")))["status"]
                == "cancelled"
                and s
            ),
            what="the cancelled run's record",
        )
        assert status["steps"]["wait"]["status"] == "cancelled"


def test_the_go_cli_reads_our_llm_call_metrics(tmp_path):
    """Our ``llm`` task's call records on TELEMETRY are metric points in Go's form too:
    ``dagnats metrics show --name llm --service worker`` counts the calls."""
    opts = dict(llm_provider="simulated", llm_sim_latency_ms=1, llm_sim_latency_sigma=0.0)
    with dn.Engine.start(data_dir=tmp_path / "nb", **opts) as eng:
        wf = {
            "name": "ask",
            "steps": [
                {"id": "items", "task": "items"},
                {
                    "id": "each",
                    "task": "llm",
                    "type": "map",
                    "depends_on": ["items"],
                    "config": {"prompt": "Say {input}", "max_tokens": 4},
                },
            ],
        }

        @eng.task("items")
        def items(ctx):
            return [f"word {i}" for i in range(7)]

        assert eng.run(wf, timeout=60).status == "completed"
        calls = int(eng.llm_usage()["calls"].sum())
        assert calls == 7

        def shown() -> dict | None:
            out = json.loads(
                go_cli(
                    eng.connect_url, "metrics", "show", "--name=llm", "--service=worker", "--json"
                )
            )
            summary = out[0] if isinstance(out, list) else out
            return summary if summary.get("points") else None

        summary = until(shown, what="the llm metric points")
        assert summary["name"] == "llm" and summary["service_name"] == "worker"
        assert summary["points"] >= 1 and summary["max"] <= calls
