"""``dagnats approve|reject RUN STEP``, ``dagnats signal RUN NAME [PAYLOAD]`` and ``dagnats
event TYPE [DATA]``: steer the steps that wait for the world, on the engine on a data dir
(or at ``nats_url``). Go's CLI spells the signal ``dagnats run signal``; both write the
same KV entry."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_gate_parsers(
    sub,
    settings_args: Callable[[argparse.ArgumentParser], None],
    connect: Callable[[argparse.Namespace], Any],
) -> None:
    """Add ``approve``, ``reject``, ``signal`` and ``event`` to the ``dagnats`` subcommands;
    ``connect(args)`` is the engine they talk to."""
    for name, what in (("approve", "approve"), ("reject", "reject")):
        p = sub.add_parser(name, help=f"{what} a run's waiting approval step")
        p.add_argument("run_id")
        p.add_argument("step_id")
        p.add_argument("comment", nargs="?", help="why (kept in the run's history)")
        p.add_argument("--by", help="who decides (default: your user name)")
        p.add_argument(
            "--wait", type=float, default=0.0, help="seconds to wait for the run to reach the step"
        )
        settings_args(p)
        p.set_defaults(fn=cmd_decide, connect=connect)
    p = sub.add_parser("signal", help="signal a run: its wait_for_event step NAME completes")
    p.add_argument("run_id")
    p.add_argument("name")
    p.add_argument("payload", nargs="?", help="JSON (or text) the step gets as its output")
    settings_args(p)
    p.set_defaults(fn=cmd_signal, connect=connect)
    p = sub.add_parser("event", help="publish an event on event.TYPE (wait_for_event steps)")
    p.add_argument("type")
    p.add_argument("data", nargs="?", help="JSON (or text): the event's data")
    settings_args(p)
    p.set_defaults(fn=cmd_event, connect=connect)


def _value(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_decide(args: argparse.Namespace) -> int:
    eng = args.connect(args)
    try:
        decide = eng.approve if args.command == "approve" else eng.reject
        decision = decide(args.run_id, args.step_id, args.comment, by=args.by, wait=args.wait)
    finally:
        eng.stop()
    verb = "approved" if decision["approved"] else "rejected"
    who = f" by {decision['by']}" if decision.get("by") else ""
    print(f"run {args.run_id} step {args.step_id} {verb}{who}")
    return 0


def cmd_signal(args: argparse.Namespace) -> int:
    eng = args.connect(args)
    try:
        eng.signal(args.run_id, args.name, _value(args.payload))
    finally:
        eng.stop()
    print(f"signal {args.name} sent to run {args.run_id}")
    return 0


def cmd_event(args: argparse.Namespace) -> int:
    eng = args.connect(args)
    try:
        seq = eng.publish_event(args.type, _value(args.data))
    finally:
        eng.stop()
    print(f"event {args.type} published (EVENTS #{seq})")
    return 0
