"""Our workers serving the Go engine's runs: ``dagnats worker MODULE --nats-url`` (a worker
process) next to dagnats' own Go worker, on a running ``dagnats serve``; the runs are
registered, started and read back with the Go CLI."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from conftest import until
from goserve import go_binary, go_cli, go_serve, go_worker  # noqa: F401  (fixtures)

import dagnats_nb as dn

ROOT = Path(__file__).resolve().parents[2]

HANDLERS = textwrap.dedent(
    """
    import dagnats_nb as dn

    @dn.task("pyshout")
    def pyshout(ctx):
        return ctx.input["msg"].upper()  # a bare string, for Go's string handler

    @dn.task("pylen")
    def pylen(ctx):
        return {"text": ctx.input, "len": len(ctx.input), "attempt": ctx.attempt}

    @dn.task("pyfail")
    def pyfail(ctx):
        raise dn.Permanent("no such customer")

    @dn.task("pylist")
    def pylist(ctx):
        return [{"name": n} for n in ctx.input["names"]]

    @dn.task("pyitem")
    def pyitem(ctx):
        return {"item": ctx.map_index, "name": ctx.input["name"]}

    @dn.task("pyflaky")
    def pyflaky(ctx):
        with open(ctx.input["log"], "a") as log:
            log.write(f"{ctx.run_id} {ctx.attempt}\\n")
        raise RuntimeError("still down")
    """
)

MAPPED = {  # a map step of the Go engine: instances {step}.map.{i} served by our worker
    "name": "go-map-py",
    "version": "1",
    "steps": [
        {"id": "list", "task": "pylist", "timeout": 30_000_000_000},
        {
            "id": "each",
            "task": "pyitem",
            "type": "map",
            "depends_on": ["list"],
            "timeout": 30_000_000_000,
            "config": {"max_items": 10},
        },
    ],
}

# max_attempts 1: how many times the step runs is the Go engine's to say (and ours must agree).
FLAKY = {
    "name": "go-runs-py-flaky",
    "version": "1",
    "steps": [
        {
            "id": "call",
            "task": "pyflaky",
            "timeout": 30_000_000_000,
            "retry": {
                "max_attempts": 1,
                "strategy": "fixed",
                "initial_delay": 100_000_000,
                "max_delay": 100_000_000,
            },
        }
    ],
}

WORKFLOW = {
    "name": "go-runs-py",
    "version": "1",
    "steps": [
        {"id": "greet", "task": "ggreet", "timeout": 30_000_000_000},  # Go worker
        {"id": "shout", "task": "pyshout", "depends_on": ["greet"], "timeout": 30_000_000_000},
        {"id": "hello", "task": "sgreet", "depends_on": ["shout"], "timeout": 30_000_000_000},
        {"id": "size", "task": "pylen", "depends_on": ["hello"], "timeout": 30_000_000_000},
    ],
}

FAILING = {
    "name": "go-runs-py-fail",
    "version": "1",
    "steps": [{"id": "bill", "task": "pyfail", "timeout": 30_000_000_000}],
}


def output(step: dict):
    """A step's output in ``dagnats run status --json`` (Go's []byte: base64 of the JSON)."""
    return json.loads(base64.b64decode(step["output"]))


@contextlib.contextmanager
def our_worker(cwd: Path, *args: str) -> Iterator[subprocess.Popen]:
    """``dagnats worker ARGS`` (ours) run from ``cwd`` (its handler modules), ready; stopped
    with SIGTERM at the end."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "dagnats_nb", "worker", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{ROOT}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "ready:" in worker.stdout.readline()
        yield worker
    finally:
        worker.terminate()
        worker.wait(20)


def ended(url: str, run_id: str) -> dict:
    """The Go engine's record of ``run_id`` (``dagnats run status --json``) once it ended."""

    def status() -> dict | None:
        record = json.loads(go_cli(url, "run", "status", run_id, "--json"))
        return record if record["status"] != "running" else None

    return until(status, timeout=60, what=f"run {run_id} to end")


