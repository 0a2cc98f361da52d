#!/usr/bin/env python
"""How long validating and registering a large workflow takes, next to the raw NATS ceiling.

    python benchmarks/register.py [--steps 1000,10000] [--quick]

Issue 16's target: registering and validating a 10,000-step workflow takes at most 2 s.
Prints ONE JSON object on stdout (progress on stderr). For each size and shape (``chain``:
each step after the one before; ``fan``: one step, N - 2 after it, one after them all):

- ``json_bytes``: the definition as the engine stores it (KV ``workflow_defs``), which every
  run's ``workflow.started`` event carries too;
- ``validate_dict_s``, ``validate_json_file_s``, ``validate_yaml_file_s``: ``load_workflow``
  (parse, limits, models, structural rules) of a dict, a .json file and a .yaml file;
- ``cli_validate_s``: ``dagnats workflow validate FILE.yaml`` as a subprocess, wall time,
  next to ``cli_startup_s`` (the same command on a one-step file: the interpreter's start);
- ``register_dict_s``, ``register_yaml_file_s``: ``eng.register`` on an embedded engine
  (validate, hash, KV put, task consumer), each under a new name so it is really stored;
- ``raw_kv_put_s``: nats-py putting the same bytes into a KV bucket of a fresh nats-server
  (what storing costs at least), and ``raw_publish_s``: publishing them to a stream.

``target_met`` says whether every register and validate figure (the command's included,
interpreter start and all) is within 2 s; it is reported, never enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import log, machine_info  # noqa: E402  (benchmarks/engine.py)

import dagnats_nb as dn  # noqa: E402
from dagnats_nb.server.process import EmbeddedServer  # noqa: E402

TARGET_S = 2.0
CLI = [sys.executable, "-m", "dagnats_nb", "workflow", "validate"]
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def chain(n: int, name: str) -> dict[str, Any]:
    steps = [{"id": f"s{i}", "task": "t", "depends_on": [f"s{i - 1}"]} for i in range(1, n)]
    return {"name": name, "version": "1", "steps": [{"id": "s0", "task": "t"}, *steps]}


def fan(n: int, name: str) -> dict[str, Any]:
    middle = [f"w{i}" for i in range(n - 2)]
    steps = [{"id": "start", "task": "t"}]
    steps += [{"id": w, "task": "t", "depends_on": ["start"]} for w in middle]
    steps += [{"id": "end", "task": "t", "depends_on": middle}]
    return {"name": name, "version": "1", "steps": steps}


SHAPES: dict[str, Callable[[int, str], dict[str, Any]]] = {"chain": chain, "fan": fan}


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return round(time.perf_counter() - t, 5)


def cli_seconds(path: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run([*CLI, str(path)], capture_output=True, text=True)
    took = round(time.perf_counter() - t, 5)
    if proc.returncode != 0:
        raise SystemExit(f"dagnats workflow validate {path} failed: {proc.stderr.strip()}")
    return took


async def raw_puts(url: str, blobs: dict[str, bytes]) -> dict[str, dict[str, float]]:
    """Seconds of one KV put and one stream publish of each blob, on a fresh server."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="BENCH_DEFS", history=1)
        await js.add_stream(name="BENCH", subjects=["bench.>"])
        await kv.put("warm", b"x")
        out = {}
        for key, data in blobs.items():
            t = time.perf_counter()
            await kv.put(key, data)
            put = time.perf_counter() - t
            t = time.perf_counter()
            await js.publish("bench.started", data)
            out[key] = {
                "raw_kv_put_s": round(put, 5),
                "raw_publish_s": round(time.perf_counter() - t, 5),
            }
        return out
    finally:
        await nc.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="1000,10000", help="comma-separated sizes")
    ap.add_argument("--quick", action="store_true", help="sizes 100 and 1000")
    args = ap.parse_args()
    sizes = [100, 1000] if args.quick else [int(n) for n in args.steps.split(",")]
    root = Path(tempfile.mkdtemp(prefix="dagnats-bench-register-"))
    result: dict[str, Any] = {"benchmark": "dagnats-nb register and validate", "target_s": TARGET_S}
    rows: list[dict[str, Any]] = []
    try:
        one = root / "one.yaml"
        one.write_text(yaml.safe_dump(chain(1, "one")))
        result["cli_startup_s"] = min(cli_seconds(one) for _ in range(3))
        dn.load_workflow(chain(10, "warm"))  # imports and model schemas built once
        eng = dn.Engine.start(data_dir=root / "engine", llm_enabled=False)
        blobs: dict[str, bytes] = {}
        try:
            eng.register(chain(10, "warm"))
            for n in sizes:
                for shape, build in SHAPES.items():
                    log(f"{shape} of {n} steps")
                    defn = build(n, f"{shape}{n}")
                    as_json, as_yaml = root / f"{shape}{n}.json", root / f"{shape}{n}.yaml"
                    as_json.write_text(json.dumps(defn))
                    as_yaml.write_text(yaml.dump(defn, Dumper=DUMPER))
                    row: dict[str, Any] = {"shape": shape, "steps": n}
                    row["validate_dict_s"] = timed(lambda d=defn: dn.load_workflow(d))
                    row["validate_json_file_s"] = timed(lambda p=as_json: dn.load_workflow(p))
                    row["validate_yaml_file_s"] = timed(lambda p=as_yaml: dn.load_workflow(p))
                    row["cli_validate_s"] = cli_seconds(as_yaml)
                    stored = build(n, f"{shape}{n}-dict")
                    row["register_dict_s"] = timed(lambda d=stored: eng.register(d))
                    other = root / f"{shape}{n}-file.yaml"
                    other.write_text(yaml.dump(build(n, f"{shape}{n}-file"), Dumper=DUMPER))
                    row["register_yaml_file_s"] = timed(lambda p=other: eng.register(p))
                    data = dn.load_workflow(stored).to_json(indent=None).encode()
                    row["json_bytes"] = len(data)
                    blobs[f"{shape}{n}"] = data
                    rows.append(row)
        finally:
            eng.stop()
        log("raw: KV put and publish of the same bytes on a fresh nats-server")
        server = EmbeddedServer(data_dir=root / "raw").start()
        try:
            url = getattr(server, "client_url", None) or server.url
            raw = asyncio.run(raw_puts(url, blobs))
            server_version = server.version
        finally:
            server.stop()
        for row in rows:
            row.update(raw[f"{row['shape']}{row['steps']}"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    judged = ("validate_dict_s", "validate_json_file_s", "validate_yaml_file_s", "cli_validate_s")
    judged += ("register_dict_s", "register_yaml_file_s")
    result["results"] = rows
    result["slowest_s"] = max(row[k] for row in rows for k in judged)
    result["target_met"] = result["slowest_s"] <= TARGET_S
    result["machine"] = machine_info(server_version)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
