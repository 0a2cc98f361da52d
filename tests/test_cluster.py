"""Beyond one machine, on real nats-server processes: an R3 cluster that loses a server
mid-run, and the embedded server as a leaf node of a hub whose worker takes its tasks."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections import Counter
from pathlib import Path

import nats
import pytest
from conftest import until
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats_cluster import Cluster, hub
from nats_jwt import operator_setup
from test_server import listening, non_loopback_ip

import dagnats_nb as dn
from dagnats_nb.errors import ConfigError, ServerError
from dagnats_nb.server.datadir import read_engine_info
from dagnats_nb.server.process import EmbeddedServer
from dagnats_nb.transport.jetstream import jetstream
from dagnats_nb.wire import protocol, resources

ROOT = Path(__file__).resolve().parent.parent
LOG_ENV = "DAGNATS_TEST_WORKER_LOG"  # tests/worker_tasks.py records its calls there
CREDS = (
    "-----BEGIN NATS USER JWT-----\neyJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n"
    "------END NATS USER JWT------\n\n"
    "-----BEGIN USER NKEY SEED-----\nSUAEXAMPLEEXAMPLEEXAMPLE\n------END USER NKEY SEED------\n"
)


class WorkerChild:
    """``dagnats worker tests.worker_tasks:echo`` in a child process."""

    def __init__(self, url: str, log: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagnats_nb", "worker", "tests.worker_tasks:echo"]
            + ["--nats-url", url, "--worker-id", "child", *extra],
            cwd=ROOT,
            env={**os.environ, LOG_ENV: str(log)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout: float = 30) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if "ready:" not in line:
            self.proc.kill()
            raise AssertionError(f"worker not ready: {line!r} {self.proc.stderr.read()[-2000:]}")
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def calls_in(log: Path) -> Counter:
    """(run_id, step_id) -> how many times the worker child ran it."""
    if not log.exists():
        return Counter()
    return Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())


# -- an R3 cluster losing a server -----------------------------------------------------------


CHAIN = {
    "name": "chain",
    "steps": [
        {"id": "a", "task": "inc"},
        {"id": "b", "task": "echo", "depends_on": ["a"]},
        {"id": "c", "task": "inc_echo", "depends_on": ["b"]},
    ],
}


@pytest.fixture
def cluster(tmp_path):
    with Cluster(tmp_path / "cluster", size=3) as c:
        yield c


def test_r3_cluster_loses_a_server_mid_run_and_every_run_completes(cluster, tmp_path):
    with pytest.raises(ConfigError, match="nats_jetstream_replicas = 5: NATS at .* cannot place"):
        dn.Engine.start(data_dir=tmp_path / "x", nats_url=cluster.url, nats_jetstream_replicas=5)
    # A deployment first made with one replica, then moved to three (streams, KV, objects).
    dn.Engine.start(data_dir=tmp_path / "x", nats_url=cluster.url, llm_enabled=False).stop()
    eng = dn.Engine.start(
        data_dir=tmp_path / "e",
        nats_url=cluster.url,
        nats_jetstream_replicas=3,
        ack_wait="2s",
        llm_enabled=False,
    )
    log = tmp_path / "worker.log"
    child = WorkerChild(cluster.url, log)
    calls: Counter = Counter()
    lock = threading.Lock()

    def counted(ctx, n):
        with lock:
            calls[(ctx.run_id, ctx.step_id)] += 1
        time.sleep(0.15)  # simulated work: keeps runs under way when the server is killed
        return {"n": n + 1}

    try:
        assert eng.server is None and eng.url == cluster.url
        cluster.wait_healthy()  # the replicas added to the first deployment's streams
        eng.add_handler("inc", lambda ctx: counted(ctx, ctx.input["n"]), concurrency=3)
        eng.add_handler("inc_echo", lambda ctx: counted(ctx, ctx.input["echo"]["n"]), concurrency=3)
        eng.register(CHAIN)
        assert "echo (x4)" in child.wait_ready() and cluster.url in child.proc.args

        # Every stream, bucket and the payload store is replicated three times.
        names = [s.name for s in resources.STREAMS] + [b.stream for b in resources.BUCKETS]
        names += [
            f"OBJ_{protocol.PAYLOAD_BUCKET}",
            resources.SNAPSHOTS.name,
            resources.ENGINES.stream,
        ]
        infos = {n: eng._call(eng._js.stream_info(n)) for n in names}
        for name, info in infos.items():
            assert info.config.num_replicas == 3, name
            assert len(info.cluster.replicas or []) == 2, name

        # The normal case: no step runs twice.
        first = [eng.start_run("chain", {"n": i}) for i in range(6)]
        for i, run in enumerate(first):
            assert run.wait(30).status == "completed"
            assert run.output == {"n": i + 2}
        ids = {r.id for r in first}
        assert sorted(v for k, v in calls.items() if k[0] in ids) == [1] * 12
        assert sorted(v for k, v in calls_in(log).items() if k[0] in ids) == [1] * 6

        # Kill (SIGKILL) the leader of WORKFLOW_HISTORY while 30 runs are under way.
        runs = [eng.start_run("chain", {"n": i}) for i in range(30)]
        until(
            lambda: sum(1 for k in calls if k[0] not in ids) >= 10,
            timeout=20,
            what="ten steps of the second batch to start",
        )
        # The victim hosts the orchestrator's history consumer (an R1 ordered consumer), the
        # history stream's leader and the JetStream meta leader (moved there if need be).
        engine_on = eng._nc.connected_url.port
        consumer = eng.orchestrator._sub._consumer
        info = eng._call(eng._js.consumer_info(protocol.HISTORY_STREAM, consumer))
        victim = cluster.node(info.cluster.leader)
        move_leaders(eng, cluster, victim.name)
        killed_at, killed_wall = time.monotonic(), time.time()
        victim.kill()
        unfinished = {r.id for r in runs if eng.run_state(r.id)["status"] == "running"}
        assert len(unfinished) >= 10, "the workload ended before the kill: make it longer"

        for i, run in enumerate(runs):
            assert run.wait(60).status == "completed", (run.id, eng.run_state(run.id))
            assert run.output == {"n": i + 2}
        recovery = time.monotonic() - killed_at
        cluster.wait_healthy()  # every stream and consumer has its leader again
        # The orchestrator's consumer died with its server: nats-py made a new one, from the
        # last sequence the orchestrator got.
        assert eng.orchestrator._sub._consumer != consumer

        # Every step ran; a second run of a step happens only for a task whose ack went to
        # the dead server and was lost (redelivered after ack_wait): tasks done just before
        # the kill or under way then, about as many as were in flight (3 + 4 + 3).
        ran = {(r.id, s) for r in runs for s in ("a", "c")}
        assert ran <= set(calls)
        assert {(r.id, "b") for r in runs} <= set(calls_in(log))
        again = [k for k, v in (calls + calls_in(log)).items() for _ in range(v - 1)]
        ended = {r: eng.run_state(r)["state"].ended_at - killed_wall for r, _ in again}
        assert all(t > -2 for t in ended.values()), (ended, again)
        twice = len(again)
        assert twice <= 2 * (3 + 4 + 3), again

        # The orchestrator applied each history event exactly once: its per-run event count
        # equals the run's messages in WORKFLOW_HISTORY.
        for run in runs:
            state = eng.run_state(run.id)["state"]
            assert state.event_count == len(eng.history(run.id)), run.id

        # The engine (server None) still answers status and health.
        status = eng.status()
        assert status["connected"] and status["url"] == cluster.url
        # The workers list is read with a KV watch; just after the failover that read can
        # come back empty once, so it is read until both heartbeats show (TTL is 60 s).
        until(
            lambda: {w["worker_id"] for w in eng.status()["workers"]} >= {"child", eng.worker_id},
            timeout=15,
            every=0.5,
            what="both workers in status() after the failover",
        )
        assert not eng.health().empty
        print(
            f"\nkilled {victim.name}; all runs done {recovery:.1f} s later; {twice} task(s) "
            f"ran twice; engine connected to {engine_on} then {eng._nc.connected_url.port}; "
            f"publishes sent again: {eng._js.resent}"
        )
    finally:
        child.stop()
        eng.stop()


def move_leaders(eng: dn.Engine, cluster: Cluster, server: str) -> None:
    """Make ``server`` the leader of WORKFLOW_HISTORY and of the JetStream meta group."""
    body = json.dumps({"placement": {"preferred": server}}).encode()

    subject = "$JS.API.STREAM.LEADER.STEPDOWN." + protocol.HISTORY_STREAM

    def history_leader_moved() -> bool:
        if eng._call(eng._js.stream_info(protocol.HISTORY_STREAM)).cluster.leader == server:
            return True
        eng._call(eng._nc.request(subject, body, timeout=5))
        return False

    def meta_leader_moved() -> bool:
        if cluster.meta_leader() == server:
            return True
        cluster.stepdown_meta(server)
        return False

    # every=0.3: a step-down asked again before the election ends would be refused
    until(history_leader_moved, timeout=15, every=0.3, what=f"the history leader on {server}")
    until(meta_leader_moved, timeout=15, every=0.3, what=f"the meta leader on {server}")


def test_replicas_on_a_single_server_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="nats_jetstream_replicas = 3: NATS at nats://127"):
        dn.Engine.start(data_dir=tmp_path / "e", nats_jetstream_replicas=3)
    assert read_engine_info(tmp_path / "e") is None  # its embedded server was stopped


def test_nats_url_that_does_not_answer_is_one_line(tmp_path):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"nats://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    with pytest.raises(ServerError, match=f"cannot connect to NATS at {url}"):
        dn.Engine.start(data_dir=tmp_path / "e", nats_url=url)


# -- publishes retried -----------------------------------------------------------------------


def test_a_publish_without_a_stream_yet_is_sent_again_until_stored(tmp_path):
    """ "No responders" (no stream captures the subject yet, as while a cluster elects a
    leader) and a lost ack (someone else took the message) both lead to the same message,
    same id, sent again: stored once when the stream is there."""

    async def check(url: str) -> None:
        nc = await nats.connect(url)
        try:
            js = jetstream(nc)
            js.ack_timeout = 0.5
            with pytest.raises(NoStreamResponseError):  # what plain nats-py does
                await nc.jetstream().publish("late.a", b"x", headers={"Nats-Msg-Id": "a"})
            first = await js.publish_async("late.a", b"1", headers={"Nats-Msg-Id": "m1"})
            swallow = await nc.subscribe("void.b")  # takes the message, never answers
            second = await js.publish_async("void.b", b"2", headers={"Nats-Msg-Id": "m2"})
            # The swallowed message arrives a second time: the sweep sent it again (and, in
            # the same pass, the first one, which no stream took). Neither is stored yet.
            assert (await swallow.next_msg(timeout=5)).headers["Nats-Msg-Id"] == "m2"
            assert (await swallow.next_msg(timeout=5)).headers["Nats-Msg-Id"] == "m2"
            assert js.resent >= 2
            assert not first.done() and not second.done()
            await swallow.unsubscribe()
            await nc.jetstream().add_stream(name="LATE", subjects=["late.>", "void.>"])
            acks = await asyncio.wait_for(asyncio.gather(first, second), 5)
            assert sorted(a.seq for a in acks) == [1, 2] and {a.stream for a in acks} == {"LATE"}
            assert js.resent >= 2
            again = await js.publish_async("late.a", b"1", headers={"Nats-Msg-Id": "m1"})
            assert (await again).duplicate
            info = await nc.jetstream().stream_info("LATE")
            assert info.state.messages == 2
            # A publish no stream ever stores fails after publish_deadline.
            js.publish_deadline = 1.0
            lost = await js.publish_async("nowhere.c", b"3", headers={"Nats-Msg-Id": "m3"})
            with pytest.raises(nats.errors.TimeoutError):
                await asyncio.wait_for(lost, 5)
            # A stream that refuses the message (full: a 503 with an error code) fails at
            # once, never retried.
            await nc.jetstream().add_stream(
                name="TINY", subjects=["tiny.>"], max_bytes=64, discard="new"
            )
            sent = await nc.subscribe("tiny.>")  # sees every send of a message, first or again
            resent = js.resent
            full = await js.publish_async("tiny.e", b"5" * 200, headers={"Nats-Msg-Id": "m5"})
            with pytest.raises(APIError):
                await asyncio.wait_for(full, 5)
            with pytest.raises(APIError):
                await js.publish("tiny.f", b"6" * 200, headers={"Nats-Msg-Id": "m6"})
            await nc.flush()
            assert js.resent == resent and sent.pending_msgs == 2  # each sent once only
            # Without a message id nothing is retried: nats-py's behaviour.
            plain = await js.publish_async("nowhere.d", b"4")
            with pytest.raises(NoStreamResponseError):
                await asyncio.wait_for(plain, 5)
        finally:
            await nc.close()

    with EmbeddedServer(data_dir=tmp_path / "s") as server:
        asyncio.run(check(server.client_url))


# -- leaf node mode --------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["hub-without-jetstream", "hub-with-jetstream"])
def hub_node(request, tmp_path):
    node = hub(tmp_path / "hub", jetstream=request.param)
    node.start()
    node.wait_port()
    node.jetstream = request.param
    yield node
    node.stop()


def leaf_url(node) -> str:
    return f"nats-leaf://127.0.0.1:{node.extra['leaf']}"


def test_a_worker_on_the_hub_takes_the_leaf_engines_tasks(hub_node, tmp_path):
    eng = dn.Engine.start(data_dir=tmp_path / "e", leaf_remotes=[leaf_url(hub_node)], ack_wait="2s")
    log = tmp_path / "worker.log"
    child = WorkerChild(hub_node.url, log, "--set", "jetstream_domain=dagnats")
    try:
        assert eng.server.domain == "dagnats"
        conf = eng.server.conf_path.read_text()
        assert 'domain: "dagnats"' in conf and leaf_url(hub_node) in conf
        info = read_engine_info(eng.settings.data_dir)
        assert info["leaf_remotes"] == [leaf_url(hub_node)]
        assert info["jetstream_domain"] == "dagnats"
        eng.register({"name": "via-hub", "steps": [{"id": "e", "task": "echo"}]})
        ready = child.wait_ready()
        assert hub_node.url in ready

        run = eng.run("via-hub", {"x": 1}, timeout=30)
        assert run.status == "completed"
        assert run.output == {"echo": {"x": 1}, "pid": child.proc.pid}
        assert calls_in(log) == Counter({(run.id, "e"): 1})
        events = eng.events(run.id)
        done = events[events["type"] == "step.completed"]
        assert list(done["worker_id"]) == ["child"]
        # Its registration (a KV write from the hub, through the domain mapping) arrived.
        assert "child" in {w["worker_id"] for w in eng.status()["workers"]}
        asyncio.run(_hub_sees_only_the_domain(hub_node))
    finally:
        child.stop()
        eng.stop()


async def _hub_sees_only_the_domain(node) -> None:
    """Hub clients reach the engine's JetStream by its domain, never by the plain API."""
    nc = await nats.connect(node.url)
    try:
        info = await nc.jetstream(domain="dagnats").stream_info(protocol.HISTORY_STREAM)
        assert info.state.messages > 0
        with pytest.raises((NotFoundError, ServiceUnavailableError, nats.errors.NoRespondersError)):
            await nc.jetstream(timeout=2).stream_info(protocol.HISTORY_STREAM)
    finally:
        await nc.close()


