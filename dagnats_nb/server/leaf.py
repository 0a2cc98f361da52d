"""Leaf node mode: the ``leafnodes`` part of the embedded server's config and its checks.

- Remotes are checked before the server starts (scheme, host, port), one ConfigError
  naming the bad URL.
- **Leaf credentials**: a path is used as is (it must exist); inline content (``-----BEGIN``)
  is written to a 0600 file in the data_dir, removed when the server stops and when a
  stale one is found at the next start.
- A hub that does not answer now is only reported (:func:`unreachable`): nats-server keeps
  connecting.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from dagnats_nb.errors import ConfigError, ServerError

__all__ = [
    "LEAF_CREDS_FILE",
    "DEFAULT_LEAF_DOMAIN",
    "check_leaf_remotes",
    "leaf_credentials_file",
    "remove_leaf_credentials",
    "leaf_block",
    "unreachable",
]

LEAF_CREDS_FILE = "leaf.creds"
DEFAULT_LEAF_DOMAIN = "dagnats"
_LEAF_SCHEMES = ("nats-leaf", "nats", "tls", "ws", "wss")


def check_leaf_remotes(remotes: list[str]) -> list[str]:
    """The leaf remote URLs, checked: scheme, host and port (ConfigError naming the bad one)."""
    out = []
    for url in remotes:
        parts = urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError:  # not a number, or out of range
            raise ConfigError(
                f"leaf_remotes: {url!r} has a bad port: write {parts.scheme}://HOST:7422"
            ) from None
        if parts.scheme not in _LEAF_SCHEMES or not parts.hostname:
            raise ConfigError(
                f"leaf_remotes: {url!r} is not a leaf node URL: write "
                "nats-leaf://HOST:7422 (or tls://, ws://, wss://)"
            )
        if port is None and parts.scheme in ("nats-leaf", "nats", "tls"):
            raise ConfigError(
                f"leaf_remotes: {url!r} has no port: write {parts.scheme}://"
                f"{parts.hostname}:7422 (the hub's leafnodes port)"
            )
        out.append(url.strip())
    return out


def leaf_credentials_file(value: str | None, data_dir: Path) -> tuple[Path | None, bool]:
    """The creds file a leaf remote uses and whether dagnats wrote it (and must remove it).

    Inline content (``-----BEGIN``) goes to ``data_dir/leaf.creds`` with mode 0600."""
    if not value or not value.strip():
        return None, False
    if value.lstrip().startswith("-----BEGIN"):
        path = data_dir / LEAF_CREDS_FILE
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(value.strip() + "\n")
        return path, True
    path = Path(value).expanduser()
    if not path.is_file():
        raise ServerError(
            f"leaf_credentials: {path} is not a file: give the path of the hub's .creds file, "
            "or its content (-----BEGIN NATS USER JWT-----...)"
        )
    return path.resolve(), False


def remove_leaf_credentials(data_dir: Path) -> None:
    """Remove a credentials file dagnats wrote (at stop, and a stale one at start)."""
    with contextlib.suppress(OSError):
        (data_dir / LEAF_CREDS_FILE).unlink(missing_ok=True)


def leaf_block(remotes: list[str], creds: Path | None, quote) -> list[str]:
    """The ``leafnodes { remotes = [...] }`` lines of the server config."""
    lines = ["leafnodes {", "  remotes = ["]
    for url in remotes:
        entry = f"    {{ url: {quote(url)}"
        if creds is not None:
            entry += f", credentials: {quote(str(creds))}"
        lines.append(entry + " }")
    return [*lines, "  ]", "}"]


def unreachable(remotes: list[str], timeout: float = 1.0) -> list[str]:
    """The remotes no TCP connection reaches now (the server keeps retrying them)."""
    out = []
    for url in remotes:
        parts = urlsplit(url)
        default = {"ws": 80, "wss": 443}.get(parts.scheme, 7422)
        try:
            socket.create_connection((parts.hostname, parts.port or default), timeout).close()
        except OSError:
            out.append(url)
    return out
