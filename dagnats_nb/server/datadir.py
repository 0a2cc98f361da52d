"""The engine's data directory: one engine per directory (``engine.lock``, held with
``flock`` for the engine's lifetime: the kernel drops it when the process dies, so a crash
never leaves a stale lock), and ``engine.json``, where other processes find the engine.

A leftover ``engine.json`` with a free lock is stale: it is removed, and its server, if it
still runs and is ours (same binary name and config file in its command line), is stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from dagnats_nb.errors import EngineLocked, ServerError
from dagnats_nb.server.auth import client_url
from dagnats_nb.server.files import make_private_dir
from dagnats_nb.transport.connect import without_credentials

ENGINE_JSON = "engine.json"
LOCK_FILE = "engine.lock"


def make_data_dir(path: Path) -> None:
    """The data dir with mode 0700 (one line naming it when that is impossible)."""
    try:
        make_private_dir(path)
    except OSError as exc:
        raise ServerError(
            f"data_dir {path}: cannot create it with mode 0700 ({exc.strerror}); "
            "choose a directory you own"
        ) from exc


def read_engine_info(data_dir: str | Path) -> dict[str, Any] | None:
    """The ``engine.json`` of the engine in ``data_dir`` (None if there is none).

    ``alive`` tells whether a process still holds the data_dir's lock.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    try:
        info = json.loads((data_dir / ENGINE_JSON).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict):
        return None
    info["alive"] = _lock_held(data_dir / LOCK_FILE)
    return info


def require_engine_url(data_dir: str | Path, hint: str = "or pass --data-dir") -> str:
    """The URL of the engine running on ``data_dir``, with the data dir's client token (see
    ``server/auth.py``); a one-line ServerError when none runs there (``hint``: what else
    the caller may do)."""
    info = read_engine_info(data_dir)
    if not info or not info.get("alive"):
        raise ServerError(
            f"no engine is running on {data_dir}: start one with `dagnats serve` or "
            f"Engine.start(), {hint}"
        )
    return engine_client_url(info, data_dir)


def engine_client_url(info: dict[str, Any], data_dir: str | Path) -> str:
    """The URL in ``engine.json`` ``info``, with the data dir's client token."""
    return client_url(info["url"], data_dir)


def acquire_lock(data_dir: Path) -> int:
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    for attempt in range(5):  # read_engine_info() elsewhere may hold a shared lock briefly
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt < 4:
                time.sleep(0.02)
    else:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if not holder.isdigit():
            info = read_engine_info(data_dir) or {}
            holder = str(info.get("pid", "unknown"))
        this = ", this process" if holder == str(os.getpid()) else ""
        raise EngineLocked(
            f"data_dir {data_dir} is in use by another engine (pid {holder}{this}): stop that "
            "engine, or use another data_dir, or attach to it with Engine.connect"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _lock_held(lock_path: Path) -> bool:
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def clean_stale(data_dir: Path, conf_path: Path) -> None:
    """Remove the engine.json of a crashed engine and stop its server if it still runs."""
    info_path = data_dir / ENGINE_JSON
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        info = {}
    server_pid = info.get("server_pid") if isinstance(info, dict) else None
    stopped = ""
    if isinstance(server_pid, int) and _is_our_server(server_pid, conf_path):
        _kill(server_pid, grace=2.0)
        stopped = f"; stopped its nats-server (pid {server_pid})"
    info_path.unlink(missing_ok=True)
    owner = info.get("pid", "unknown") if isinstance(info, dict) else "unknown"
    warnings.warn(f"cleaned stale engine.json left by pid {owner}{stopped}", stacklevel=3)


def _is_our_server(pid: int, conf_path: Path) -> bool:
    if not pid_alive(pid):
        return False
    try:
        if Path("/proc").is_dir():
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        else:
            cmd = subprocess.run(
                ["ps", "-o", "command=", "-p", str(pid)], capture_output=True
            ).stdout
    except OSError:
        return False
    text = cmd.decode(errors="replace")
    return "nats-server" in text.split(" -c ")[0] and str(conf_path) in text


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _kill(pid: int, grace: float) -> None:
    """SIGTERM ``pid`` (not our child), then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.02)


def own_client_url(url: str | None, data_dir: str | Path) -> str:
    """The URL to connect to: the engine's on ``data_dir`` when ``url`` is None (see
    :func:`require_engine_url`); ``url`` as given, or, when it is the URL of the engine on
    ``data_dir`` and carries no credentials, with that data dir's token."""
    if url is None:
        return require_engine_url(data_dir)
    if without_credentials(url) != url:
        return url
    info = read_engine_info(data_dir)
    if info and info.get("url") == url:
        return engine_client_url(info, data_dir)
    return url
