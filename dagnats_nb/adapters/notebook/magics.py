"""``%dagnats`` (line) and ``%%dagnats workflow`` (cell): parse, call ``console``, display.

Errors a user causes are one line (``DagnatsError._render_traceback_``) and the cell still
fails; ``%config Dagnats.short_errors = False`` shows full tracebacks.

``%dagnats run`` and ``watch`` display a live view and return the ``Run``; the cell shows
the view only (the returned Run displays nothing more there, see ``reprs.display_run``).
Interrupting the wait of ``%dagnats run`` (Jupyter's stop button) stops the waiting, not
the run: one line says so, ``-o NAME`` still gets the Run, and the cell counts as
interrupted (a "Run All" stops there).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import yaml
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import MagicArgumentParser
from traitlets import Bool, Float

from dagnats_nb.adapters.notebook import caching, console, live
from dagnats_nb.adapters.notebook.expand import Expander, read_json_value, split_words
from dagnats_nb.adapters.notebook.live import RunView, in_kernel
from dagnats_nb.dag import WorkflowDef, load_workflow
from dagnats_nb.dag.edges import load_edges, looks_like_edges
from dagnats_nb.dag.validate import workflow_error
from dagnats_nb.errors import DagnatsError
from dagnats_nb.facade import default
from dagnats_nb.facade.run import Run
from dagnats_nb.observe import tables

HELP = """\
%dagnats SUBCOMMAND [options]  — the notebook console of the kernel's dagnats engine

  start [--data-dir D] [--config F] [--set key=value ...]   start the engine (idempotent)
  stop                                     stop it
  status                                   streams, workers, pending tasks
  workflows                                registered workflows (DataFrame)
  runs [--workflow W] [--status S] [--limit N]                runs (DataFrame)
  run WF [--input JSON|$var] [--no-wait] [--timeout S]       start a run, live view
  fork RUN_ID STEP [--input JSON|$var] [--workflow WF|$var] [--no-wait] [--timeout S]
                                           a new run from STEP on, reusing the steps
                                           before it; --workflow: an edited version
  rerun [RUN_ID] [--input ...] [--workflow ...] [--no-wait] [--timeout S]
                                           RUN_ID (default last) again after an edit:
                                           a fork from what changed (cell or handler)
  compare RUN_A RUN_B                      two runs side by side: DAGs, steps, diffs
  steps RUN_ID | events RUN_ID             a run's steps / history (DataFrame)
  cancel RUN_ID                            cancel a run
  approve|reject RUN_ID STEP [COMMENT] [--by NAME] [--wait S]
                                           decide an approval step (wait S s for it)
  signal RUN_ID NAME [PAYLOAD]             signal a run (its wait_for_event step NAME)
  event TYPE [DATA]                        publish an event (wait_for_event steps match it)
  watch RUN_ID                             a live view of a run (returns at once)
  dlq [--workflow W] [--run R] [--limit N] dead letters (DataFrame)
  dlq replay SEQ | --run R [--dry-run]     resume a failed run at its dead-lettered step
  config                                   settings and where they come from (DataFrame)
  triggers                                 cron and subject triggers, last fired, next due
  trigger enable|disable ID                switch a trigger on or off
  streams | lag | kv | account [--wide]    JetStream stats (DataFrames; --wide: every column)
  lag --all                                also the ephemeral consumers (KV watchers...)
  health [--wide]                          the checklist's health rules, warnings first
  monitor [varz|jsz|connz|subsz]           NATS monitoring (needs monitor_port)
  sizing [WF] [--runs-per-day N] [--days D] [--concurrent-runs N]
                                           disk/memory estimate calibrated on this engine
  cache | cache clear [--task T]           the step cache: entries, hits, saved time /
                                           drop its results (of task T)
  help                                     this text

  -o NAME / --save NAME stores the result in the namespace; RUN_ID may be `last` or $run.
  $var and {expr} expand from the namespace (a whole word stands for the object itself).

