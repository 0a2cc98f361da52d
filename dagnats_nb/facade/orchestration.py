"""Who applies WORKFLOW_HISTORY when engines share a NATS: the ``orchestrate`` setting.

The Go dagnats engine orchestrates through its durable consumer ``orchestrator`` on
WORKFLOW_HISTORY; two orchestrators on one history would dispatch every task twice. So on a
NATS we attach to, ``auto`` orchestrates unless that consumer exists (then this engine only
works tasks and reads, like ``off``), and ``on`` refuses to start beside it. An engine on
its own embedded server always orchestrates.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from dagnats_nb.config import Settings
from dagnats_nb.errors import ConfigError
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb")

GO_ORCHESTRATOR = "orchestrator"  # the Go engine's durable consumer on WORKFLOW_HISTORY


async def orchestrates(js: JetStreamContext, settings: Settings, url: str, embedded: bool) -> bool:
    """Whether this engine runs the orchestrator (see the module docstring)."""
    mode = settings.orchestrate
    if embedded:
        return True
    if mode == "off":
        return False
    try:
        await js.consumer_info(protocol.HISTORY_STREAM, GO_ORCHESTRATOR)
    except NotFoundError:
        return True
    where = f"NATS at {url}"
    if mode == "on":
        raise ConfigError(
            f"orchestrate = on, but the Go dagnats engine orchestrates {where} (consumer "
            f"'{GO_ORCHESTRATOR}' on {protocol.HISTORY_STREAM}): two orchestrators would run "
            "every task twice; set orchestrate = auto or off, or retire the Go engine and "
            "delete that consumer"
        )
    log.warning(
        "the Go dagnats engine orchestrates %s: this engine works tasks and reads "
        "(orchestrate = auto; set off to say so, on to refuse)",
        where,
    )
    return False