def connects(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1) as sock:
            return sock.makefile("rb").readline().startswith(b"INFO ")
    except OSError:
        return False


def test_leaf_mode_listens_on_all_interfaces_and_standalone_on_loopback(tmp_path):
    ip = non_loopback_ip()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        leaf = EmbeddedServer(
            data_dir=tmp_path / "leaf", leaf_remotes=["nats-leaf://127.0.0.1:9"], monitor_port=0
        ).start()
    try:
        alone = EmbeddedServer(data_dir=tmp_path / "alone").start()
        try:
            # 0.0.0.0 (Go may make it a dual-stack [::] socket): the wildcard address only
            (wildcard,) = listening(leaf.port)
            assert set(wildcard) == {"0"}, wildcard
            assert listening(alone.port) == ["0100007F"]  # 127.0.0.1
            assert listening(leaf.monitor_port) == ["0100007F"]  # monitoring stays local
            assert leaf.url == f"nats://127.0.0.1:{leaf.port}"
            for addr in filter(None, ("127.0.0.2", ip)):
                assert connects(addr, leaf.port), addr
                assert not connects(addr, alone.port), addr
        finally:
            alone.stop()
    finally:
        leaf.stop()
    # A hub that does not answer at start: the engine runs locally, one warning names it.
    messages = [str(w.message) for w in caught]
    assert any("nats-leaf://127.0.0.1:9 does not answer now" in m for m in messages), messages


