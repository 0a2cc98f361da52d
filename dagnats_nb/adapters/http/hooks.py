"""Webhook triggers: ``POST /hooks/{path}`` starts a run of the workflow whose ``triggers``
hold ``{"id": ..., "webhook": {"path": ..., "secret"?: ...}}``, with the JSON body as input.

The raw body must carry an HMAC-SHA256 signature (``X-Dagnats-Signature: sha256=<hex>``, or
GitHub's ``X-Hub-Signature-256``) made with the trigger's secret, else the ``webhook_secret``
setting (``DAGNATS_WEBHOOK_SECRET``); it is compared in constant time. A trigger with no
secret anywhere is off (404). Replies: 202 ``{"run_id", "workflow", "trigger"}``; 401 without
a valid signature; 400 for a body that is not JSON, or not one a run's input can be (NaN,
Infinity, nested 255 deep or more, integers beyond 64 bits, lone surrogates); 413 over
``webhook_max_body``.

A ``X-Dagnats-Delivery`` (or ``X-GitHub-Delivery``) header made of letters, digits, ``-`` and
``_`` becomes the run id, so a delivery sent twice starts one run (the second gets 200 with
``"duplicate": true``).

The pure parts (signature, trigger index, body, delivery id) are plain functions; the
``Webhooks`` class is the I/O edge on the engine loop.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagnats_nb.adapters.http.server import BodyError, Reply, Request, Route, read_json
from dagnats_nb.dag import WorkflowDef
from dagnats_nb.errors import DagnatsError, RunError, WorkflowError
from dagnats_nb.wire import protocol

if TYPE_CHECKING:
    from dagnats_nb.facade.engine import Engine

log = logging.getLogger("dagnats_nb.adapters.http.hooks")

SIGNATURE_HEADERS = ("x-dagnats-signature", "x-hub-signature-256")
DELIVERY_HEADERS = ("x-dagnats-delivery", "x-github-delivery")
REFRESH_EVERY = 1.0  # at most one KV re-read per second when a path is not known
_DELIVERY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class HookError(DagnatsError):
    """A webhook request the engine cannot use (answered with 400)."""


@dataclass(frozen=True, slots=True)
class Hook:
    """One webhook trigger: its path (no leading or trailing ``/``), workflow and secret."""

    path: str
    workflow: str
    trigger_id: str
    secret: str | None = None


def hook_path(path: str) -> str:
    """A trigger's or a request's path, compared without leading and trailing slashes."""
    return path.strip("/")


def webhook_index(defs: Iterable[WorkflowDef]) -> tuple[dict[str, Hook], list[str]]:
    """The webhook triggers of ``defs`` by path, and one line per path claimed twice (the
    workflow first by name keeps it). Triggers with ``"enabled": false`` are left out."""
    index: dict[str, Hook] = {}
    problems: list[str] = []
    for defn in sorted(defs, key=lambda d: d.name):
        for trig in defn.triggers or []:
            spec = trig.get("webhook")
            if not isinstance(spec, Mapping) or trig.get("enabled") is False:
                continue
            path = hook_path(str(spec.get("path", "")))
            secret = spec.get("secret") or None
            hook = Hook(path, defn.name, str(trig.get("id", "")), secret)
            taken = index.get(path)
            if taken is not None:
                problems.append(
                    f"webhook path /hooks/{path} of workflow '{defn.name}' trigger "
                    f"'{hook.trigger_id}' is already used by workflow '{taken.workflow}': "
                    "give one of them another path"
                )
                continue
            index[path] = hook
    return index, problems


def sign(secret: str, body: bytes) -> str:
    """The signature header value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature(headers: Mapping[str, str]) -> str | None:
    """The signature a request carries (names lower-case), ours first, else GitHub's."""
    for name in SIGNATURE_HEADERS:
        if headers.get(name):
            return headers[name]
    return None


def verify(secret: str, body: bytes, given: str | None) -> bool:
    """True when ``given`` is the signature of ``body`` under ``secret`` (constant time)."""
    if not given or not secret:
        return False
    scheme, _, digest = given.strip().partition("=")
    if scheme.lower() != "sha256":
        return False
    expected = sign(secret, body)[len("sha256=") :].encode()
    return hmac.compare_digest(expected, digest.lower().encode())


def parse_body(body: bytes) -> Any:
    """The run's input: the body as JSON. A HookError (one line, answered with 400) for a
    body that is not JSON, or is JSON a run's input cannot be: NaN or Infinity, nesting
    deeper than the wire's 255 levels, integers beyond 64 bits, lone surrogates."""
    try:
        value = read_json(body, "webhook body", _INPUT_RULE, constants=False)
    except BodyError as exc:
        raise HookError(str(exc)) from None
    try:
        protocol.dumps(value)  # what the run's workflow.started event will carry
    except (TypeError, ValueError) as exc:
        why = str(exc).split("\n")[0] or type(exc).__name__
        raise HookError(f"webhook body cannot be a run's input ({why}): {_INPUT_RULE}") from None
    return value


