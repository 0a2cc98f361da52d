"""The docs a newcomer reads are right: MkDocs builds them with warnings as errors; every
code block of README.md and docs/*.md runs (the blocks of a page in order, in one fresh
process, from the repository root, on a temp data dir), unless a ``<!-- not-run: why -->``
line just above says why not; every workflow in examples/ runs to its end on a real engine.

Fences: ``python`` runs in plain Python; ``ipython`` (notebook cells: ``%dagnats`` magics) in an
IPython shell, with the page's ``python`` blocks; ``bash`` as one bash script per page, with the
venv's ``dagnats`` first on ``PATH``. A ``bash`` block under ``<!-- background -->`` is one
long-running command (``dagnats serve``, ``dagnats worker``): started in the background, waited
for until it prints its first line, stopped (SIGTERM) when the page's script ends. The pages
run three at a time, to keep this module near a minute."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".json", ".yaml"))
BIN = Path(sys.executable).parent
RUN_LANGS = {"python", "ipython", "bash"}
SHOWN_LANGS = {"json", "yaml", "text"}  # shown, never run (examples/ files are run below)
MAX_NOT_RUN = 8  # blocks that do not run stay few: each needs a reason a reader accepts
PAGE_TIMEOUT = 120
NOT_RUN = re.compile(r"^<!-- not-run: (?P<why>\S.*\S) -->$")
BACKGROUND = "<!-- background -->"


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # of the block's first code line, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason, when marked not to run
    background: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks (top-level ``` fences only) and the marker above each."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\S*)", lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == "```"), None)
        assert end is not None, f"{page.name}:{i + 1}: a fence that never closes"
        above = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(above)
        out.append(
            Block(
                page=page,
                line=start + 2,
                lang=lang,
                code="\n".join(lines[start + 1 : end]) + "\n",
                not_run=marker.group("why") if marker else None,
                background=above == BACKGROUND,
            )
        )
        i = end + 1
    return out


ALL = [b for page in PAGES for b in blocks(page)]


def to_run(page: Path) -> list[Block]:
    return [b for b in ALL if b.page == page and b.lang in RUN_LANGS and b.not_run is None]


# -- the runners, one fresh process per page ----------------------------------------------

PYTHON_RUNNER = textwrap.dedent(
    """
    import json, sys
    spec = json.load(open(sys.argv[1]))
    if spec["ipython"]:
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config
        cfg = Config()
        cfg.HistoryManager.enabled = False
        shell = InteractiveShell.instance(config=cfg)
        for block in spec["blocks"]:
            result = shell.run_cell(block["code"])
            if not result.success:
                sys.exit(f"the block at {block['where']} failed (traceback above)")
    else:
        namespace = {"__name__": "__main__"}
        for block in spec["blocks"]:
            padded = "\\n" * (block["line"] - 1) + block["code"]  # tracebacks name page lines
            exec(compile(padded, block["page"], "exec"), namespace)
    """
)

BASH_PRELUDE = textwrap.dedent(
    """
    set -euo pipefail
    __pids=()
    __stop() {
      for p in "${__pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
      wait || true
    }
    trap __stop EXIT
    __ready() {  # LOG PID: wait until the background command prints its first line
      for _ in $(seq 600); do
        [ -s "$1" ] && return 0
        if ! kill -0 "$2" 2>/dev/null; then
          echo "background command exited:" >&2; cat "$1" "$1.err" >&2; return 1
        fi
        sleep 0.05
      done
      echo "background command printed nothing in 30 s" >&2
      return 1
    }
    """
)


def bash_script(page_blocks: list[Block], logs: Path) -> str:
    """One script for the page's bash blocks; a background block's command gets ``&``."""
    parts = [BASH_PRELUDE]
    for n, b in enumerate(page_blocks):
        parts.append(f"# {b.where}")
        if not b.background:
            parts.append(b.code)
            continue
        commands = [ln for ln in b.code.splitlines() if ln.strip() and not ln.startswith("#")]
        assert len(commands) == 1, f"{b.where}: a background block is one command"
        log = logs / f"background-{n}.log"
        command = re.sub(r"\s+#\s.*$", "", commands[0])  # a comment would swallow the `&`
        parts.append(f"{command} > {log} 2>{log}.err &")
        parts.append(f'__pids+=("$!"); __ready {log} "$!"')
    return "\n".join(parts)


def environment(tmp: Path) -> dict[str, str]:
    """The docs' processes: our venv first on PATH, a data dir of their own, no settings of
    the developer's (``DAGNATS_*`` variables, ``./dagnats.yaml``, an OpenAI key)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DAGNATS_") and k != "OPENAI_API_KEY"  # llm steps: the simulator
    }
    if "DAGNATS_NATS_SERVER" in os.environ:  # where the nats-server binary is, if elsewhere
        env["DAGNATS_NATS_SERVER"] = os.environ["DAGNATS_NATS_SERVER"]
    config = tmp / "dagnats.yaml"
    config.write_text("log_level: warn\n")
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DAGNATS_DATA_DIR=str(tmp / "data"),
        DAGNATS_CONFIG=str(config),
        PYTHONUNBUFFERED="1",
        TMPDIR=str(tmp),  # what the docs make with mktemp / tempfile goes with the test
    )
    return env


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: str


