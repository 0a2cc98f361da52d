"""Cron and subject triggers on a real engine: stored as Go stores them, fired at the due
minute (a clock shifted to just before one, so no test waits a minute), a message starting
a run, switched off and on, and a restart that fires the owed minutes once."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
from conftest import notebook_shell, until

import dagnats_nb as dn
from dagnats_nb.errors import DagnatsError, WorkflowError
from dagnats_nb.facade.triggers import TRIGGER_COLUMNS
from dagnats_nb.runtime import triggers as T

CLI = [sys.executable, "-m", "dagnats_nb"]


def workflow(name: str, *triggers: dict) -> dict:
    return {"name": name, "steps": [{"id": "echo", "task": "echo"}], "triggers": list(triggers)}


def cron(tid: str, expr: str = "* * * * *", tz: str = "", backfill: bool = False) -> dict:
    spec = {"expression": expr, "backfill": backfill, **({"timezone": tz} if tz else {})}
    return {"id": tid, "enabled": True, "cron": spec}


def echo(eng) -> None:
    @eng.task("echo")
    def run(ctx):
        return ctx.input


def shifted_clock(lead: float):
    """A clock ``lead`` seconds before a minute boundary (a few minutes ahead), and that
    boundary."""
    real = time.time()
    boundary = math.floor(real / 60) * 60 + 180
    offset = boundary - lead - real
    return (lambda: time.time() + offset), boundary


def kv(eng, bucket: str, key: str) -> bytes | None:
    async def read():
        try:
            return (await (await eng._js.key_value(bucket)).get(key)).value
        except Exception:
            return None

    return eng._call(read())


def publish(eng, subject: str, body: bytes, headers: dict | None = None) -> None:
    async def send():
        await eng._nc.publish(subject, body, headers=headers)
        await eng._nc.flush()

    eng._call(send())


def served(eng, trigger_id: str) -> None:
    """Wait until the scheduler serves the trigger (subscribed, or its timer set)."""
    active = eng.trigger_scheduler.active
    until(
        lambda: trigger_id in active and (active[trigger_id].sub or active[trigger_id].next_due),
        what=f"trigger {trigger_id} served",
    )


def run_ids(eng, workflow: str) -> set[str]:
    df = eng.runs()
    return set(df[df["workflow"] == workflow]["run_id"])


def test_registering_stores_go_records_and_lists_them(engine):
    engine.register(
        workflow(
            "reports",
            cron("nightly", "30 2 * * 1-5", tz="Europe/Paris", backfill=True),
            {"id": "orders", "enabled": True, "subject": {"subject": "orders.created"}},
            {"id": "off", "cron": {"expression": "0 * * * *"}},  # no "enabled": Go's false
        )
    )
    assert json.loads(kv(engine, "triggers", "nightly")) == {
        "id": "nightly",
        "workflow_id": "reports",
        "enabled": True,
        "cron": {"expression": "30 2 * * 1-5", "timezone": "Europe/Paris", "backfill": True},
    }
    assert json.loads(kv(engine, "triggers", "orders")) == {
        "id": "orders",
        "workflow_id": "reports",
        "enabled": True,
        "subject": {"subject": "orders.created"},
    }
    assert json.loads(kv(engine, "triggers", "off"))["enabled"] is False
    df = engine.triggers()
    assert list(df.columns) == TRIGGER_COLUMNS
    assert list(df["id"]) == ["nightly", "off", "orders"]
    rows = df.set_index("id")
    assert rows.loc["nightly", "kind"] == "cron" and rows.loc["orders", "kind"] == "subject"
    assert rows.loc["nightly", "schedule"] == "30 2 * * 1-5"
    assert rows.loc["orders", "schedule"] == "orders.created"
    assert (
        rows.loc["nightly", "timezone"] == "Europe/Paris" and rows.loc["off", "timezone"] == "UTC"
    )
    assert list(rows["enabled"]) == [True, False, True]
    due = dn.dag.cron.parse_cron("30 2 * * 1-5").next_after(time.time(), "Europe/Paris")
    assert rows.loc["nightly", "next_due"].timestamp() == due
    assert rows.loc["off", "next_due"] is None or str(rows.loc["off", "next_due"]) == "NaT"
    active = engine.trigger_scheduler.active
    until(lambda: sorted(active) == ["nightly", "orders"], what="the enabled ones served")


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        (cron("bad", "61 * * * *"), "triggers[0].cron.expression': cron '61 * * * *': minute"),
        (cron("bad", tz="Mars/Olympus"), "triggers[0].cron.timezone': unknown timezone"),
        ({"id": "bad", "subject": {"subject": "a b"}}, "triggers[0].subject.subject': must be"),
    ],
)
def test_bad_triggers_are_one_line_naming_the_field(engine, trigger, message):
    with pytest.raises(WorkflowError) as err:
        engine.register(workflow("broken", trigger))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_trigger_id_is_one_line(engine):
    with pytest.raises(DagnatsError, match=r"^no trigger 'nope': eng.triggers\(\) lists them"):
        engine.disable_trigger("nope")


def test_a_cron_trigger_fires_at_the_due_minute(engine):
    echo(engine)
    clock, boundary = shifted_clock(lead=1.5)
    engine.trigger_scheduler.clock = clock
    engine.register(workflow("ticker", cron("tick", tz="Asia/Tokyo")))
    run_id = T.trigger_run_id("tick", boundary)
    active = engine.trigger_scheduler.active
    until(lambda: "tick" in active and active["tick"].next_due, what="the trigger scheduled")
    assert active["tick"].next_due == boundary
    until(lambda: run_id in run_ids(engine, "ticker"), timeout=15, what="the due minute's run")
    assert engine.wait_run(run_id, 10) == "completed"
    assert engine.run_output(run_id) == {
        "trigger": "cron",
        "source": "tick",
        "workflow_id": "ticker",
        "timestamp": T.rfc3339(boundary),
    }
    assert kv(engine, "trigger_state", "tick.last_run_at") == T.rfc3339(boundary).encode()
    row = engine.triggers().set_index("id").loc["tick"]
    assert row["last_fired"].timestamp() == boundary
    assert row["next_due"].timestamp() == boundary + 60
    assert run_ids(engine, "ticker") == {run_id}


def test_a_subject_trigger_starts_a_run_with_the_message_body(engine):
    echo(engine)
    engine.register(
        workflow("orders", {"id": "on-order", "enabled": True, "subject": {"subject": "shop.*"}})
    )
    served(engine, "on-order")
    publish(engine, "shop.order", b'{"sku": "A-1", "qty": 2}')
    (run_id,) = until(lambda: run_ids(engine, "orders"), what="the message's run")
    assert engine.wait_run(run_id, 10) == "completed"
    out = engine.run_output(run_id)
    assert out["data"] == {"sku": "A-1", "qty": 2}
    assert out["trigger"] == "subject" and out["source"] == "on-order"
    assert out["workflow_id"] == "orders"
    # a message with a Nats-Msg-Id starts the run derived from it, once
    for _ in range(2):
        publish(engine, "shop.order", b"plain text", {"Nats-Msg-Id": "order-7"})
    derived = T.trigger_run_id("on-order", "order-7")
    until(lambda: derived in run_ids(engine, "orders"), what="the Nats-Msg-Id run")
    assert engine.wait_run(derived, 10) == "completed"
    assert engine.run_output(derived)["data"] == "plain text"
    publish(engine, "shop.other", b"3")  # a third message: the duplicate started nothing
    until(lambda: len(run_ids(engine, "orders")) == 3, what="the third message's run")


def test_disabled_triggers_do_not_fire_and_enabled_again_do(engine):
    echo(engine)
    clock, boundary = shifted_clock(lead=2.0)
    engine.trigger_scheduler.clock = clock
    engine.register(
        workflow(
            "quiet",
            cron("minutely"),
            {"id": "inbox", "enabled": True, "subject": {"subject": "quiet.in"}},
        )
    )
    assert engine.disable_trigger("minutely")["enabled"] is False
    assert engine.disable_trigger("inbox")["enabled"] is False
    until(lambda: not engine.trigger_scheduler.active, what="both triggers off")
    publish(engine, "quiet.in", b"{}")
    until(lambda: clock() > boundary + 1.0, timeout=10, what="the due minute to pass")
    assert run_ids(engine, "quiet") == set()
    row = engine.triggers().set_index("id").loc["minutely"]
    assert not row["enabled"] and str(row["next_due"]) == "NaT"
    engine.enable_trigger("inbox")
    served(engine, "inbox")
    publish(engine, "quiet.in", b'{"n": 1}')
    (run_id,) = until(lambda: run_ids(engine, "quiet"), what="a run after enabling")
    assert engine.wait_run(run_id, 10) == "completed"
    assert engine.run_output(run_id)["data"] == {"n": 1}
    assert json.loads(kv(engine, "triggers", "minutely"))["enabled"] is False


def test_a_restart_fires_the_owed_minutes_once(tmp_path, monkeypatch):
    """Down for three minutes: the backfill trigger starts each owed minute's run, the other
    only the minute it restarts in; a second restart (even with a stale last-fired record)
    starts nothing again."""
    data_dir = tmp_path / "engine"
    quiet, _ = shifted_clock(lead=30.0)  # no minute falls due while the records are written
    monkeypatch.setattr(T, "clock", quiet)
    eng = dn.Engine.start(data_dir=data_dir)
    try:
        eng.register(workflow("catchup", cron("owed", backfill=True), cron("now-only")))
        written = eng._call(T.TriggerStore(eng._js).all())["owed"][1]  # its KV time
    finally:
        eng.stop()
    real = time.time()
    restart_at = math.floor((real + 200) / 60) * 60 + 5  # 5 s into a minute, ~3 min later
    offset = restart_at - real
    monkeypatch.setattr(T, "clock", lambda: time.time() + offset)
    owed = [m for m in range(math.ceil(written / 60) * 60, restart_at + 1, 60) if m > written]
    assert len(owed) in (3, 4)
    expected = {T.trigger_run_id("owed", m) for m in owed}
    expected.add(T.trigger_run_id("now-only", restart_at - 5))

    eng = dn.Engine.start(data_dir=data_dir)
    try:
        echo(eng)
        until(lambda: run_ids(eng, "catchup") == expected, timeout=20, what="the owed runs")
        for run_id in expected:
            assert eng.wait_run(run_id, 10) == "completed"
        assert kv(eng, "trigger_state", "owed.last_run_at") == T.rfc3339(owed[-1]).encode()
        # a stale record of the last fired minute: its runs exist, none starts again
        stale = T.rfc3339(owed[0] - 60).encode()
        eng._call(_put(eng, "trigger_state", "owed.last_run_at", stale))
    finally:
        eng.stop()

    eng = dn.Engine.start(data_dir=data_dir)
    try:
        scheduler = eng.trigger_scheduler
        until(lambda: all(a.next_due for a in scheduler.active.values()), what="the restart")
        until(
            lambda: kv(eng, "trigger_state", "owed.last_run_at") == T.rfc3339(owed[-1]).encode(),
            what="the last fired minute recorded again",
        )
        assert run_ids(eng, "catchup") == expected
        assert scheduler.fired == 0 and scheduler.errors == []
    finally:
        eng.stop()


async def _put(eng, bucket: str, key: str, value: bytes) -> None:
    await (await eng._js.key_value(bucket)).put(key, value)


def test_the_cli_lists_and_switches_triggers(engine):
    engine.register(workflow("cli-wf", cron("cli-cron", "0 9 * * *", tz="Europe/Paris")))
    data_dir = str(engine.settings.data_dir)
    out = subprocess.run(
        [*CLI, "trigger", "list", "--data-dir", data_dir, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["id"] == "cli-cron" and row["schedule"] == "0 9 * * *" and row["enabled"]
    out = subprocess.run(
        [*CLI, "trigger", "disable", "cli-cron", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "trigger cli-cron (cli-wf) disabled"
    until(lambda: "cli-cron" not in engine.trigger_scheduler.active, what="the engine to see it")
    out = subprocess.run(
        [*CLI, "trigger", "list", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "cli-cron" in out.stdout and "False" in out.stdout
    out = subprocess.run(
        [*CLI, "trigger", "enable", "nope", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("dagnats: no trigger 'nope': `dagnats trigger list` lists them")
    assert out.stderr.count("\n") == 1


@pytest.fixture
def ip(tmp_path):
    with notebook_shell() as shell:
        shell.run_line_magic("dagnats", f"start --data-dir {tmp_path / 'engine'}")
        yield shell
        shell.run_line_magic("dagnats", "stop")


def test_the_magics_list_and_switch_triggers(ip, capsys):
    eng = dn.engine()
    eng.register(workflow("magic-wf", cron("magic-cron", "*/5 * * * *")))
    df = ip.run_line_magic("dagnats", "triggers")
    assert list(df.columns) == TRIGGER_COLUMNS and list(df["id"]) == ["magic-cron"]
    record = ip.run_line_magic("dagnats", "trigger disable magic-cron")
    assert record["enabled"] is False
    assert "trigger magic-cron (magic-wf) disabled" in capsys.readouterr().out
    assert not ip.run_line_magic("dagnats", "triggers")["enabled"].any()
    ip.run_line_magic("dagnats", "trigger enable magic-cron -o rec")
    assert ip.user_ns["rec"]["enabled"] is True
    with pytest.raises(DagnatsError, match="no trigger 'ghost'"):
        ip.run_line_magic("dagnats", "trigger enable ghost")
