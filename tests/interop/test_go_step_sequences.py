"""The steps that wait without a worker (sleep, wait_for_event, approval, sub_workflow) write
the same history on our engine as on the real Go engine (issue 12).

Each case runs the SAME workflow definition (Go's file form: durations as integer
nanoseconds) on ``dagnats serve`` and on our engine, with the tasks served by dagnats' own Go
``interopworker`` on both, is driven alike (the event published on ``event.{type}`` with a
plain JetStream client, the approval decided through Go's REST route on each engine's HTTP
address), and compares the runs' histories, read with nats-py from ``history.{run_id}`` in
stream order: the sequences of (event type, step id), timestamps and run ids aside.

Known differences, asserted so that a change on either side is noticed:

- Go never cancels its timers: a wait or approval decided before its timeout still gets
  ``step.wait.timeout`` / ``approval.expired`` appended AFTER the run's terminal event (its
  handlers ignore it). We cancel ours. The sequences are compared up to and including the
  first terminal event; what follows it is asserted separately (Go: the stale timer event,
  ours: nothing).
- Go creates a child run (sub_workflow) directly in its run store and writes no
  ``workflow.started`` for it; ours starts the child like any run, with ``workflow.started``
  (carrying ``parent_run_id``). The child's sequences are compared without it.
- ``step.queued`` before the worker's events: Go writes it and then sends the task; ours
  sends the task and its ``step.queued`` right behind it on one connection (until
  2026-11-30 only once the task was stored, so a fast Go worker's ``step.started``, even
  the run's ``workflow.completed``, came first). Both engines' histories are asserted to
  have every ``step.queued`` before its step's worker events.

The workflows are linear so that the order of events is deterministic on both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import nats
import pytest
from conftest import until
from goserve import GoServe, GoWorker, go_binary, go_cli
from nats.js.errors import KeyNotFoundError, NotFoundError

import dagnats_nb as dn

SECOND = 1_000_000_000  # Go time.Duration: nanoseconds (Go refuses "1s")
WAIT_TIMEOUT = 2  # seconds
APPROVAL_TIMEOUT = 3  # seconds
TERMINAL = ("workflow.completed", "workflow.failed", "workflow.cancelled")
WORKER_EVENTS = ("step.started", "step.completed", "step.failed")


def _task(step_id: str, task: str, *deps: str) -> dict:
    return {"id": step_id, "task": task, "depends_on": list(deps), "timeout": 30 * SECOND}


SLEEP = {
    "name": "seq-sleep",
    "version": "1",
    "steps": [
        _task("greet", "ggreet"),
        {"id": "nap", "type": "sleep", "depends_on": ["greet"], "config": {"duration": SECOND}},
        _task("shout", "gupper", "nap"),
    ],
}

WAIT = {
    "name": "seq-wait",
    "version": "1",
    "steps": [
        _task("greet", "ggreet"),
        {
            "id": "paid",
            "type": "wait_for_event",
            "depends_on": ["greet"],
            "config": {
                "event": "paid",
                "match": {"left": "order", "op": "eq", "right": "input.order"},
                "timeout": WAIT_TIMEOUT * SECOND,
            },
        },
        _task("shout", "gupper", "paid"),
    ],
}

APPROVAL = {
    "name": "seq-approval",
    "version": "1",
    "steps": [
        _task("greet", "ggreet"),
        {
            "id": "gate",
            "type": "approval",
            "depends_on": ["greet"],
            "config": {
                "subject": "approvals.seq",
                "description": "ship it?",
                "timeout": APPROVAL_TIMEOUT * SECOND,
            },
        },
        _task("shout", "gupper", "gate"),
    ],
}

CHILD = {"name": "seq-child", "version": "1", "steps": [_task("kid", "ggreet")]}
PARENT = {
    "name": "seq-parent",
    "version": "1",
    "steps": [
        _task("greet", "ggreet"),
        {
            "id": "sub",
            "type": "sub_workflow",
            "depends_on": ["greet"],
            "config": {"workflow": "seq-child", "detach": False},
        },
        _task("shout", "gupper", "sub"),
    ],
}

WORKFLOWS = (SLEEP, WAIT, APPROVAL, CHILD, PARENT)


# -- reading a run's history and the NATS side of both engines, with a plain client ---------


def _nats(url: str, work: Callable) -> object:
    """``await work(nc, js)`` on a fresh nats-py connection to ``url``."""

    async def main():
        nc = await nats.connect(url)
        try:
            return await work(nc, nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


def history(url: str, run_id: str) -> list[dict]:
    """Every event on ``history.{run_id}`` (stream WORKFLOW_HISTORY), in stream order."""
    subject = f"history.{run_id}"

    async def read(nc, js):
        info = await js.stream_info("WORKFLOW_HISTORY", subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0)
        if not count:
            return []
        sub = await js.subscribe(subject, stream="WORKFLOW_HISTORY", ordered_consumer=True)
        try:
            msgs = [await sub.next_msg(timeout=5) for _ in range(count)]
        finally:
            await sub.unsubscribe()
        msgs.sort(key=lambda m: m.metadata.sequence.stream)
        return [json.loads(m.data) for m in msgs]

    return _nats(url, read)


def types(events: list[dict]) -> list[tuple[str, str]]:
    """(type, step id) of each event: what both engines must write alike."""
    return [(e["type"], e.get("step_id", "")) for e in events]


def queued_first(seq: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``seq`` with each step's ``step.queued`` moved before the worker's first event on
    that step (``step.started`` / ``step.completed``) when it came after it (see the module
    doc: ours writes ``step.queued`` once the task is stored, and the Go worker can be
    faster). The workflows here run each step once."""
    queued = {step for kind, step in seq if kind == "step.queued"}
    out, seen = [], set()
    for kind, step in seq:
        if kind == "step.queued":
            if step in seen:
                continue  # moved up already
            seen.add(step)
        elif kind in WORKER_EVENTS and step in queued and step not in seen:
            out.append(("step.queued", step))
            seen.add(step)
        out.append((kind, step))
    return out