_INPUT_RULE = (
    "send a JSON document (Content-Type: application/json) with finite numbers, integers of "
    "at most 64 bits, text without lone surrogates, nested less than 255 deep"
)


def delivery_run_id(headers: Mapping[str, str]) -> str | None:
    """The delivery id to use as run id (letters, digits, ``-``, ``_``; at most 128), or None."""
    for name in DELIVERY_HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return value if _DELIVERY.match(value) else None
    return None


def _error(status: int, message: str) -> Reply:
    return status, {"error": message}


class Webhooks:
    """``POST /hooks/{path...}`` on an engine: trigger lookup (cached), check, start."""

    def __init__(self, engine: Engine) -> None:
        self.eng = engine
        self._index: dict[str, Hook] = {}
        self._seen: tuple | None = None  # the registered versions the index was built from
        self._stored: dict[str, WorkflowDef] = {}  # read from KV on the last refresh
        self._refreshed_at = float("-inf")
        self._warned: set[str] = set()

    def routes(self) -> dict[tuple[str, str], Route]:
        limit = int(self.eng.settings.webhook_max_body)
        return {("POST", "/hooks/{path...}"): Route(self.handle, max_body=limit)}

    def _rebuild(self) -> None:
        latest = {name: defn for name, (_, defn) in self.eng.defs.latest.items()}
        index, problems = webhook_index({**self._stored, **latest}.values())
        for line in problems:
            if line not in self._warned:
                self._warned.add(line)
                log.warning(line)
        self._index = index

    async def lookup(self, path: str) -> Hook | None:
        """The webhook trigger at ``path``: from the workflows registered here (rebuilt when
        one is registered), else from KV ``workflow_defs`` (re-read at most once a second)."""
        seen = tuple(sorted((n, h) for n, (h, _) in self.eng.defs.latest.items()))
        if seen != self._seen:
            self._seen = seen
            self._rebuild()
        hook = self._index.get(path)
        now = time.monotonic()
        if hook is None and now - self._refreshed_at >= REFRESH_EVERY:
            self._refreshed_at = now
            stored = {}
            for name in await self.eng.defs.names():
                try:
                    stored[name] = (await self.eng.defs.get(name))[1]
                except DagnatsError as exc:
                    log.warning("webhooks: %s", exc)
            self._stored = stored
            self._rebuild()
            hook = self._index.get(path)
        return hook

    def secret_of(self, hook: Hook) -> str | None:
        """The trigger's own secret, else the ``webhook_secret`` setting."""
        return hook.secret or self.eng.settings.webhook_secret or None

    async def handle(self, request: Request) -> Reply:
        eng = self.eng
        if eng.orchestrator is None or not eng._started.get("orchestrator"):
            return _error(503, "the engine is starting: try again in a moment")
        path = hook_path(request.params.get("path", ""))
        hook = await self.lookup(path)
        secret = self.secret_of(hook) if hook is not None else None
        if hook is None or not secret:
            if hook is not None and hook.path not in self._warned:
                self._warned.add(hook.path)
                log.warning(
                    "webhook /hooks/%s (workflow '%s' trigger '%s') is off: it has no secret; "
                    "set DAGNATS_WEBHOOK_SECRET or the trigger's webhook.secret",
                    path,
                    hook.workflow,
                    hook.trigger_id,
                )
            return _error(404, f"no webhook at /hooks/{path}")
        if not verify(secret, request.body, signature(request.headers)):
            log.info("webhook /hooks/%s: request without a valid signature refused", path)
            return _error(
                401,
                "missing or invalid signature: send X-Dagnats-Signature: sha256=<hex "
                "HMAC-SHA256 of the raw body with the webhook secret>",
            )
        try:
            value = parse_body(request.body)
        except HookError as exc:
            return _error(400, str(exc))
        run_id = delivery_run_id(request.headers)
        body = {"run_id": run_id, "workflow": hook.workflow, "trigger": hook.trigger_id}
        if run_id is not None and await eng._run_known(run_id):
            return 200, {**body, "duplicate": True}
        try:
            run = await eng._start_run(hook.workflow, value, run_id=run_id, exists_ok=True)
        except WorkflowError as exc:
            return _error(404, str(exc))
        except RunError as exc:
            return _error(503, str(exc))
        log.info("webhook /hooks/%s started run %s of '%s'", path, run.id, hook.workflow)
        return 202, {**body, "run_id": run.id}
