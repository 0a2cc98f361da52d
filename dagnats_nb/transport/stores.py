"""Workflow definitions in KV ``workflow_defs``; oversized values in the ``payloads`` store;
reading a bucket's JSON values."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError, ObjectNotFoundError

from dagnats_nb.dag import WorkflowDef, load_workflow
from dagnats_nb.errors import WorkflowError
from dagnats_nb.wire import protocol

_KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
# Room left in a message for the envelope around a value.
ENVELOPE_HEADROOM = 16 * 1024


async def json_values(js: JetStreamContext, bucket: str) -> dict[str, Any]:
    """Every live value of a KV bucket, decoded from JSON, by key (a key deleted while
    reading, or a value that is not JSON, is left out; an empty bucket is ``{}``)."""
    kv = await js.key_value(bucket)
    try:
        keys = await kv.keys()
    except (NotFoundError, NoKeysError):
        return {}
    out: dict[str, Any] = {}
    for key in keys:
        try:
            out[key] = json.loads((await kv.get(key)).value)
        except (KeyNotFoundError, NotFoundError, ValueError, TypeError):
            continue
    return out


def kv_key(name: str) -> str:
    """A KV key for any workflow name (names the KV alphabet cannot hold are base64-encoded)."""
    if _KV_KEY.match(name) and not name.startswith("b64_"):
        return name
    return "b64_" + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def definition_hash(defn: WorkflowDef) -> str:
    canon = json.dumps(defn.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


class DefinitionStore:
    """Registered workflows: ``{name}`` holds the latest, ``{name}.{hash}`` each version run."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv = None
        self._cache: dict[tuple[str, str], WorkflowDef] = {}
        self.latest: dict[str, tuple[str, WorkflowDef]] = {}

    async def _bucket(self):
        if self._kv is None:
            self._kv = await self.js.key_value("workflow_defs")
        return self._kv

    async def put(self, defn: WorkflowDef) -> str:
        h = definition_hash(defn)
        kv = await self._bucket()
        body = defn.to_json(indent=None).encode()
        if (defn.name, h) not in self._cache:
            await kv.put(f"{kv_key(defn.name)}.{h}", body)
        current = self.latest.get(defn.name)
        if current is None or current[0] != h:
            await kv.put(kv_key(defn.name), json.dumps({"hash": h}).encode())
        self._cache[(defn.name, h)] = defn
        self.latest[defn.name] = (h, defn)
        return h

    async def get(self, name: str, h: str | None = None) -> tuple[str, WorkflowDef]:
        """The definition of ``name`` (the latest when ``h`` is None) and its hash."""
        kv = await self._bucket()
        if h is None:
            if name in self.latest:
                return self.latest[name]
            try:
                entry = await kv.get(kv_key(name))
            except (KeyNotFoundError, NotFoundError):
                raise WorkflowError(
                    f"workflow '{name}' is not registered: register it with eng.register(...), "
                    "the %%dagnats cell magic or `dagnats workflow register FILE`"
                ) from None
            h = json.loads(entry.value)["hash"]
        hit = self._cache.get((name, h))
        if hit is not None:
            return h, hit
        try:
            entry = await kv.get(f"{kv_key(name)}.{h}")
        except (KeyNotFoundError, NotFoundError):
            raise WorkflowError(
                f"workflow '{name}' version {h} is missing from KV workflow_defs"
            ) from None
        defn = load_workflow(json.loads(entry.value))
        self._cache[(name, h)] = defn
        return h, defn

    async def names(self) -> list[str]:
        kv = await self._bucket()
        try:
            keys = await kv.keys()
        except (NotFoundError, NoKeysError):
            return []
        out = []
        for k in keys:
            if "." in k:
                continue
            if k.startswith("b64_"):
                pad = "=" * (-len(k[4:]) % 4)
                k = base64.urlsafe_b64decode(k[4:] + pad).decode()
            out.append(k)
        return sorted(out)


class PayloadStore:
    """Keeps values too large for one message in the object store, behind a ``$ref``."""

    def __init__(self, js: JetStreamContext, max_payload: int) -> None:
        self.js = js
        self.limit = max(1024, max_payload - ENVELOPE_HEADROOM)
        self._obj = None

    async def _bucket(self):
        if self._obj is None:
            self._obj = await self.js.object_store(protocol.PAYLOAD_BUCKET)
        return self._obj

    async def put(self, value: Any, prefix: str) -> dict[str, Any]:
        data = json.dumps(value, separators=(",", ":")).encode()
        name = f"{prefix}/{uuid.uuid4().hex}"
        obj = await self._bucket()
        await obj.put(name, data)
        return protocol.make_ref(name, len(data))

    async def shrink(self, value: Any, encoded_len: int, prefix: str) -> Any:
        """``value``, or a reference to it when its encoding is larger than a message allows."""
        if encoded_len <= self.limit:
            return value
        return await self.put(value, prefix)

    async def expand(self, value: Any) -> Any:
        """``value`` with every reference replaced by the value it stands for."""
        if protocol.is_ref(value):
            obj = await self._bucket()
            try:
                res = await obj.get(value["$ref"])
            except ObjectNotFoundError:
                raise WorkflowError(f"stored value {value['$ref']} is missing") from None
            return await self.expand(json.loads(res.data))
        if isinstance(value, dict):
            if not any(isinstance(v, (dict, list)) for v in value.values()):
                return value
            return {k: await self.expand(v) for k, v in value.items()}
        if isinstance(value, list):
            if not any(isinstance(v, (dict, list)) for v in value):
                return value
            return [await self.expand(v) for v in value]
        return value
