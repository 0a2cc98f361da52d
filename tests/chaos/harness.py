"""The chaos suite's harness: an engine in a child process, worker processes, the side-effect
log, and the invariants every scenario asserts.

The engine runs in ``engine_child.py`` (so a test can SIGKILL or SIGSTOP it) and answers
commands on its stdin; the ``chaos`` task (``chaos_tasks.py``) appends fsync'd lines to the
side-effect log. At the end a test reads the log and the runs' final states and checks:

- no accepted run is lost: every run whose start returned an id completes, with the output
  its input gives;
- each result is applied once: the run's state applied each history event once, each step
  was queued once per attempt, one ``workflow.completed``;
- no step runs more than once, except in the at-least-once window: a task in flight in a
  process hit by a fault (killed, stopped, or whose results were refused) may run again,
  at most ``slots`` of them per such process;
- the engine starts again after every fault (each restart is one).
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_tasks import LOG_ENV, SLOTS
from conftest import until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class EngineChild:
    """``engine_child.py`` on ``data``: start(), ask(cmd), kill(), stop()."""

    def __init__(self, data: Path, log: Path, **options: Any) -> None:
        self.data, self.log, self.options = data, log, options
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}
        self._lines: queue.Queue = queue.Queue()
        self._next = 0
        self._early: dict[int, dict] = {}
        self.pids: list[int] = []  # every engine process started, in order

    def start(self, timeout: float = 60, **options: Any) -> EngineChild:
        """Start the child (``options`` replace those given before) and wait until it is
        ready: the engine started again."""
        self.options.update(options)
        with open(self._err_path(len(self.pids)), "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "engine_child.py"), str(self.data)]
                + [json.dumps(self.options)],
                cwd=ROOT,
                env={**os.environ, LOG_ENV: str(self.log)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.pids.append(self.proc.pid)
        self._lines, self._early = queue.Queue(), {}
        threading.Thread(target=self._read, args=(self.proc, self._lines), daemon=True).start()
        self.info = self._get(lambda m: "ready" in m, timeout, "the engine to start")
        return self

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(json.loads(line))
        lines.put(None)

    def _get(self, wanted, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        for key, msg in list(self._early.items()):
            if wanted(msg):
                return self._early.pop(key)
        while True:
            left = deadline - time.monotonic()
            try:
                msg = self._lines.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
            if msg is None:
                code = self.proc.wait()
                raise AssertionError(f"engine child exited ({code}) before {what}: {self.stderr()}")
            if wanted(msg):
                return msg
            if "re" in msg:
                self._early[msg["re"]] = msg

    def send(self, cmd: str, **args: Any) -> int:
        self._next += 1
        self.proc.stdin.write(json.dumps({"id": self._next, "cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        return self._next

    def ask(self, cmd: str, timeout: float = 30, **args: Any) -> dict:
        """Send a command and return its answer (an AssertionError when it failed)."""
        key = self.send(cmd, **args)
        reply = self.answer(key, timeout, cmd)
        if "error" in reply and "runs" not in reply:
            raise AssertionError(f"{cmd}: {reply['error']}\n{reply.get('trace', '')}")
        return reply

    def answer(self, key: int, timeout: float = 30, what: str = "an answer") -> dict:
        return self._get(lambda m: m.get("re") == key, timeout, what)

    def start_runs(self, inputs: list, workflow: str = "chain") -> list[str]:
        reply = self.ask("start", inputs=inputs, workflow=workflow)
        assert "error" not in reply, reply["error"]
        return reply["runs"]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)
            server = self.info["server_pid"]  # it gets SIGTERM when its parent dies
            until(lambda: not pid_alive(server), timeout=15, what="nats-server to exit")

    def stop(self, timeout: float = 30) -> None:
        """Stop the engine as a user would (eng.stop()); kill it if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.ask("stop", timeout=timeout)
            self.proc.wait(timeout)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()

    def _err_path(self, n: int) -> Path:
        return self.log.parent / f"engine-{n}.err"  # beside the log: not on a full disk

    def stderr(self) -> str:
        """The end of the last engine process's stderr (its log lines)."""
        path = self._err_path(len(self.pids) - 1)
        return path.read_text()[-3000:] if path.exists() else ""


