"""``dagnats compare RUN_A RUN_B``: two runs of one workflow side by side, as the notebook's
``%dagnats compare`` and ``eng.compare`` show them: one row per step (statuses, durations,
LLM tokens, reused, changed, definition changed), then the diff of each changed output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from dagnats_nb.adapters.cli.runs import _records, _resolve


def add_compare_parser(
    sub,
    settings_args: Callable[[argparse.ArgumentParser], None],
    connect: Callable[[argparse.Namespace], Any],
) -> None:
    """Add ``compare`` to the ``dagnats`` subcommands; ``connect(args)`` is its engine."""
    p = sub.add_parser(
        "compare", help="two runs of one workflow side by side: steps, what changed, diffs"
    )
    p.add_argument("run_a", metavar="RUN_A", help="a run id, or `last` (the newest run)")
    p.add_argument("run_b", metavar="RUN_B", help="the run to compare it with, or `last`")
    p.add_argument("--wide", action="store_true", help="also type and map items per run")
    settings_args(p)
    p.add_argument("--json", action="store_true", help="print JSON: steps (raw numbers), diffs")
    p.set_defaults(fn=cmd_compare, connect=connect)


def cmd_compare(args: argparse.Namespace) -> int:
    from dagnats_nb.facade.comparing import DIFFS, comparison_text

    eng = args.connect(args)
    try:
        run_a = _resolve(eng, args.run_a)["run_id"]
        run_b = _resolve(eng, args.run_b)["run_id"]
        df = eng.compare(run_a, run_b)
    finally:
        eng.stop()
    if args.json:
        result = {"run_a": run_a, "run_b": run_b, "steps": _records(df), "diffs": df.attrs[DIFFS]}
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(comparison_text(df.wide() if args.wide else df, hints="cli"))
    return 0
