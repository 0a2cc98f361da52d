"""Stream backup and restore through the JetStream snapshot/restore API, on real servers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import nats
import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.adapters.cli.backup import run_command
from dagnats_nb.adapters.cli.main import main
from dagnats_nb.adapters.notebook.progress import default_progress
from dagnats_nb.config import load_settings
from dagnats_nb.errors import BackupError
from dagnats_nb.ops import backup, restore
from dagnats_nb.server.process import EmbeddedServer

FLOW = {
    "name": "flow",
    "steps": [
        {"id": "first", "task": "double"},
        {"id": "second", "task": "double", "depends_on": ["first"]},
    ],
}
FAILING = {"name": "failing", "steps": [{"id": "charge", "task": "charge"}]}
WAITING = {"name": "waiting", "steps": [{"id": "hold", "task": "hold"}]}
BULKY = {"name": "bulky", "steps": [{"id": "render", "task": "render"}]}


def add_handlers(eng: dn.Engine, gate: threading.Event) -> None:
    @eng.task("double")
    def double(ctx):
        return {"x": ctx.input["x"] * 2}

    @eng.task("charge")
    def charge(ctx):
        raise dn.Permanent("card declined")

    @eng.task("render")
    def render(ctx):  # larger than a message: kept in OBJ_payloads behind a $ref
        return {"blob": "b" * 1_200_000, "n": ctx.input}

    @eng.task("hold")
    def hold(ctx):
        gate.wait(30)
        return {"held": ctx.input}


def summary(eng: dn.Engine) -> dict[str, tuple]:
    df = eng.runs()
    return {
        r.run_id: (r.workflow, r.status, r.error if isinstance(r.error, str) else None)
        for r in df.itertuples()
    }


def outputs(eng: dn.Engine, run_ids) -> dict[str, object]:
    return {r: eng.get_run(r).output for r in run_ids}


def stream_state(url: str, names) -> dict[str, tuple]:
    async def read():
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            out = {}
            for name in names:
                s = (await js.stream_info(name)).state
                out[name] = (s.messages, s.bytes, s.first_seq, s.last_seq)
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def row_state(df) -> dict[str, tuple]:
    return {r.stream: (r.messages, r.bytes, r.first_seq, r.last_seq) for r in df.itertuples()}


@pytest.fixture
def busy(tmp_path):
    """An engine with completed, failed and one still-running run (its handler waits)."""
    gate = threading.Event()
    eng = dn.Engine.start(data_dir=tmp_path / "src", ack_wait="2s")
    try:
        add_handlers(eng, gate)
        done = [eng.run(FLOW, {"x": i}, timeout=20) for i in (1, 2)]
        done.append(eng.run(BULKY, 3, timeout=20))
        failed = eng.run(FAILING, None, timeout=20)
        pending = eng.start_run(WAITING, "later")
        yield eng, gate, done, failed, pending
    finally:
        gate.set()
        eng.stop()


def wait_started(eng: dn.Engine, run_id: str) -> None:
    until(
        lambda: eng.steps(run_id).iloc[0]["status"] == "running",
        what=f"the step of {run_id} to start",
    )


@pytest.mark.timeout(120)
def test_backup_then_restore_into_a_new_data_dir_rebuilds_every_run(busy, tmp_path):
    eng, _, done, failed, pending = busy
    assert [r.status for r in done] == ["completed"] * 3 and failed.status == "failed"
    wait_started(eng, pending.id)
    before = summary(eng)
    before_out = outputs(eng, [r.id for r in done])
    seen: list[tuple[str, int, int]] = []
    backed = eng.backup(tmp_path / "bk", progress=lambda *a: seen.append(a))
    assert list(backed["stream"]) == list(backup.DEFAULT_STREAMS)
    assert list(backed.columns[:7]) == [
        "stream", "messages", "bytes", "first_seq", "last_seq", "seconds", "mb_per_s",
    ]  # fmt: skip
    assert (backed["mb_per_s"] > 0).all() and (backed["file_bytes"] > 0).all()
    assert backed.set_index("stream").loc["OBJ_payloads", "bytes"] > 1_200_000
    live = stream_state(eng.connect_url, backup.DEFAULT_STREAMS)
    assert row_state(backed)["WORKFLOW_HISTORY"] == live["WORKFLOW_HISTORY"]
    assert row_state(backed)["TASK_QUEUES"][0] == 1  # the held task, not acked yet
    for name in backup.DEFAULT_STREAMS:  # progress: from 0, growing, done == total exactly once
        mine = [(d, t) for s, d, t in seen if s == name]
        assert mine[0][0] == 0 and [d for d, t in mine if d == t] == [mine[-1][0]]
        assert [d for d, _ in mine] == sorted(d for d, _ in mine)

    settings = load_settings(data_dir=tmp_path / "new")
    restored = backup.results_frame(run_command("restore", settings, tmp_path / "bk"))
    assert row_state(restored) == row_state(backed)
    gate = threading.Event()
    gate.set()  # the new engine's hold handler returns at once
    new = dn.Engine.start(data_dir=tmp_path / "new", ack_wait="2s")
    try:
        assert {k: v for k, v in summary(new).items() if v[1] != "running"} == {
            k: v for k, v in before.items() if v[1] != "running"
        }
        assert summary(new)[pending.id][1] == "running"
        assert outputs(new, before_out) == before_out
        add_handlers(new, gate)  # the held task is redelivered after ack_wait
        finished = new.get_run(pending.id).wait(20)
        assert finished.status == "completed" and finished.output == {"held": "later"}
        again = new.run("flow", {"x": 5}, timeout=20)  # the definition came back too
        assert again.output == {"x": 20}
    finally:
        new.stop()


@pytest.mark.timeout(120)
def test_force_restore_on_the_running_engine_rewinds_it_and_it_keeps_working(busy, tmp_path):
    eng, gate, done, failed, pending = busy
    eng.backup(tmp_path / "bk")
    later = eng.run("flow", {"x": 7}, timeout=20)  # not in the backup
    with pytest.raises(BackupError, match=r"already exist: restore with force"):
        eng.restore(tmp_path / "bk")
    assert later.id in summary(eng)  # refused before anything changed
    gate.set()
    df = eng.restore(tmp_path / "bk", force=True)
    assert len(df) == 5 and (df["messages"] > 0).sum() >= 4
    after = summary(eng)
    assert later.id not in after
    assert after[done[0].id][1] == "completed" and after[failed.id][1] == "failed"
    assert eng.get_run(done[1].id).output == {"x": 8}
    finished = eng.get_run(pending.id).wait(20)  # the task queue came back: it runs again
    assert finished.status == "completed"
    assert eng.run("flow", {"x": 1}, timeout=20).output == {"x": 4}

    async def drop(js):
        await js.delete_stream("WORKFLOW_HISTORY")

    eng._call(drop(eng._js))  # lost in place: restore just that stream
    df = eng.restore(tmp_path / "bk", streams=["WORKFLOW_HISTORY"], force=True)
    assert list(df["stream"]) == ["WORKFLOW_HISTORY"]
    assert summary(eng)[done[0].id][1] == "completed"
    assert eng.run("flow", {"x": 2}, timeout=20).output == {"x": 8}


@pytest.mark.timeout(120)
def test_cli_round_trip_with_a_subprocess_and_refusal_without_force(tmp_path, capsys):
    src, new, bk = tmp_path / "src", tmp_path / "new", tmp_path / "bk"
    eng = dn.Engine.start(data_dir=src)
    add_handlers(eng, threading.Event())
    run = eng.run(FLOW, {"x": 3}, timeout=20)
    eng.stop()
    proc = subprocess.run(
        [sys.executable, "-m", "dagnats_nb", "backup", "--data-dir", str(src), str(bk)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backed up WORKFLOW_HISTORY:" in proc.stdout and "MB/s" in proc.stdout
    assert f"backed up {len(backup.DEFAULT_STREAMS)} streams" in proc.stdout
    n = len(backup.DEFAULT_STREAMS)  # the table: stream bytes, sequences and MB/s per stream
    table = proc.stdout.splitlines()[-n - 2 : -1]
    assert table[0].split()[:3] == ["stream", "messages", "bytes"]
    assert [line.split()[0] for line in table[1:]] == list(backup.DEFAULT_STREAMS)
    assert main(["restore", str(bk), "--data-dir", str(new)]) == 0
    out = capsys.readouterr().out
    assert out.count("restored ") == n + 1 and "into " + str(new) in out
    # again: the streams exist now, so it refuses in one line and changes nothing
    assert main(["restore", str(bk), "--data-dir", str(new)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exist" in err and "--force" in err
    assert main(["restore", str(bk), "--data-dir", str(new), "--force"]) == 0
    capsys.readouterr()
    eng = dn.Engine.start(data_dir=new)
    try:
        assert eng.get_run(run.id).output == {"x": 12}
        assert eng.get_run(run.id).status == "completed"
    finally:
        eng.stop()
    assert main(["backup", str(tmp_path / "one"), "--data-dir", str(new), "--stream", "KV_nope"])
    assert "stream KV_nope does not exist" in capsys.readouterr().err
    assert not (tmp_path / "one" / "KV_nope").exists()


@pytest.mark.timeout(60)
def test_cli_restore_refuses_while_an_engine_runs_on_the_data_dir(engine, tmp_path, capsys):
    engine.backup(tmp_path / "bk", streams=["KV_workflow_defs"])
    data_dir = str(engine.settings.data_dir)
    assert main(["restore", str(tmp_path / "bk"), "--data-dir", data_dir, "--force"]) == 1
    err = capsys.readouterr().err
    assert "an engine is running on" in err and "stop it" in err
    # backup goes through the running engine's server
    assert main(["backup", str(tmp_path / "live"), "--data-dir", data_dir]) == 0
    assert (tmp_path / "live" / "WORKFLOW_HISTORY" / "backup.json").is_file()
    attached = dn.Engine.connect(data_dir=data_dir)
    try:
        with pytest.raises(BackupError, match="cannot restore through an attached engine"):
            attached.restore(tmp_path / "bk", force=True)
        assert len(attached.backup(tmp_path / "att")) == len(backup.DEFAULT_STREAMS)
    finally:
        attached.stop()


def damage(folder: Path, how: str) -> None:
    data = folder / "stream.tar.s2"
    raw = bytearray(data.read_bytes())
    if how == "truncated":
        data.write_bytes(bytes(raw[: len(raw) * 2 // 3]))
    else:  # flip bytes inside the compressed chunks: the framing stays whole
        for i in range(64, len(raw) - 8, 101):
            raw[i] ^= 0x5A
        data.write_bytes(bytes(raw))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_a_damaged_backup_is_refused_and_leaves_the_target_untouched(busy, tmp_path, how):
    eng, gate, done, _, pending = busy
    gate.set()
    assert pending.wait(20).status == "completed"
    eng.backup(tmp_path / "bk")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "bk", bad)
    damage(bad / "WORKFLOW_HISTORY", how)
    if how == "truncated":
        assert "truncated" in (
            restore.check_s2_framing(bad / "WORKFLOW_HISTORY/stream.tar.s2") or ""
        )
    else:
        assert restore.check_s2_framing(bad / "WORKFLOW_HISTORY/stream.tar.s2") is None
    # into a fresh data dir: a clear one-line error, and no stream left behind
    settings = load_settings(data_dir=tmp_path / "fresh")
    with pytest.raises(BackupError) as info:
        run_command("restore", settings, bad, ["WORKFLOW_HISTORY"])
    msg = str(info.value)
    assert "\n" not in msg and "WORKFLOW_HISTORY" in msg
    assert ("is damaged (truncated" in msg) if how == "truncated" else ("refused" in msg)
    with EmbeddedServer(settings) as srv, pytest.raises(Exception, match="not found"):
        stream_state(srv.client_url, ["WORKFLOW_HISTORY"])
    # over the running engine with force: the original stays as it was, and works
    before = stream_state(eng.connect_url, ["WORKFLOW_HISTORY", "TASK_QUEUES"])
    runs = summary(eng)
    with pytest.raises(BackupError, match="WORKFLOW_HISTORY") as info:
        eng.restore(bad, force=True)
    if how == "corrupted":
        assert "put back unchanged" in str(info.value)
    assert stream_state(eng.connect_url, ["WORKFLOW_HISTORY", "TASK_QUEUES"]) == before
    assert summary(eng) == runs
    assert eng.run("flow", {"x": 4}, timeout=20).output == {"x": 16}


@pytest.mark.timeout(60)
def test_layout_names_and_bad_folders(engine, tmp_path):
    add_handlers(engine, threading.Event())
    engine.register(FLOW)
    df = engine.backup(tmp_path / "bk", streams=["KV_workflow_defs", "WORKFLOW_HISTORY"])
    assert list(df["stream"]) == ["KV_workflow_defs", "WORKFLOW_HISTORY"]
    root = tmp_path / "bk"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for name in ("KV_workflow_defs", "WORKFLOW_HISTORY"):
        folder = root / name
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert sorted(os.listdir(folder)) == ["backup.json", "stream.tar.s2"]
        for f in folder.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
        doc = json.loads((folder / "backup.json").read_text())
        assert set(doc) == {"config", "state"} and doc["config"]["name"] == name
        assert (folder / "backup.json").read_text().startswith('{\n  "config"')  # indented
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no partial folders
    with pytest.raises(BackupError, match="already exists: choose an empty directory"):
        engine.backup(root, streams=["WORKFLOW_HISTORY"])
    with pytest.raises(BackupError, match="is not valid"):
        engine.backup(tmp_path / "x", streams=["a.b"])
    with pytest.raises(BackupError, match="a stream is named twice"):
        engine.backup(tmp_path / "x", streams=["TASK_QUEUES", "TASK_QUEUES"])
    dead = load_settings(data_dir=tmp_path / "d", nats_url="nats://127.0.0.1:1")
    with pytest.raises(BackupError, match="cannot connect to NATS at nats://127.0.0.1:1"):
        run_command("backup", dead, tmp_path / "x")
    with pytest.raises(BackupError, match="stream NOPE does not exist"):
        engine.backup(tmp_path / "y", streams=["NOPE"])
    assert not (tmp_path / "y" / "NOPE").exists()
    assert not [p for p in (tmp_path / "y").iterdir()]

    arc = root / "KV_workflow_defs"
    os.rename(arc / "stream.tar.s2", arc / "stream.arc.s2")  # the later jsm.go name
    doc, data = restore.check_backup(arc)
    assert data.name == "stream.arc.s2" and doc["config"]["name"] == "KV_workflow_defs"

    async def drop(js):
        await js.delete_stream("KV_workflow_defs")

    engine._call(drop(engine._js))
    restored = engine.restore(root, streams=["KV_workflow_defs"])
    assert restored["messages"].iloc[0] == df["messages"].iloc[0]
    assert engine.workflows() == ["flow"]

    shutil.copy(arc / "stream.arc.s2", arc / "stream.tar.s2")
    with pytest.raises(BackupError, match="holds both stream.tar.s2 and stream.arc.s2"):
        engine.restore(root, force=True)
    os.remove(arc / "stream.arc.s2")
    cases = {
        "missing": lambda f: os.remove(f / "backup.json"),
        "not json": lambda f: (f / "backup.json").write_text("{oops"),
        "no config": lambda f: (f / "backup.json").write_text('{"state": {}}'),
        "empty": lambda f: (f / "stream.tar.s2").write_bytes(b""),
        "no data": lambda f: os.remove(f / "stream.tar.s2"),
        "not s2": lambda f: (f / "stream.tar.s2").write_bytes(b"tar data"),
    }
    expect = {
        "missing": "backup.json is missing",
        "not json": "is not readable JSON",
        "no config": "has no config object",
        "empty": "is empty",
        "no data": "has no stream.tar.s2",
        "not s2": "does not start with the S2 stream identifier",
    }
    state = stream_state(engine.connect_url, ["WORKFLOW_HISTORY"])
    for case, spoil in cases.items():
        bad = tmp_path / case.replace(" ", "_")
        shutil.copytree(root / "WORKFLOW_HISTORY", bad / "WORKFLOW_HISTORY")
        spoil(bad / "WORKFLOW_HISTORY")
        with pytest.raises(BackupError, match=expect[case]):
            engine.restore(bad, force=True)
    renamed = tmp_path / "renamed"
    shutil.copytree(root / "WORKFLOW_HISTORY", renamed / "OTHER")
    with pytest.raises(BackupError, match="of stream 'WORKFLOW_HISTORY', not 'OTHER'"):
        engine.restore(renamed)
    with pytest.raises(BackupError, match="holds no stream backup folders"):
        engine.restore(tmp_path / "y")
    with pytest.raises(BackupError, match="not found"):
        engine.restore(tmp_path / "nowhere")
    assert stream_state(engine.connect_url, ["WORKFLOW_HISTORY"]) == state  # nothing changed
    assert engine.run("flow", {"x": 1}, timeout=20).status == "completed"


def test_widget_progress_draws_bytes_per_stream():
    shown = []
    import IPython.display

    real = IPython.display.display
    IPython.display.display = lambda obj, **kw: shown.append(obj)  # display_id=True: None
    try:
        from dagnats_nb.adapters.notebook.progress import widget_progress

        update = widget_progress("restoring")
        update("S", 0, 2_000_000)
        update("S", 1_000_000, 2_000_000)
        bar, label = shown[0].children
        assert (bar.value, bar.max) == (1_000_000, 2_000_000) and "restoring" in label.value
        update("S", 2_000_000, 2_000_000)
        assert bar.bar_style == "success" and "2.0 / 2.0 MB" in label.value
        assert len(shown) == 1
    finally:
        IPython.display.display = real
    assert default_progress() is None  # not in a kernel


@pytest.mark.timeout(60)
def test_cli_through_nats_url_with_named_streams(tmp_path, capsys):
    with EmbeddedServer(data_dir=tmp_path / "ext") as srv:

        async def make():
            nc = await nats.connect(srv.client_url)
            js = nc.jetstream()
            for name in ("ORDERS", "AUDIT"):
                await js.add_stream(name=name, subjects=[f"{name.lower()}.>"])
                for i in range(50):
                    await js.publish(f"{name.lower()}.x", f"{name}-{i}".encode())
            await nc.close()

        asyncio.run(make())
        before = stream_state(srv.client_url, ["ORDERS", "AUDIT"])
        assert before["ORDERS"][0] == 50
        common = ["--set", f"nats_url={srv.client_url}", "--data-dir", str(tmp_path / "unused")]
        argv = ["backup", str(tmp_path / "bk"), "--stream", "ORDERS", "--stream", "AUDIT"]
        assert main(argv + common) == 0
        assert sorted(os.listdir(tmp_path / "bk")) == ["AUDIT", "ORDERS"]
        assert main(["restore", str(tmp_path / "bk"), "--stream", "ORDERS", *common]) == 1
        assert "stream ORDERS already exists" in capsys.readouterr().err
        assert main(["restore", str(tmp_path / "bk"), "--force", *common]) == 0
        assert stream_state(srv.client_url, ["ORDERS", "AUDIT"]) == before
    assert not (tmp_path / "unused").exists()  # no embedded server was started there


@pytest.mark.timeout(60)
def test_engine_backup_shows_a_widget_bar_in_a_kernel(engine, tmp_path, monkeypatch):
    import IPython
    import IPython.display

    class Kernel:
        kernel = object()

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: Kernel())
    # display_id=True asks for a handle; None here: the bar stays (no static replacement)
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    df = engine.backup(tmp_path / "bk", streams=["WORKFLOW_HISTORY", "KV_workflow_defs"])
    assert len(shown) == 2  # one bar per stream
    bar, label = shown[0].children
    assert bar.bar_style == "success" and bar.value == bar.max == df["file_bytes"].iloc[0]
    assert "done" in label.value and "MB/s" in label.value


@pytest.mark.timeout(60)
def test_async_twins_back_up_and_restore(engine, tmp_path):
    add_handlers(engine, threading.Event())
    first = engine.run(FLOW, {"x": 1}, timeout=20)

    async def both():  # the history with its runs' records: finished runs answer from them
        streams = ["WORKFLOW_HISTORY", "KV_workflow_runs"]
        df = await engine.backup_async(tmp_path / "bk", streams=streams)
        engine.run(FLOW, {"x": 2}, timeout=20)  # after the backup: rewound below
        back = await engine.restore_async(tmp_path / "bk", force=True)
        return df, back

    df, back = asyncio.run(both())
    assert row_state(df) == row_state(back)
    assert list(summary(engine)) == [first.id]
