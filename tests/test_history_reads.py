"""One subject's messages read by batched direct get (``transport.reading.read_subject``):
the same messages, sequences and headers as an ordered consumer reads, over more than one
batch, from a start sequence, up to a limit, for a subject with none; a stream without
``allow_direct`` (one we adopted) is read by a consumer instead, with the same answer. A
run's ``events()`` and the restart's rebuild of a run from its history answer the same
on both paths. Everything against the engine's real nats-server."""

from __future__ import annotations

import pytest
from nats.js import api as js_api

import dagnats_nb as dn
from dagnats_nb.transport import reading
from dagnats_nb.wire import protocol

DIRECT, PLAIN = "T_DIRECT", "T_PLAIN"  # test streams: with and without allow_direct


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    e = dn.Engine.start(data_dir=tmp_path_factory.mktemp("hr") / "e", llm_enabled=False)

    @e.task("hr-step")
    def step(ctx):
        return {"n": ctx.input.get("n", 0) + 1}

    e.register(
        {
            "name": "hr-chain",
            "steps": [
                {"id": f"s{i}", "task": "hr-step", **({"depends_on": [f"s{i - 1}"]} if i else {})}
                for i in range(4)
            ],
        }
    )
    e._call(_fill(e._js))
    try:
        yield e
    finally:
        e.stop()


async def _fill(js) -> None:
    """Both test streams: 10 messages on ``t.a`` (with headers) between others on ``t.b``."""
    for name, direct in ((DIRECT, True), (PLAIN, False)):
        subjects = [f"{name.lower()}.>"]
        await js.add_stream(js_api.StreamConfig(name=name, subjects=subjects, allow_direct=direct))
        prefix = name.lower()
        for i in range(10):
            await js.publish(f"{prefix}.a", f"a{i}".encode(), headers={"X-I": str(i)})
            await js.publish(f"{prefix}.b", f"b{i}".encode())


async def _ordered(js, stream: str, subject: str, start_seq: int = 0) -> list[tuple]:
    """What an ordered consumer reads: (seq, subject, data, headers) of every message."""
    info = await js.stream_info(stream, subjects_filter=subject)
    if not (info.state.subjects or {}).get(subject):
        return []
    cfg = {"deliver_policy": js_api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": start_seq}
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=js_api.ConsumerConfig(**cfg) if start_seq else None,
    )
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                break  # nothing from start_seq on
            meta = msg.metadata
            out.append((meta.sequence.stream, msg.subject, msg.data, msg.headers))
            if meta.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


def _read(eng, stream: str, subject: str, start_seq: int = 0, limit=None) -> list[tuple]:
    got = eng._call(reading.read_subject(eng._js, stream, subject, start_seq, limit))
    return [tuple(m) for m in got]


@pytest.fixture
def spy(monkeypatch):
    """Batches of 3, and the reads by the consumer path counted (no stream remembered
    as one without direct gets)."""
    monkeypatch.setattr(reading, "DIRECT_BATCH", 3)
    reading._no_direct.clear()
    calls = []
    real = reading._consumed

    async def counted(*args, **kwargs):
        calls.append(args[1:3])
        return await real(*args, **kwargs)

    monkeypatch.setattr(reading, "_consumed", counted)
    return calls


@pytest.mark.parametrize("stream", [DIRECT, PLAIN])
def test_a_subject_reads_as_the_ordered_consumer_over_batches_of_three(eng, spy, stream):
    subject = f"{stream.lower()}.a"
    want = eng._call(_ordered(eng._js, stream, subject))
    assert len(want) == 10 and want[0][3] == {"X-I": "0"}
    assert _read(eng, stream, subject) == want
    assert spy == ([] if stream == DIRECT else [(stream, subject)])


@pytest.mark.parametrize("stream", [DIRECT, PLAIN])
def test_a_start_sequence_and_a_limit(eng, spy, stream):
    subject = f"{stream.lower()}.a"
    every = eng._call(_ordered(eng._js, stream, subject))
    start = every[4][0]  # a message's own sequence
    assert _read(eng, stream, subject, start) == every[4:]
    assert _read(eng, stream, subject, start + 1) == every[5:]  # between two of ours
    assert eng._call(_ordered(eng._js, stream, subject, start + 1)) == every[5:]
    assert _read(eng, stream, subject, every[-1][0] + 1) == []
    assert _read(eng, stream, subject, limit=4) == every[:4]
    assert _read(eng, stream, subject, start, limit=7) == every[4:]