def test_a_hub_that_comes_up_later_gets_the_leaf(tmp_path):
    node = hub(tmp_path / "hub")  # its ports are chosen; it is not started yet
    with pytest.warns(UserWarning, match=f"the hub at {leaf_url(node)} does not answer now"):
        eng = dn.Engine.start(data_dir=tmp_path / "e", leaf_remotes=[leaf_url(node)])
    try:
        eng.add_handler("shout", lambda ctx: ctx.input.upper())
        run = eng.run({"name": "local", "steps": [{"id": "s", "task": "shout"}]}, "hi")
        assert run.status == "completed" and run.output == "HI"  # no hub needed
        node.start()
        node.wait_port()
        leafs = until(
            lambda: leafz(node)["leafs"], every=0.1, what="the leaf to connect to the late hub"
        )
        assert leafs[0]["name"] == eng.server.server_name
    finally:
        eng.stop()
        node.stop()


def test_inline_credentials_become_a_private_file_removed_at_stop(tmp_path):
    data_dir = tmp_path / "e"
    data_dir.mkdir(mode=0o700)
    stale = data_dir / "leaf.creds"
    stale.write_text("left by a crashed engine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = EmbeddedServer(
            data_dir=data_dir, leaf_remotes=["nats-leaf://127.0.0.1:9"], leaf_credentials=CREDS
        ).start()
    try:
        creds = server.leaf_creds
        assert creds == data_dir / "leaf.creds"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert creds.read_text() == CREDS.strip() + "\n"
        assert f'credentials: "{creds}"' in server.conf_path.read_text()
        assert server.running
    finally:
        server.stop()
    assert not creds.exists()
    # A standalone start removes a stale file too.
    stale.write_text("left by a crashed engine")
    with EmbeddedServer(data_dir=data_dir) as server:
        assert not stale.exists() and "leafnodes" not in server.conf_path.read_text()


