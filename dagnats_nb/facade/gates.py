"""Steering the steps that wait for the world: approve or reject an approval step, signal a
run, publish an event. A mixin of :class:`~dagnats_nb.facade.engine.Engine`; each works
from any engine on the deployment (attached ones too), in the Go engine's forms (see
:mod:`dagnats_nb.runtime.gates`).
"""

from __future__ import annotations

import getpass
from typing import Any

from dagnats_nb.facade.twins import twins
from dagnats_nb.runtime import gates


def _who(by: str | None) -> str | None:
    if by is not None:
        return by
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without one)
        return None


class Gates:
    """Approvals, signals and events (see the module docstring)."""

    async def _approve(
        self,
        run_id: str,
        step_id: str,
        comment: str | None = None,
        *,
        by: str | None = None,
        wait: float = 0.0,
    ) -> dict:
        """Approve a run's waiting approval step: it completes with the decision
        (``{"approved": true, "comment", "by", "decided_at"}``) as its output. ``by``
        defaults to your user name; a step with ``approvers`` accepts only those. ``wait``:
        seconds to wait for a run that has not reached the step yet."""
        return await gates.decide(
            self._js, run_id, step_id, approve=True, comment=comment, by=_who(by), wait=wait
        )

    approve, approve_async = twins(_approve)

    async def _reject(
        self,
        run_id: str,
        step_id: str,
        comment: str | None = None,
        *,
        by: str | None = None,
        wait: float = 0.0,
    ) -> dict:
        """Reject a run's waiting approval step: the step fails ("approval rejected by
        ...: comment"), and so does the run unless an ``on_failure`` step handles it.
        ``wait`` as for :meth:`approve`."""
        return await gates.decide(
            self._js, run_id, step_id, approve=False, comment=comment, by=_who(by), wait=wait
        )

    reject, reject_async = twins(_reject)

    async def _signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Signal a run: its ``wait_for_event`` step waiting for event ``name`` completes
        with ``payload`` (kept until the step waits, if it does not yet). Written where
        Go's ``dagnats run signal`` writes (KV ``signals``, key ``{run}.{name}``)."""
        await gates.send_signal(self._js, run_id, name, payload)

    signal, signal_async = twins(_signal)

    async def _publish_event(self, event_type: str, data: Any = None) -> int:
        """Publish an event on ``event.{type}``: every ``wait_for_event`` step waiting for
        this type whose ``match`` holds on ``data`` completes with it. Its sequence in
        the EVENTS stream."""
        return await gates.publish_event(self._js, event_type, data)

    publish_event, publish_event_async = twins(_publish_event)
