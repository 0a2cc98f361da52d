"""The embedded server's client credential: one random token per data dir.

Loopback is not a boundary on a shared machine (every JupyterHub user shares 127.0.0.1), so
the embedded nats-server refuses clients without the token. It is made at the first start
(256 bits, hex) and kept in ``{data_dir}/nats.token`` (0600, in the 0700 data dir), so a Go
worker or CLI given the URL with the token keeps working across restarts; delete the file to
make a new one at the next start. Every program of ours that finds the engine through its
data dir (``Engine.connect``, ``dagnats worker``, the CLI, backups) reads it from there.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from dagnats_nb.server.files import write_private
from dagnats_nb.transport.connect import with_token

__all__ = ["TOKEN_FILE", "authorization_block", "client_token", "client_url", "read_token"]

TOKEN_FILE = "nats.token"


def read_token(data_dir: str | Path) -> str | None:
    """The data dir's client token (None when there is none, or it is not readable)."""
    try:
        token = (Path(data_dir).expanduser() / TOKEN_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def client_token(data_dir: Path) -> str:
    """The data dir's client token, made (0600) at the first call."""
    token = read_token(data_dir)
    if token is None or not token.isalnum():
        token = secrets.token_hex(32)
        write_private(data_dir / TOKEN_FILE, token + "\n")
    return token


def client_url(url: str, data_dir: str | Path) -> str:
    """``url`` with the data dir's token (``url`` itself when the data dir has none)."""
    token = read_token(data_dir)
    return with_token(url, token) if token else url


def authorization_block(token: str) -> list[str]:
    """The server config lines that make clients present ``token``."""
    return ["authorization {", f'  token: "{token}"', "}"]
