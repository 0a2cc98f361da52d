"""Real nats-server processes for the cluster and leaf-node tests: a JetStream cluster of N
servers on loopback (``cluster { routes }``), or one hub server with a leaf node port.

Each server gets free ports, its own store dir and log in a temp dir, and an HTTP monitoring
port used to wait for the JetStream meta leader (``/jsz``). ``kill(i)`` sends SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nats
from conftest import until

from dagnats_nb.server.process import find_nats_server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Node:
    """One nats-server process."""

    name: str
    dir: Path
    port: int
    http_port: int
    conf: str
    proc: subprocess.Popen | None = None
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "server.conf"
        conf.write_text(self.conf)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(find_nats_server()), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as a crashed machine."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def jsz(self) -> dict:
        url = f"http://127.0.0.1:{self.http_port}/jsz"
        with urllib.request.urlopen(url, timeout=1) as resp:
            return json.loads(resp.read())

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return json.loads(resp.read()).get("status") == "ok"
        except (OSError, ValueError):
            return False

    def wait_port(self, timeout: float = 10.0) -> None:
        def listens() -> bool:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            return False

        until(listens, timeout=timeout, every=0.05, what=f"{self.name} to listen on {self.port}")


# Clients without credentials land in APP (JetStream on); SYS, the system account, may ask
# for a meta leader stepdown.
ACCOUNTS = """accounts {
  SYS { users = [ { user: sys, password: sys } ] }
  APP { jetstream: enabled, users = [ { user: app, password: app } ] }
}
system_account: SYS
no_auth_user: app"""


class Cluster:
    """``size`` clustered JetStream servers on loopback (``n1``..``nN``)."""

    def __init__(self, base: Path, size: int = 3, name: str = "dagnats-test") -> None:
        self.name = name
        ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{c}" for _, _, c in ports)
        self.nodes = []
        for i, (port, http, cport) in enumerate(ports, 1):
            d = base / f"n{i}"
            conf = "\n".join(
                [
                    f"server_name: n{i}",
                    f'listen: "127.0.0.1:{port}"',
                    f'http: "127.0.0.1:{http}"',
                    f'jetstream {{ store_dir: "{d}", max_file_store: 8GB, '
                    "max_memory_store: 256MB }",
                    f'cluster {{ name: {name}, listen: "127.0.0.1:{cport}", routes: [{routes}] }}',
                    ACCOUNTS,
                    "",
                ]
            )
            self.nodes.append(Node(f"n{i}", d, port, http, conf, extra={"cluster": cport}))

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """All servers' URLs, comma-separated (the form ``nats_url`` takes)."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> Cluster:
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_port()
        self.wait_meta_leader(timeout)
        return self

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name, as a live server reports it."""
        for n in self.nodes:
            if not n.alive:
                continue
            with contextlib.suppress(OSError, ValueError):
                leader = (n.jsz().get("meta_cluster") or {}).get("leader")
                if leader:
                    return leader
        return None

    def wait_meta_leader(self, timeout: float = 30.0) -> str:
        return until(self.meta_leader, timeout=timeout, every=0.1, what="a JetStream meta leader")

    def stepdown_meta(self, preferred: str) -> None:
        """Ask the JetStream meta leader to hand over to ``preferred`` (as the system user)."""

        async def ask() -> None:
            live = [n.url for n in self.nodes if n.alive]
            nc = await nats.connect(live, user="sys", password="sys")
            try:
                body = json.dumps({"placement": {"preferred": preferred}}).encode()
                await nc.request("$JS.API.META.LEADER.STEPDOWN", body, timeout=5)
            finally:
                await nc.close()

        asyncio.run(ask())

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live server's ``/healthz`` is ok (each stream and consumer it holds
        has a leader and is current)."""
        until(
            lambda: all(n.healthy() for n in self.nodes if n.alive),
            timeout=timeout,
            every=0.1,
            what="every live server healthy",
        )

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def by_port(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def hub(base: Path, jetstream: bool = False, auth: str = "") -> Node:
    """A single server with a leaf node port (``extra["leaf"]``): the hub of leaf tests.
    ``auth`` is config text placed at the top level (accounts, operator, resolver)."""
    port, http, leaf = free_port(), free_port(), free_port()
    lines = [
        "server_name: hub",
        f'listen: "127.0.0.1:{port}"',
        f'http: "127.0.0.1:{http}"',
        f'leafnodes {{ listen: "127.0.0.1:{leaf}" }}',
    ]
    if jetstream:
        lines.append(f'jetstream {{ store_dir: "{base / "hub"}", domain: hub }}')
    if auth:
        lines.append(auth)
    return Node("hub", base / "hub", port, http, "\n".join([*lines, ""]), extra={"leaf": leaf})