def run_python(page: Path, tmp: Path) -> Outcome:
    page_blocks = [b for b in to_run(page) if b.lang in ("python", "ipython")]
    spec = {
        "ipython": any(b.lang == "ipython" for b in page_blocks),
        "blocks": [
            {"code": b.code, "line": b.line, "where": b.where, "page": str(b.page)}
            for b in page_blocks
        ],
    }
    (tmp / "blocks.json").write_text(json.dumps(spec))
    return _run([sys.executable, "-c", PYTHON_RUNNER, str(tmp / "blocks.json")], tmp)


def run_bash(page: Path, tmp: Path) -> Outcome:
    script = tmp / "page.sh"
    script.write_text(bash_script([b for b in to_run(page) if b.lang == "bash"], tmp))
    return _run(["bash", str(script)], tmp)


def _run(argv: list[str], tmp: Path) -> Outcome:
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        env=environment(tmp),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT,
    )
    return Outcome(proc.returncode, proc.stdout + proc.stderr)


EXAMPLES_RUNNER = textwrap.dedent(
    """
    import json, sys
    import dagnats_nb as dn
    from examples.handlers import HANDLERS

    INPUTS = {
        "hello-world": {"name": "ada"},
        "digest": {"n": 5},
        "invoice": {"amount": 12},
        "review": {"release": "1.2"},
        "nap": {"ms": 20},
        "llm-labels": {"messages": ["great product", "slow support", "fine"]},
        "morning-report": None,
        "http-echo": {"trigger": "http", "data": {"query": {"name": "ada"}}},
    }
    results = {}
    with dn.Engine.start(handlers=HANDLERS, llm_sim_latency_ms=20) as eng:
        for path in sys.argv[1:]:
            defn = eng.register(path)
            if defn.name not in INPUTS:
                results[path] = {"status": f"no input for {defn.name} in EXAMPLES_RUNNER"}
                continue
            run = eng.start_run(defn.name, INPUTS[defn.name])
            if defn.name == "review":
                eng.approve(run.id, "review", "ship it", by="ada", wait=30)
            run.wait(60)
            results[path] = {"status": run.status, "output": run.output, "error": run.error}
    print(json.dumps(results, default=str))
    """
)


def run_examples(tmp: Path) -> Outcome:
    argv = [sys.executable, "-c", EXAMPLES_RUNNER, *(str(p.relative_to(ROOT)) for p in EXAMPLES)]
    return _run(argv, tmp)


# -- everything starts at once, three at a time; each test waits for its own ---------------


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Iterator[dict[str, Future]]:
    jobs: dict[str, tuple] = {}
    for page in PAGES:
        langs = {b.lang for b in to_run(page)}
        if langs & {"python", "ipython"}:
            jobs[f"{page.name}:python"] = (run_python, page)
        if "bash" in langs:
            jobs[f"{page.name}:bash"] = (run_bash, page)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {"examples": pool.submit(run_examples, tmp_path_factory.mktemp("examples"))}
        # the longest first: the command line page starts an engine and a worker process
        for key in sorted(jobs, key=lambda k: not k.startswith("cli.md")):
            fn, page = jobs[key]
            futures[key] = pool.submit(fn, page, tmp_path_factory.mktemp("page"))
        yield futures


