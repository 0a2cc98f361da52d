"""HTTP triggers: a request to ``/api/...`` starts a run and gets the run's ``respond`` step
as its reply, as the Go engine's (``internal/trigger/http.go``) does.

The triggers are Go's records in KV ``triggers``: ``{"id", "workflow_id", "enabled",
"http": {"path", "method", "timeout_ms", "max_body_bytes", "secret"?,
"idempotency_header"?}}`` (``path`` is the full path, e.g. ``/api/echo``). Only enabled
ones are served, by path and method. The table is cached, read again when KV ``triggers``
changes (the bucket's subjects are watched) and, at most once a second, when a path is not
in it. A record Go would refuse (method not GET/POST/PUT/PATCH/DELETE, a path without a
leading ``/`` or with ``*``, a secret under 16 characters...) is not served; one line says
why in the log.

Per request (statuses as Go's):

- no enabled trigger at the path: 404; another method: 405; a body over ``max_body_bytes``
  (default 1 MiB): 413; with a ``secret``, no valid ``X-Signature-256: sha256=<hex
  HMAC-SHA256 of the body>``: 401 (compared in constant time);
- a new run, whose input is Go's envelope ``{"trigger": "http", "source": trigger id,
  "workflow_id", "timestamp", "data": {"method", "path", "query", "headers", "body":
  base64}}`` (first values, Go's header names, sorted as Go writes maps; empty parts left
  out). ``dagnats.http.response.{run}`` and ``history.{run}`` are subscribed (core NATS)
  before the run starts;
- the respond step's message → its status, headers, content type and body bytes;
  ``workflow.failed`` first → 500 ``{"error": "workflow_failed", "run_id"}``;
  ``workflow.cancelled`` → 503 (``workflow_cancelled``); nothing within ``timeout_ms``
  (default 30 s) → 504 (``workflow_timeout``): also when the workflow has no respond step
  (Go's answer), and the run goes on. Every one of these carries ``X-Dagnats-Run-Id``.
- ``idempotency_header``: the first request with a value claims it for its run in KV
  ``http_idempotency`` (``claim.{trigger}.{value}`` = run id; 1 h TTL, as Go); a request
  with the same value starts nothing and gets that run's reply (stored as
  ``result.{run}``), or waits for it. A value KV cannot hold starts a fresh run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from dagnats_nb.adapters.http.hooks import verify
from dagnats_nb.adapters.http.server import Raw, Reply, Request, Route
from dagnats_nb.errors import DagnatsError, RunError
from dagnats_nb.facade.runs import new_run_id
from dagnats_nb.runtime.triggers import BUCKET, TriggerStore, trigger_kind
from dagnats_nb.wire import protocol
from dagnats_nb.wire.resources import BucketSpec

if TYPE_CHECKING:
    from dagnats_nb.facade.engine import Engine

log = logging.getLogger("dagnats_nb.adapters.http.http_triggers")

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")  # Go's allowed trigger methods
# routed here too, so that an unknown path under /api/ is a 404 whatever the method
ROUTED = (*METHODS, "OPTIONS")
BODY_CEILING = 64 << 20  # the largest body read at all; each trigger's limit is checked after
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_MAX_BODY = 1 << 20
SECRET_MIN = 16  # Go's httpConfigSecretMinLen
REFRESH_EVERY = 1.0  # at most one KV re-read per second for a path not in the table
RUN_ID_HEADER = "X-Dagnats-Run-Id"
SIGNATURE_HEADER = "x-signature-256"
IDEMPOTENCY = BucketSpec("http_idempotency", ttl=3600.0)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NOT_FORWARDED = {"host", "transfer-encoding"}  # Go keeps these out of Request.Header
_OURS = {"content-length", "content-type", "connection", "transfer-encoding", "x-dagnats-run-id"}


@dataclass(frozen=True, slots=True)
class HTTPTrigger:
    """One enabled http trigger, its defaults filled in."""

    id: str
    workflow: str
    path: str
    method: str
    timeout: float  # seconds
    max_body: int
    secret: str | None = None
    idempotency_header: str | None = None


def _positive(spec: Mapping[str, Any], key: str, default: int) -> int:
    value = spec.get(key)
    if value is None or value == 0:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def parse_trigger(rec: Mapping[str, Any]) -> HTTPTrigger:
    """The http trigger of a record; ValueError (one line) for one Go would not serve."""
    spec = rec.get("http")
    if not isinstance(spec, Mapping):
        raise ValueError("http config missing")
    path = spec.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with /")
    if "*" in path:
        raise ValueError(f"path {path!r} contains a wildcard (not supported)")
    method = spec.get("method")
    if method not in METHODS:
        raise ValueError(f"method {method!r} not allowed; valid: {' '.join(METHODS)}")
    secret = spec.get("secret") or None
    if secret is not None and (not isinstance(secret, str) or len(secret) < SECRET_MIN):
        raise ValueError(f"secret must be a string of at least {SECRET_MIN} characters")
    header = spec.get("idempotency_header") or None
    if header is not None and (not isinstance(header, str) or not _TOKEN.match(header)):
        raise ValueError(f"idempotency_header {header!r} is not a valid header name")
    return HTTPTrigger(
        id=str(rec.get("id", "")),
        workflow=str(rec.get("workflow_id", "")),
        path=path,
        method=method,
        timeout=_positive(spec, "timeout_ms", DEFAULT_TIMEOUT_MS) / 1000,
        max_body=_positive(spec, "max_body_bytes", DEFAULT_MAX_BODY),
        secret=secret,
        idempotency_header=header,
    )


def trigger_table(
    records: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, dict[str, HTTPTrigger]], list[str]]:
    """The enabled http triggers by path, then method; and one line per record not served
    (a bad config, or a path and method another trigger has: the first id keeps it)."""
    table: dict[str, dict[str, HTTPTrigger]] = {}
    problems: list[str] = []
    for rec in sorted(records, key=lambda r: str(r.get("id", ""))):
        if trigger_kind(dict(rec)) != "http" or rec.get("enabled") is not True:
            continue
        try:
            trig = parse_trigger(rec)
        except ValueError as exc:
            problems.append(f"http trigger '{rec.get('id')}' is not served: {exc}")
            continue
        methods = table.setdefault(trig.path, {})
        taken = methods.get(trig.method)
        if taken is not None:
            problems.append(
                f"http trigger '{trig.id}' is not served: {trig.method} {trig.path} "
                f"belongs to trigger '{taken.id}'"
            )
            continue
        methods[trig.method] = trig
    return table, problems


def canonical_header(name: str) -> str:
    """A header name as Go's ``CanonicalMIMEHeaderKey`` writes it: ``Content-Type``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def envelope(trigger: HTTPTrigger, request: Request, now: datetime | None = None) -> dict:
    """Go's trigger envelope of an HTTP request: the run's input."""
    data: dict[str, Any] = {"method": request.method, "path": unquote(request.path)}
    if request.query:  # sorted, as Go writes a map
        data["query"] = dict(sorted(request.query.items()))
    given = request.headers.items()
    headers = dict(sorted((canonical_header(k), v) for k, v in given if k not in _NOT_FORWARDED))
    if headers:
        data["headers"] = headers
    if request.body:
        data["body"] = base64.b64encode(request.body).decode()
    stamp = (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    return {
        "trigger": "http",
        "source": trigger.id,
        "workflow_id": trigger.workflow,
        "timestamp": stamp,
        "data": data,
    }


def _error(status: int, code: str, run_id: str, **more: Any) -> Reply:
    return status, {"error": code, "run_id": run_id, **more}, {RUN_ID_HEADER: run_id}


def response_reply(message: bytes, run_id: str) -> Raw | Reply:
    """The HTTP reply of a respond step's message ``{"status", "headers", "content_type",
    "body": base64}`` (502 for one that is not that)."""
    try:
        payload = json.loads(message)
        body = base64.b64decode(payload.get("body") or "", validate=True)
        status = int(payload.get("status") or 200)
        given = payload.get("headers") or {}
        kind = payload.get("content_type") or ""
        if not 100 <= status <= 599 or not isinstance(given, dict) or not isinstance(kind, str):
            raise ValueError("status, headers or content_type out of shape")
    except (ValueError, TypeError, AttributeError):
        return _error(502, "malformed_response", run_id)
    headers = {}
    for name, value in given.items():
        if name.lower() == "content-type" and isinstance(value, str) and not kind:
            kind = value
        if _header_ok(name, value) and name.lower() not in _OURS:
            headers[name] = value
    if not kind:  # Go's net/http would sniff it
        kind = "text/plain; charset=utf-8" if _is_text(body) else "application/octet-stream"
    if not _header_ok("content-type", kind):
        kind = "application/octet-stream"
    return Raw(status, body, kind, {**headers, RUN_ID_HEADER: run_id})


def _header_ok(name: Any, value: Any) -> bool:
    if not isinstance(name, str) or not isinstance(value, str) or not _TOKEN.match(name):
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any(c in value for c in "\r\n\0")


_BINARY = set(range(0x09)) | {0x0B} | set(range(0x0E, 0x1B)) | set(range(0x1C, 0x20))


def _is_text(body: bytes) -> bool:
    """Text as Go's ``DetectContentType`` sees it: UTF-8 without its binary bytes."""
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return not _BINARY.intersection(body[:512])


class HTTPTriggers:
    """``/api/{path...}`` on an engine: trigger lookup (cached), checks, run, reply."""

    def __init__(self, engine: Engine) -> None:
        self.eng = engine
        self._table: dict[str, dict[str, HTTPTrigger]] = {}
        self._stale = True
        self._loaded_at = float("-inf")
        self._watch: Any = None
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()
        self._idkv: Any = None

    def routes(self) -> dict[tuple[str, str], Route]:
        return {(m, "/api/{path...}"): Route(self.handle, max_body=BODY_CEILING) for m in ROUTED}

    async def _changed(self, msg: Any) -> None:
        self._stale = True

    async def _reload(self) -> None:
        asked = time.monotonic()
        async with self._lock:
            if self._loaded_at > asked and not self._stale:
                return  # another request read the table meanwhile
            if self._watch is None:  # watched first, so no change is missed
                self._watch = await self.eng._nc.subscribe(f"$KV.{BUCKET}.>", cb=self._changed)
            self._stale = False
            self._loaded_at = time.monotonic()
            records = await TriggerStore(self.eng._js).all()
            table, problems = trigger_table(rec for rec, _ in records.values())
            for line in problems:
                if line not in self._warned:
                    self._warned.add(line)
                    log.warning("%s", line)
            self._table = table

    async def lookup(self, path: str) -> dict[str, HTTPTrigger]:
        """The enabled http triggers at ``path`` by method (empty: none)."""
        if self._stale:
            await self._reload()
        found = self._table.get(path)
        if found is None and time.monotonic() - self._loaded_at >= REFRESH_EVERY:
            await self._reload()
            found = self._table.get(path)
        return found or {}

    async def handle(self, request: Request) -> Reply | Raw:
        path = unquote(request.path)
        try:
            methods = await self.lookup(path)
        except Exception as exc:  # NATS down: the table cannot be read
            return 503, {"error": f"cannot read the http triggers: {type(exc).__name__}: {exc}"}
        if not methods:
            return 404, {"error": f"no http trigger at {path}"}
        trigger = methods.get(request.method)
        if trigger is None:
            allow = ", ".join(sorted(methods))
            message = f"method {request.method} not allowed on {path}: use {allow}"
            return 405, {"error": message}, {"Allow": allow}
        if len(request.body) > trigger.max_body:
            return 413, {"error": f"request body larger than {trigger.max_body} bytes"}
        if trigger.secret and not verify(
            trigger.secret, request.body, request.headers.get(SIGNATURE_HEADER)
        ):
            return 401, {
                "error": "missing or invalid signature: send X-Signature-256: sha256=<hex "
                "HMAC-SHA256 of the raw body with the trigger's secret>"
            }
        return await self.dispatch(trigger, request)

    async def dispatch(self, trigger: HTTPTrigger, request: Request) -> Reply | Raw:
        """Start the run (or join the one a same idempotency key started) and await it."""
        run_id, replay = new_run_id(), False
        key = self._idempotency_key(trigger, request)
        if key is not None:
            run_id, replay = await self._claim(key, run_id)
        nc = self.eng._nc
        answer: asyncio.Future = asyncio.get_running_loop().create_future()

        def settle(kind: str, data: bytes) -> None:
            if not answer.done():
                answer.set_result((kind, data))

        async def on_response(msg: Any) -> None:
            settle("response", msg.data)

        async def on_history(msg: Any) -> None:
            with contextlib.suppress(ValueError, AttributeError):
                kind = json.loads(msg.data).get("type")
                if kind in (protocol.WORKFLOW_FAILED, protocol.WORKFLOW_CANCELLED):
                    settle(kind, b"")

        async def replayed() -> None:  # the first request's reply, once it is stored
            stored = await self._stored(run_id, trigger.timeout)
            if stored is not None:
                settle("replay", stored)

        subs, poll = [], None
        try:
            subs.append(await nc.subscribe(protocol.response_subject(run_id), cb=on_response))
            subs.append(await nc.subscribe(protocol.history_subject(run_id), cb=on_history))
            await nc.flush()
            if replay:
                poll = asyncio.ensure_future(replayed())
            else:
                try:
                    await self.eng._start_run(
                        trigger.workflow, envelope(trigger, request), run_id=run_id
                    )
                except RunError as exc:
                    return _error(503, "workflow_not_started", run_id, reason=str(exc))
                except DagnatsError as exc:
                    return _error(500, "workflow_not_started", run_id, reason=str(exc))
                log.info("http trigger %s %s started run %s", trigger.method, trigger.path, run_id)
            try:
                kind, data = await asyncio.wait_for(asyncio.shield(answer), trigger.timeout)
            except TimeoutError:
                return _error(504, "workflow_timeout", run_id)
        finally:
            if poll is not None:
                poll.cancel()
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        if kind == protocol.WORKFLOW_FAILED:
            return _error(500, "workflow_failed", run_id)
        if kind == protocol.WORKFLOW_CANCELLED:
            return _error(503, "workflow_cancelled", run_id)
        if key is not None and kind == "response":
            await self._store(run_id, data)
        return response_reply(data, run_id)

    # -- idempotency (KV http_idempotency, Go's keys) -------------------------------------

    @staticmethod
    def _idempotency_key(trigger: HTTPTrigger, request: Request) -> str | None:
        if not trigger.idempotency_header:
            return None
        value = request.headers.get(trigger.idempotency_header.lower(), "")
        return f"claim.{trigger.id}.{value}" if value else None

    async def _bucket(self) -> Any:
        if self._idkv is None:
            js = self.eng._js
            try:
                self._idkv = await js.key_value(IDEMPOTENCY.name)
            except BucketNotFoundError:  # made as Go makes it (1 h TTL)
                with contextlib.suppress(Exception):
                    await js.add_stream(IDEMPOTENCY.config())
                self._idkv = await js.key_value(IDEMPOTENCY.name)
        return self._idkv

    async def _claim(self, key: str, run_id: str) -> tuple[str, bool]:
        """The run that holds ``key`` (True), else ``run_id``, which now holds it (False). A KV
        that fails, or a value it cannot hold in a key, gives a fresh run (as Go)."""
        try:
            kv = await self._bucket()
            held = await self._holder(kv, key)
            if held:
                return held, True
            try:
                await kv.create(key, run_id.encode())
                return run_id, False
            except Exception:  # another request claimed it first, or KV refuses the key
                held = await self._holder(kv, key)
                if held:
                    return held, True
                raise
        except Exception as exc:
            log.warning("http idempotency key %r not usable (%s): a fresh run", key, exc)
        return run_id, False

    @staticmethod
    async def _holder(kv: Any, key: str) -> str | None:
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        return entry.value.decode() if entry.value else None

    async def _stored(self, run_id: str, timeout: float) -> bytes | None:
        """The stored reply of ``run_id``, polled (25 ms doubling to 500 ms) up to ``timeout``."""
        deadline, every = time.monotonic() + timeout, 0.025
        while True:
            with contextlib.suppress(Exception):
                entry = await (await self._bucket()).get(f"result.{run_id}")
                if entry.value:
                    return entry.value
            if time.monotonic() + every >= deadline:
                return None
            await asyncio.sleep(every)
            every = min(every * 2, 0.5)

    async def _store(self, run_id: str, data: bytes) -> None:
        try:
            await asyncio.wait_for((await self._bucket()).put(f"result.{run_id}", data), 2)
        except Exception as exc:  # the reply is sent anyway; only a replay runs again
            log.warning("http idempotency: reply of run %s not stored: %s", run_id, exc)
