"""``dagnats worker``: real worker processes (tests/worker_tasks.py) against a real engine.

Every handler call appends ``run_id step_id attempt pid what`` to a log file, so the tests
see which process ran which task and how many times.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.adapters.cli import main as cli
from dagnats_nb.server.process import EmbeddedServer
from dagnats_nb.wire import protocol

ROOT = Path(__file__).resolve().parents[1]
LOG_ENV = "DAGNATS_TEST_WORKER_LOG"


class Worker:
    """A ``dagnats worker`` child process; ``ready`` is its first stdout line."""

    def __init__(self, *args: str, log: Path, cwd: Path = ROOT) -> None:
        env = {**os.environ, LOG_ENV: str(log)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagnats_nb", "worker", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ready = ""

    def wait_ready(self, timeout: float = 20) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        assert "ready:" in line, (line, self.proc.poll(), self.stderr_now())
        self.ready = line
        return line

    @property
    def worker_id(self) -> str:
        return self.ready.split()[2]

    def stderr_now(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()

    def terminate(self, timeout: float = 30, sig=signal.SIGTERM) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for w in started:
        w.kill()


def read_log(log: Path) -> list[tuple[str, str, int, int, str]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        run_id, step_id, attempt, pid, what = line.split()
        out.append((run_id, step_id, int(attempt), int(pid), what))
    return out


def consumer_config(eng: dn.Engine, task: str):
    info = eng._call(eng._js.consumer_info(protocol.TASK_STREAM, protocol.consumer_name(task)))
    return info.config


def registered(eng: dn.Engine) -> dict[str, dict]:
    return {w["worker_id"]: w for w in eng.status()["workers"]}


ECHO = {"name": "echo-wf", "steps": [{"id": "e", "task": "echo"}]}
SLOW = {
    "name": "slow-wf",
    "steps": [{"id": "s", "task": "slow"}],
}
SLOW_SYNC = {"name": "slow-sync-wf", "steps": [{"id": "s", "task": "slow_sync"}]}


def test_two_worker_processes_and_the_kernel_share_one_queue(engine, tmp_path, workers):
    log = tmp_path / "calls.log"
    kernel_pid = os.getpid()
    engine.register(ECHO)
    # one by its --task filter, one by an ATTR naming a dict {task: (fn, concurrency)}
    a = Worker(
        "tests.worker_tasks", "--task", "echo", "--data-dir", str(engine.settings.data_dir), log=log
    )
    b = Worker("tests.worker_tasks:ONLY_ECHO", "--nats-url", engine.connect_url, log=log)
    workers += [a, b]
    a.wait_ready()
    b.wait_ready()
    assert "echo (x4)" in a.ready and "echo (x2)" in b.ready and engine.url in a.ready
    assert consumer_config(engine, "echo").max_ack_pending == 4 + 2

    @engine.task("echo", concurrency=4)  # the kernel joins after them: capacity adds up
    async def echo(ctx):  # the in-kernel twin of worker_tasks.echo
        await asyncio.sleep(0.005)  # a few ms of work: every process gets its share
        with log.open("a") as f:
            f.write(f"{ctx.run_id} {ctx.step_id} {ctx.attempt} {kernel_pid} done\n")
        return {"echo": ctx.input, "pid": kernel_pid}

    # both show in the workers KV with their tasks; the queue's capacity is their sum
    seen = registered(engine)
    assert seen[a.worker_id]["tasks"]["echo"]["concurrency"] == 4
    assert seen[b.worker_id]["tasks"]["echo"]["concurrency"] == 2
    assert seen[a.worker_id]["pid"] == a.proc.pid
    assert set(seen[b.worker_id]["tasks"]) == {"echo"}
    assert consumer_config(engine, "echo").max_ack_pending == 4 + 4 + 2

    runs = [engine.start_run("echo-wf", {"i": i}) for i in range(300)]
    for i, run in enumerate(runs):
        run.wait(60)
        assert run.status == "completed", run.error
        assert run.output["echo"] == {"i": i}

    calls = read_log(log)
    per_task = Counter(r for r, *_ in calls)
    assert len(per_task) == 300 and set(per_task.values()) == {1}, "a task ran twice"
    assert {r.id for r in runs} == set(per_task)
    per_pid = Counter(pid for *_, pid, _ in calls)
    assert set(per_pid) == {kernel_pid, a.proc.pid, b.proc.pid}, per_pid
    assert all(n > 0 for n in per_pid.values()), per_pid
    outputs = Counter(r.output["pid"] for r in runs)
    assert outputs == per_pid

    for w in (a, b):
        code, out, err = w.terminate()
        assert code == 0, err
        assert "stopped after" in out
    # gone from the KV at once, and the queue's capacity is the kernel's again
    assert set(registered(engine)) == {engine.worker_id}
    assert consumer_config(engine, "echo").max_ack_pending == 4


def test_sigterm_drains_finishes_quick_tasks_and_releases_long_ones(tmp_path, workers):
    """ack_wait is 30 s: a released task that waited for it would fail the time bound."""
    log = tmp_path / "calls.log"
    with dn.Engine.start(data_dir=tmp_path / "e", ack_wait="30s", llm_enabled=False) as eng:
        data_dir = str(eng.settings.data_dir)
        eng.register(SLOW)
        eng.register(SLOW_SYNC)
        first = Worker(
            "tests.worker_tasks:SLOW_ONES",
            "--data-dir",
            data_dir,
            "--drain-timeout",
            "2",
            log=log,
        )
        workers.append(first)
        first.wait_ready()
        # quick ones end within the drain timeout; long ones are released and run again
        quick = [eng.start_run("slow-wf", {"sleep": 2}) for _ in range(2)]
        long = [eng.start_run("slow-wf", {"sleep": 5}) for _ in range(2)]
        long += [eng.start_run("slow-sync-wf", {"sleep": 5}) for _ in range(2)]
        until(
            lambda: sum(1 for *_, w in read_log(log) if w == "start") == 6,
            timeout=15,
            every=0.05,
            what="the first worker to start all six tasks",
        )
        second = Worker("tests.worker_tasks", "--nats-url", eng.connect_url, log=log)
        workers.append(second)
        second.wait_ready()

        t0 = time.monotonic()
        code, out, err = first.terminate()
        assert code == 0, err
        assert "draining (" in out and "stopped after 2 tasks" in out, out

        for run in quick + long:
            run.wait(20)
            assert run.status == "completed", run.error
        # Functional, not a speed judgement: a task that was not released (nak) but left to
        # the 30 s ack wait could not be redelivered and rerun within 15 s of the SIGTERM.
        elapsed = time.monotonic() - t0
        assert elapsed < 15, f"released tasks waited {elapsed:.1f}s (ack wait is 30 s)"

        calls = read_log(log)
        done = [(r, pid) for r, _, _, pid, w in calls if w == "done"]
        assert Counter(r for r, _ in done) == {r.id: 1 for r in quick + long}
        by_run = dict(done)
        assert {by_run[r.id] for r in quick} == {first.proc.pid}  # finished while draining
        assert {by_run[r.id] for r in long} == {second.proc.pid}  # released, taken over
        for r in long:
            assert [pid for rid, _, _, pid, w in calls if rid == r.id and w == "start"] == [
                first.proc.pid,
                second.proc.pid,
            ]
        assert set(registered(eng)) == {eng.worker_id, second.worker_id}
        code, _, err = second.terminate()
        assert code == 0, err


def test_handler_failures_behave_as_in_the_kernel(engine, tmp_path, workers):
    w = Worker(
        "tests.worker_tasks",
        "--task",
        "boom",
        "--task",
        "not_json",
        "--nats-url",
        engine.connect_url,
        log=tmp_path / "calls.log",
    )
    workers.append(w)
    w.wait_ready()
    run = engine.run({"name": "boom-wf", "steps": [{"id": "b", "task": "boom"}]}, timeout=20)
    assert run.status == "failed"
    assert "Permanent: boom from the worker process" in run.error
    run = engine.run({"name": "nj-wf", "steps": [{"id": "n", "task": "not_json"}]}, timeout=20)
    assert run.status == "failed"
    assert "not JSON-serialisable" in run.error
    events = engine.events(run.id)
    assert w.worker_id in set(events["worker_id"].dropna())
    code, out, err = w.terminate(sig=signal.SIGINT)  # Ctrl-C drains too
    assert code == 0, err
    assert "stopped after 2 tasks" in out


def test_importing_a_worker_module_starts_no_engine(tmp_path):
    code = (
        "import dagnats_nb.facade.default as d, tests.worker_tasks as t;"
        "import json; print(json.dumps([d.current() is None, sorted(d.handlers())]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    no_engine, names = json.loads(out.stdout)
    assert no_engine is True
    assert names == ["boom", "echo", "not_json", "slow", "slow_sync"]


@pytest.fixture
def clean_registry(monkeypatch):
    """In-process ``cli.main(["worker", ...])``: keep the handlers the tests import out of
    this process's default registry."""
    from dagnats_nb.facade import default

    monkeypatch.setattr(default, "_handlers", {})
    monkeypatch.chdir(ROOT)
    for name in ("tests.worker_tasks", "engine_on_import", "broken_tasks"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_module"], "no module named 'no_such_module': run from its directory"),
        (["json"], "module json registers no handlers: decorate functions with @dn.task"),
        (
            ["tests.worker_tasks", "--task", "nope"],
            "unknown task 'nope': tests.worker_tasks handles boom, echo, not_json, slow, slow_sync",
        ),
        (["tests.worker_tasks:undecorated"], "undecorated is not a @dn.task handler"),
        (["tests.worker_tasks:missing"], "module has no attribute 'missing'"),
        (["missing_file.py"], "module file missing_file.py not found"),
        ([], "name the handlers' module: dagnats worker MODULE[:ATTR]"),
        (["tests.worker_tasks", "--concurrency", "0"], "--concurrency must be at least 1"),
        (
            ["tests.worker_tasks", "--data-dir", "x", "--nats-url", "nats://h:1"],
            "pass --data-dir or --nats-url, not both",
        ),
        (["tests.worker_tasks", "--worker-id", "a.b"], "worker id 'a.b' cannot be used"),
    ],
)
def test_bad_input_is_one_line(clean_registry, capsys, args, message):
    assert cli.main(["worker", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dagnats: ") and message in err, err
    assert err.count("\n") == 1, err


def test_no_engine_no_streams_and_dead_url_are_one_line(clean_registry, capsys, tmp_path):
    assert cli.main(["worker", "tests.worker_tasks", "--data-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert f"no engine is running on {tmp_path / 'none'}" in err and err.count("\n") == 1

    assert cli.main(["worker", "tests.worker_tasks", "--nats-url", "nats://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to NATS at nats://127.0.0.1:1" in err and err.count("\n") == 1

    with EmbeddedServer(data_dir=tmp_path / "bare") as bare:  # NATS, but no engine on it
        assert cli.main(["worker", "tests.worker_tasks", "--nats-url", bare.client_url]) == 1
    err = capsys.readouterr().err
    assert "has no TASK_QUEUES stream: start a dagnats engine on it first" in err
    assert err.count("\n") == 1


def test_a_worker_id_that_cannot_be_a_kv_key_is_one_line(clean_registry, capsys, tmp_path):
    """``wp@1`` is a subject token but no KV key: refused before anything connects."""
    for bad in ("wp@1", "a.b", "has space"):
        args = ["worker", "tests.worker_tasks", "--worker-id", bad, "--data-dir", str(tmp_path)]
        assert cli.main(args) == 1
        err = capsys.readouterr().err
        assert f"worker id {bad!r} cannot be used as a KV key" in err and err.count("\n") == 1


def test_a_module_that_starts_an_engine_is_refused(clean_registry, capsys, tmp_path):
    module = tmp_path / "engine_on_import.py"
    module.write_text(
        "import dagnats_nb as dn\n"
        f"dn.start_engine(data_dir={str(tmp_path / 'e')!r}, llm_enabled=False)\n"
        "@dn.task('x')\ndef x(ctx):\n    return 1\n"
    )
    try:
        assert cli.main(["worker", str(module)]) == 1
    finally:
        dn.stop_engine()
    err = capsys.readouterr().err
    assert f"importing {module} started a dagnats engine: a worker module must only" in err


def test_builtin_llm_handler_in_a_worker_process(tmp_path, workers):
    with dn.Engine.start(data_dir=tmp_path / "e", ack_wait="2s", llm_enabled=False) as eng:
        assert "llm" not in eng.workers  # so the worker process runs every llm step
        w = Worker(
            "--task", "llm", "--concurrency", "3", "--nats-url", eng.connect_url,
            "--set", "llm_sim_latency_ms=1", "--set", "llm_sim_tokens_per_s=0",
            log=tmp_path / "calls.log",
        )  # fmt: skip
        workers.append(w)
        w.wait_ready()
        assert "llm (x3)" in w.ready
        step = {"id": "ask", "task": "llm", "config": {"prompt": "hi {input}"}}
        step["config"].update(provider="simulated", model="tiny")
        run = eng.run({"name": "ask-wf", "steps": [step]}, input="there", timeout=20)
        assert run.status == "completed", run.error
        assert run.output["model"] == "simulated:tiny"
        events = eng.events(run.id)
        done = events[events["type"] == "step.completed"]
        assert list(done["worker_id"]) == [w.worker_id]
        code, _, err = w.terminate()
        assert code == 0, err


def test_a_worker_follows_the_engine_to_its_new_port_after_a_restart(tmp_path, workers):
    log = tmp_path / "calls.log"
    data_dir = tmp_path / "e"
    with dn.Engine.start(data_dir=data_dir, ack_wait="2s", llm_enabled=False) as eng:
        eng.register(ECHO)
        first_url = eng.url
        w = Worker("tests.worker_tasks", "--task", "echo", "--data-dir", str(data_dir), log=log)
        workers.append(w)
        w.wait_ready()
        assert eng.run("echo-wf", {"n": 1}, timeout=20).output["pid"] == w.proc.pid
    with dn.Engine.start(data_dir=data_dir, ack_wait="2s", llm_enabled=False) as eng:
        assert eng.url != first_url  # nats_port 0: a new port at each start
        run = eng.run("echo-wf", {"n": 2}, timeout=30)
        assert run.status == "completed", run.error
        assert run.output == {"echo": {"n": 2}, "pid": w.proc.pid}
        assert w.worker_id in registered(eng)
        second_url = eng.url
        code, _, err = w.terminate()
    assert code == 0, err
    assert f"now runs at {second_url}: reconnecting" in err


def test_worker_process_from_python(engine):
    from dagnats_nb.facade.worker_process import WorkerProcess

    def double(ctx):
        return ctx.input * 2

    wp = WorkerProcess(engine.settings, {"double": (double, 2)}, url=engine.url, worker_id="py-w")
    wf = {"name": "double-wf", "steps": [{"id": "x", "task": "double"}]}
    with wp:
        assert wp.running and wp.tasks == {"double": 2}
        assert engine.run(wf, input=21, timeout=20).output == 42
        assert wp.stats()["double"] == {"inflight": 0, "completed": 1, "failed": 0}
        assert registered(engine)["py-w"]["tasks"]["double"]["concurrency"] == 2
    assert not wp.running and "py-w" not in registered(engine)

    async def twins():  # the *_async twins, from an event loop
        again = WorkerProcess(engine.settings, {"double": (double, 1)}, url=engine.url)
        await again.start_async()
        run = await engine.run_async(wf, input=5, timeout=20)
        await again.stop_async(drain_timeout=1)
        return run.output, again.running

    assert asyncio.run(twins()) == (10, False)
    with pytest.raises(dn.DagnatsError, match="at least one handler"):
        WorkerProcess(engine.settings, {})
    with pytest.raises(dn.DagnatsError, match="task name 'a.b' cannot be used"):
        WorkerProcess(engine.settings, {"a.b": (double, 1)})


def test_a_module_that_fails_to_import_is_one_line(clean_registry, capsys, tmp_path):
    module = tmp_path / "broken_tasks.py"
    module.write_text("import dagnats_nb as dn\nraise RuntimeError('no config here')\n")
    assert cli.main(["worker", str(module)]) == 1
    err = capsys.readouterr().err
    assert f"importing module '{module}' failed: RuntimeError: no config here" in err
    assert err.count("\n") == 1