def page_jobs() -> list[str]:
    keys = []
    for page in PAGES:
        langs = {b.lang for b in to_run(page)}
        if langs & {"python", "ipython"}:
            keys.append(f"{page.name}:python")
        if "bash" in langs:
            keys.append(f"{page.name}:bash")
    return keys


@pytest.mark.parametrize("job", page_jobs())
def test_page_code_runs(launched, job):
    outcome = launched[job].result()
    assert outcome.returncode == 0, f"{job}: exit {outcome.returncode}\n{outcome.output[-6000:]}"


def test_readme_first_snippet_runs_as_written(launched):
    """The README's first Python block is a whole program: it prints the run's output."""
    first = next(b for b in blocks(ROOT / "README.md") if b.lang == "python")
    assert first.not_run is None and "examples/hello-world.json" in first.code
    outcome = launched["README.md:python"].result()
    assert "completed {'msg': 'HELLO ADA'}" in outcome.output, outcome.output[-3000:]


@pytest.mark.parametrize("path", [p.name for p in EXAMPLES])
def test_example_runs_to_its_end(launched, path):
    outcome = launched["examples"].result()
    assert outcome.returncode == 0, outcome.output[-6000:]
    results = json.loads(outcome.output.strip().splitlines()[-1])
    result = results[f"examples/{path}"]
    assert result["status"] == "completed", result


def test_examples_are_valid_files():
    proc = subprocess.run(
        [str(BIN / "dagnats"), "workflow", "validate", *map(str, EXAMPLES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(EXAMPLES) >= 5 and (ROOT / "examples" / "hello-world.json") in EXAMPLES


# -- the markers, the README, the build -----------------------------------------------------


def test_every_block_runs_or_says_why():
    langs = {b.lang for b in ALL}
    assert langs <= RUN_LANGS | SHOWN_LANGS, f"unknown fences: {langs - RUN_LANGS - SHOWN_LANGS}"
    for b in ALL:
        assert b.lang or b.not_run, f"{b.where}: name the fence's language"
        assert not (b.background and b.lang != "bash"), f"{b.where}: background is for bash"
    not_run = [b for b in ALL if b.not_run is not None]
    assert len(not_run) <= MAX_NOT_RUN, [f"{b.where}: {b.not_run}" for b in not_run]
    ran = [b for b in ALL if b.lang in RUN_LANGS and b.not_run is None]
    assert len(ran) >= 30, len(ran)


def test_readme_is_short_and_keeps_the_ci_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 90, "the README is one or two screens"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci in readme.splitlines(), f"the README's second command is .ci/run's: {ci}"
    assert "docs/live-run-view.png" in readme
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_docs_build_with_warnings_as_errors(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (site / "python-api" / "index.html").read_text(encoding="utf-8")
    for name in ("Engine.start_run", "Engine.register", "Run.wait", "TaskContext"):
        assert f'id="dagnats_nb.{name}"' in api, f"the API page lacks {name}"


def test_reference_tables_name_every_setting_command_and_magic():
    """The configuration, command-line and notebook pages keep up with the code."""
    import argparse

    from dagnats_nb.adapters.cli.main import build_parser
    from dagnats_nb.adapters.notebook.magics import PARSER
    from dagnats_nb.config import Settings

    def subcommands(parser: argparse.ArgumentParser) -> list[str]:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return sorted(actions[0].choices)

    config = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [k for k in Settings.model_fields if f"`{k}`" not in config]
    assert not missing, f"docs/configuration.md does not describe {missing}"
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [c for c in subcommands(build_parser()) if f"`dagnats {c}" not in cli]
    assert not missing, f"docs/cli.md's table does not name `dagnats {missing}`"
    notebook = (ROOT / "docs" / "notebook.md").read_text(encoding="utf-8")
    table = [line for line in notebook.splitlines() if line.startswith("| `")]
    missing = [c for c in subcommands(PARSER) if not any(c in line for line in table)]
    assert not missing, f"docs/notebook.md's table does not name %dagnats {missing}"
