"""The code base is ruff clean (lint and format), as CI checks on every submission."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DOCS_PY = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.py"))


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_check_is_clean():
    result = ruff("check", "dagnats_nb", "tests", "benchmarks", "examples", *DOCS_PY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = ruff("format", "--check", "dagnats_nb", "tests", "benchmarks", "examples", *DOCS_PY)
    assert result.returncode == 0, result.stdout + result.stderr
