"""/health and /ready over HTTP, including during replay and after the server dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import nats
from conftest import until

import dagnats_nb as dn
from dagnats_nb.wire import protocol


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_and_ready_answer_200_on_a_running_engine(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", http_addr="127.0.0.1:0") as eng:
        assert eng.http_url.startswith("http://127.0.0.1:")
        status, body = get(eng.http_url + "/health")
        assert status == 200 and body["status"] == "healthy"
        status, body = get(eng.http_url + "/ready")
        assert status == 200 and body["status"] == "ready"
        assert body["components"] == {
            "server": True,
            "resources": True,
            "orchestrator": True,
            "workers": True,
        }
        assert get(eng.http_url + "/nope")[0] == 404


def test_http_is_off_unless_asked(engine):
    assert engine.http_url is None


def test_ready_is_503_while_replay_runs_then_200(tmp_path):
    data = tmp_path / "e"
    with dn.Engine.start(data_dir=data) as eng:

        async def fill(n: int) -> None:
            nc = await nats.connect(eng.connect_url)
            js = nc.jetstream()
            body = protocol.Event(
                type=protocol.STEP_COMPLETED, run_id="ghost", step_id="s"
            ).encode()
            for _ in range(n // 1000):
                acks = [await js.publish_async("history.ghost", body) for _ in range(1000)]
                await asyncio.gather(*acks)
            await nc.close()

        asyncio.run(fill(60_000))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    box: dict = {}

    def start() -> None:
        box["eng"] = dn.Engine.start(data_dir=data, http_addr=f"127.0.0.1:{port}")

    starter = threading.Thread(target=start)
    starter.start()
    seen = []
    try:
        while starter.is_alive():
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                seen.append(get(url + "/ready"))  # fails until it listens
            time.sleep(0.01)  # paces the sampling of /ready for as long as the start lasts
        starter.join()
        not_ready = [b for s, b in seen if s == 503]
        assert not_ready, seen
        replaying = [b for b in not_ready if "replaying history" in b["reason"]]
        assert replaying, not_ready
        assert replaying[0]["reason"].startswith("waiting for orchestrator")
        assert replaying[0]["components"]["orchestrator"] is False
        assert get(url + "/ready")[0] == 200
    finally:
        starter.join()
        if "eng" in box:
            box["eng"].stop()


def test_health_is_503_after_the_server_is_killed(tmp_path):
    eng = dn.Engine.start(data_dir=tmp_path / "e", http_addr="127.0.0.1:0")
    try:
        os.kill(eng.server.pid, signal.SIGKILL)

        def unhealthy():
            status, body = get(eng.http_url + "/health")
            return body if status == 503 else None

        body = until(unhealthy, every=0.1, what="/health to answer 503")
        assert body["status"] == "unhealthy"
        assert "NATS" in body["reason"] or "JetStream" in body["reason"]
        status, body = get(eng.http_url + "/ready")
        assert status == 503 and body["status"] == "not ready"
    finally:
        eng.stop()
