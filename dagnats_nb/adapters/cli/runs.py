"""``dagnats runs``, ``dagnats show RUN``, ``dagnats events RUN``, ``dagnats cancel RUN`` and
``dagnats fork RUN STEP``: the runs of the engine on a data dir (or at ``nats_url``), as the
notebook's ``%dagnats runs / steps / events / cancel / fork`` show them. ``RUN`` may be
``last``, the newest run.

The engine's messages name Python calls (``eng.steps('X')``) for notebook users;
:func:`cli_text` words them for a terminal (``dagnats show X``), and :func:`hints` turns the
engine's warnings (a task no worker serves) into lines for stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from dagnats_nb.dag.state import RUN_TERMINAL
from dagnats_nb.errors import RunError, UnservedTaskWarning

# The engine's wording for Python users -> the same advice for a terminal, in this order.
_CLI_WORDING = [
    (re.compile(r"eng\.steps\('([^']*)'\)"), r"`dagnats show \1`"),
    (re.compile(r"eng\.steps\(run_id\)"), "`dagnats show RUN`"),
    (re.compile(r"list runs with eng\.runs\(\)"), "`dagnats runs` lists them"),
    (re.compile(r"eng\.runs\(\)"), "`dagnats runs`"),
    (re.compile(r"`dagnats dlq list` or eng\.dlq\(\)"), "`dagnats dlq list`"),
    (re.compile(r"list them with eng\.dlq\(\)"), "`dagnats dlq list` lists them"),
    (re.compile(r"eng\.dlq\(\)"), "`dagnats dlq list`"),
    (re.compile(r"eng\.triggers\(\)"), "`dagnats trigger list`"),
    (re.compile(r"eng\.enable_trigger\('([^']*)'\)"), r"`dagnats trigger enable \1`"),
    (
        re.compile(
            r"define a handler \(@dn\.task\('([^']*)'\) or @eng\.task\('[^']*'\)\) "
            r"or start `dagnats worker MODULE`"
        ),
        r"run a worker with a handler for '\1': `dagnats worker MODULE`",
    ),
    (re.compile(r"Engine\.start\(\)"), "`dagnats serve`"),
]


def cli_text(message: str) -> str:
    """An engine message as a terminal user reads it: CLI commands where it names Python."""
    for pattern, replacement in _CLI_WORDING:
        message = pattern.sub(replacement, message)
    return message


@contextmanager
def hints() -> Iterator[None]:
    """Print the engine's UnservedTaskWarnings raised inside as ``dagnats: hint: ...`` lines
    on stderr (not Python's two-line warning format)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnservedTaskWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, UnservedTaskWarning):
                    print(f"dagnats: hint: {cli_text(str(w.message))}", file=sys.stderr)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def add_run_parsers(
    sub,
    settings_args: Callable[[argparse.ArgumentParser], None],
    connect: Callable[[argparse.Namespace], Any],
) -> None:
    """Add ``runs``, ``show``, ``events``, ``cancel``, ``fork`` and ``rerun`` to the ``dagnats``
    subcommands; ``connect(args)`` is the engine they talk to."""
    p = sub.add_parser("runs", help="list runs, newest last (run_id, workflow, status...)")
    p.add_argument("--workflow", help="only this workflow's runs")
    p.add_argument("--status", help="only runs in this status (running, completed, failed...)")
    p.add_argument(
        "--limit", type=int, default=50, help="the newest N (default 50; 0: all of them)"
    )
    settings_args(p)
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.set_defaults(fn=cmd_runs, connect=connect)
    p = sub.add_parser("show", help="a run: status, its steps, its output or error")
    p.add_argument("run_id", metavar="RUN", help="a run id, or `last` (the newest run)")
    settings_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_show, connect=connect)
    p = sub.add_parser("events", help="a run's history, oldest first")
    p.add_argument("run_id", metavar="RUN", help="a run id, or `last` (the newest run)")
    settings_args(p)
    p.add_argument("--json", action="store_true", help="print JSON records (whole payloads)")
    p.set_defaults(fn=cmd_events, connect=connect)
    p = sub.add_parser("cancel", help="cancel a run: its queued and running steps are dropped")
    p.add_argument("run_id", metavar="RUN", help="a run id, or `last` (the newest run)")
    p.add_argument("--reason", default="cancelled from the command line", help="kept in history")
    p.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for it to end (default 10)"
    )
    settings_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_cancel, connect=connect)
    p = sub.add_parser(
        "fork", help="a new run from STEP on, reusing the outputs of the steps before it"
    )
    p.add_argument("run_id", metavar="RUN", help="a run id, or `last` (the newest run)")
    p.add_argument("step_id", metavar="STEP", help="the step it runs again, with what follows")
    _fork_options(p, settings_args)
    p.set_defaults(fn=cmd_fork, connect=connect)
    p = sub.add_parser(
        "rerun",
        help="run RUN again after an edit: a fork from the steps whose definition changed",
    )
    p.add_argument("run_id", metavar="RUN", nargs="?", default="last", help="default: `last`")
    _fork_options(p, settings_args)
    p.set_defaults(fn=cmd_rerun, connect=connect)