%%dagnats workflow NAME [--version V] [-o NAME]
  registers the workflow the cell defines and shows it. The body is dagnats JSON, YAML
  (with a top-level `steps:`), or the edge syntax:

    fetch -> [summarize, classify] -> report     # chains; [a, b] fans out / in
    notify                                       # a step alone
    summarize: task=llm retry=3 timeout=30s      # step settings, key=value
    classify:  type=map concurrency=4
    workflow:  retry=2 delay=50ms timeout=5m     # workflow settings

  step keys: task (default: the id), type (normal|map|agent_loop|sleep|wait_for_event|
  approval|sub_workflow|planner|agent|respond), retry, delay, backoff
  (fixed|linear|exponential), max_delay, timeout, concurrency, max_items, max_iterations,
  max_duration, loop_delay, on_failure, compensate, skip_if="parent.field == value",
  worker_group, cache (true|false: the step cache); sleep: duration, until, cron;
  wait_for_event: event, match="f == input.x", timeout; approval: subject, timeout,
  approvers=a,b, description; sub_workflow: workflow, detach; planner: max_steps,
  max_depth, allowed_tasks=a,b; respond: status, body_from.
  workflow keys: version, retry, delay, backoff, max_delay, timeout, max_steps,
  sticky (soft|hard).
  The body may use {var} from the namespace.
"""


def _parser() -> MagicArgumentParser:
    p = MagicArgumentParser(prog="%dagnats", description="the dagnats engine console")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND")

    def cmd(name: str, save: bool = True) -> MagicArgumentParser:
        s = sub.add_parser(name, prog=f"%dagnats {name}")
        if save:
            s.add_argument("-o", "--save", metavar="NAME", help="store the result as NAME")
        return s

    s = cmd("start")
    s.add_argument("--data-dir")
    s.add_argument("--config")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    cmd("stop", save=False)
    cmd("status")
    cmd("workflows")
    s = cmd("runs")
    s.add_argument("--workflow")
    s.add_argument("--status")
    s.add_argument("--limit", type=int)
    s = cmd("run")
    s.add_argument("workflow")
    s.add_argument("--input")
    s.add_argument("--no-wait", action="store_true")
    s.add_argument("--timeout", type=float)
    fork, rerun = cmd("fork"), cmd("rerun")
    fork.add_argument("run_id")
    fork.add_argument("step_id")
    rerun.add_argument("run_id", nargs="?", default="last")
    for s in (fork, rerun):
        s.add_argument("--input")
        s.add_argument("--workflow")
        s.add_argument("--no-wait", action="store_true")
        s.add_argument("--timeout", type=float)
    s = cmd("compare")
    s.add_argument("run_a")
    s.add_argument("run_b")
    for name in ("steps", "events", "cancel", "watch"):
        cmd(name).add_argument("run_id")
    s = cmd("dlq")
    s.add_argument("action", nargs="?", default="list", choices=["list", "replay"])
    s.add_argument("seq", nargs="?", type=int)
    s.add_argument("--workflow")
    s.add_argument("--run")
    s.add_argument("--limit", type=int, default=1000)
    s.add_argument("--dry-run", action="store_true")
    for name in ("approve", "reject"):
        s = cmd(name)
        s.add_argument("run_id")
        s.add_argument("step_id")
        s.add_argument("comment", nargs="*")
        s.add_argument("--by")
        s.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    s = cmd("signal")
    s.add_argument("run_id")
    s.add_argument("name")
    s.add_argument("payload", nargs="?")
    s = cmd("event")
    s.add_argument("type")
    s.add_argument("data", nargs="?")
    cmd("config")
    cmd("triggers")
    s = cmd("trigger")
    s.add_argument("action", choices=["enable", "disable"])
    s.add_argument("id")
    for name in ("streams", "lag", "kv", "account", "health"):
        s = cmd(name)
        s.add_argument("--wide", action="store_true", help="display every column")
    sub.choices["lag"].add_argument(
        "--all", action="store_true", help="also the ephemeral consumers (KV watchers...)"
    )
    s = cmd("monitor")
    s.add_argument("endpoint", nargs="?", default="varz", choices=["varz", "jsz", "connz", "subsz"])
    s = cmd("sizing")
    s.add_argument("workflow", nargs="?")
    s.add_argument("--runs-per-day", type=float, default=1000.0)
    s.add_argument("--days", type=float, default=30.0)
    s.add_argument("--concurrent-runs", type=int)
    s = cmd("cache")
    s.add_argument("action", nargs="?", default="stats", choices=["stats", "clear"])
    s.add_argument("--task")
    cmd("help", save=False)
    s = cmd("workflow")
    s.add_argument("name")
    s.add_argument("--version")
    return p


PARSER = _parser()


class StoppedWaiting(KeyboardInterrupt):
    """An interrupt while ``%dagnats run`` waited: the run goes on; shown as one line."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"stopped waiting; run {run_id} goes on — `%dagnats watch {run_id}`")
        self.run_id = run_id

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


