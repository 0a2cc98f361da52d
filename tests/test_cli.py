"""The ``dagnats`` command, run as a real subprocess (or in this process: ``cli_main``)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import until

import dagnats_nb as dn

CLI = [sys.executable, "-m", "dagnats_nb"]


def dagnats(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_validate_accepts_every_runnable_conformance_file(conformance):
    files = sorted(p for p in conformance.glob("*.json") if p.name != "workflow-schema.json")
    result = dagnats("workflow", "validate", *map(str, files))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(files) == 10


def test_validate_prints_one_line_per_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: loopy\n"
        "steps:\n"
        "  - {id: a, task: t, depends_on: [c]}\n"
        "  - {id: b, task: t, depends_on: [a], on_failure: nobody}\n"
        "  - {id: c, task: t, depends_on: [b]}\n"
        "  - {id: d, task: t, depends_on: [ghost]}\n"
    )
    result = dagnats("workflow", "validate", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith(f"{bad}: workflow 'loopy'") for line in lines)
    text = result.stderr
    assert "step 'b': field 'on_failure'" in text and "nobody" in text
    assert "step 'd': field 'depends_on'" in text and "ghost" in text
    assert "cycle between steps" in text


def test_validate_missing_file(tmp_path):
    result = dagnats("workflow", "validate", str(tmp_path / "nope.json"))
    assert result.returncode == 1
    assert "nope.json" in result.stderr and "Traceback" not in result.stderr


def test_status_without_an_engine_is_a_clear_error(tmp_path):
    result = dagnats("status", "--data-dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert result.stderr.startswith("dagnats: no engine is running on")
    assert "Traceback" not in result.stderr


def test_status_reports_streams_workers_and_pending_tasks(engine):
    @engine.task("served")
    def served(ctx):
        return 1

    engine.register({"name": "orphan", "steps": [{"id": "a", "task": "unserved"}]})
    with pytest.warns(dn.UnservedTaskWarning, match="no worker serves task 'unserved'"):
        engine.start_run("orphan")
    data_dir = str(engine.settings.data_dir)

    def status_with_the_pending_task():
        status = json.loads(dagnats("status", "--data-dir", data_dir, "--json").stdout)
        return status if status["pending_tasks"].get("unserved") else None

    status = until(
        status_with_the_pending_task, timeout=20, every=0.1, what="the unserved task pending"
    )
    assert status["url"] == engine.url and status["connected"] is True
    assert {s["stream"] for s in status["streams"]} >= {"WORKFLOW_HISTORY", "TASK_QUEUES"}
    history = next(s for s in status["streams"] if s["stream"] == "WORKFLOW_HISTORY")
    assert history["messages"] >= 2 and history["bytes"] > 0
    assert status["pending_tasks"] == {"unserved": 1}
    assert [w["worker_id"] for w in status["workers"]] == [engine.worker_id]
    assert "served" in status["workers"][0]["tasks"]

    text = dagnats("status", "--data-dir", data_dir)
    assert text.returncode == 0
    first = text.stdout.splitlines()[0]
    assert first == (
        "WARNING: consumer pending of workers-unserved is 1 (threshold 1000): "
        "no worker serves task 'unserved': register a handler for it"
    )
    assert "WORKFLOW_HISTORY" in text.stdout and "pending tasks: unserved=1" in text.stdout
    # sizes for people: "WORKFLOW_HISTORY   2   812 B", not a count of bytes
    assert re.search(r"\nstream +messages +bytes\n", text.stdout)
    assert re.search(r"\nWORKFLOW_HISTORY +\d+ +\d[\d.]* (B|KiB)\n", text.stdout)


def test_bad_setting_is_one_line(tmp_path):
    result = dagnats("serve", "--data-dir", str(tmp_path), "--set", "max_store_bytes=-5")
    assert result.returncode == 1
    assert result.stderr.startswith("dagnats: max_store_bytes")
    assert "(from argument)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_runs_until_sigterm_and_stops_cleanly(tmp_path):
    data = tmp_path / "served"
    proc = subprocess.Popen(
        [*CLI, "serve", "--data-dir", str(data), "--set", "monitor_port=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("dagnats engine serving on nats://127.0.0.1:"), (
            first + proc.stderr.read()
        )
        info = json.loads((data / "engine.json").read_text())
        assert info["monitor_url"].startswith("http://127.0.0.1:")
        status = dagnats("status", "--data-dir", str(data), "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["connected"] is True
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "dagnats engine stopped" in out
    assert not (data / "engine.json").exists()
    assert not Path(f"/proc/{info['server_pid']}").exists()


def test_demo_runs_the_pipeline_and_prints_runs_and_steps():
    result = dagnats("demo", "--runs", "2", timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("doc-digest  completed") == 2
    for step in ("docs", "summarise", "collect", "classify", "aggregate", "digest"):
        assert f"{step}" in out
    assert "50/50" in out  # the map steps' elements
    assert "the offline simulator" in out and "simulated:gpt-4o-mini" in out
    usage = out.split("LLM usage (from TELEMETRY):")[1]
    assert usage.count(" summarise simulated:gpt-4o-mini ") == 2  # one row per run
    assert "bytes per event" in out


def test_register_and_run_from_the_terminal(engine, tmp_path):
    @engine.task("shout")
    def shout(ctx):
        if ctx.input.get("fail"):
            raise ValueError("no shouting today")
        return {"text": ctx.input["text"].upper(), "big": "x" * 5000}

    wf = tmp_path / "loud.json"
    wf.write_text(json.dumps({"name": "loud", "steps": [{"id": "s", "task": "shout"}]}))
    where = ("--data-dir", str(engine.settings.data_dir))
    reg = dagnats("workflow", "register", str(wf), *where)
    assert reg.returncode == 0 and reg.stdout.strip() == f"{wf}: registered loud v1.0 (1 steps)"

    done = dagnats("run", "loud", "--input", '{"text": "hi"}', "--json", *where)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    # an output too large for the completed event is rebuilt from the step's history
    assert result["output"] == {"text": "HI", "big": "x" * 5000}
    assert engine.get_run(result["run_id"]).status == "completed"

    failed = dagnats("run", str(wf), "--input", '{"fail": true}', *where)
    assert failed.returncode == 1 and failed.stdout.startswith("run ")
    assert "failed" in failed.stdout.splitlines()[0] and "no shouting today" in failed.stderr

    queued = dagnats("run", "loud", "--input", '{"text": "later"}', "--no-wait", *where)
    run_id = queued.stdout.strip()
    assert queued.returncode == 0 and engine.get_run(run_id).wait(10).output["text"] == "LATER"

    for args, message in (
        (("run", "nope"), "dagnats: workflow 'nope' is not registered"),
        (("run", "loud", "--input", "{bad"), "dagnats: --input is not JSON"),
    ):
        bad = dagnats(*args, *where)
        assert bad.returncode == 1 and bad.stderr.startswith(message)
        assert len(bad.stderr.strip().splitlines()) == 1


ORPHAN = {
    "name": "orphan",
    "steps": [
        {"id": "fetch", "task": "fetch"},
        {"id": "enrich", "task": "enrich", "depends_on": ["fetch"]},
    ],
}


def cli_main(capsys, *args: str) -> tuple[int, str, str]:
    """``dagnats ARGS`` in this process (cli.main), its exit code, stdout and stderr."""
    from dagnats_nb.adapters.cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_runs_show_events_and_cancel_from_the_terminal(engine, capsys):
    @engine.task("fetch")
    def fetch(ctx):
        return {"n": ctx.input["n"]}

    engine.register({"name": "one", "steps": [{"id": "fetch", "task": "fetch"}]})
    done = engine.run("one", {"n": 7}, timeout=20)
    engine.register(ORPHAN)
    with pytest.warns(dn.UnservedTaskWarning):
        waiting = engine.start_run("orphan", {"n": 1})
    where = ("--data-dir", str(engine.settings.data_dir))

    def listed():
        code, out, _ = cli_main(capsys, "runs", "--json", *where)
        rows = json.loads(out)
        return rows if code == 0 and len(rows) == 2 else None

    rows = until(listed, timeout=20, what="both runs in `dagnats runs`")  # records: <= 1 s
    assert [r["run_id"] for r in rows] == [done.id, waiting.id]  # oldest first
    assert [r["status"] for r in rows] == ["completed", "running"]
    for args, ids in (
        (("--status", "completed"), [done.id]),
        (("--workflow", "orphan"), [waiting.id]),
        (("--limit", "1"), [waiting.id]),
        (("--workflow", "nope"), []),
    ):
        code, out, _ = cli_main(capsys, "runs", "--json", *args, *where)
        assert code == 0 and [r["run_id"] for r in json.loads(out)] == ids, args
    code, out, _ = cli_main(capsys, "runs", *where)
    assert code == 0 and out.splitlines()[0].split() == [
        "run_id",
        "workflow",
        "status",
        "started_at",
        "took",
        "error",
    ]
    assert done.id in out and waiting.id in out and "nan" not in out
    code, out, _ = cli_main(capsys, "runs", "--limit", "1", *where)
    assert "(the newest 1 of 2: --limit 0 shows all)" in out

    # show: the steps table and the output (or the step that waits, and why)
    code, out, _ = cli_main(capsys, "show", done.id, *where)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"run {done.id}  workflow one  completed")
    assert lines[1].split()[:4] == ["step", "task", "type", "status"]
    assert lines[2].split()[:4] == ["fetch", "fetch", "normal", "completed"]
    assert out.split("output:\n")[1].strip() == json.dumps({"n": 7}, indent=2)
    code, out, _ = cli_main(capsys, "show", done.id, "--json", *where)
    shown = json.loads(out)
    assert shown["output"] == {"n": 7} and shown["status"] == "completed"
    assert [s["step_id"] for s in shown["steps"]] == ["fetch"]
    code, out, _ = cli_main(capsys, "show", "last", *where)
    assert code == 0 and out.startswith(f"run {waiting.id}  workflow orphan  running")
    assert "enrich  normal  queued" in out and "nan" not in out
    assert "step of task 'enrich' waits: no worker serves it" in out
    assert "`dagnats worker MODULE --task enrich`" in out

    # events: the history, oldest first
    code, out, _ = cli_main(capsys, "events", done.id, "--json", *where)
    types = [e["type"] for e in json.loads(out)]
    assert code == 0 and types[0] == "workflow.started" and types[-1] == "workflow.completed"
    code, out, _ = cli_main(capsys, "events", done.id, *where)
    assert [line.split()[3:5] for line in out.splitlines()[1:-1]][-2] == ["step.completed", "fetch"]
    assert out.splitlines()[-1].startswith(f"({len(types)} events of run {done.id}")

    # cancel: once, then it has ended
    code, out, _ = cli_main(capsys, "cancel", "last", "--json", *where)
    assert code == 0 and json.loads(out) == {"run_id": waiting.id, "status": "cancelled"}
    assert waiting.wait(10).status == "cancelled"
    code, out, err = cli_main(capsys, "cancel", waiting.id, *where)
    assert code == 1 and err.strip() == (
        f"dagnats: run {waiting.id} already ended cancelled: nothing to cancel"
    )
    for args in (("show", "nope"), ("events", "nope"), ("cancel", "nope")):
        code, out, err = cli_main(capsys, *args, *where)
        assert (
            code == 1 and err.strip() == "dagnats: no run with id nope: `dagnats runs` lists them"
        )


def test_runs_on_an_engine_without_runs(engine, capsys):
    where = ("--data-dir", str(engine.settings.data_dir))
    assert cli_main(capsys, "runs", *where)[:2] == (0, "no runs\n")
    assert cli_main(capsys, "runs", "--status", "failed", *where)[:2] == (0, "no failed runs\n")
    code, _, err = cli_main(capsys, "show", "last", *where)
    assert code == 1
    assert err == "dagnats: there is no run yet: start one with `dagnats run WORKFLOW`\n"


def test_run_names_the_task_no_worker_serves_and_cli_commands(engine):
    @engine.task("fetch")
    def fetch(ctx):
        return ctx.input

    engine.register(ORPHAN)
    where = ("--data-dir", str(engine.settings.data_dir))
    result = dagnats("run", "orphan", "--input", '{"n": 1}', "--timeout", "0.5", *where)
    assert result.returncode == 1
    hint, timeout = result.stderr.strip().splitlines()
    assert hint == (
        "dagnats: hint: workflow 'orphan': no worker serves task 'enrich', so its steps wait: "
        "run a worker with a handler for 'enrich': `dagnats worker MODULE`"
    )
    assert timeout.startswith("dagnats: run ") and "is still running after 0.5s" in timeout
    run_id = timeout.split()[2]
    assert timeout.endswith(f"look at `dagnats show {run_id}` to see which step waits")
    assert "eng." not in result.stderr and "Traceback" not in result.stderr
