"""Binder: a fresh virtualenv built only from what binder/ declares runs the notebooks.

mybinder.org (repo2docker) reads only binder/: ``pip install -r binder/requirements.txt``
from the repository root on the Python of ``binder/runtime.txt``. This test does the same
with that Python when this machine has it, else with this one (pip's cache keeps it quick).
There it imports every module any notebook imports and executes the first notebook (the
Binder demo) top to bottom; tests/test_notebooks.py executes all of them with the same code
in the development environment, so running them all twice would only test pip again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"

RUN_NOTEBOOKS = textwrap.dedent(
    """
    import sys, nbformat
    from pathlib import Path
    from nbclient import NotebookClient
    failed = []
    paths = sorted(Path(sys.argv[1]).glob("*.ipynb"))
    for path in paths:  # every module a notebook imports is installed
        for cell in nbformat.read(path, as_version=4).cells:
            for line in cell.source.splitlines() if cell.cell_type == "code" else ():
                words = line.split()
                if words[:1] in (["import"], ["from"]) and len(words) > 1:
                    __import__(words[1].rstrip(","))
    print("imports ok", flush=True)
    for path in paths[:1]:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": sys.argv[2]}}).execute()
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        print(path.name, "errors:", len(errors), flush=True)
        failed += [path.name] * bool(errors)
    sys.exit(1 if failed else 0)
    """
)


def test_binder_declares_python_and_a_kernel_that_updates_widgets_from_threads():
    assert re.fullmatch(r"python-3\.1[2-9]\s*", (BINDER / "runtime.txt").read_text())
    reqs = (BINDER / "requirements.txt").read_text()
    lines = [r.strip() for r in reqs.splitlines() if r.strip() and not r.startswith("#")]
    assert ".[notebook]" in lines  # the project itself, with IPython and ipywidgets
    assert "ipykernel>=7.1" in lines and any(r.startswith("jupyterlab") for r in lines)


def binder_python() -> str:
    """The Python of runtime.txt when this machine has it (PATH or pyenv), else this one."""
    version = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += [str(p) for p in sorted(pyenv.glob(f"{version}.*/bin/python{version}"))]
    for path in candidates:
        if (
            path
            and subprocess.run([path, "-c", "import venv"], capture_output=True).returncode == 0
        ):
            return path
    return sys.executable


@pytest.mark.timeout(480)  # its own budget: a venv, pip from the cache, a kernel
def test_a_fresh_binder_environment_has_what_every_notebook_imports_and_runs_the_first(
    tmp_path,
):
    venv = tmp_path / "venv"
    subprocess.run([binder_python(), "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {
        **os.environ,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PATH": f"{venv}/bin:{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    install = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-compile",
            "-r",
            str(BINDER / "requirements.txt"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    where = subprocess.run(
        [str(py), "-c", "import dagnats_nb, ipywidgets; print(dagnats_nb.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert str(venv) in where.stdout, where.stdout + where.stderr  # not this checkout
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [str(py), "-c", RUN_NOTEBOOKS, str(ROOT / "notebooks"), str(work)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "imports ok" in result.stdout
    assert "01-quickstart.ipynb errors: 0" in result.stdout, result.stdout
