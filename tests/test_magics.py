"""``%dagnats`` / ``%%dagnats`` through IPython's InteractiveShell, on a real engine."""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
from conftest import until
from IPython.core.error import UsageError

import dagnats_nb as dn
from dagnats_nb.adapters.notebook.reprs import Status
from dagnats_nb.errors import DagnatsError, WorkflowError
from dagnats_nb.facade import default
from dagnats_nb.facade.views import EVENT_COLUMNS, RUN_COLUMNS, STEP_COLUMNS


@pytest.fixture(scope="module")
def eng(ip, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("magics") / "engine"
    engine = ip.run_line_magic("dagnats", f"start --data-dir {data_dir} --set ack_wait=2s")

    @dn.task("fetch")
    def fetch(ctx):
        return list(range(ctx.input["n"]))

    @dn.task("double")
    async def double(ctx):
        return ctx.input * 2

    @dn.task("report")
    def report(ctx):
        return {"total": sum(ctx.input)}

    @dn.task("slow")
    def slow(ctx):
        time.sleep(0.3)  # simulated work: a run of naps is still going when looked at
        return ctx.input

    @dn.task("broken")
    def broken(ctx):
        raise dn.Permanent("the document is unreadable")

    ip.run_cell_magic("dagnats", "workflow digest", "fetch -> double -> report\ndouble: type=map")
    ip.run_cell_magic("dagnats", "workflow naps", "slow -> [s2, s3]\ns2: task=slow\ns3: task=slow")
    ip.run_cell_magic("dagnats", "workflow doomed", "broken")
    yield engine


def run_cell(ip, capsys, cell: str):
    result = ip.run_cell(cell)
    out = capsys.readouterr()
    return result, out.out + out.err


def test_start_is_idempotent_and_returns_the_engine(ip, eng):
    assert isinstance(eng, dn.Engine) and eng.running
    assert ip.run_line_magic("dagnats", "start") is eng
    assert dn.engine() is eng
    same = f"start --data-dir {eng.settings.data_dir} --set ack_wait=2s"
    assert ip.run_line_magic("dagnats", same) is eng  # re-running a start cell is fine
    with pytest.raises(DagnatsError, match=r"already runs on .* \(data_dir\)"):
        ip.run_line_magic("dagnats", "start --data-dir /tmp/elsewhere")
    with pytest.raises(DagnatsError, match=r"other settings \(ack_wait\)"):
        ip.run_line_magic("dagnats", "start --set ack_wait=5s")
    html = ip.display_formatter.format(eng)[0]["text/html"]
    assert eng.url in html and "WORKFLOW_HISTORY" in html and str(eng.settings.data_dir) in html


def test_workflow_cell_registers_and_shows_the_dag(ip, eng):
    d = ip.run_cell_magic("dagnats", "workflow sketch --version 3 -o wf", "a -> [b, c] -> d\n")
    assert ip.user_ns["wf"] is d and d.version == "3"
    assert eng.workflow("sketch").step("d").depends_on == ["b", "c"]
    data = ip.display_formatter.format(d)[0]
    assert "<svg" in data["text/html"] and data["text/html"].count("dagnats-step") == 4
    assert "workflow sketch v3 (4 steps)" in data["text/plain"]


def test_workflow_cell_takes_json_and_yaml_with_namespace_values(ip, eng):
    ip.user_ns["task_name"] = "report"
    ip.run_cell_magic(
        "dagnats",
        "workflow from-json",
        '{"steps": [{"id": "only", "task": "{task_name}", "timeout": "5s"}]}',
    )
    assert eng.workflow("from-json").step("only").task == "report"
    yaml_body = "steps:\n  - id: one\n    task: {task_name}\n"
    assert ip.run_cell_magic("dagnats", "workflow from-yaml", yaml_body).step("one").task == (
        "report"
    )
    with pytest.raises(WorkflowError, match="the cell names it 'other'"):
        ip.run_cell_magic("dagnats", "workflow mine", '{"name": "other", "steps": []}')


def test_workflow_cell_leaves_llm_templates_naming_python_builtins_alone(ip, eng):
    body = 'steps:\n  - id: ask\n    task: llm\n    config: {prompt: "Summarise {input}"}\n'
    defn = ip.run_cell_magic("dagnats", "workflow templated", body)
    assert defn.step("ask").config["prompt"] == "Summarise {input}"  # not Python's input()


def test_run_waits_stores_with_o_and_takes_input_from_a_variable(ip, eng):
    ip.user_ns["doc"] = {"n": 4}
    run = ip.run_line_magic("dagnats", "run digest --input $doc -o r")
    assert ip.user_ns["r"] is run
    assert run.status == "completed" and run.output == {"total": 12}
    ip.user_ns["k"] = 3
    assert ip.run_line_magic("dagnats", "run digest --input {dict(n=k)}").output == {"total": 6}
    assert ip.run_line_magic("dagnats", "run digest --input '{\"n\": 2}'").output == {"total": 2}
    assert ip.run_line_magic("dagnats", 'run digest --input {"n": 1}').output == {"total": 0}
    ip.user_ns["who"] = "ada"  # a str variable is the input itself, not JSON text
    assert ip.run_line_magic("dagnats", "run naps --input $who").output == {
        "s2": "ada",
        "s3": "ada",
    }
    text = ip.display_formatter.format(run)[0]
    assert "completed" in text["text/plain"] and "double" in text["text/plain"]
    assert "completed" in text["text/html"] and "<table" in text["text/html"]


def test_run_no_wait_returns_at_once(ip, eng):
    run = ip.run_line_magic("dagnats", "run naps --input 1 --no-wait")
    assert not run.done  # its steps take 0.3 s each: the magic did not wait for them
    assert run.wait(10).status == "completed"


def test_runs_with_filters(ip, eng):
    ip.run_line_magic("dagnats", 'run digest --input {"n": 2}')
    df = ip.run_line_magic("dagnats", "runs")
    assert isinstance(df, pd.DataFrame) and list(df.columns) == RUN_COLUMNS
    digest = ip.run_line_magic("dagnats", "runs --workflow digest --status completed")
    assert len(digest) >= 1 and set(digest["workflow"]) == {"digest"}
    last = ip.run_line_magic("dagnats", "runs --limit 1 -o last_runs")
    assert len(last) == 1 and ip.user_ns["last_runs"] is last
    assert last["run_id"].iloc[0] == df["run_id"].iloc[-1]


def test_steps_and_events_of_a_run_by_id_last_or_variable(ip, eng):
    run = ip.run_line_magic("dagnats", 'run digest --input {"n": 3}')
    ip.user_ns["the_run"] = run
    steps = ip.run_line_magic("dagnats", "steps $the_run")
    assert list(steps.columns) == STEP_COLUMNS
    assert steps.set_index("step_id").loc["double", "items"] == "3/3"
    events = ip.run_line_magic("dagnats", f"events {run.id} -o ev")
    assert list(events.columns) == EVENT_COLUMNS and ip.user_ns["ev"] is events
    assert events["type"].iloc[0] == "workflow.started"
    assert events["type"].iloc[-1] == "workflow.completed"
    assert ip.run_line_magic("dagnats", "events last")["seq"].tolist() == events["seq"].tolist()


def test_cancel(ip, eng, capsys):
    run = ip.run_line_magic("dagnats", "run naps --input 1 --no-wait")
    cancelled = ip.run_line_magic("dagnats", f"cancel {run.id}")
    assert cancelled.wait(10).status == "cancelled"
    assert f"run {run.id} cancelled" in capsys.readouterr().out
    with pytest.raises(DagnatsError, match="already ended cancelled"):
        ip.run_line_magic("dagnats", f"cancel {run.id}")


def test_dlq_lists_steps_that_failed_for_good(ip, eng):
    run = ip.run_line_magic("dagnats", "run doomed")
    assert run.status == "failed"
    seen = {}

    def listed(command: str, found) -> bool:
        seen["df"] = ip.run_line_magic("dagnats", command)
        return found(seen["df"])

    until(
        lambda: listed("dlq --limit 5", lambda df: run.id in set(df["run_id"])),
        every=0.05,
        what="the run's dead letter",
    )
    df = seen["df"]
    assert list(df.columns) == [
        "seq",
        "failed_at",
        "workflow",
        "task",
        "run_id",
        "step_id",
        "map_index",
        "attempts",
        "error",
    ]
    row = df[df["run_id"] == run.id].iloc[0]
    assert row["task"] == "broken" and "unreadable" in row["error"]
    assert row["workflow"] == "doomed"
    ip.user_ns["doomed_run"] = run
    dry = ip.run_line_magic("dagnats", "dlq replay --run $doomed_run --dry-run")
    assert list(dry["replayed"]) == [False] and list(dry["attempt"]) == [2]
    done = ip.run_line_magic("dagnats", f"dlq replay {row['seq']}")
    assert list(done["replayed"]) == [True] and list(done["run_id"]) == [run.id]
    # the handler still fails for good: the replayed attempt is dead-lettered in turn
    until(
        lambda: listed(f"dlq --run {run.id}", lambda df: len(df) == 2),
        every=0.05,
        what="the replayed attempt's dead letter",
    )
    assert list(seen["df"]["attempts"]) == [1, 2]
    assert ip.run_line_magic("dagnats", "dlq --workflow no-such-workflow").empty


def test_status_workflows_config(ip, eng):
    status = ip.run_line_magic("dagnats", "status")
    assert isinstance(status, Status)
    streams = status.to_pandas()
    assert list(streams.columns) == ["stream", "messages", "bytes"]
    assert "WORKFLOW_HISTORY" in set(streams["stream"])
    assert "WORKFLOW_HISTORY" in status._repr_html_() and "WORKFLOW_HISTORY" in repr(status)
    row = r"<td>WORKFLOW_HISTORY</td>\s*<td>[\d,]+</td>\s*<td>\d[\d.]* (B|KiB|MiB)</td>"
    assert re.search(row, status._repr_html_())  # a size, not a count of bytes
    wfs = ip.run_line_magic("dagnats", "workflows")
    assert list(wfs.columns) == ["workflow", "version", "steps", "tasks", "roots", "terminal"]
    row = wfs.set_index("workflow").loc["digest"]
    assert row["steps"] == 3 and row["roots"] == "fetch" and row["terminal"] == "report"
    cfg = ip.run_line_magic("dagnats", "config")
    assert list(cfg.columns) == ["key", "value", "source"]
    assert cfg.set_index("key").loc["ack_wait", "source"] == "argument"


def test_help(ip, capsys):
    ip.run_line_magic("dagnats", "help")
    out = capsys.readouterr().out
    assert "%%dagnats workflow NAME" in out and "fetch -> [summarize, classify]" in out
    assert "edge syntax" in ip.find_line_magic("dagnats").__doc__


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("fetch -> [a, b\n", "workflow 'w' line 2: unclosed group"),
        ("a -> b\nc: retry=1\n", "workflow 'w' line 3 step 'c': unknown step 'c'"),
        ("a -> b\n\nb -> a\n", "workflow 'w' line 4: cycle between steps a -> b -> a"),
    ],
)
def test_edge_syntax_errors_are_one_line_and_fail_the_cell(ip, capsys, body, line):
    result, out = run_cell(ip, capsys, f"%%dagnats workflow w\n{body}")
    assert not result.success and isinstance(result.error_in_exec, WorkflowError)
    assert line in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ('{"steps": [\n  {"id": "a",}\n]}', "workflow 'w' cell line 3: invalid JSON"),
        ("steps:\n  - id: a\n   task: b\n", "workflow 'w' cell line 4: invalid YAML"),
        ("steps:\n  - id: a\n    task: b\n    retries: many\n", "step 'a': field 'retries'"),
    ],
)
def test_json_and_yaml_bodies_report_the_cell_line(ip, capsys, body, line):
    result, out = run_cell(ip, capsys, f"%%dagnats workflow w\n{body}")
    assert not result.success and isinstance(result.error_in_exec, WorkflowError)
    assert line in out and "Traceback" not in out