class WorkerProc:
    """``dagnats worker tests.chaos.chaos_tasks:work`` on the engine's data dir."""

    def __init__(self, data: Path, log: Path, worker_id: str) -> None:
        self.err = log.parent / f"{worker_id}.err"  # a file: a full pipe would block it
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dagnats_nb", "worker", "tests.chaos.chaos_tasks:work"]
                + ["--data-dir", str(data), "--worker-id", worker_id, "--drain-timeout", "1"],
                cwd=ROOT,
                env={**os.environ, LOG_ENV: str(log)},
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 30) -> None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if "ready:" not in line:
            self.proc.kill()
            raise AssertionError(f"worker not ready: {line!r} {self.err.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the side-effect log ------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    run: str
    step: str
    attempt: int
    pid: int
    phase: str  # start | end


def read_log(path: Path) -> list[Line]:
    if not path.exists():
        return []
    out = []
    for text in path.read_text().splitlines():
        run, step, attempt, pid, phase = text.rsplit(" ", 4)  # a forged run id may hold spaces
        out.append(Line(run, step, int(attempt), int(pid), phase))
    return out


def executions(path: Path) -> int:
    return sum(1 for line in read_log(path) if line.phase == "start")


def in_flight(path: Path, pid: int) -> set[tuple[str, str]]:
    """The (run, step) tasks process ``pid`` has started and not ended."""
    open_: set[tuple[str, str]] = set()
    for line in read_log(path):
        if line.pid == pid:
            key = (line.run, line.step)
            (open_.add if line.phase == "start" else open_.discard)(key)
    return open_


@dataclass
class Tally:
    """What a scenario counts; ``line()`` is its summary."""

    name: str
    runs: int = 0
    faults: int = 0
    executions: int = 0
    duplicates: int = 0
    allowed: int = 0
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        wall = time.monotonic() - self.started
        extra = "".join(f", {n}" for n in self.notes)
        return (
            f"\nchaos {self.name}: runs={self.runs} faults={self.faults} "
            f"executions={self.executions} duplicates={self.duplicates} "
            f"(at most {self.allowed} allowed){extra} wall={wall:.1f}s"
        )


def check_executions(
    log: Path, keys: set[tuple[str, str]], faulted: set[int], slots: int = SLOTS
) -> tuple[int, int, set[tuple[str, str]]]:
    """Every (run, step) of ``keys`` ran; one that ran more than once ran at most once in a
    process no fault hit (pids ``faulted``: killed, stopped...), and each faulted process
    ran at most ``slots`` tasks that ran again after it (in log order): its tasks in flight
    at the fault. (executions, duplicates, the steps that ran more than once)."""
    by_key: dict[tuple[str, str], list[Line]] = defaultdict(list)
    for line in read_log(log):
        if line.phase == "start" and (line.run, line.step) in keys:
            by_key[(line.run, line.step)].append(line)
    missing = keys - set(by_key)
    assert not missing, f"steps never executed: {sorted(missing)[:5]}"
    repeated: dict[int, list] = defaultdict(list)
    again = {key for key, lines in by_key.items() if len(lines) > 1}
    for key in again:
        lines = by_key[key]
        healthy = [line.pid for line in lines if line.pid not in faulted]
        assert len(healthy) <= 1, f"{key} ran more than once outside a fault: {lines}"
        for line in lines[:-1]:  # an execution run again later: in flight at its fault
            if line.pid in faulted:
                repeated[line.pid].append((key, [x.pid for x in lines]))
    for pid, keys in repeated.items():
        assert len(keys) <= slots, (
            f"{len(keys)} tasks of pid {pid} ran again; it has {slots} slots: {keys}"
        )
    total = sum(len(v) for v in by_key.values())
    return total, total - len(by_key), again


def check_runs(report: dict[str, dict], expected: dict[str, int], steps: str = "abc") -> None:
    """Each accepted run completed with output ``n`` = its input + len(steps), each result
    applied once (every history event applied once, each step queued once, one completion
    of the run, no step in a later attempt than the first)."""
    for rid, r in report.items():
        assert r["status"] == "completed", (rid, r)
        assert r["output"]["n"] == expected[rid] + len(steps), (rid, r["output"])
        # every event applied once: all of them while the run is held, and every one up to
        # its end once it left memory (a late result after that is not applied at all)
        assert r["history_to_end"] <= r["applied"] <= r["history"], (rid, r)
        assert r["ended"] == 1, (rid, r)
        assert r["queued_events"] == dict.fromkeys(steps, 1), (rid, r["queued_events"])
        assert {s: v["attempt"] for s, v in r["steps"].items()} == dict.fromkeys(steps, 1), r


def finish(child: EngineChild, runs: dict[str, int], timeout: float = 60) -> dict[str, dict]:
    """Wait until every accepted run has ended in the engine child; their report."""
    ids = list(runs)

    def ended() -> bool:
        statuses = child.ask("statuses", runs=ids)["statuses"]
        return all(s in ("completed", "failed", "cancelled") for s in statuses.values())

    until(ended, timeout=timeout, every=0.2, what="every accepted run to end")
    return child.ask("report", runs=ids, timeout=60)["runs"]