@magics_class
class Dagnats(Magics):
    """The ``%dagnats`` magics; settings via ``%config Dagnats.<name> = value``."""

    short_errors = Bool(True, help="show user errors as one line, without traceback").tag(
        config=True
    )
    live_interval = Float(0.1, help="seconds between live view updates (at most)").tag(config=True)
    run_timeout = Float(300.0, help="seconds `%dagnats run` waits by default").tag(config=True)

    @property
    def views(self) -> dict[str, RunView]:
        """The live views opened from the notebook, by run id."""
        return live.VIEWS

    @no_var_expand
    @line_cell_magic
    def dagnats(self, line: str, cell: str | None = None) -> Any:
        try:
            return self._dispatch(line, cell)
        except DagnatsError as exc:
            if self.short_errors:
                raise
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc

    def _dispatch(self, line: str, cell: str | None) -> Any:
        ex = Expander(self.shell)
        words = [ex.word(w) for w in split_words(line)]
        if not words:
            print(HELP)
            return None
        args = PARSER.parse_args(words)
        if (cell is None) == (args.command == "workflow"):
            raise DagnatsError(
                "`workflow` is a cell magic: %%dagnats workflow NAME, then the workflow below"
                if cell is None
                else f"%%dagnats {args.command}: the cell magic only defines workflows "
                "(%%dagnats workflow NAME); use %dagnats for the other subcommands"
            )
        result = getattr(self, "_" + args.command)(args, ex, cell)
        target = getattr(args, "save", None)
        if target:
            self.shell.push({target: result})
        return result

    # -- subcommands ---------------------------------------------------------------------

    def _start(self, args: Any, ex: Expander, cell: Any) -> Any:
        overrides: dict[str, Any] = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise DagnatsError(f"--set {item!r}: write KEY=VALUE, e.g. --set ack_wait=10s")
            overrides[key.strip()] = value.strip()
        paths = [ex.value(w) if w is not None else None for w in (args.data_dir, args.config)]
        return console.start(*paths, **overrides)

    def _stop(self, args: Any, ex: Expander, cell: Any) -> None:
        for view in self.views.values():
            view.stop()
        self.views.clear()
        print(console.stop())

    def _status(self, args: Any, ex: Expander, cell: Any) -> Any:
        return console.status()

    def _streams(self, args: Any, ex: Expander, cell: Any) -> Any:
        return _worded(console.stats("streams", wide=args.wide))

    def _lag(self, args: Any, ex: Expander, cell: Any) -> Any:
        return _worded(console.stats("lag", wide=args.wide, include_internal=args.all))

    def _kv(self, args: Any, ex: Expander, cell: Any) -> Any:
        return _worded(console.stats("kv", wide=args.wide))

    def _account(self, args: Any, ex: Expander, cell: Any) -> Any:
        return _worded(console.stats("account", wide=args.wide))

    def _health(self, args: Any, ex: Expander, cell: Any) -> Any:
        return _worded(console.stats("health", wide=args.wide))

    def _monitor(self, args: Any, ex: Expander, cell: Any) -> Any:
        return console.stats("monitor", endpoint=args.endpoint)

    def _sizing(self, args: Any, ex: Expander, cell: Any) -> Any:
        extra = {} if args.concurrent_runs is None else {"concurrent_runs": args.concurrent_runs}
        return console.stats(
            "sizing",
            workflow=args.workflow,
            runs_per_day=args.runs_per_day,
            days=args.days,
            **extra,
        )

    def _cache(self, args: Any, ex: Expander, cell: Any) -> Any:
        if args.action == "stats":
            return caching.cache_stats()
        print(caching.cache_clear(ex.value(args.task) if args.task else None))
        return None

    def _workflows(self, args: Any, ex: Expander, cell: Any) -> Any:
        return console.workflows()

    def _runs(self, args: Any, ex: Expander, cell: Any) -> Any:
        return console.runs(args.workflow, args.status, args.limit)

    def _run(self, args: Any, ex: Expander, cell: Any) -> Run:
        workflow = ex.value(args.workflow)
        data = args.input
        if data is not None and data not in ex.strings:  # a str variable is the input as is
            data = read_json_value(ex.value(data), "--input")
        eng = default.engine(start=False)
        if isinstance(workflow, dict):
            workflow = load_workflow(workflow)
        defn = workflow if isinstance(workflow, WorkflowDef) else eng.workflow(workflow)
        run = eng.start_run(defn if isinstance(workflow, WorkflowDef) else workflow, data)
        return self._until_done(run, defn, args)

    def _fork(self, args: Any, ex: Expander, cell: Any) -> Run:
        data = args.input
        if data is not None and data not in ex.strings:  # a str variable is the input as is
            data = read_json_value(ex.value(data), "--input")
        workflow = ex.value(args.workflow) if args.workflow is not None else None
        step = ex.value(args.step_id)
        run = console.fork(ex.value(args.run_id), step, data, workflow)
        print(console.fork_line(run))
        return self._until_done(run, None, args)

    def _rerun(self, args: Any, ex: Expander, cell: Any) -> Run:
        data = args.input
        if data is not None and data not in ex.strings:
            data = read_json_value(ex.value(data), "--input")
        workflow = ex.value(args.workflow) if args.workflow is not None else None
        run = console.rerun(ex.value(args.run_id), data, workflow)
        print(console.fork_line(run))
        return self._until_done(run, None, args)

    def _until_done(self, run: Run, defn: WorkflowDef | None, args: Any) -> Run:
        """A live view of a run just started and, unless ``--no-wait``, its end."""
        view = self._follow(run, defn)
        if args.no_wait:
            return run
        try:
            run.wait(self.run_timeout if args.timeout is None else args.timeout)
            if view is not None:
                view.wait(10)  # the final rendering is out before the cell ends
        except KeyboardInterrupt:
            if args.save:
                self.shell.push({args.save: run})
            raise StoppedWaiting(run.id) from None
        return run

    def _watch(self, args: Any, ex: Expander, cell: Any) -> Run:
        run = console.resolve_run(ex.value(args.run_id))
        self._follow(run, None)
        return run

    def _follow(self, run: Run, defn: WorkflowDef | None) -> RunView | None:
        """A live view of ``run`` when the shell is a kernel with widgets."""
        if not in_kernel(self.shell):
            return None
        return live.follow(self.shell, run, defn, self.live_interval)

    def _compare(self, args: Any, ex: Expander, cell: Any) -> Any:
        return console.compare(ex.value(args.run_a), ex.value(args.run_b))

    def _steps(self, args: Any, ex: Expander, cell: Any) -> Any:
        return console.steps(ex.value(args.run_id))

    def _events(self, args: Any, ex: Expander, cell: Any) -> Any:
        return console.events(ex.value(args.run_id))

    def _cancel(self, args: Any, ex: Expander, cell: Any) -> Run:
        run = console.cancel(ex.value(args.run_id))
        print(f"run {run.id} cancelled")
        return run

    def _dlq(self, args: Any, ex: Expander, cell: Any) -> Any:
        run = ex.value(args.run) if args.run else None
        if args.action == "list":
            return console.dlq(args.limit, workflow=args.workflow, run=run)
        rows = console.dlq_replay(args.seq, run=run, dry_run=args.dry_run)
        for r in rows:
            verb = "would replay" if args.dry_run else "replayed"
            print(
                f"{verb} dead letter {r['seq']}: run {r['run_id']} step '{r['step_id']}' "
                f"as attempt {r['attempt']}" + ("" if args.dry_run else f"; run {r['status']}")
            )
        return pd.DataFrame(rows)

    def _triggers(self, args: Any, ex: Expander, cell: Any) -> Any:
        return console.triggers()

    def _trigger(self, args: Any, ex: Expander, cell: Any) -> Any:
        record = console.trigger(args.action, ex.value(args.id))
        print(f"trigger {record['id']} ({record.get('workflow_id')}) {args.action}d")
        return record

    def _approve(self, args: Any, ex: Expander, cell: Any) -> dict:
        return self._decide(args, ex, approve=True)

    def _reject(self, args: Any, ex: Expander, cell: Any) -> dict:
        return self._decide(args, ex, approve=False)

    def _decide(self, args: Any, ex: Expander, *, approve: bool) -> dict:
        run_id = console.resolve_run(ex.value(args.run_id)).id
        comment = " ".join(args.comment) or None
        decision = console.decide(run_id, args.step_id, approve, comment, args.by, args.wait)
        verb = "approved" if approve else "rejected"
        print(f"run {run_id} step {args.step_id} {verb} by {decision.get('by') or 'you'}")
        return decision

    def _signal(self, args: Any, ex: Expander, cell: Any) -> None:
        run_id = console.resolve_run(ex.value(args.run_id)).id
        payload = _json_arg(ex, args.payload, "PAYLOAD")
        default.engine(start=False).signal(run_id, args.name, payload)
        print(f"signal {args.name} sent to run {run_id}")

    def _event(self, args: Any, ex: Expander, cell: Any) -> int:
        data = _json_arg(ex, args.data, "DATA")
        seq = default.engine(start=False).publish_event(args.type, data)
        print(f"event {args.type} published (EVENTS #{seq})")
        return seq

    def _config(self, args: Any, ex: Expander, cell: Any) -> Any:
        return console.config()

    def _help(self, args: Any, ex: Expander, cell: Any) -> None:
        print(HELP)

    def _workflow(self, args: Any, ex: Expander, cell: str) -> WorkflowDef:
        body = ex.text(cell)
        if looks_like_edges(body):
            defn = load_edges(body, args.name, version=args.version, first_line=2)
        else:
            defn = load_workflow(_raw_definition(body, args.name, args.version))
        before = console.latest(defn.name)
        registered = console.register(defn)
        line = console.change_line(before, registered)
        if line:
            print(line)
        return registered