@pytest.mark.parametrize("stream", [DIRECT, PLAIN])
def test_a_subject_with_no_messages_reads_none(eng, spy, stream):
    assert _read(eng, stream, f"{stream.lower()}.none") == []
    assert eng._call(_ordered(eng._js, stream, f"{stream.lower()}.none")) == []


def test_a_direct_get_that_never_answers_is_a_clear_timeout(eng, monkeypatch):
    monkeypatch.setattr(reading, "WAIT", 0.3)

    async def deaf():  # a responder that swallows the request: no 503, no answer
        return await eng._nc.subscribe(f"{eng._js._prefix}.DIRECT.GET.T_DEAF")

    sub = eng._call(deaf())
    try:
        with pytest.raises(reading.ReadTimeout, match=r"0\.3s reading t\.a of stream T_DEAF"):
            eng._loop.call(reading.read_subject(eng._js, "T_DEAF", "t.a"), None)
    finally:
        eng._call(sub.unsubscribe())


def test_a_stream_without_direct_gets_is_not_asked_again_for_a_while(eng, spy, monkeypatch):
    asked = []
    real = reading._direct

    async def counted(*args, **kwargs):
        asked.append(args[1])
        return await real(*args, **kwargs)

    monkeypatch.setattr(reading, "_direct", counted)
    for stream in (PLAIN, PLAIN, DIRECT, DIRECT):
        _read(eng, stream, f"{stream.lower()}.a")
    assert asked == [PLAIN, DIRECT, DIRECT] and len(spy) == 2
    monkeypatch.setattr(reading, "NO_DIRECT_FOR", 0.0)  # remembered no longer
    assert len(_read(eng, PLAIN, f"{PLAIN.lower()}.a")) == 10
    assert asked[3:] == [PLAIN] and len(spy) == 3


def test_a_server_without_batched_direct_gets_is_read_by_the_consumer(eng, spy):
    """A server < 2.11 answers a batch request with one message, no Nats-Num-Pending and
    no end of batch: the read starts again on the consumer path, nothing twice."""
    subject = f"{PLAIN.lower()}.a"
    want = eng._call(_ordered(eng._js, PLAIN, subject))

    async def old_server():
        async def answer(msg):
            first = {"Nats-Stream": PLAIN, "Nats-Subject": subject, "Nats-Sequence": "1"}
            await eng._nc.publish(msg.reply, b"a0", headers=first)

        return await eng._nc.subscribe(f"{eng._js._prefix}.DIRECT.GET.{PLAIN}", cb=answer)

    sub = eng._call(old_server())
    try:
        assert _read(eng, PLAIN, subject) == want
    finally:
        eng._call(sub.unsubscribe())
    assert spy == [(PLAIN, subject)]


def _history_direct(eng, on: bool) -> None:
    """Turn direct gets on WORKFLOW_HISTORY on or off (what the test compares)."""

    async def update():
        info = await eng._js.stream_info(protocol.HISTORY_STREAM)
        info.config.allow_direct = on
        await eng._js.update_stream(info.config)

    eng._call(update())


def test_events_and_the_restarts_rebuild_are_the_same_on_both_paths(eng, spy):
    run = eng.run("hr-chain", input={"n": 0}, timeout=60)
    assert run.status == "completed"
    subject = protocol.history_subject(run.id)
    want = eng._call(_ordered(eng._js, protocol.HISTORY_STREAM, subject))
    assert len(want) > 3  # more than one batch
    answers = []
    for on in (True, False):
        _history_direct(eng, on)
        spy.clear()
        events = eng.events(run.id)
        history = eng.history(run.id)
        assert [e.seq for e in history] == [w[0] for w in want]
        assert [e.to_wire() for e in history] == [
            protocol.Event.decode(w[2]).to_wire() for w in want
        ]
        assert [e.seq for e in eng.history(run.id, limit=1)] == [want[0][0]]
        state, _ = eng._call(eng.orchestrator._from_history(run.id))
        answers.append((events.to_dict("list"), state.status, state.output))
        used = {s for s in spy if s == (protocol.HISTORY_STREAM, subject)}
        assert bool(used) is not on  # the consumer only without allow_direct
    assert answers[0] == answers[1]
    assert answers[0][1:] == ("completed", {"n": 4})
    assert eng.events("hr-no-such-run").empty
