"""The http trigger and respond step of the conformance example http-respond.json answered by
Go's ``dagnats serve`` (its ``echo`` step served by our worker process) and by our engine:
the same request gets the same status, content type and body (but the envelope's timestamp)."""

from __future__ import annotations

import json
import re

import httpx
from goserve import go_binary, go_cli, go_serve  # noqa: F401  (fixtures)
from test_our_workers_on_go import our_worker

import dagnats_nb as dn

ECHO = 'import dagnats_nb as dn\n\n\n@dn.task("echo")\ndef echo(ctx):\n    return ctx.input\n'
STAMP = re.compile(rb'"timestamp":"[^"]*"')


def ask(base_url: str) -> httpx.Response:
    # same headers from both clients (no keep-alive difference): only the stamp differs
    headers = {"X-Trace": "t1", "User-Agent": "interop", "Connection": "close"}
    body = {"name": "web", "n": [1, 2]}
    return httpx.post(f"{base_url}/api/echo?x=1&x=2&a=3", json=body, headers=headers, timeout=30)


def test_go_and_we_answer_http_respond_alike(go_serve, conformance, tmp_path):  # noqa: F811
    example = json.loads((conformance / "http-respond.json").read_text())
    example.pop("$schema", None)  # Go's CLI refuses fields it does not know
    # 30 s, not 5: a loaded machine may take seconds to hand the first task to a new worker
    example["triggers"][0]["http"]["timeout_ms"] = 30_000
    path = tmp_path / "http-respond.json"
    path.write_text(json.dumps(example))
    go_cli(go_serve.url, "workflow", "register", str(path))
    (tmp_path / "pyecho.py").write_text(ECHO)
    with our_worker(tmp_path, "pyecho", "--nats-url", go_serve.url):
        go = ask(go_serve.http)
    assert go.status_code == 200, (go.status_code, go.text)
    assert go.headers["x-dagnats-run-id"]

    eng = dn.Engine.start(data_dir=tmp_path / "ours", http_addr="127.0.0.1:0", llm_enabled=False)
    try:

        @eng.task("echo")
        def echo(ctx):
            return ctx.input

        eng.register(path)
        ours = ask(eng.http_url)
    finally:
        eng.stop()

    assert ours.status_code == go.status_code == 200, ours.text
    assert ours.headers["content-type"] == go.headers["content-type"] == "application/json"
    assert ours.headers["x-dagnats-run-id"]
    assert STAMP.sub(b"", ours.content) == STAMP.sub(b"", go.content), (ours.content, go.content)
    assert json.loads(go.content)["data"]["query"] == {"a": "3", "x": "1"}