# -- helpers -------------------------------------------------------------------------------


def _fork_options(
    p: argparse.ArgumentParser, settings_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    """The options ``fork`` and ``rerun`` share."""
    p.add_argument("--input", help="a new input as JSON (default: the run's; runs every step)")
    p.add_argument("--workflow", help="a registered name (its latest version) or a workflow file")
    p.add_argument("--no-wait", action="store_true", help="print the new run's id and return")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    settings_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _fork_points(steps: list[str]) -> str:
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(f"'{s}'" for s in steps)


def _resolve(eng: Any, run_id: str) -> dict[str, Any]:
    """The run's summary (``last``: the newest run's); a one-line RunError when unknown."""
    if run_id == "last":
        df = eng.runs()
        if df.empty:
            raise RunError("there is no run yet: start one with `dagnats run WORKFLOW`")
        run_id = str(df["run_id"].iloc[-1])
    summary = eng.run_state(run_id)
    if summary is None:
        raise RunError(f"no run with id {run_id}: `dagnats runs` lists them")
    return summary


def _blank(value: Any) -> bool:
    """None, NaN, NaT or <NA>: a cell with nothing in it."""
    if value is None:
        return True
    try:
        return bool(value != value) or value is pd.NaT or value is pd.NA
    except (TypeError, ValueError):  # pd.NA compared
        return True


def _cell(value: Any) -> str:
    return "" if _blank(value) else str(value)


def _when(value: Any) -> str:
    if _blank(value):
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC).isoformat()
    return str(value)[:19].replace("T", " ")


def _seconds(value: Any) -> str:
    if _blank(value):
        return ""
    return f"{value:.2f}s" if value < 100 else f"{value:.0f}s"


def _first_line(text: Any, width: int = 80) -> str:
    if _blank(text) or not text:
        return ""
    line = str(text).splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _records(df) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records", date_format="iso"))