def test_our_worker_process_serves_go_engine_runs(go_serve, go_worker, tmp_path):  # noqa: F811
    (tmp_path / "pyhandlers.py").write_text(HANDLERS)
    for wf in (WORKFLOW, FAILING, FLAKY, MAPPED):
        path = tmp_path / f"{wf['name']}.json"
        path.write_text(json.dumps(wf))
        go_cli(go_serve.url, "workflow", "register", str(path))
    with our_worker(tmp_path, "pyhandlers", "--nats-url", go_serve.url):
        started = json.loads(
            go_cli(go_serve.url, "run", "start", "go-runs-py", '{"name": "ada"}', "--json")
        )
        run_id = started["run_id"]
        status = ended(go_serve.url, run_id)
        assert status["status"] == "completed", json.dumps(status)
        outputs = {sid: output(st) for sid, st in status["steps"].items()}
        assert outputs == {
            "greet": {"msg": "hello ada"},
            "shout": "HELLO ADA",
            "hello": "Hello, HELLO ADA!",
            "size": {"text": "Hello, HELLO ADA!", "len": 17, "attempt": 1},
        }

        failing = json.loads(
            go_cli(go_serve.url, "run", "start", "go-runs-py-fail", "{}", "--json")
        )
        status = ended(go_serve.url, failing["run_id"])
        assert status["status"] == "failed"
        assert "no such customer" in json.dumps(status)
        names = ["ada", "bob", "cy", "di"]
        mapped = json.loads(
            go_cli(
                go_serve.url,
                "run",
                "start",
                "go-map-py",
                json.dumps({"names": names}),
                "--json",
            )
        )
        status = ended(go_serve.url, mapped["run_id"])
        assert status["status"] == "completed", json.dumps(status)
        assert output(status["steps"]["each"]) == [
            {"item": i, "name": n} for i, n in enumerate(names)
        ]

        log = tmp_path / "flaky.log"
        flaky = json.loads(
            go_cli(
                go_serve.url,
                "run",
                "start",
                FLAKY["name"],
                json.dumps({"log": str(log)}),
                "--json",
            )
        )
        status = ended(go_serve.url, flaky["run_id"])
        assert status["status"] == "failed"
        go_attempts = [line.split()[1] for line in log.read_text().splitlines()]
        assert go_attempts == ["1", "2"]  # max_attempts 1 on Go: one retry
    # The same definition on our engine runs the step as often, numbered alike.
    with dn.Engine.start(data_dir=tmp_path / "nb", llm_enabled=False) as eng:
        ours = tmp_path / "ours.log"

        @eng.task("pyflaky")
        def pyflaky(ctx):
            with open(ctx.input["log"], "a") as out:
                out.write(f"{ctx.run_id} {ctx.attempt}\n")
            raise RuntimeError("still down")

        run = eng.run(FLAKY, {"log": str(ours)}, timeout=30)
        assert run.status == "failed"
        assert [line.split()[1] for line in ours.read_text().splitlines()] == go_attempts


GROUPED = {
    "name": "go-grouped-py",
    "version": "1",
    "steps": [
        {"id": "greet", "task": "ggreet", "timeout": 30_000_000_000},  # the Go worker
        {
            "id": "shout",
            "task": "pyshout",
            "depends_on": ["greet"],
            "timeout": 30_000_000_000,
            "worker_group": "gpu",
        },
    ],
}


def test_our_group_worker_serves_a_go_steps_worker_group(go_serve, go_worker, tmp_path):  # noqa: F811
    """The Go engine sends a step with ``worker_group: gpu`` to ``task.pyshout.gpu.{run}``;
    ``dagnats worker --group gpu`` serves it from Go's consumer ``workers-pyshout-gpu``."""
    (tmp_path / "pyhandlers.py").write_text(HANDLERS)
    path = tmp_path / "grouped.json"
    path.write_text(json.dumps(GROUPED))
    go_cli(go_serve.url, "workflow", "register", str(path))
    with our_worker(tmp_path, "pyhandlers:pyshout", "--nats-url", go_serve.url, "--group", "gpu"):
        started = go_cli(go_serve.url, "run", "start", "go-grouped-py", '{"name": "ada"}', "--json")
        run_id = json.loads(started)["run_id"]
        status = ended(go_serve.url, run_id)
        assert status["status"] == "completed", json.dumps(status)
        assert output(status["steps"]["shout"]) == "HELLO ADA"
        eng = dn.Engine.connect(data_dir=tmp_path / "nb", url=go_serve.url)
        try:
            lag = eng.consumer_lag().set_index("consumer")
        finally:
            eng.stop()
        assert lag.loc["workers-pyshout-gpu", "filter"] == "task.pyshout.gpu.>"
        assert lag.loc["workers-pyshout-gpu", "pending"] == 0
