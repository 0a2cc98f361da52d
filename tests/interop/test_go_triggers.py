"""Triggers across the engines: the Go CLI lists and switches the triggers our engine
stored, ours serves the ones the Go CLI created, and both read cron expressions alike."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from conftest import until
from goserve import go_cli

import dagnats_nb as dn
from dagnats_nb.dag.cron import parse_cron

WF = {
    "name": "nb-scheduled",
    "steps": [{"id": "tick", "task": "tick"}],
    "triggers": [
        {
            "id": "nb-nightly",
            "enabled": True,
            "cron": {"expression": "30 2 * * 1-5", "timezone": "Europe/Paris"},
        },
        {"id": "nb-orders", "enabled": True, "subject": {"subject": "nb.orders"}},
    ],
}


def test_the_go_cli_and_our_engine_share_triggers(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "nb", llm_enabled=False) as eng:
        eng.register(WF)
        listed = {
            d["id"]: d for d in json.loads(go_cli(eng.connect_url, "trigger", "list", "--json"))
        }
        assert listed["nb-nightly"]["workflow_id"] == "nb-scheduled"
        assert listed["nb-nightly"]["enabled"] is True
        assert listed["nb-nightly"]["cron"] == {
            "expression": "30 2 * * 1-5",
            "timezone": "Europe/Paris",
            "backfill": False,
        }
        assert listed["nb-orders"]["subject"] == {"subject": "nb.orders"}
        table = go_cli(eng.connect_url, "trigger", "list")
        assert "nb-nightly" in table and "30 2 * * 1-5" in table

        created = go_cli(
            eng.connect_url,
            "trigger",
            "create",
            "nb-scheduled",
            "--cron=*/5 * * * *",
            "--tz=Asia/Tokyo",
            "--json",
        )
        go_id = json.loads(created)["trigger_id"]
        until(lambda: go_id in eng.trigger_scheduler.active, what="the Go-created trigger")
        row = eng.triggers().set_index("id").loc[go_id]
        assert row["workflow"] == "nb-scheduled" and row["kind"] == "cron"
        assert row["timezone"] == "Asia/Tokyo" and bool(row["enabled"])
        assert row["next_due"].timestamp() == eng.trigger_scheduler.active[go_id].next_due

        go_cli(eng.connect_url, "trigger", "disable", "nb-nightly")
        until(lambda: "nb-nightly" not in eng.trigger_scheduler.active, what="Go's disable")
        assert not eng.triggers().set_index("id").loc["nb-nightly", "enabled"]
        eng.enable_trigger("nb-nightly")
        listed = {
            d["id"]: d for d in json.loads(go_cli(eng.connect_url, "trigger", "list", "--json"))
        }
        assert listed["nb-nightly"]["enabled"] is True


CASES = [
    ("0 9 1 * 1", "UTC"),
    ("*/7 3-5,22 * * *", "America/New_York"),
    ("15 2 * 3,11 0", "Europe/Paris"),
    ("0 12 31 * *", "Asia/Kolkata"),  # (Go's NextN looks one year ahead only)
    ("5 */4 1-10 * 1-5", "Australia/Lord_Howe"),
]


@pytest.mark.parametrize(("expr", "tz"), CASES)
def test_our_fire_times_are_gos(tmp_path, expr, tz):
    """`dagnats trigger test` (Go's cronexpr.NextN) and ours agree on the next five."""
    before = time.time()
    out = json.loads(
        go_cli("nats://127.0.0.1:1", "trigger", "test", f"--cron={expr}", f"--tz={tz}", "--json")
    )
    after = time.time()
    go = [datetime.fromisoformat(t).timestamp() for t in out["next_times"]]
    cron = parse_cron(expr)
    ours = [cron.between(t, t + 6 * 366 * 86400, tz, limit=5) for t in (before, after)]
    assert go in ours


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * MON",
        "*/0 * * * *",
        "1-5/2 * * * *",
        "* * * * 7",
        "60 * * * *",
        "0 * * *",
        "+5 * * * *",
    ],
)
def test_what_go_refuses_we_refuse_and_the_reverse(expr):
    out = json.loads(
        go_cli("nats://127.0.0.1:1", "trigger", "test", f"--cron={expr}", "--json", check=False)
        or "{}"
    )
    try:
        parse_cron(expr)
        ours = True
    except ValueError:
        ours = False
    assert out.get("valid", False) is ours, (expr, out)
