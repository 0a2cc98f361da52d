"""``dagnats cache [clear [--task T]]``: the step cache of the engine on a data dir (or at
``nats_url``): its entries and counters, or drop its results."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_cache_parser(
    sub,
    settings_args: Callable[[argparse.ArgumentParser], None],
    connect: Callable[[argparse.Namespace], Any],
) -> None:
    """Add ``cache [stats|clear]`` to the ``dagnats`` subcommands ``sub``."""
    p = sub.add_parser("cache", help="the step cache: entries, hits, saved time; or clear it")
    p.add_argument("action", nargs="?", default="stats", choices=["stats", "clear"])
    p.add_argument("--task", help="clear: only this task type's results")
    p.add_argument("--json", action="store_true", help="print JSON")
    settings_args(p)
    p.set_defaults(fn=cmd_cache, connect=connect)


def cmd_cache(args: argparse.Namespace) -> int:
    from dagnats_nb.errors import DagnatsError

    if args.task and args.action != "clear":
        raise DagnatsError("cache: --task is for `dagnats cache clear --task T`")
    eng = args.connect(args)
    try:
        if args.action == "clear":
            dropped = eng.cache_clear(args.task)
        else:
            stats = eng.cache_stats()
    finally:
        eng.stop()
    if args.action == "clear":
        if args.json:
            print(json.dumps({"dropped": dropped, "task": args.task}))
        else:
            what = f" of task {args.task}" if args.task else ""
            print(f"dropped {dropped} cached result{'s' * (dropped != 1)}{what}")
        return 0
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    for key, value in stats.items():
        print(f"{key:<13} {value}")
    return 0