def split_at_terminal(events: list[dict]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The run's sequence up to and including its first terminal event, and what follows;
    each ``step.queued`` before its step's worker events (asserted in ``ended``)."""
    seq = types(events)
    end = next(i for i, (kind, _) in enumerate(seq) if kind in TERMINAL)
    return seq[: end + 1], seq[end + 1 :]


def task_consumers(url: str) -> set[str]:
    async def names(nc, js):
        with contextlib.suppress(NotFoundError):
            return {c.name for c in await js.consumers_info("TASK_QUEUES")}
        return set()

    return _nats(url, names)


def publish_event(url: str, event_type: str, body: dict) -> None:
    """A bare JetStream publish on ``event.{type}``, as any producer would send it."""

    async def publish(nc, js):
        await js.publish(f"event.{event_type}", json.dumps(body).encode())

    _nats(url, publish)


def kv_has(url: str, bucket: str, key: str) -> bool:
    async def get(nc, js):
        kv = await js.key_value(bucket)
        try:
            await kv.get(key)
        except KeyNotFoundError:
            return False
        return True

    return _nats(url, get)


# -- the two engines ------------------------------------------------------------------------


@dataclass
class Side:
    """One engine as the test drives it: its NATS URL, HTTP URL and how a run starts."""

    name: str
    url: str
    http: str
    start: Callable[[str, object], str]

    def events(self, run_id: str) -> list[dict]:
        return history(self.url, run_id)

    def wait_for(self, run_id: str, kind: str, timeout: float = 30) -> list[dict]:
        """The history once it holds an event of type ``kind``."""
        return until(
            lambda: (evs := self.events(run_id)) and any(e["type"] == kind for e in evs) and evs,
            timeout=timeout,
            every=0.05,
            what=f"{kind} in {self.name} run {run_id}",
        )

    def ended(self, run_id: str) -> list[dict]:
        """The history once it holds a terminal event and, for each step a worker reported
        on, its ``step.queued`` (ours may write it after the terminal event: module doc)."""

        def done(evs: list[dict]) -> bool:
            seq = types(evs)
            queued = {step for kind, step in seq if kind == "step.queued"}
            worked = {step for kind, step in seq if kind in WORKER_EVENTS}
            return any(kind in TERMINAL for kind, _ in seq) and worked <= queued

        events = until(
            lambda: (evs := self.events(run_id)) and done(evs) and evs,
            timeout=30,
            every=0.05,
            what=f"the end of {self.name} run {run_id}",
        )
        # both engines write step.queued before the worker's events on that step
        assert queued_first(types(events)) == types(events), (self.name, types(events))
        return events


def _wait_for_go_worker(url: str) -> None:
    until(
        lambda: {"workers-ggreet", "workers-gupper"} <= task_consumers(url),
        timeout=30,
        what="the Go worker's consumers",
    )


@pytest.fixture(scope="module")
def go(tmp_path_factory) -> Iterator[Side]:
    """``dagnats serve`` with the Go ``interopworker``; the workflows registered by the Go CLI."""
    serve_bin = go_binary("dagnats", "DAGNATS_GO_BIN")
    worker_bin = go_binary("interopworker", "DAGNATS_GO_WORKER")
    root = tmp_path_factory.mktemp("go")
    serve = GoServe(serve_bin, root / "serve")
    worker = None
    try:
        worker = GoWorker(worker_bin, serve.url, root / "interopworker.log")
        for wf in WORKFLOWS:
            path = root / f"{wf['name']}.json"
            path.write_text(json.dumps(wf))
            go_cli(serve.url, "workflow", "register", str(path))
        _wait_for_go_worker(serve.url)

        def start(workflow: str, payload: object) -> str:
            out = go_cli(serve.url, "run", "start", workflow, json.dumps(payload), "--json")
            return json.loads(out)["run_id"]

        yield Side("go", serve.url, serve.http, start)
    finally:
        if worker is not None:
            worker.stop()
        serve.stop()


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Iterator[Side]:
    """Our engine (HTTP on) with the same Go ``interopworker`` serving its tasks."""
    worker_bin = go_binary("interopworker", "DAGNATS_GO_WORKER")
    root = tmp_path_factory.mktemp("nb")
    with dn.Engine.start(
        data_dir=root / "engine", http_addr="127.0.0.1:0", llm_enabled=False
    ) as eng:
        worker = GoWorker(worker_bin, eng.connect_url, root / "interopworker.log")
        try:
            for wf in WORKFLOWS:
                eng.register(wf)
            _wait_for_go_worker(eng.connect_url)
            assert eng.http_url

            def start(workflow: str, payload: object) -> str:
                return eng.start_run(workflow, input=payload).id

            yield Side("ours", eng.connect_url, eng.http_url, start)
        finally:
            worker.stop()


def after_deadline(seconds: float) -> None:
    """Wait until ``seconds`` of monotonic time are reached: a timer due by then has fired."""
    until(lambda: time.monotonic() >= seconds, timeout=seconds - time.monotonic() + 5, every=0.1)


# -- the cases ----------------------------------------------------------------------------

HEAD = [
    ("workflow.started", ""),
    ("step.queued", "greet"),
    ("step.started", "greet"),
    ("step.completed", "greet"),
]
SHOUT = [("step.queued", "shout"), ("step.started", "shout"), ("step.completed", "shout")]


def test_sleep_between_two_tasks(go, ours):
    runs = {side.name: side.start("seq-sleep", {"name": "ada"}) for side in (ours, go)}
    seqs = {}
    for side in (ours, go):
        seqs[side.name], tail = split_at_terminal(side.ended(runs[side.name]))
        assert tail == [], (side.name, tail)  # a sleep that ran out leaves no stale timer
    assert seqs["go"] == [
        *HEAD,
        ("step.sleep.started", "nap"),
        ("step.sleep.completed", "nap"),
        *SHOUT,
        ("workflow.completed", ""),
    ]
    assert seqs["ours"] == seqs["go"], seqs


def _await_waiter(side: Side, run_id: str) -> float:
    """Wait until ``run_id``'s ``paid`` step waits (Go: ``step.wait.started`` written and its
    waiter in KV ``event_waiters``, which its correlator matches against); the monotonic
    time by which its timeout timer is due."""
    side.wait_for(run_id, "step.wait.started")
    if side.name == "go":  # Go writes step.wait.started before it adds the waiter
        until(lambda: kv_has(side.url, "event_waiters", f"paid.{run_id}.paid"), what="waiter")
    return time.monotonic() + WAIT_TIMEOUT


def test_wait_for_event_matched(go, ours):
    runs = {side.name: side.start("seq-wait", {"order": f"{side.name}-1"}) for side in (ours, go)}
    due = {}
    for side in (ours, go):
        run_id = runs[side.name]
        due[side.name] = _await_waiter(side, run_id)
        publish_event(side.url, "paid", {"order": f"{side.name}-0", "msg": "not this one"})
        publish_event(side.url, "paid", {"order": f"{side.name}-1", "msg": "paid"})
    seqs, tails, outputs = {}, {}, {}
    for side in (ours, go):
        events = side.ended(runs[side.name])
        seqs[side.name], _ = split_at_terminal(events)
        matched = [e for e in events if e["type"] == "step.wait.matched"]
        outputs[side.name] = [e.get("payload") for e in matched]
    assert seqs["go"] == [
        *HEAD,
        ("step.wait.started", "paid"),
        ("step.wait.matched", "paid"),
        *SHOUT,
        ("workflow.completed", ""),
    ]
    assert seqs["ours"] == seqs["go"], seqs
    assert outputs == {  # the matching event's body, once; the other event ignored
        "go": [{"order": "go-1", "msg": "paid"}],
        "ours": [{"order": "ours-1", "msg": "paid"}],
    }
    # Go does not cancel the timeout timer: it fires after the run completed.
    _, tails["go"] = split_at_terminal(go.wait_for(runs["go"], "step.wait.timeout"))
    assert tails["go"] == [("step.wait.timeout", "paid")]
    after_deadline(due["ours"] + 1)
    _, tails["ours"] = split_at_terminal(ours.events(runs["ours"]))
    assert tails["ours"] == []  # ours cancels it


def test_wait_for_event_timed_out(go, ours):
    runs = {side.name: side.start("seq-wait", {"order": "nobody"}) for side in (ours, go)}
    seqs = {}
    for side in (ours, go):
        seqs[side.name], tail = split_at_terminal(side.ended(runs[side.name]))
        assert tail == [], (side.name, tail)
    assert seqs["go"] == [
        *HEAD,
        ("step.wait.started", "paid"),
        ("step.wait.timeout", "paid"),
        *SHOUT,
        ("workflow.completed", ""),
    ]
    assert seqs["ours"] == seqs["go"], seqs


def _decide(side: Side, run_id: str, action: str, body: dict) -> dict:
    """Decide the ``gate`` step through Go's REST route on ``side``'s HTTP address, with
    the token from the ``approval.requested`` event."""
    events = side.wait_for(run_id, "approval.requested")
    [requested] = [e for e in events if e["type"] == "approval.requested"]
    token = requested["payload"]["token"]
    assert len(token) == 64, (side.name, token)
    reply = httpx.post(
        f"{side.http}/runs/{run_id}/approval/gate",
        params={"action": action, "token": token},
        json=body,
        timeout=10,
    )
    assert reply.status_code == 200, (side.name, reply.status_code, reply.text)
    return reply.json()


def _approval_case(go: Side, ours: Side, action: str, body: dict) -> dict:
    runs = {side.name: side.start("seq-approval", {"name": "ada"}) for side in (ours, go)}
    replies, due, seqs, tails, decided = {}, {}, {}, {}, {}
    for side in (ours, go):
        replies[side.name] = _decide(side, runs[side.name], action, body)
        due[side.name] = time.monotonic() + APPROVAL_TIMEOUT
    for side in (ours, go):
        events = side.ended(runs[side.name])
        seqs[side.name], _ = split_at_terminal(events)
        decided[side.name] = [e.get("payload") for e in events if e["type"].startswith("approval.")]
    # Go does not cancel the approval's timeout timer: it fires after the run ended.
    _, tails["go"] = split_at_terminal(go.wait_for(runs["go"], "approval.expired"))
    assert tails["go"] == [("approval.expired", "gate")]
    after_deadline(due["ours"] + 1)
    _, tails["ours"] = split_at_terminal(ours.events(runs["ours"]))
    assert tails["ours"] == []  # ours cancels it
    for name in ("go", "ours"):
        requested, decision = decided[name][:2]
        assert decision == body, (name, decided[name])  # the REST body is the event payload
        assert requested["run_id"] == runs[name] and requested["step_id"] == "gate"
    assert seqs["ours"] == seqs["go"], seqs
    return {"seqs": seqs, "replies": replies, "runs": runs}


def test_approval_granted_over_rest(go, ours):
    got = _approval_case(go, ours, "approve", {"approved_by": "me", "msg": "ok"})
    assert got["seqs"]["go"] == [
        *HEAD,
        ("approval.requested", "gate"),
        ("approval.granted", "gate"),
        *SHOUT,
        ("workflow.completed", ""),
    ]
    for name, reply in got["replies"].items():
        assert reply == {"run_id": got["runs"][name], "status": "approved", "step": "gate"}


def test_approval_rejected_over_rest(go, ours):
    got = _approval_case(go, ours, "reject", {"reason": "bad"})
    assert got["seqs"]["go"] == [
        *HEAD,
        ("approval.requested", "gate"),
        ("approval.rejected", "gate"),
        ("workflow.failed", ""),
    ]
    # Go's reply spells the status action+"d" ("rejectd"); ours answers "rejected".
    replies, runs = got["replies"], got["runs"]
    assert replies["go"] == {"run_id": runs["go"], "status": "rejectd", "step": "gate"}
    assert replies["ours"] == {"run_id": runs["ours"], "status": "rejected", "step": "gate"}


def test_sub_workflow_parent_and_child(go, ours):
    runs = {side.name: side.start("seq-parent", {"name": "kid"}) for side in (ours, go)}
    parents, children, child_ends = {}, {}, {}
    for side in (ours, go):
        events = side.ended(runs[side.name])
        parents[side.name], tail = split_at_terminal(events)
        assert tail == [], (side.name, tail)
        [spawn] = [e for e in events if e["type"] == "workflow.spawn"]
        assert spawn["step_id"] == "sub" and spawn["payload"]["child_workflow"] == "seq-child"
        assert spawn["payload"]["input"] == {"msg": "hello kid"}  # greet's output
        child = side.ended(spawn["payload"]["child_run_id"])
        if side.name == "ours":  # our child's workflow.started names its parent
            assert child[0]["payload"]["parent_run_id"] == runs["ours"], child[0]
        children[side.name], tail = split_at_terminal(child)
        assert tail == [], (side.name, tail)
        child_ends[side.name] = [e.get("payload") for e in child if e["type"] == "step.completed"]
    assert parents["go"] == [
        *HEAD,
        ("workflow.spawn", "sub"),
        ("workflow.child.completed", "sub"),
        *SHOUT,
        ("workflow.completed", ""),
    ]
    assert parents["ours"] == parents["go"]
    # Go creates the child run straight in its run store: no workflow.started for it. Ours
    # starts the child as any run, with workflow.started. Compared without it.
    kid = [("step.queued", "kid"), ("step.started", "kid"), ("step.completed", "kid")]
    assert children["go"] == [*kid, ("workflow.completed", "")]
    assert children["ours"][0] == ("workflow.started", "")
    assert children["ours"][1:] == children["go"]
    # ggreet formats a missing "name" with Go's %v: "<nil>"
    assert child_ends["ours"] == child_ends["go"] == [{"msg": "hello <nil>"}]