def leafz(node) -> dict:
    url = f"http://127.0.0.1:{node.http_port}/leafz"
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def test_leaf_authenticates_to_an_operator_mode_hub_with_inline_creds(tmp_path):
    """A hub with real accounts (operator JWT, preloaded account): the inline .creds of a
    user of that account gets the leaf in; a user of an unknown account does not."""
    conf, creds, account = operator_setup()
    _, stranger, _ = operator_setup()
    node = hub(tmp_path / "hub", auth=conf)
    node.start()
    node.wait_port()
    try:
        for value, admitted in ((creds, True), (stranger, False)):
            eng = dn.Engine.start(
                data_dir=tmp_path / f"e-{admitted}",
                leaf_remotes=[leaf_url(node)],
                leaf_credentials=value,
                llm_enabled=False,
            )
            try:
                file = eng.server.leaf_creds
                assert stat.S_IMODE(file.stat().st_mode) == 0o600 and file.read_text() == value

                def admitted_or_refused(eng=eng):
                    leafs = leafz(node)["leafs"] or []
                    log = eng.server.log_path.read_text()
                    return (leafs, log) if leafs or "Authorization Violation" in log else None

                leafs, log = until(admitted_or_refused, every=0.05, what="the hub to decide")
                if admitted:
                    assert [leaf["account"] for leaf in leafs] == [account]
                else:
                    assert leafs == [] and "Authorization Violation" in log
            finally:
                eng.stop()
            assert not file.exists()
    finally:
        node.stop()


