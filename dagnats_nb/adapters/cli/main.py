"""The ``dagnats`` command: serve, status, workflow validate, run, demo, worker; the runs
(``runs``, ``show``, ``events``, ``cancel``), gates and triggers are in their modules."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from dagnats_nb.adapters.cli.runs import add_run_parsers, cli_text, hints
from dagnats_nb.errors import DagnatsError, WorkflowError
from dagnats_nb.observe.report import format_status


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="engine data directory (default: data_dir setting)")
    p.add_argument("--config", help="a dagnats.yaml file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set monitor_port=8222 (repeatable)",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DagnatsError(f"--set {item!r}: write KEY=VALUE, e.g. --set nats_port=4222")
        out[key.strip()] = value.strip()
    if args.data_dir:
        out["data_dir"] = args.data_dir
    return out


def _connect(args: argparse.Namespace):
    """The engine on the data dir (or at ``nats_url``) the arguments name."""
    from dagnats_nb.facade.engine import Engine

    return Engine.connect(config=args.config, **_overrides(args))


def cmd_serve(args: argparse.Namespace) -> int:
    from dagnats_nb.config import load_settings
    from dagnats_nb.facade.engine import Engine

    settings = _overrides(args)
    if load_settings(args.config, **settings).http_addr is None:
        settings["http_addr"] = "127.0.0.1:0"  # /health and /ready are on for serve
    with hints():  # runs recovered from the history that wait on tasks no worker serves
        eng = Engine.start(config=args.config, **settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"dagnats engine serving on {eng.url} (data_dir {eng.settings.data_dir})", flush=True)
    if eng.server and eng.server.monitor_url:
        print(f"monitoring on {eng.server.monitor_url}", flush=True)
    if eng.http_url:
        print(f"health on {eng.http_url}/health and {eng.http_url}/ready", flush=True)
    print("stop with Ctrl-C", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        eng.stop()
        print("dagnats engine stopped", flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dagnats_nb.facade.engine import Engine

    eng = Engine.connect(config=args.config, **_overrides(args))
    try:
        status = eng.status()
    finally:
        eng.stop()
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print(cli_text(format_status(status)))
    return 0


def cmd_url(args: argparse.Namespace) -> int:
    """The NATS URL of the engine on the data dir, with its token: for the Go ``dagnats``
    CLI and workers (``DAGNATS_NATS_URL=$(dagnats url)``) and the ``nats`` CLI."""
    from dagnats_nb.config import load_settings
    from dagnats_nb.server.datadir import require_engine_url

    settings = load_settings(args.config, **_overrides(args))
    print(require_engine_url(settings.data_dir, "or pass --data-dir"))
    return 0


STATS = {
    "streams": "stream_stats",
    "consumers": "consumer_lag",
    "lag": "consumer_lag",  # the notebook's name (%dagnats lag)
    "kv": "kv_stats",
    "account": "account",
    "health": "health",
}


def cmd_stats(args: argparse.Namespace) -> int:
    from dagnats_nb.facade.engine import Engine
    from dagnats_nb.observe import tables

    if args.all and STATS[args.what] != "consumer_lag":
        raise DagnatsError("stats: --all is for `dagnats stats consumers` (ephemeral consumers)")
    eng = Engine.connect(config=args.config, **_overrides(args))
    try:
        view = getattr(eng, STATS[args.what])
        df = view(include_internal=True) if args.all else view()
    finally:
        eng.stop()
    if args.json:
        print(df.to_json(orient="records", date_format="iso", indent=2))
    else:
        print(tables.render_text(df.wide() if args.wide else df, hints="cli", every_row=True))
    return 0


def cmd_sizing(args: argparse.Namespace) -> int:
    eng = _connect(args)
    try:
        workload: dict[str, Any] = {"runs_per_day": args.runs_per_day}
        if args.concurrent_runs is not None:
            workload["concurrent_runs"] = args.concurrent_runs
        report = eng.sizing(args.workflow, days=args.days, **workload)
    finally:
        eng.stop()
    print(repr(report))
    return 0


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from dagnats_nb.facade.engine import Engine

    eng = Engine.connect(config=args.config, **_overrides(args))
    try:
        df = eng.dlq(args.workflow, args.run, limit=args.limit)
    finally:
        eng.stop()
    if args.json:
        print(df.to_json(orient="records", date_format="iso", indent=2))
    elif df.empty:
        print("no dead letters")
    else:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_colwidth", 60):
            print(df.to_string(index=False))
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from dagnats_nb.facade.engine import Engine

    if (args.seq is None) == (args.run is None):
        raise DagnatsError("dlq replay: name a dead letter's SEQ or --run RUN_ID (one of them)")
    eng = Engine.connect(config=args.config, **_overrides(args))
    try:
        rows = eng.dlq_replay(args.seq, run=args.run, dry_run=args.dry_run)
    finally:
        eng.stop()
    for r in rows:
        item = f" item {r['map_index']}" if r["map_index"] is not None else ""
        what = f"run {r['run_id']} step '{r['step_id']}'{item} as attempt {r['attempt']}"
        if args.dry_run:
            print(f"would replay dead letter {r['seq']}: {what}")
        elif r["status"] == "failed":
            print(
                f"replayed dead letter {r['seq']}: {what}; the run is still failed (no engine "
                "has applied it yet: it resumes when the engine runs)"
            )
        else:
            print(f"replayed dead letter {r['seq']}: {what}; the run is {r['status']}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from dagnats_nb.facade.engine import Engine

    eng = Engine.connect(config=args.config, **_overrides(args))
    try:
        for path in args.files:
            defn = eng.register(Path(path))
            print(f"{path}: registered {defn.name} v{defn.version} ({len(defn.steps)} steps)")
    finally:
        eng.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from dagnats_nb.facade.engine import Engine

    try:
        value = json.loads(args.input) if args.input is not None else None
    except ValueError as exc:
        raise DagnatsError(
            f"--input is not JSON ({exc}): write e.g. --input '{{\"n\": 3}}'"
        ) from None
    workflow = Path(args.workflow) if Path(args.workflow).is_file() else args.workflow
    eng = Engine.connect(config=args.config, **_overrides(args))
    try:
        with hints():  # a task no worker serves: said before the wait, on stderr
            run = eng.start_run(workflow, value)
        if args.no_wait:
            print(run.id)
            return 0
        run.wait(args.timeout)
        result = {"run_id": run.id, "workflow": run.workflow, "status": run.status}
        result["output" if run.status == "completed" else "error"] = (
            run.output if run.status == "completed" else run.error
        )
    finally:
        eng.stop()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"run {result['run_id']} {result['status']}")
        if "output" in result:
            print(json.dumps(result["output"], indent=2, default=str))
        else:
            print(result["error"], file=sys.stderr)
    return 0 if result["status"] == "completed" else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from dagnats_nb.dag import load_workflow
    from dagnats_nb.llm.handler import check_workflow

    failed = 0
    for path in args.files:
        try:
            defn = load_workflow(Path(path))
            llm_problems = check_workflow(defn)  # built-in llm steps: options, templates
        except WorkflowError as exc:
            failed += 1
            problems = getattr(exc, "problems", None) or [str(exc)]
            for problem in problems:
                print(f"{path}: {problem}", file=sys.stderr)
            continue
        if llm_problems:
            failed += 1
            for problem in llm_problems:
                print(f"{path}: {problem}", file=sys.stderr)
            continue
        print(f"{path}: ok ({defn.name}, {len(defn.steps)} steps)")
    return 1 if failed else 0


def cmd_backup(args: argparse.Namespace) -> int:
    from dagnats_nb.adapters.cli.backup import run_command
    from dagnats_nb.config import load_settings

    settings = load_settings(args.config, **_overrides(args))
    rows = run_command("backup", settings, args.dir, args.stream or None)
    print(f"backed up {len(rows)} streams to {args.dir}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from dagnats_nb.adapters.cli.backup import run_command
    from dagnats_nb.config import load_settings

    settings = load_settings(args.config, **_overrides(args))
    rows = run_command("restore", settings, args.dir, args.stream or None, args.force)
    target = settings.nats_url or settings.data_dir
    print(f"restored {len(rows)} streams from {args.dir} into {target}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dagnats_nb.adapters.cli.demo import run_demo

    return run_demo(data_dir=args.data_dir, runs=args.runs)


def cmd_worker(args: argparse.Namespace) -> int:
    from dagnats_nb.adapters.cli.worker import run_worker
    from dagnats_nb.config import load_settings

    if args.data_dir and args.nats_url:
        raise DagnatsError("worker: pass --data-dir or --nats-url, not both")
    settings = load_settings(args.config, **_overrides(args))
    return run_worker(
        settings,
        args.module,
        tasks=args.task or None,
        concurrency=args.concurrency,
        url=args.nats_url,
        worker_id=args.worker_id,
        drain_timeout=args.drain_timeout,
        group=args.group or "",
        capabilities=args.capability or [],
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dagnats", description="A durable DAG workflow engine on NATS JetStream."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run an embedded engine in the foreground")
    _settings_args(p)
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("status", help="show the engine on a data dir: streams, workers, tasks")
    _settings_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("url", help="print the engine's NATS URL with its token (keep it private)")
    _settings_args(p)
    p.set_defaults(fn=cmd_url)
    p = sub.add_parser("stats", help="JetStream statistics of the engine on a data dir")
    p.add_argument("what", choices=sorted(STATS), help="which table")
    _settings_args(p)
    p.add_argument(
        "--json", action="store_true", help="print JSON records (every row, raw numbers)"
    )
    p.add_argument("--wide", action="store_true", help="every column, not only the main ones")
    p.add_argument(
        "--all", action="store_true", help="consumers: also the ephemeral ones (KV watchers...)"
    )
    p.set_defaults(fn=cmd_stats)
    p = sub.add_parser(
        "sizing", help="disk and memory estimate, calibrated on the engine's finished runs"
    )
    p.add_argument("workflow", nargs="?", help="size runs of this workflow (default: the mix)")
    p.add_argument("--runs-per-day", type=float, default=1000.0, help="default 1000")
    p.add_argument("--days", type=float, default=30.0, help="disk after D days (default 30)")
    p.add_argument("--concurrent-runs", type=int, help="runs in flight at once (default 10)")
    _settings_args(p)
    p.set_defaults(fn=cmd_sizing)
    dlq = sub.add_parser("dlq", help="dead letters: list, replay")
    dlq_sub = dlq.add_subparsers(dest="dlq", required=True)
    p = dlq_sub.add_parser("list", help="list dead letters (newest last)")
    p.add_argument("--workflow", help="only this workflow's")
    p.add_argument("--run", help="only this run's")
    p.add_argument("--limit", type=int, default=1000, help="the last N of the stream")
    _settings_args(p)
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.set_defaults(fn=cmd_dlq_list)
    p = dlq_sub.add_parser(
        "replay", help="resume a failed run at its dead-lettered step (a new attempt)"
    )
    p.add_argument("seq", nargs="?", type=int, help="the dead letter's seq (dagnats dlq list)")
    p.add_argument("--run", help="replay the newest dead letter of this run")
    p.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    _settings_args(p)
    p.set_defaults(fn=cmd_dlq_replay)
    p = sub.add_parser("backup", help="snapshot the engine's streams to DIR/<STREAM>/")
    p.add_argument("dir", metavar="DIR", help="backup directory (one folder per stream)")
    p.add_argument("--stream", action="append", help="only this stream (repeatable)")
    _settings_args(p)
    p.set_defaults(fn=cmd_backup)
    p = sub.add_parser("restore", help="restore the streams backed up in DIR (engine stopped)")
    p.add_argument("dir", metavar="DIR", help="a directory written by `dagnats backup`")
    p.add_argument("--force", action="store_true", help="replace streams that exist")
    p.add_argument("--stream", action="append", help="only this stream (repeatable)")
    _settings_args(p)
    p.set_defaults(fn=cmd_restore)
    wf = sub.add_parser("workflow", help="workflow files").add_subparsers(dest="wf", required=True)
    p = wf.add_parser("validate", help="check workflow files (exit 1 on any problem)")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=cmd_validate)
    p = wf.add_parser("register", help="store workflow files in the running engine")
    p.add_argument("files", nargs="+")
    _settings_args(p)
    p.set_defaults(fn=cmd_register)
    p = sub.add_parser("run", help="start a run and wait for its output (exit 1 unless completed)")
    p.add_argument("workflow", help="a registered workflow's name, or a workflow file")
    p.add_argument("--input", help="the run's input as JSON")
    p.add_argument("--no-wait", action="store_true", help="print the run id and return")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _settings_args(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("demo", help="run a small pipeline on an embedded engine")
    p.add_argument("--data-dir", help="keep the engine's data here (default: a temp dir)")
    p.add_argument("--runs", type=int, default=3, help="how many runs to start")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("worker", help="run a module's @dn.task handlers against an engine")
    p.add_argument("module", nargs="?", help="MODULE[:ATTR] (or a .py file) with the handlers")
    p.add_argument("--task", action="append", help="only this task (repeatable; llm: built-in)")
    p.add_argument(
        "--concurrency",
        type=int,
        help="tasks in flight per handler (default: its own, else 64 async def, 8 def)",
    )
    p.add_argument("--nats-url", help="the engine's NATS URL (default: its data dir's)")
    p.add_argument("--worker-id", help="id in the workers KV (default: host-pid-random)")
    p.add_argument(
        "--group", help="serve only steps with this worker_group (task.{task}.{group}.>)"
    )
    p.add_argument(
        "--capability",
        action="append",
        help="a capability this worker offers (repeatable): steps that require it run here",
    )
    p.add_argument(
        "--drain-timeout", type=float, default=10.0, help="seconds in-flight tasks get at stop"
    )
    _settings_args(p)
    p.set_defaults(fn=cmd_worker)
    from dagnats_nb.adapters.cli.cache import add_cache_parser

    add_cache_parser(sub, _settings_args, _connect)
    from dagnats_nb.adapters.cli.triggers import add_trigger_parser

    add_trigger_parser(sub, _settings_args, _overrides)
    from dagnats_nb.adapters.cli.gates import add_gate_parsers

    add_gate_parsers(sub, _settings_args, _connect)
    add_run_parsers(sub, _settings_args, _connect)
    from dagnats_nb.adapters.cli.compare import add_compare_parser

    add_compare_parser(sub, _settings_args, _connect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DagnatsError as exc:
        print(f"dagnats: {cli_text(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
