"""The embedded nats-server requires the data dir's token (issue 16, item 10): loopback is
shared by every user of the machine, so knowing the port is not enough."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys

import nats
import pytest

import dagnats_nb as dn
from dagnats_nb.errors import ServerError
from dagnats_nb.server.auth import TOKEN_FILE


async def _try(url: str) -> str:
    """ "connected", or what nats-py raised."""
    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()
    return "connected"


def test_a_stranger_who_knows_the_port_cannot_connect(tmp_path):
    data = tmp_path / "e"
    with dn.Engine.start(data_dir=data, llm_enabled=False) as eng:
        token_file = data / TOKEN_FILE
        token = token_file.read_text().strip()
        assert len(token) == 64 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token not in eng.url and token in eng.connect_url
        assert token not in json.dumps(eng.status(), default=str)

        assert "Authorization Violation" in asyncio.run(_try(eng.url))
        assert "Authorization Violation" in asyncio.run(_try(eng.url.replace("//", "//guess@")))
        assert asyncio.run(_try(eng.connect_url)) == "connected"

        # Our own programs find the token through the data dir.
        attached = dn.Engine.connect(data_dir=data)
        try:
            assert attached.status()["connected"] and attached.url == eng.url
        finally:
            attached.stop()
        # A program of ours on another data dir, given only the URL, gets one line.
        with pytest.raises(ServerError) as err:
            dn.Engine.connect(data_dir=tmp_path / "stranger", url=eng.url)
        message = str(err.value)
        assert "\n" not in message and token not in message
        assert f"cannot connect to NATS at {eng.url}: it refused the credentials" in message

        env = {**os.environ, "DAGNATS_DATA_DIR": str(data)}
        out = subprocess.run(
            [sys.executable, "-m", "dagnats_nb", "status", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["connected"] is True
        first_port = eng.url.rsplit(":", 1)[1]

    # The token outlives a restart (a Go worker given the URL and token keeps working).
    with dn.Engine.start(data_dir=data, llm_enabled=False, nats_port=int(first_port)) as again:
        assert token_file.read_text().strip() == token
        assert asyncio.run(_try(again.url)) != "connected"
        assert asyncio.run(_try(again.connect_url)) == "connected"