def test_short_errors_off_brings_the_traceback_back(ip, capsys):
    ip.run_line_magic("config", "Dagnats.short_errors = False")
    try:
        result, out = run_cell(ip, capsys, "%%dagnats workflow w\na -> a\n")
    finally:
        ip.run_line_magic("config", "Dagnats.short_errors = True")
    assert not result.success
    assert "Traceback" in out and "cannot depend on itself" in out


def test_user_errors_of_the_line_magic(ip, eng, capsys):
    with pytest.raises(UsageError):
        ip.run_line_magic("dagnats", "nonsense")
    with pytest.raises(DagnatsError, match="no variable 'nope'"):
        ip.run_line_magic("dagnats", "run digest --input $nope")
    with pytest.raises(DagnatsError, match="neither JSON nor a Python literal"):
        ip.run_line_magic("dagnats", "run digest --input hello")
    with pytest.raises(DagnatsError, match="is a cell magic"):
        ip.run_line_magic("dagnats", "workflow x")
    result, out = run_cell(ip, capsys, "%dagnats run no-such-workflow")
    assert not result.success and "Traceback" not in out and "no-such-workflow" in out


def test_watch_returns_the_run_at_once(ip, eng):
    run = ip.run_line_magic("dagnats", "run naps --input 1 --no-wait")
    assert ip.run_line_magic("dagnats", f"watch {run.id}").id == run.id
    html = ip.display_formatter.format(run)[0]["text/html"]
    assert 'data-status="' in html and "<table" not in html  # one line while it runs
    run.wait(10)