def _worded(df: pd.DataFrame) -> pd.DataFrame:
    """A table whose notes name the magic's options (``--all``, ``--wide``)."""
    df.attrs[tables.HINTS] = "magic"
    return df


def _json_arg(ex: Expander, word: str | None, what: str) -> Any:
    """A JSON argument, a $var (its value) or, when it is not JSON, the text itself."""
    if word is None:
        return None
    if word in ex.strings:
        return ex.value(word)
    value = ex.value(word)
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _raw_definition(body: str, name: str, version: str | None) -> dict[str, Any]:
    """The dict of a JSON or YAML cell body; the magic line's name and version apply."""
    try:
        raw = json.loads(body) if body.lstrip().startswith("{") else yaml.safe_load(body)
    except json.JSONDecodeError as exc:
        raise workflow_error(
            [f"workflow '{name}' cell line {exc.lineno + 1}: invalid JSON: {exc.msg}"]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" cell line {mark.line + 2}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise workflow_error([f"workflow '{name}'{where}: invalid YAML: {what}"]) from None
    if not isinstance(raw, dict):
        raise workflow_error([f"workflow '{name}': the cell is not a workflow mapping"])
    if raw.setdefault("name", name) != name:
        raise workflow_error(
            [f"workflow '{name}': the cell names it '{raw['name']}'; use one name"]
        )
    if version:
        raw["version"] = version
    return raw


Dagnats.dagnats.__doc__ = HELP
