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
from nats.js.errors import KeyNotFoundError, NotFoundError, ObjectNotFoundError

from dagnats_nb.dag import WorkflowDef, limits, load_workflow
from dagnats_nb.errors import WorkflowError
from dagnats_nb.wire import protocol

_KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
# Room left in a message for the envelope around a value.
ENVELOPE_HEADROOM = 16 * 1024


async def kv_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The keys of a KV bucket that hold a message (a deleted key's marker too: reading it
    tells), from its stream's subjects, page by page; NotFoundError without the bucket.
    Not nats-py's ``kv.keys()``: its watch can end before the first messages arrive and
    list none (nats-io/nats.py#842), which made tables of triggers or workers empty now
    and then."""
    prefix = f"$KV.{bucket}."
    subjects, _ = await stream_subjects(js, f"KV_{bucket}", prefix + ">")
    return [subject[len(prefix) :] for subject in subjects]


async def stream_subjects(
    js: JetStreamContext, stream: str, subjects_filter: str
) -> tuple[list[str], str | None]:
    """The subjects of ``stream`` matching ``subjects_filter`` that hold a message, asked
    page by page of ``STREAM.INFO``, and the server's time (``ts``) of the first answer;
    NotFoundError without the stream."""
    subjects: list[str] = []
    server_time: str | None = None
    while True:
        req = json.dumps({"subjects_filter": subjects_filter, "offset": len(subjects)}).encode()
        resp = await js._api_request(f"{js._prefix}.STREAM.INFO.{stream}", req, timeout=js._timeout)
        server_time = server_time or resp.get("ts")
        page = (resp.get("state") or {}).get("subjects") or {}
        subjects.extend(page)
        if not page or len(subjects) >= (resp.get("total") or 0):
            return subjects, server_time


async def json_values(js: JetStreamContext, bucket: str) -> dict[str, Any]:
    """Every live value of a KV bucket, decoded from JSON, by key (a key deleted while
    reading, or a value that is not JSON or nested too deep, is left out; an empty bucket
    is ``{}``)."""
    kv = await js.key_value(bucket)
    try:
        keys = await kv_keys(js, bucket)
    except NotFoundError:
        return {}
    out: dict[str, Any] = {}
    for key in keys:
        try:
            out[key] = json.loads((await kv.get(key)).value)
        except (KeyNotFoundError, NotFoundError, ValueError, TypeError, RecursionError):
            continue
    return out


def kv_key(name: str) -> str:
    """A KV key for any workflow name (names the KV alphabet cannot hold are base64-encoded)."""
    if _KV_KEY.match(name) and not name.startswith("b64_"):
        return name
    return "b64_" + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def definition_hash(defn: WorkflowDef, wire: dict[str, Any] | None = None) -> str:
    """The version of ``defn``: a hash of its wire form (``wire``, when built already)."""
    canon = json.dumps(wire or defn.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


_LEGACY_VERSION = re.compile(r"\.[0-9a-f]{16}$")


class DefinitionStore:
    """Registered workflows in KV ``workflow_defs`` as the Go engine keeps them: key = the
    workflow name, value = its definition (Go's JSON form, the latest registered).

    A run does not depend on that key: its ``workflow.started`` event carries the
    definition it follows (``{workflow_def, input}``, as Go writes it, plus our
    ``def_hash``). Data written by dagnats-nb < 0.2 is read too: ``{name}`` holding
    ``{"hash": h}`` and each version under ``{name}.{h}``.
    """

    def __init__(self, js: JetStreamContext, max_payload: int | None = None) -> None:
        self.js = js
        self._kv = None
        self._cache: dict[tuple[str, str], WorkflowDef] = {}
        self._wire: dict[str, dict[str, Any]] = {}  # by hash: the definition as written
        self._sizes: dict[str, int] = {}  # by hash: bytes of the definition as JSON
        self.latest: dict[str, tuple[str, WorkflowDef]] = {}
        self.max_payload = max_payload or js._nc.max_payload  # the server's INFO

    async def _bucket(self):
        if self._kv is None:
            self._kv = await self.js.key_value("workflow_defs")
        return self._kv

    def _remember(self, defn: WorkflowDef, h: str, wire: dict[str, Any] | None = None) -> None:
        self._cache[(defn.name, h)] = defn
        if wire is not None:
            self._wire[h] = wire

    async def put(self, defn: WorkflowDef) -> str:
        """Store ``defn`` as its name's latest definition; its hash. A definition larger
        than a message can carry beside a run's input is a WorkflowError (one line): every
        run's ``workflow.started`` event carries it."""
        wire = defn.to_dict()
        h = definition_hash(defn, wire)
        current = self.latest.get(defn.name)
        if current is None or current[0] != h:
            limits.check_values(wire, "workflow")  # a WorkflowDef built in code: unchecked
            data = json.dumps(wire, ensure_ascii=False).encode()  # defn.to_json(indent=None)
            limit = self.max_payload - ENVELOPE_HEADROOM
            if len(data) > limit:
                steps = f"{len(defn.steps):,} step" + "s" * (len(defn.steps) != 1)
                raise WorkflowError(
                    f"workflow '{defn.name}' is {len(data):,} bytes as JSON ({steps}); each "
                    "run's workflow.started event carries it, and a NATS message here holds "
                    f"{self.max_payload:,} bytes (max_payload) less {ENVELOPE_HEADROOM:,} for "
                    "the event: split it into sub_workflow steps or raise the server's "
                    "max_payload"
                )
            kv = await self._bucket()
            await kv.put(kv_key(defn.name), data)
            self._sizes[h] = len(data)
        self._remember(defn, h, self._wire.get(h, wire))
        self.latest[defn.name] = (h, defn)
        return h

    def size(self, h: str, defn: WorkflowDef) -> int:
        """Bytes of the definition as JSON (what it adds to a ``workflow.started`` event)."""
        size = self._sizes.get(h)
        if size is None:
            size = self._sizes[h] = len(defn.to_json(indent=None).encode())
        return size

    def wire(self, h: str, defn: WorkflowDef) -> dict[str, Any]:
        """The definition as a ``workflow.started`` event carries it (built once a version)."""
        out = self._wire.get(h)
        if out is None:
            out = self._wire[h] = defn.to_dict()
        return out

    async def get(self, name: str, h: str | None = None) -> tuple[str, WorkflowDef]:
        """The definition of ``name`` (the latest when ``h`` is None) and its hash."""
        if h is None and name in self.latest:
            return self.latest[name]
        if h is not None:
            hit = self._cache.get((name, h))
            if hit is not None:
                return h, hit
        kv = await self._bucket()
        try:
            entry = await kv.get(kv_key(name))
        except (KeyNotFoundError, NotFoundError):
            if h is None:
                raise WorkflowError(
                    f"workflow '{name}' is not registered: register it with eng.register(...), "
                    "the %%dagnats cell magic or `dagnats workflow register FILE`"
                ) from None
            entry = None
        if entry is not None:
            raw = _stored(name, entry.value)
            if set(raw) == {"hash"}:  # dagnats-nb < 0.2: a pointer to the version
                return await self._legacy(name, h or raw["hash"])
            defn = load_workflow(raw, allow_unsupported=True)
            latest = definition_hash(defn)
            self._remember(defn, latest)
            if h is None or h == latest:
                return latest, defn
        return await self._legacy(name, h)

    async def _legacy(self, name: str, h: str) -> tuple[str, WorkflowDef]:
        kv = await self._bucket()
        try:
            entry = await kv.get(f"{kv_key(name)}.{h}")
        except (KeyNotFoundError, NotFoundError):
            raise WorkflowError(
                f"workflow '{name}' version {h} is not in KV workflow_defs "
                "(a run's workflow.started event carries the definition it follows)"
            ) from None
        defn = load_workflow(_stored(name, entry.value), allow_unsupported=True)
        self._remember(defn, h)
        return h, defn

    async def for_started(self, payload: Any) -> tuple[str, WorkflowDef]:
        """The definition a ``workflow.started`` payload names, in any shape Go's
        orchestrator accepts (see ``dag.events.start_shape``), and its hash."""
        shape = protocol.start_shape(payload)
        if shape == "def":
            raw = payload["workflow_def"]
            h = payload.get("def_hash") or _raw_hash(raw)
            name = raw.get("name", "") if isinstance(raw, dict) else ""
            hit = self._cache.get((name, h))
            if hit is not None:
                return h, hit
            if not isinstance(raw, dict):
                raise WorkflowError("workflow.started: 'workflow_def' is not an object")
            defn = load_workflow(raw, allow_unsupported=True)
            self._remember(defn, h, raw)
            return h, defn
        if shape == "trigger":
            return await self.get(payload["workflow_id"])
        if shape == "legacy":
            return await self.get(payload["workflow"], payload["def_hash"])
        if not isinstance(payload, dict):
            raise WorkflowError("workflow.started carries no workflow definition")
        defn = load_workflow(payload, allow_unsupported=True)
        h = _raw_hash(payload)
        self._remember(defn, h)
        return h, defn

    def known(self, name: str, h: str) -> WorkflowDef | None:
        """Workflow ``name`` version ``h`` when this process has read or stored it."""
        return self._cache.get((name, h))

    async def for_run(self, run_id: str, workflow: str, h: str = "") -> WorkflowDef:
        """The definition a run follows, for a worker that holds no run state: the version
        its tasks name when seen before, else its ``workflow.started`` event's, else the
        latest registered."""
        hit = self._cache.get((workflow, h)) if h else None
        if hit is not None:
            return hit
        try:
            msg = await self.js.get_msg(
                protocol.HISTORY_STREAM, seq=1, subject=protocol.history_subject(run_id), next=True
            )
            first = protocol.Event.decode(msg.data)
            if first.type == protocol.WORKFLOW_STARTED:
                return (await self.for_started(first.payload))[1]
        except (NotFoundError, ValueError, KeyError):
            pass  # the start aged out of the history: the latest definition it is
        return (await self.get(workflow))[1]

    async def names(self) -> list[str]:
        kv = await self._bucket()
        try:
            keys = await kv_keys(self.js, "workflow_defs")
        except NotFoundError:
            return []
        out = []
        for k in keys:
            if _LEGACY_VERSION.search(k):
                continue
            try:
                await kv.get(k)
            except (KeyNotFoundError, NotFoundError):  # deleted (its marker is left)
                continue
            if k.startswith("b64_"):
                pad = "=" * (-len(k[4:]) % 4)
                k = base64.urlsafe_b64decode(k[4:] + pad).decode()
            out.append(k)
        return sorted(out)


def _stored(name: str, value: bytes | None) -> dict[str, Any]:
    """A KV ``workflow_defs`` value as a JSON object, or a WorkflowError in one line (any
    client may write to the bucket)."""
    try:
        raw = json.loads(value or b"")
    except (ValueError, RecursionError) as exc:
        why = f"not JSON ({exc})" if isinstance(exc, ValueError) else "nested too deep"
    else:
        if isinstance(raw, dict):
            return raw
        why = f"a JSON {type(raw).__name__}, not an object"
    raise WorkflowError(
        f"workflow '{name}' in KV workflow_defs is {why}: register it again"
    ) from None


def _raw_hash(raw: Any) -> str:
    canon = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


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

    async def expand(self, value: Any, run_id: str) -> Any:
        """``value`` of run ``run_id`` with every reference replaced by the value it stands
        for. Only references the engine made for this run (or a run it descends from: a
        sub_workflow's child reads its parent's) are references; any other value of that
        shape — a user's ``{"$ref": ..., "size": ...}`` — is a value like any other, so a
        run's input cannot name another run's stored data."""
        if protocol.is_ref(value) and _owned(value["$ref"], run_id):
            obj = await self._bucket()
            try:
                res = await obj.get(value["$ref"])
            except ObjectNotFoundError:
                raise WorkflowError(f"stored value {value['$ref']} is missing") from None
            return await self.expand(json.loads(res.data), run_id)
        if isinstance(value, dict):
            if not any(isinstance(v, (dict, list)) for v in value.values()):
                return value
            return {k: await self.expand(v, run_id) for k, v in value.items()}
        if isinstance(value, list):
            if not any(isinstance(v, (dict, list)) for v in value):
                return value
            return [await self.expand(v, run_id) for v in value]
        return value


def _owned(name: Any, run_id: str) -> bool:
    """Whether a stored value's name is one the engine gives values of this run (or of an
    ancestor: a child run's id is ``{parent}-{step}``): ``{run}/.../{32 hex digits}``."""
    if not isinstance(name, str) or "/" not in name:
        return False
    owner, _, rest = name.partition("/")
    tail = rest.rpartition("/")[2]
    if len(tail) != 32 or any(c not in "0123456789abcdef" for c in tail):
        return False
    return run_id == owner or run_id.startswith(owner + "-")