# -- commands ------------------------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise RunError(f"--limit must be >= 0 (0: all runs), got {args.limit}")
    eng = args.connect(args)
    try:
        df = eng.runs()
    finally:
        eng.stop()
    if args.workflow:
        df = df[df["workflow"] == args.workflow]
    if args.status:
        df = df[df["status"] == args.status]
    total = len(df)
    if args.limit:
        df = df.tail(args.limit)
    if args.json:
        print(json.dumps(_records(df), indent=2))
        return 0
    if df.empty:
        which = " ".join(x for x in (args.status, "runs") if x)
        of = f" of workflow '{args.workflow}'" if args.workflow else ""
        print(f"no {which}{of}")
        return 0
    rows = [
        [
            r.run_id,
            _cell(r.workflow),
            _cell(r.status),
            _when(r.started_at),
            _seconds(r.duration_s),
            _first_line(r.error, 60),
        ]
        for r in df.itertuples()
    ]
    print(_table(rows, ["run_id", "workflow", "status", "started_at", "took", "error"]))
    if len(df) < total:
        print(f"(the newest {len(df)} of {total}: --limit 0 shows all)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    eng = args.connect(args)
    try:
        summary = _resolve(eng, args.run_id)
        run_id, workflow, status = summary["run_id"], summary["workflow"], summary["status"]
        steps = eng.steps(run_id)
        output = eng.run_output(run_id) if status == "completed" else None
        waiting = set(steps.loc[steps["status"] == "queued", "task"].dropna())
        unserved = eng.unserved_tasks(workflow) if waiting and workflow else []
    finally:
        eng.stop()
    starts = steps["queued_at"].dropna()
    ends = steps["ended_at"].dropna()
    result = {
        "run_id": run_id,
        "workflow": workflow,
        "status": status,
        "started_at": summary.get("started_at") or (_when(starts.min()) if len(starts) else None),
        "ended_at": summary.get("ended_at") or (_when(ends.max()) if len(ends) else None),
        "error": summary.get("error"),
        "output": output,
        "steps": _records(steps),
        "unserved_tasks": sorted(set(unserved) & waiting),
    }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    when = _when(result["started_at"])
    print(f"run {run_id}  workflow {workflow}  {status}" + (f"  (started {when})" if when else ""))
    rows = [
        [
            str(r.step_id),
            _cell(r.task),
            str(r.type),
            str(r.status),
            str(r.attempt),
            _cell(r.items),
            _seconds(r.duration_s),
            _cell(r.worker_id),
            _first_line(r.error, 60),
        ]
        for r in steps.itertuples()
    ]
    header = ["step", "task", "type", "status", "attempt", "items", "took", "worker", "error"]
    print(_table(rows, header))
    for task in result["unserved_tasks"]:
        print(
            f"step of task '{task}' waits: no worker serves it; start one with "
            f"`dagnats worker MODULE --task {task}`"
        )
    if status == "completed":
        print("output:")
        print(json.dumps(output, indent=2, default=str))
    elif result["error"]:
        print(f"error: {result['error']}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    eng = args.connect(args)
    try:
        run_id = _resolve(eng, args.run_id)["run_id"]
        df = eng.events(run_id)
    finally:
        eng.stop()
    if args.json:
        print(json.dumps(_records(df), indent=2))
        return 0
    rows = [
        [
            str(r.seq),
            _when(r.time),
            str(r.type),
            _cell(r.step_id),
            _cell(r.attempt),
            _cell(r.worker_id),
            _first_line(json.dumps(r.payload, default=str), 70) if r.payload else "",
        ]
        for r in df.itertuples()
    ]
    header = ["seq", "time", "type", "step", "attempt", "worker", "payload"]
    print(_table(rows, header))
    print(f"({len(df)} events of run {run_id}; --json prints whole payloads)")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    eng = args.connect(args)
    try:
        summary = _resolve(eng, args.run_id)
        run_id, status = summary["run_id"], summary["status"]
        if status in RUN_TERMINAL:
            raise RunError(f"run {run_id} already ended {status}: nothing to cancel")
        eng.cancel_run(run_id, args.reason)
        deadline = time.monotonic() + max(0.0, args.wait)
        while True:
            status = (eng.run_state(run_id) or {}).get("status", status)
            if status in RUN_TERMINAL or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    finally:
        eng.stop()
    if args.json:
        print(json.dumps({"run_id": run_id, "status": status}))
    elif status == "cancelled":
        print(f"run {run_id} cancelled")
    elif status in ("completed", "failed"):
        print(f"run {run_id} ended {status} before the cancel reached it")
    else:
        print(
            f"cancel sent to run {run_id}; it is still {status} after {args.wait:g}s: "
            "the engine that runs it applies the cancel when it runs"
        )
    return 0 if status == "cancelled" else 1


def cmd_fork(args: argparse.Namespace) -> int:
    return _forked(args, lambda eng, source, value, wf: eng.fork(source, args.step_id, value, wf))


def cmd_rerun(args: argparse.Namespace) -> int:
    return _forked(args, lambda eng, source, value, wf: eng.rerun(source, value, wf))


def _forked(args: argparse.Namespace, start: Callable[..., Any]) -> int:
    """``fork`` and ``rerun``: start the new run, wait for it unless ``--no-wait``, print."""
    try:
        value = json.loads(args.input) if args.input is not None else None
    except ValueError as exc:
        raise RunError(f"--input is not JSON ({exc}): write e.g. --input '{{\"n\": 3}}'") from None
    workflow = args.workflow
    if workflow is not None and Path(workflow).is_file():
        workflow = Path(workflow)
    eng = args.connect(args)
    try:
        source = _resolve(eng, args.run_id)["run_id"]
        with hints():  # a task no worker serves: said before the wait, on stderr
            run = start(eng, source, value, workflow)
        if args.no_wait:
            print(run.id)
            return 0
        run.wait(args.timeout)
        result: dict[str, Any] = {
            "run_id": run.id,
            "forked_from": source,
            "step_id": run.fork_steps[0],
            "from_steps": run.fork_steps,
            "reused": run.reused,
            "workflow": run.workflow,
            "status": run.status,
        }
        if run.status == "completed":
            result["output"] = run.output
        else:
            result["error"] = run.error
    finally:
        eng.stop()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        kept = ", ".join(run.reused) if run.reused else "no step"
        points = _fork_points(run.fork_steps)
        print(f"run {run.id} forked from {points} of run {source}: reuses {kept}")
        print(f"run {run.id} {result['status']}")
        if "output" in result:
            print(json.dumps(result["output"], indent=2, default=str))
        else:
            print(result["error"], file=sys.stderr)
    return 0 if result["status"] == "completed" else 1
