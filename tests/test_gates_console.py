"""Approvals, signals and events from the notebook magics and the ``dagnats`` CLI, on a
real engine: what a person types, what they see, what the run gets."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.errors import DagnatsError

CLI = [sys.executable, "-m", "dagnats_nb.adapters.cli.main"]

WAITS = {
    "name": "waits",
    "steps": [
        {"id": "draft", "task": "draft"},
        {
            "id": "review",
            "type": "approval",
            "depends_on": ["draft"],
            "config": {"subject": "approvals.waits", "timeout": "10m"},
        },
        {
            "id": "paid",
            "type": "wait_for_event",
            "depends_on": ["review"],
            "config": {
                "event": "payment",
                "match": {"left": "order", "op": "eq", "right": "input.order"},
                "timeout": "10m",
            },
        },
        {
            "id": "go",
            "type": "wait_for_event",
            "depends_on": ["paid"],
            "config": {
                "event": "go",
                "match": {"left": "x", "op": "eq", "right": "input.order"},
                "timeout": "10m",
            },
        },
    ],
}


def _step_status(eng, run_id, step):
    return eng.steps(run_id).set_index("step_id").loc[step, "status"]


def test_magics_approve_publish_and_signal_a_waiting_run(ip, tmp_path, capsys):
    eng = ip.run_line_magic("dagnats", f"start --data-dir {tmp_path / 'e'}")
    try:

        @dn.task("draft")
        def draft(ctx):
            return {"text": "hello"}

        eng.register(WAITS)
        run = eng.start_run("waits", input={"order": 7})
        until(lambda: _step_status(eng, run.id, "review") == "running")
        until(lambda: "approval.requested" in set(eng.events(run.id)["type"]))
        with pytest.raises(DagnatsError, match="no open approval"):
            ip.run_line_magic("dagnats", f"approve {run.id} draft")
        ip.user_ns["rid"] = run.id
        decision = ip.run_line_magic("dagnats", "approve $rid review ship it --by ada")
        assert decision["approved"] is True and decision["comment"] == "ship it"
        assert f"run {run.id} step review approved by ada" in capsys.readouterr().out
        until(lambda: _step_status(eng, run.id, "paid") == "running")
        seq = ip.run_line_magic("dagnats", 'event payment {"order":7,"amount":3}')
        assert isinstance(seq, int) and seq >= 1
        until(lambda: _step_status(eng, run.id, "go") == "running")
        ip.run_line_magic("dagnats", "signal last go '{\"ok\": true}'")
        assert run.wait(timeout=20).status == "completed"
        assert run.output == {"ok": True}
        assert eng.step_output(run.id, "paid") == {"order": 7, "amount": 3}
    finally:
        ip.run_line_magic("dagnats", "stop")


def test_cli_approve_reject_signal_and_event(engine):
    @engine.task("draft")
    def draft(ctx):
        return {"text": "hello"}

    engine.register(WAITS)
    where = ["--data-dir", str(engine.settings.data_dir)]

    def cli(*args):
        return subprocess.run([*CLI, *args, *where], capture_output=True, text=True, timeout=60)

    rejected = engine.start_run("waits", input={"order": 1})
    until(lambda: "approval.requested" in set(engine.events(rejected.id)["type"]))
    out = cli("reject", rejected.id, "review", "not now", "--by", "bob")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"run {rejected.id} step review rejected by bob"
    assert rejected.wait(timeout=20).status == "failed"
    assert "approval rejected by bob: not now" in rejected.error
    again = cli("approve", rejected.id, "review")
    assert again.returncode == 1 and "has no open approval" in again.stderr

    run = engine.start_run("waits", input={"order": 2})
    until(lambda: "approval.requested" in set(engine.events(run.id)["type"]))
    assert cli("approve", run.id, "review").returncode == 0
    until(lambda: _step_status(engine, run.id, "paid") == "running")
    out = cli("event", "payment", '{"order": 2}')
    assert out.returncode == 0 and out.stdout.startswith("event payment published")
    until(lambda: _step_status(engine, run.id, "go") == "running")
    out = cli("signal", run.id, "go", "plain text")
    assert out.returncode == 0 and out.stdout.strip() == f"signal go sent to run {run.id}"
    assert run.wait(timeout=20).status == "completed"
    assert run.output == "plain text"
