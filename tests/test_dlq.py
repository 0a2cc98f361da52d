"""Dead letters: list and replay, through the engine API and the ``dagnats dlq`` CLI."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque

import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.adapters.cli import main as cli
from dagnats_nb.errors import RunError

WF = {
    "name": "invoice",
    "steps": [
        {"id": "parse", "task": "parse"},
        {"id": "charge", "task": "charge", "depends_on": ["parse"]},
        {"id": "mail", "task": "mail", "depends_on": ["charge"]},
    ],
}


class Gate:
    """``charge`` fails for good until ``fixed`` is set (an operator fixed its cause)."""

    def __init__(self) -> None:
        self.fixed = threading.Event()
        self.calls: list[int] = []

    def install(self, eng: dn.Engine) -> None:
        eng.add_handler("parse", lambda ctx: {"amount": ctx.input["amount"]})

        def charge(ctx):
            self.calls.append(ctx.attempt)
            if not self.fixed.is_set():
                raise dn.Permanent("card declined")
            return {"charged": ctx.input["amount"]}

        eng.add_handler("charge", charge)
        eng.add_handler("mail", lambda ctx: f"sent for {ctx.input['charged']}")
        eng.register(WF)


def newest_letter(eng: dn.Engine, run_id: str, count: int = 1):
    seen = {}

    def enough() -> bool:
        seen["df"] = eng.dlq(run=run_id)
        return len(seen["df"]) >= count

    until(enough, every=0.05, what=f"{count} dead letter(s) of {run_id}")
    return seen["df"]


def test_replay_resumes_a_failed_run_at_the_failed_step(engine):
    gate = Gate()
    gate.install(engine)
    run = engine.run("invoice", {"amount": 12})
    assert run.status == "failed" and "card declined" in run.error
    df = newest_letter(engine, run.id)
    assert list(df["workflow"]) == ["invoice"] and list(df["step_id"]) == ["charge"]
    assert engine.dlq(workflow="other").empty and engine.dlq(workflow="invoice").shape[0] == 1

    gate.fixed.set()
    [row] = engine.dlq_replay(int(df["seq"].iloc[0]))
    assert row["replayed"] and row["attempt"] == 2 and row["status"] != "failed"
    run.wait(10)
    assert run.status == "completed" and run.output == "sent for 12"
    assert gate.calls == [1, 2]  # the failed step ran once more, parse did not
    events = engine.events(run.id)
    assert list(events["type"]).count("step.replayed") == 1
    assert list(events["type"])[-1] == "workflow.completed"

    # nothing left to resume: a second replay is refused and changes nothing
    with pytest.raises(RunError, match=r"is completed, not failed"):
        engine.dlq_replay(int(df["seq"].iloc[0]))
    assert engine.get_run(run.id).status == "completed"


@pytest.mark.parametrize("snapshot_restart", [False, True])
def test_replay_after_a_restart_uses_the_history(tmp_path, snapshot_restart):
    """After a snapshot restart the failed run is not in memory: the replay rebuilds it
    from its history."""
    data_dir = tmp_path / "e"
    gate = Gate()
    opts = dict(ack_wait="2s", snapshot_restart=snapshot_restart)
    with dn.Engine.start(data_dir=data_dir, **opts) as eng:
        gate.install(eng)
        run = eng.run("invoice", {"amount": 5})
        assert run.status == "failed"
        newest_letter(eng, run.id)
    gate.fixed.set()
    with dn.Engine.start(data_dir=data_dir, **opts) as eng:
        gate.install(eng)
        assert (run.id in eng.orchestrator.runs) is not snapshot_restart
        [row] = eng.dlq_replay(run=run.id)
        assert row["step_id"] == "charge" and row["replayed"]
        final = eng.get_run(run.id).wait(10)
        assert final.status == "completed" and final.output == "sent for 5"
        assert gate.calls == [1, 2]  # parse did not run again, charge once more
        assert eng.orchestrator.counters["runs_rebuilt"] == int(snapshot_restart)


def test_dlq_cli_lists_and_replays_against_a_running_engine(engine, capsys):
    gate = Gate()
    gate.install(engine)
    run = engine.run("invoice", {"amount": 3})
    newest_letter(engine, run.id)
    where = ["--data-dir", str(engine.settings.data_dir)]

    assert cli.main(["dlq", "list", "--json", "--run", run.id, *where]) == 0
    [letter] = json.loads(capsys.readouterr().out)
    assert letter["run_id"] == run.id and letter["error"].endswith("card declined")
    assert cli.main(["dlq", "list", "--workflow", "nope", *where]) == 0
    assert capsys.readouterr().out.strip() == "no dead letters"

    assert cli.main(["dlq", "replay", "--run", run.id, "--dry-run", *where]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"would replay dead letter {letter['seq']}: run {run.id}")
    assert engine.get_run(run.id).status == "failed"

    gate.fixed.set()
    assert cli.main(["dlq", "replay", str(letter["seq"]), *where]) == 0
    assert f"replayed dead letter {letter['seq']}" in capsys.readouterr().out
    assert engine.get_run(run.id).wait(10).status == "completed"


def test_dlq_replay_errors_are_one_line(engine, capsys):
    where = ["--data-dir", str(engine.settings.data_dir)]
    with pytest.raises(RunError, match=r"no dead letter with seq 999"):
        engine.dlq_replay(999)
    with pytest.raises(RunError, match=r"run NOPE has no dead letters"):
        engine.dlq_replay(run="NOPE")
    with pytest.raises(RunError, match=r"its seq, or run=RUN_ID"):
        engine.dlq_replay()
    assert cli.main(["dlq", "replay", *where]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dagnats: dlq replay: name a dead letter's SEQ") and "\n" not in err
    assert cli.main(["dlq", "replay", "424242", *where]) == 1
    assert "no dead letter with seq 424242" in capsys.readouterr().err


def test_an_attached_engine_sees_a_replayed_run_fail_again_then_complete(engine):
    gate = Gate()
    gate.install(engine)
    run = engine.run("invoice", {"amount": 4})
    newest_letter(engine, run.id)
    other = dn.Engine.connect(data_dir=engine.settings.data_dir)
    try:
        # replayed while the cause is not fixed: reopened, then failed again at once (the
        # reopened and the failed summaries race to KV; the last state must win)
        [row] = other.dlq_replay(run=run.id)
        assert row["replayed"]
        assert [int(a) for a in newest_letter(engine, run.id, count=2)["attempts"]] == [1, 2]
        until(lambda: other.get_run(run.id).status == "failed", what="the run to fail again")
        assert engine.orchestrator.errors == deque()  # no KV write failed on the way
        gate.fixed.set()
        other.dlq_replay(run=run.id)
        assert other.get_run(run.id).wait(10).status == "completed"
        assert other.get_run(run.id).output == "sent for 4"  # read from the history
    finally:
        other.stop()


def test_concurrent_summary_writes_of_one_run_all_land(engine):
    gate = Gate()
    gate.install(engine)
    run = engine.run("invoice", {"amount": 1})
    orch = engine.orchestrator
    state = engine.run_state(run.id)["state"]  # in memory, or (it ended) from its record

    async def race():
        await asyncio.gather(*(orch.records.now(state) for _ in range(4)))

    written = orch.records.written
    engine._call(race())  # a create-else-update once lost such races with an exception
    assert orch.records.written == written + 4
    other = dn.Engine.connect(data_dir=engine.settings.data_dir)
    try:
        assert other.get_run(run.id).status == "failed"
    finally:
        other.stop()