def test_a_credentials_path_is_used_as_is_and_kept(tmp_path):
    path = tmp_path / "hub.creds"
    path.write_text(CREDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = EmbeddedServer(
            data_dir=tmp_path / "e",
            leaf_remotes=["nats-leaf://127.0.0.1:9"],
            leaf_credentials=str(path),
            jetstream_domain="edge1",
        ).start()
    with server:
        assert server.leaf_creds == path.resolve()
        conf = server.conf_path.read_text()
        assert f'credentials: "{path.resolve()}"' in conf and 'domain: "edge1"' in conf
    assert path.exists() and not (tmp_path / "e" / "leaf.creds").exists()


@pytest.mark.parametrize(
    "remotes, message",
    [
        (["hub:7422"], "leaf_remotes: 'hub:7422' is not a leaf node URL"),
        (["http://hub:7422"], "leaf_remotes: 'http://hub:7422' is not a leaf node URL"),
        (["nats-leaf://hub"], "leaf_remotes: 'nats-leaf://hub' has no port"),
        (["nats-leaf://hub:99999"], "leaf_remotes: 'nats-leaf://hub:99999' has a bad port"),
    ],
)
def test_bad_leaf_remote_is_one_line(tmp_path, remotes, message):
    with pytest.raises(ConfigError, match=message):
        dn.Engine.start(data_dir=tmp_path / "e", leaf_remotes=remotes)
    assert not (tmp_path / "e" / "engine.json").exists()


def test_missing_credentials_file_is_one_line(tmp_path):
    missing = tmp_path / "nope.creds"
    with pytest.raises(ServerError, match=f"leaf_credentials: {missing} is not a file"):
        EmbeddedServer(
            data_dir=tmp_path / "e",
            leaf_remotes=["nats-leaf://127.0.0.1:9"],
            leaf_credentials=str(missing),
        ).start()
    assert read_engine_info(tmp_path / "e") is None