def test_a_matplotlib_figure_displays_as_png_without_matplotlib_inline(ip):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([1, 3, 2])
    data = ip.display_formatter.format(fig)[0]
    assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "image/png" not in ip.display_formatter.format(Figure())[0]  # empty: its text


def test_interrupting_the_wait_leaves_the_run_going_and_stores_it(ip, eng, capsys):
    ip.run_cell_magic(
        "dagnats", "workflow dozes", "doze -> after\ndoze: type=sleep duration=2s\nafter: task=slow"
    )

    def interrupt() -> None:  # Jupyter's stop button: SIGINT to the kernel's main thread
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    timer = threading.Timer(0.5, interrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer.start()
    try:
        result, out = run_cell(ip, capsys, "%dagnats run dozes -o dozing")
    finally:
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)  # a Run All stops here
    run = ip.user_ns["dozing"]
    assert out.strip() == f"stopped waiting; run {run.id} goes on — `%dagnats watch {run.id}`"
    assert not run.done
    assert run.wait(10).status == "completed"  # the engine went on with it
    assert ip.run_line_magic("dagnats", "run naps --input 5").status == "completed"


def test_stop_then_commands_say_how_to_start(ip, eng, tmp_path, capsys):
    """Last in this module: stops the module's engine."""
    ip.run_line_magic("dagnats", "stop")
    assert "engine stopped" in capsys.readouterr().out
    with pytest.raises(DagnatsError, match="run %dagnats start"):
        ip.run_line_magic("dagnats", "runs")
    again = ip.run_line_magic("dagnats", f"start --data-dir {tmp_path / 'again'}")
    assert not eng.running and again is not eng
    assert {"fetch", "double", "report"} <= set(again.workers)  # @dn.task handlers come back
    ip.run_line_magic("unload_ext", "dagnats_nb")
    assert not again.running and default.current() is None
    assert ip.find_line_magic("dagnats") is None
    ip.run_line_magic("load_ext", "dagnats_nb")
    ip.extension_manager.loaded.discard("dagnats_nb")
    ip.run_line_magic("load_ext", "dagnats_nb")  # loading twice registers one set of magics
    assert sum(type(c).__name__ == "Dagnats" for c in ip.configurables) == 1


