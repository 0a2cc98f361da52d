"""Cron and subject triggers: a mixin of :class:`~dagnats_nb.facade.engine.Engine`.

A workflow's ``triggers`` are stored as the Go engine stores them when it is registered;
the engine that orchestrates fires them (:mod:`dagnats_nb.runtime.triggers` says how, and
what a restart owes). ``eng.triggers()`` lists them, ``eng.enable_trigger(id)`` /
``eng.disable_trigger(id)`` switch one on or off (at once, in every engine on the NATS).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pandas as pd

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.cron import parse_cron
from dagnats_nb.errors import DagnatsError
from dagnats_nb.facade.twins import twins
from dagnats_nb.runtime.triggers import TriggerScheduler, TriggerStore, go_record, trigger_kind

log = logging.getLogger("dagnats_nb")

TRIGGER_COLUMNS = [
    "id",
    "workflow",
    "kind",
    "schedule",
    "timezone",
    "enabled",
    "last_fired",
    "next_due",
]


def _schedule(rec: dict[str, Any], kind: str) -> str:
    spec = rec.get(kind) or {}
    if kind == "http":
        return f"{spec.get('method', '')} {spec.get('path', '')}".strip()
    key = {"cron": "expression", "subject": "subject", "webhook": "path", "external": "kind"}
    return str(spec.get(key.get(kind, ""), ""))


def _ts(t: float | None) -> pd.Timestamp | None:
    return None if t is None or t == math.inf else pd.Timestamp(t, unit="s", tz="UTC")


def _next_due(spec: dict[str, Any], now: float) -> pd.Timestamp | None:
    try:
        cron = parse_cron(spec.get("expression", ""))
        return _ts(cron.next_after(now, spec.get("timezone") or "UTC"))
    except ValueError:  # a record Go wrote that we cannot read: listed, never due
        return None


def triggers_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows of :meth:`Triggers.triggers` as a DataFrame (sorted by workflow and id)."""
    df = pd.DataFrame(rows, columns=TRIGGER_COLUMNS)
    for col in ("last_fired", "next_due"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df.sort_values(["workflow", "id"], ignore_index=True)


class Triggers:
    """The triggers of the registered workflows (see the module docstring)."""

    trigger_scheduler: TriggerScheduler | None = None

    async def _put_triggers(self, defn: WorkflowDef) -> None:
        """Store a workflow's triggers as Go's records (unchanged ones are not rewritten)."""
        store = TriggerStore(self._js)
        for trigger in defn.triggers or []:
            rec = go_record(defn.name, trigger)
            old = await store.get(rec["id"])
            if old == rec:
                continue
            if old and old.get("workflow_id") != rec["workflow_id"]:
                log.warning(
                    "trigger '%s' of workflow '%s' replaces the one of workflow '%s' (trigger "
                    "ids are one namespace, as in Go): give it another id to keep both",
                    rec["id"],
                    defn.name,
                    old.get("workflow_id"),
                )
            if not rec["enabled"] and trigger_kind(rec) in ("cron", "subject"):
                log.warning(
                    "trigger '%s' of workflow '%s' is stored disabled: as in Go, a trigger "
                    'fires only with "enabled": true; add that, or eng.enable_trigger(%r)',
                    rec["id"],
                    defn.name,
                    rec["id"],
                )
            await store.put(rec)

    async def _start_triggers(self) -> None:
        """Fire the triggers (only the engine that orchestrates does)."""
        if self.orchestrator is None or self.trigger_scheduler is not None:
            return

        async def start_run(workflow: str, input: Any, run_id: str | None) -> Any:
            return await self._start_run(workflow, input, run_id=run_id, exists_ok=True)

        scheduler = TriggerScheduler(self._nc, self._js, start_run, self._run_known)
        await scheduler.start()
        self.trigger_scheduler = scheduler

    async def _stop_triggers(self) -> None:
        scheduler, self.trigger_scheduler = self.trigger_scheduler, None
        if scheduler is not None:
            await scheduler.stop()

    async def _triggers(self) -> list[dict[str, Any]]:
        """The triggers of the registered workflows (and any Go created) as a DataFrame: id,
        workflow, kind (cron, subject, webhook, http), schedule (cron expression, subject or
        path), timezone, enabled, last_fired (a cron trigger's last minute fired) and
        next_due (when an enabled cron trigger fires next)."""
        store = TriggerStore(self._js)
        scheduler = self.trigger_scheduler
        now = scheduler.clock() if scheduler is not None else time.time()
        rows = []
        for rec, _ in (await store.all()).values():
            kind = trigger_kind(rec)
            spec = rec.get(kind) or {}
            row = {
                "id": rec["id"],
                "workflow": rec.get("workflow_id", ""),
                "kind": kind or "unknown",
                "schedule": _schedule(rec, kind),
                "timezone": (spec.get("timezone") or "UTC") if kind == "cron" else None,
                "enabled": rec.get("enabled") is True,
                "last_fired": None,
                "next_due": None,
            }
            if kind == "cron":
                row["last_fired"] = _ts(await store.last_fired(rec["id"]))
                active = scheduler.active.get(rec["id"]) if scheduler is not None else None
                if active is not None and active.next_due is not None:
                    row["next_due"] = _ts(active.next_due)
                elif row["enabled"]:
                    row["next_due"] = _next_due(spec, now)
            rows.append(row)
        return rows

    triggers, triggers_async = twins(_triggers, triggers_frame)

    async def _set_trigger(self, trigger_id: str, enabled: bool) -> dict[str, Any]:
        store = TriggerStore(self._js)
        rec = await store.get(trigger_id)
        if rec is None:
            raise DagnatsError(
                f"no trigger '{trigger_id}': eng.triggers() lists them (a workflow's "
                "`triggers` are stored when it is registered)"
            )
        if rec.get("enabled") is not enabled:
            rec["enabled"] = enabled
            await store.put(rec)
        return rec

    async def _enable_trigger(self, trigger_id: str) -> dict[str, Any]:
        """Switch a trigger on (in every engine at once); its record (Go's form). A cron
        trigger owes nothing from the time it was off."""
        return await self._set_trigger(trigger_id, True)

    enable_trigger, enable_trigger_async = twins(_enable_trigger)

    async def _disable_trigger(self, trigger_id: str) -> dict[str, Any]:
        """Switch a trigger off: it does not fire until enabled again; its record."""
        return await self._set_trigger(trigger_id, False)

    disable_trigger, disable_trigger_async = twins(_disable_trigger)
