"""Who applies WORKFLOW_HISTORY when engines share a NATS: the ``orchestrate`` setting.

Two orchestrators on one history would dispatch every task twice. Two kinds of them can
already be there on a NATS we attach to:

- the Go dagnats engine, by its durable consumer ``orchestrator`` on WORKFLOW_HISTORY;
- another dagnats-nb engine, by its live heartbeat in the KV ``dagnats_engines`` saying it
  orchestrates (``runtime.membership``: an entry is live once it is seen to change, dead
  after 3 s without a change; the check waits for that only while such an entry is neither).

Beside either, ``auto`` attaches without orchestrating (this engine works tasks and reads,
like ``off``, and says so in one warning), and ``on`` refuses to start in one line naming
the other orchestrator and what to do. ``off`` never orchestrates and checks nothing. An
engine on its own embedded server always orchestrates: nobody else can have been there
before it (an entry left by its own previous, killed process is dead and ignored).

Two engines starting in the same instant can both see no orchestrator and both orchestrate:
leases (design/scale-out.md, later increments) close that window.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from dagnats_nb.config import Settings
from dagnats_nb.errors import ConfigError
from dagnats_nb.runtime.membership import Membership
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb")

GO_ORCHESTRATOR = "orchestrator"  # the Go engine's durable consumer on WORKFLOW_HISTORY


async def orchestrates(
    js: JetStreamContext,
    settings: Settings,
    url: str,
    embedded: bool,
    members: Membership | None = None,
) -> bool:
    """Whether this engine runs the orchestrator (see the module docstring); ``members``
    reads the other dagnats-nb engines' heartbeats (None: Go's consumer is checked only)."""
    mode = settings.orchestrate
    if embedded:
        return True
    if mode == "off":
        return False
    where = f"NATS at {url}"
    try:
        await js.consumer_info(protocol.HISTORY_STREAM, GO_ORCHESTRATOR)
    except NotFoundError:
        pass
    else:
        if mode == "on":
            raise ConfigError(
                f"orchestrate = on, but the Go dagnats engine orchestrates {where} (consumer "
                f"'{GO_ORCHESTRATOR}' on {protocol.HISTORY_STREAM}): two orchestrators would "
                "run every task twice; set orchestrate = auto or off, or retire the Go engine "
                "and delete that consumer"
            )
        log.warning(
            "the Go dagnats engine orchestrates %s: this engine works tasks and reads "
            "(orchestrate = auto; set off to say so, on to refuse)",
            where,
        )
        return False
    others = await members.orchestrators() if members is not None else []
    if not others:
        return True
    other = others[0]
    who = f"the dagnats-nb engine on host {other['host']}, pid {other['pid']}"
    if mode == "on":
        raise ConfigError(
            f"orchestrate = on, but {who} orchestrates {where} (its heartbeat "
            f"{other['age']}s old in KV dagnats_engines): two orchestrators would run every "
            "task twice; start this engine with orchestrate = off (or auto) to attach as a "
            "worker and console, or stop the other engine first"
        )
    log.warning(
        "%s orchestrates %s: this engine works tasks and reads (orchestrate = auto; set off "
        "to say so, on to refuse)",
        who,
        where,
    )
    return False