TERMINAL_SESSION = """\
%load_ext dagnats_nb
import dagnats_nb as dn
from IPython.display import display
eng = %dagnats start --data-dir {data_dir}
display(eng)

@dn.task("greet")
def greet(ctx):
    return "hello " + ctx.input

wf = get_ipython().run_cell_magic("dagnats", "workflow hello", "greet")
display(wf)
run = %dagnats run hello --input '"ada"'
display(run)
%dagnats stop
"""


def test_plain_terminal_ipython_gets_text_and_no_widgets(tmp_path):
    script = tmp_path / "session.ipy"
    script.write_text(TERMINAL_SESSION.format(data_dir=tmp_path / "engine"))
    result = subprocess.run(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "dagnats engine (embedded, running)" in out
    assert "workflow hello v1.0 (1 steps)" in out
    assert "of hello: completed" in out and 'output: "hello ada"' in out
    assert "engine stopped" in out
    assert "Widget" not in out and "VBox" not in out


def test_start_takes_a_path_object_for_the_data_dir(ip, eng):
    ip.user_ns["the_dir"] = eng.settings.data_dir  # a pathlib.Path
    started = ip.run_line_magic("dagnats", "start --data-dir {the_dir}")
    assert started.running and started.settings.data_dir == eng.settings.data_dir
    assert ip.run_line_magic("dagnats", "start --data-dir $the_dir") is started
