"""Real browser: headless Chromium runs notebooks in JupyterLab served on 127.0.0.1.

The quickstart's live view, DataFrames and screenshots; notebooks 02 and 03 show their
figures as images; notebooks 03 and 04, saved, their kernel shut down and reopened, show
static renderings where their widgets were and no "Error displaying widget"; 03's engine
tables fit the page.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) or a
Chrome/Chromium binary named by ``DAGNATS_CHROMIUM``. Playwright for Python drives it through
``executable_path`` (its own browser download is not used). The screenshots land in
``tests/artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Records what the live widget showed: its status badges, as the DOM changes.
OBSERVER = """
() => {
  window.__dagnats = {widget: false, statuses: []};
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('.dagnats-live .dagnats-status')) {
      window.__dagnats.widget = true;
      const s = el.textContent.trim();
      if (!window.__dagnats.statuses.includes(s)) window.__dagnats.statuses.push(s);
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""

SLOW_RUN = """%dagnats start
@dn.task("summarize", concurrency=4)
async def summarize(ctx):
    await asyncio.sleep(0.25)
    return {"doc": ctx.input, "summary": ctx.input.upper()}
%dagnats run digest --input {"n": 48} --no-wait"""
ORPHAN_RUN = """get_ipython().run_cell_magic("dagnats", "workflow orphan", "summarize -> enrich")
%dagnats run orphan --input '"a doc"' --no-wait"""
# run ids shown twice in one cell's output (a live view and a stale status of the same run)
TWICE = """
() => [...document.querySelectorAll('.jp-Cell')].flatMap(cell => {
  const ids = [...cell.querySelectorAll('.dagnats-status')]
    .map(s => s.nextElementSibling && s.nextElementSibling.textContent);
  return ids.filter((id, i) => id && ids.indexOf(id) !== i);
})
"""
ADD_CELL = """
(source) => {
  const app = window.jupyterapp;
  app.commands.execute('notebook:insert-cell-below');
  app.shell.currentWidget.content.activeCell.model.sharedModel.setSource(source);
  return app.commands.execute('notebook:run-cell');
}
"""
# the widget shows the map step running with at least 12 of its 48 instances done
MID_RUN = """
() => {
  const box = [...document.querySelectorAll('.dagnats-live [data-step="summarize"]')].pop();
  if (!box || box.getAttribute('data-status') !== 'running') return false;
  const m = box.textContent.match(/(\\d+)\\/48/);
  return m && Number(m[1]) >= 12;
}
"""


def chromium() -> str:
    found = os.environ.get("DAGNATS_CHROMIUM")
    candidates = [found] if found else []
    candidates += ["/usr/lib/chromium/chromium", shutil.which("chromium") or ""]
    candidates += [shutil.which("chromium-browser") or "", shutil.which("google-chrome") or ""]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail(
        "the browser test needs Chromium: install it with `apt-get install chromium` "
        "(Debian/Ubuntu; .ci/run does this), or set DAGNATS_CHROMIUM=/path/to/chrome"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 with no token, in an isolated Jupyter home; yields its URL."""
    root = tmp_path / "root"
    root.mkdir()
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, root)
    home = tmp_path / "jupyter"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
    }
    news = home / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)  # every cell in the page, so each output can be looked at
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port = free_port()
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--ServerApp.token=",
            "--ServerApp.password=",
            "--no-browser",
            "--port-retries=0",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabServerApp.extension_manager=readonly",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "JupyterLab did not start within 60 s"
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


KERNEL_IDLE = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  return w && w.sessionContext && w.sessionContext.session
    && w.sessionContext.session.kernel
    && w.sessionContext.session.kernel.status === 'idle';
}"""
# the code cells whose value is a Figure, and whether each shows an <img>
FIGURE_CELLS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  return cells.filter(c => c.model.type === 'code').map(c => {
    const lines = c.model.sharedModel.getSource().trim().split('\\n');
    const last = lines[lines.length - 1];
    const outputs = c.model.outputs.toJSON().map(o => Object.keys(o.data || {}).join('+'));
    return {last, outputs, img: !!c.node.querySelector('.jp-OutputArea-output img')};
  }).filter(c => c.last === 'fig' || c.last.endsWith('.figure()'));
}"""

# the errors the notebook's cells show: (cell index, name, value)
CELL_ERRORS = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .map((c, i) => [i, c.model.type === 'code' ? c.model.outputs.toJSON() : []])
  .flatMap(([i, outs]) => outs.filter(o => o.output_type === 'error')
    .map(o => [i, o.ename, String(o.evalue).slice(0, 300)]))"""

# every engine table on the page: its headers, its width and the width its output has
TABLE_WIDTHS = """() => [...document.querySelectorAll('table.dagnats-table')].map(t => {
  const room = (t.closest('.jp-OutputArea-output') || t.parentElement).clientWidth;
  const head = [...t.querySelectorAll('thead th')].map(h => h.textContent.trim()).join(' ');
  return {head, width: Math.ceil(t.getBoundingClientRect().width), room};
})"""


def open_notebook(page, lab: str, name: str) -> None:
    """Open ``name`` in JupyterLab and wait for its kernel to be idle."""
    page.goto(f"{lab}/lab/tree/{name}?reset", timeout=60_000)  # no other notebook open
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="attached", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)
    page.wait_for_function(
        "(name) => { const w = window.jupyterapp.shell.currentWidget;"
        " return w && w.context && w.context.path === name; }",
        arg=name,
        timeout=60_000,
    )
    page.wait_for_function(KERNEL_IDLE, timeout=60_000)


