"""A task no worker serves is named: at run start, at register after the setup window, when
an engine starts with recovered runs waiting on it; and health() says so without "..."."""

from __future__ import annotations

import asyncio
import re
import time
import warnings

import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.facade import hints
from dagnats_nb.facade.worker_process import WorkerProcess

ORPHAN = {
    "name": "orphan",
    "steps": [
        {"id": "fetch", "task": "fetch"},
        {"id": "enrich", "task": "enrich", "depends_on": ["fetch"]},
    ],
}
NAMED = "workflow 'orphan': no worker serves task 'enrich', so its steps wait"


def fetch(ctx):
    return ctx.input


def enrich(ctx):
    return {"enriched": ctx.input}


def test_start_run_and_run_name_the_task_no_worker_serves(engine):
    engine.add_handler("fetch", fetch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the setup window: a register says nothing
        engine.register(ORPHAN)
    with pytest.warns(dn.UnservedTaskWarning, match=NAMED) as caught:
        run = engine.start_run("orphan", {"n": 1})
    assert len(caught) == 1 and caught[0].filename == __file__  # the caller's line
    assert "@dn.task('enrich') or @eng.task('enrich')" in str(caught[0].message)
    assert run.unserved == ["enrich"] and engine.unserved_tasks("orphan") == ["enrich"]
    with (  # said at the start, before the wait
        pytest.warns(dn.UnservedTaskWarning, match=NAMED) as caught,
        pytest.raises(dn.RunTimeout),
    ):
        engine.run("orphan", {"n": 2}, timeout=0.3)
    assert caught[0].filename == __file__

    engine.add_handler("enrich", enrich)  # now served: the waiting runs go on, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = engine.run("orphan", {"n": 3}, timeout=20)
    assert again.status == "completed" and again.output == {"enriched": {"n": 3}}
    assert again.unserved == [] and run.wait(20).status == "completed"


def test_the_async_twins_warn_at_the_caller_too(engine):
    engine.add_handler("fetch", fetch)

    async def scenario():  # as a script's asyncio.run, or a notebook's top-level await
        await engine.register_async(ORPHAN)
        with pytest.warns(dn.UnservedTaskWarning, match=NAMED) as started:
            run = await engine.start_run_async("orphan", {"n": 1})
        with (
            pytest.warns(dn.UnservedTaskWarning, match=NAMED) as ran,
            pytest.raises(dn.RunTimeout),
        ):
            await engine.run_async("orphan", {"n": 2}, timeout=0.3)
        return run, started, ran

    run, started, ran = asyncio.run(scenario())
    assert run.unserved == ["enrich"]
    assert started[0].filename == ran[0].filename == __file__


def test_a_worker_in_another_process_counts(engine):
    engine.add_handler("fetch", fetch)
    engine.register(ORPHAN)
    assert engine.unserved_tasks(ORPHAN) == ["enrich"]
    with WorkerProcess(engine.settings, {"enrich": (enrich, None)}, url=engine.url):
        # it heartbeats into the workers KV; a read of that is reused for 2 s
        until(lambda: engine.unserved_tasks("orphan") == [], timeout=10, what="served")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run = engine.run("orphan", {"n": 1}, timeout=20)
        assert run.output == {"enriched": {"n": 1}}


def test_register_warns_once_the_engine_is_set_up(tmp_path, monkeypatch):
    monkeypatch.setattr(hints, "SETUP_QUIET", 0.0)  # the 30 s window, shortened
    with dn.Engine.start(data_dir=tmp_path / "e") as eng:
        with pytest.warns(dn.UnservedTaskWarning, match="no worker serves tasks 'enrich', 'fetch'"):
            defn = eng.register(ORPHAN)
        assert defn.name == "orphan"
        eng.add_handler("fetch", fetch)
        eng.add_handler("enrich", enrich)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            eng.register(ORPHAN)


def test_a_restart_names_recovered_runs_waiting_on_unserved_tasks(tmp_path):
    data = tmp_path / "e"
    with dn.Engine.start(data_dir=data) as eng:
        eng.add_handler("fetch", fetch)
        eng.register(ORPHAN)
        with pytest.warns(dn.UnservedTaskWarning):
            runs = [eng.start_run("orphan", {"n": i}) for i in range(2)]
        for run in runs:
            until(
                lambda r=run: (
                    eng.steps(r.id).set_index("step_id").loc["enrich", "status"] == "queued"
                ),
                timeout=20,
                what="enrich queued",
            )
    expected = "runs recovered from the history wait on a task no worker serves: 'enrich' (2 runs)"
    with pytest.warns(dn.UnservedTaskWarning, match=re.escape(expected)) as caught:
        eng = dn.Engine.start(data_dir=data, handlers={"fetch": fetch})
    eng.stop()
    assert len(caught) == 1 and caught[0].filename == __file__
    with warnings.catch_warnings():  # its handlers come first: nothing waits in vain
        warnings.simplefilter("error")
        eng = dn.Engine.start(data_dir=data, handlers={"fetch": fetch, "enrich": (enrich, 2)})
    with eng:
        assert eng.workers["enrich"].handler.concurrency == 2
        assert [eng.get_run(r.id).wait(20).status for r in runs] == ["completed"] * 2


def test_health_shows_its_advice_whole(engine):
    engine.add_handler("fetch", fetch)
    with pytest.warns(dn.UnservedTaskWarning):
        engine.start_run(ORPHAN, {"n": 1})
    advice = "no worker serves task 'enrich': register a handler for it"

    def warned():
        df = engine.health()
        return (df,) if (df["action"] == advice).any() else None

    (df,) = until(warned, timeout=20, what="the consumer pending warning")
    assert advice in repr(df) and advice in df._repr_html_()
    assert "..." not in repr(df) and "…" not in df._repr_html_()


def test_many_runs_started_at_once_read_the_workers_kv_once(engine):
    """Each start asks which tasks are served; 300 at once share one read of the workers KV
    (each read is a KV watcher: one each hit the server's consumer limit under load)."""
    engine.add_handler("fetch", fetch)
    engine.register(ORPHAN)
    reads = []
    read = engine._workers

    async def counted():
        reads.append(1)
        return await read()

    engine._workers = counted

    async def start_many() -> list:
        return await asyncio.gather(*(engine.start_run_async("orphan", i) for i in range(300)))

    began = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dn.UnservedTaskWarning)
        runs = asyncio.run(start_many())
    took = time.monotonic() - began
    assert len({r.id for r in runs}) == 300
    assert all(r.unserved == ["enrich"] for r in runs)
    # one read for all of them; another only when a start comes after the 2 s cache expired
    assert 1 <= len(reads) <= 1 + int(took / hints.SERVED_TTL), (len(reads), took)
