"""``dagnats trigger list|enable|disable``: the triggers of the engine on a data dir (or at
``nats_url``), as Go's ``dagnats trigger`` shows and switches them."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_trigger_parser(
    sub,
    settings_args: Callable[[argparse.ArgumentParser], None],
    overrides: Callable[[argparse.Namespace], dict[str, Any]],
) -> None:
    """Add ``trigger list|enable|disable`` to the ``dagnats`` subcommands ``sub``
    (``settings_args`` / ``overrides``: the command's ``--data-dir``, ``--set``...)."""
    trigger = sub.add_parser("trigger", help="cron and subject triggers: list, enable, disable")
    actions = trigger.add_subparsers(dest="trigger", required=True)
    p = actions.add_parser("list", help="the triggers, with last fired and next due minutes")
    settings_args(p)
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.set_defaults(fn=cmd_trigger_list, overrides=overrides)
    for action, what in (("enable", "switch a trigger on"), ("disable", "switch a trigger off")):
        p = actions.add_parser(action, help=what)
        p.add_argument("id", help="the trigger's id (dagnats trigger list)")
        settings_args(p)
        p.add_argument("--json", action="store_true", help="print the trigger's record")
        p.set_defaults(fn=cmd_trigger_switch, overrides=overrides)


def _engine(args: argparse.Namespace):
    from dagnats_nb.facade.engine import Engine

    return Engine.connect(config=args.config, **args.overrides(args))


def cmd_trigger_list(args: argparse.Namespace) -> int:
    eng = _engine(args)
    try:
        df = eng.triggers()
    finally:
        eng.stop()
    if args.json:
        print(df.to_json(orient="records", date_format="iso", indent=2))
    elif df.empty:
        print("no triggers (a workflow's `triggers` are stored when it is registered)")
    else:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(df.to_string(index=False))
    return 0


def cmd_trigger_switch(args: argparse.Namespace) -> int:
    eng = _engine(args)
    try:
        switch = eng.enable_trigger if args.trigger == "enable" else eng.disable_trigger
        record = switch(args.id)
    finally:
        eng.stop()
    if args.json:
        print(json.dumps({"trigger_id": args.id, "action": args.trigger, "record": record}))
    else:
        print(f"trigger {args.id} ({record.get('workflow_id')}) {args.trigger}d")
    return 0