def run_all_save_and_reopen(page, lab: str, name: str) -> None:
    """Run every cell (they must succeed), save, shut the kernel down, open it again."""
    ok = page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    assert ok, f"{name}: a cell failed: {page.evaluate(CELL_ERRORS)}"
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    open_notebook(page, lab, name)


def browser(p, tmp_path):
    return p.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=chromium(),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1280, "height": 1000},
    )


def widget_errors(page) -> list[str]:
    text = page.locator(".jp-Notebook").inner_text()
    return [line for line in text.splitlines() if "Error displaying widget" in line]


@pytest.mark.timeout(420)
def test_figures_are_images_and_reopened_notebooks_show_no_widget_errors(lab, tmp_path):
    """Notebooks 02, 03 and 04 in a real JupyterLab; 03 and 04 also saved and reopened."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with sync_playwright() as p:
        context = browser(p, tmp_path)
        try:
            page = context.new_page()
            for name, figures in (
                ("02-llm-pipeline.ipynb", 1),
                ("03-sizing-and-retention.ipynb", 2),
            ):
                open_notebook(page, lab, name)
                run_all_save_and_reopen(page, lab, name)
                shown = page.evaluate(FIGURE_CELLS)
                assert len(shown) == figures and all(c["img"] for c in shown), (name, shown)
                assert not widget_errors(page), name
            # 03's tables (lag, health, sizing, retention) fit the notebook: none is cut off
            tables = page.evaluate(TABLE_WIDTHS)
            assert len(tables) >= 6, tables
            assert not [t for t in tables if t["width"] > t["room"]], tables
            page.get_by_text("add workers for task 'work'").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "tables-03.png"))
            explorer = page.locator(".dagnats-explorer")
            assert explorer.locator("img").count() == 1  # 03's explorer, as a picture
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "reopened-03.png"))
            open_notebook(page, lab, "04-operations.ipynb")
            run_all_save_and_reopen(page, lab, "04-operations.ipynb")
            assert page.locator(".dagnats-progress").count() >= 3  # the backup's bars
            assert not widget_errors(page)
            assert page.get_by_text("Loading widget").count() == 0
            page.locator(".dagnats-progress").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "reopened-04.png"))
        finally:
            context.close()
    (ARTIFACTS / "browser-reopen.txt").write_text(
        f"notebooks 02, 03, 04 run, saved and reopened: {time.monotonic() - t0:.1f}s\n"
    )


def test_quickstart_in_jupyterlab_shows_the_live_view_and_dataframes(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = context.new_page()
            page.goto(f"{lab}/lab/tree/01-quickstart.ipynb", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)
            # the kernel is ready when its status reads idle
            page.wait_for_function(
                """() => {
                  const w = window.jupyterapp.shell.currentWidget;
                  return w && w.sessionContext && w.sessionContext.session
                    && w.sessionContext.session.kernel
                    && w.sessionContext.session.kernel.status === 'idle';
                }""",
                timeout=60_000,
            )
            page.evaluate(OBSERVER)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(
                "() => document.body.innerText.includes('engine stopped')", timeout=120_000
            )
            errors = page.locator(
                ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
            )
            tracebacks = [t for t in errors.all_inner_texts() if "Error" in t]
            assert not tracebacks, tracebacks
            done = page.locator('.dagnats-run[data-status="completed"]')
            assert done.count() >= 2  # the waited run and the --no-wait run, as static renderings
            assert page.locator("table.dataframe").count() >= 3
            seen = page.evaluate("() => window.__dagnats")
            # one more cell, slower, to photograph the live view while it moves
            page.evaluate(ADD_CELL, SLOW_RUN)
            page.wait_for_function(MID_RUN, polling=100, timeout=60_000)
            live = page.locator(".dagnats-live").last
            live.screenshot(path=str(ARTIFACTS / "live-run-view.png"))
            page.locator('.dagnats-run[data-status="completed"]').filter(has_text="48/48").wait_for(
                timeout=60_000
            )
            assert seen["widget"], "the live widget was never rendered"
            assert not page.evaluate(TWICE)  # one status per run
            # a step whose task no worker serves is named in its live view
            page.evaluate(ADD_CELL, ORPHAN_RUN)
            hint = page.locator(".dagnats-live .dagnats-hint").filter(
                has_text="enrich: no worker serves this task"
            )
            hint.wait_for(timeout=30_000)
            assert "define @dn.task('enrich')" in hint.inner_text()
            page.locator(".dagnats-live").last.screenshot(
                path=str(ARTIFACTS / "no-worker-hint.png")
            )
            view = done.filter(has_text="40/40").first
            view.scroll_into_view_if_needed()
            view.screenshot(path=str(ARTIFACTS / "final-run-view.png"))
            page.screenshot(path=str(ARTIFACTS / "quickstart-jupyterlab.png"), full_page=True)
            elapsed = time.monotonic() - t0
            (ARTIFACTS / "browser-test.txt").write_text(
                f"chromium {executable}\nwidget statuses seen: {seen['statuses']}\n"
                f"browser session: {elapsed:.1f}s\n"
            )
        finally:
            context.close()
