"""The built-in ``llm`` task type: a step with ``task: llm`` and its options in ``config``.

``config``: ``prompt`` (a template, see :mod:`.templates`), ``model``, ``system``,
``temperature``, ``max_tokens``, ``response_format`` (``text`` or ``json``), ``stream``,
``provider`` (``openai`` or ``simulated``). Output: ``{"text": ...}`` or ``{"json": ...}``
with ``model``, ``usage`` (``prompt_tokens``, ``completion_tokens``), ``latency_ms`` and
``finish_reason``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dagnats_nb.runtime.handlers import Handler, Permanent, TaskContext, make_handler
from dagnats_nb.wire import protocol

from ..config import Settings
from ..dag import WorkflowDef
from ..dag.cachekey import code_version
from ..dag.model import MAP_KEYS, StepDef
from ..dag.planner import planner_config
from ..dag.validate import problem, workflow_error
from .providers import ChatRequest, Completion, OpenAIProvider, Provider, ProviderError
from .ratelimit import RateLimiter
from .simulator import SimulatedProvider, SimulatorSettings
from .telemetry import CallRecorder
from .templates import TemplateError, fields, render

TASK = "llm"
PROVIDERS = ("openai", "simulated")
ResolveDef = Callable[[str, str, str], Awaitable[WorkflowDef]]  # run id, workflow, def hash
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class LLMOptions(BaseModel):
    """The options of one ``llm`` step, from its ``config``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    system: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    response_format: Literal["text", "json"] = "text"
    stream: bool = False
    provider: Literal["openai", "simulated"] | None = None


PLANNER_KEYS = ("max_steps", "max_depth", "allowed_tasks")


def plan_instructions(step: StepDef) -> str:
    """What a planner step asks of the model after its prompt: the reply's form and bounds."""
    max_steps, max_depth, allowed = planner_config(step)
    tasks = ", ".join(allowed) if allowed else "any task a worker serves"
    depth = f"; no chain longer than {max_depth} steps" if max_depth else ""
    return (
        '\n\nReply with JSON only: {"steps": [{"id": "...", "task": "...", "depends_on": '
        '["..."], "config": {...}}]}, a plan of at most '
        f"{max_steps} steps{depth}. Allowed tasks: {tasks}. An llm step needs "
        '"config": {"prompt": "..."}.'
    )


def plan_reply(value: Any, model: str) -> dict[str, Any]:
    """A planner's reply as its output, ``{"steps": [...]}``; BadReply when it is not."""
    if not isinstance(value, dict) or not isinstance(value.get("steps"), list):
        raise BadReply(f'reply of {model} is not a plan {{"steps": [...]}}: {str(value)[:2000]}')
    return {"steps": value["steps"]}


class BadReply(Exception):  # noqa: N818 - retriable: the next reply may be fine
    """The model's reply is not what the step asked for (e.g. not JSON)."""


def default_provider(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """``llm_provider``, else openai when a base URL or API key is set, else simulated."""
    env = os.environ if env is None else env
    if settings.llm_provider:
        return settings.llm_provider
    if settings.llm_base_url or settings.llm_api_key or env.get("OPENAI_API_KEY", "").strip():
        return "openai"
    return "simulated"


class BadOptions(Permanent):
    """An llm step's ``config`` is invalid; ``why`` says how, without the step's name."""

    def __init__(self, step_id: str, why: str) -> None:
        super().__init__(f"step '{step_id}' (task llm): config {why}")
        self.why = why


def parse_options(step: StepDef) -> LLMOptions:
    """The step's llm options; a bad config is a :class:`Permanent` naming the step."""
    config = dict(step.config or {})
    if step.type == "map":
        config = {k: v for k, v in config.items() if k not in MAP_KEYS}
    if step.type == "planner":
        config = {k: v for k, v in config.items() if k not in PLANNER_KEYS}
    try:
        return LLMOptions.model_validate(config)
    except ValidationError as exc:
        why = "; ".join(
            f"'{'.'.join(map(str, e['loc'])) or 'config'}': {e['msg']}" for e in exc.errors()
        )
        known = ", ".join(LLMOptions.model_fields)
        raise BadOptions(step.id, f"{why} (llm options: {known})") from None


def check_workflow(defn: WorkflowDef) -> list[str]:
    """Problems of the workflow's ``llm`` steps, one line each: invalid options, malformed
    templates, and template fields that are neither ``input`` nor a dependency."""
    problems = []
    for step in defn.steps:
        if step.task != TASK:
            continue
        try:
            opts = parse_options(step)
        except BadOptions as exc:
            problems.append(problem(defn.name, step.id, "config", exc.why))
            continue
        names = {"input"}
        if step.type != "map":
            names |= set(step.depends_on)
        for key in ("system", "prompt"):
            text = getattr(opts, key)
            try:
                paths = fields(text) if text else []
            except TemplateError as exc:
                problems.append(problem(defn.name, step.id, f"config.{key}", str(exc)))
                continue
            for path in paths:
                root = path.split(".")[0]
                if root not in names:
                    problems.append(
                        problem(
                            defn.name,
                            step.id,
                            f"config.{key}",
                            f"template field '{path}': '{root}' is neither 'input' nor a "
                            f"dependency of the step (it can use {', '.join(sorted(names))})",
                        )
                    )
    return problems


def template_scope(step: StepDef, value: Any) -> dict[str, Any]:
    """Names a template can use: ``input``, and the parents' outputs by step id."""
    scope: dict[str, Any] = {"input": value}
    if step.type != "map":
        if len(step.depends_on) == 1:
            scope.setdefault(step.depends_on[0], value)
        elif isinstance(value, dict):
            for dep in step.depends_on:
                if dep in value:
                    scope.setdefault(dep, value[dep])
    return scope


def parse_json_reply(text: str, model: str) -> Any:
    """The reply as JSON (a fenced ```json block is accepted); else :class:`BadReply`."""
    fenced = _FENCE.match(text)
    try:
        return json.loads(fenced.group(1) if fenced else text)
    except ValueError as exc:
        raise BadReply(f"reply of {model} is not JSON ({exc}): {text[:2000]}") from None


class LLMService:
    """Providers, rate limits and telemetry of one engine, and the ``llm`` handler."""

    def __init__(
        self,
        settings: Settings,
        nc: Any,
        js: Any,
        worker_id: str,
        resolve_def: ResolveDef,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.worker_id = worker_id
        self.resolve_def = resolve_def
        self.recorder = CallRecorder(js)
        self.default = default_provider(settings)
        self._providers: dict[str, Provider] = {}
        self._limiters: dict[str, RateLimiter] = {}
        self._options: dict[tuple[int, str], tuple[WorkflowDef, StepDef, LLMOptions]] = {}
        self.cache_on = False  # llm steps cached by default (llm_cache, see handler())

    def handler(self, concurrency: int | None = None) -> Handler:
        """The ``llm`` task's handler: cached by default when ``cache_on`` (the step's
        ``metadata.cache`` decides first; a ``temperature`` above 0 only when it asks)."""
        h = make_handler(
            TASK,
            self.handle,
            concurrency or self.settings.llm_concurrency,
            cache=self.cache_on,
            version=llm_version(),
        )
        h.cache_scope, h.cache_served = self.cache_scope, self.cache_served
        return h

    def cache_scope(self, step: StepDef) -> tuple[bool, dict[str, Any]]:
        """Whether an llm step is cached unless it says, and what its key covers beyond
        its config: the resolved model and provider (the defaults when the step names
        none), system, prompt template, temperature, max_tokens, response_format, and the
        provider's endpoint (openai) or seed (simulated)."""
        opts = parse_options(step)
        name = opts.provider or self.default
        extra: dict[str, Any] = {
            "model": opts.model or self.settings.llm_model,
            "provider": name,
            "system": opts.system,
            "prompt": opts.prompt,
            "temperature": opts.temperature,
            "max_tokens": opts.max_tokens,
            "response_format": opts.response_format,
        }
        if step.type == "planner":
            extra["plan"] = plan_instructions(step)
        if name == "openai":
            extra["base_url"] = self.settings.llm_base_url
        else:
            extra["sim_seed"] = self.settings.llm_sim_seed
        hot = opts.temperature is not None and opts.temperature > 0
        return self.cache_on and not hot, extra

    def cache_served(self, task: protocol.TaskPayload, output: Any) -> None:
        """A step served from the cache: a call record ``status: cached`` with the tokens
        its cached output's ``usage`` says were saved."""
        out = output if isinstance(output, dict) else {}
        usage = out.get("usage") if isinstance(out.get("usage"), dict) else {}
        saved = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
        saved = [n if isinstance(n, int) else 0 for n in saved]
        self.recorder.record(
            {
                "run_id": task.run_id,
                "step_id": task.step_id,
                "map_index": task.map_index,
                "attempt": task.attempt,
                "workflow": task.workflow_name,
                "model": str(out.get("model") or ""),
                "status": "cached",
                "latency_ms": 0.0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "saved_prompt_tokens": saved[0],
                "saved_completion_tokens": saved[1],
                "worker_id": self.worker_id,
            }
        )

    def provider(self, name: str) -> Provider:
        """The engine's shared provider ``name`` (created on first use)."""
        prov = self._providers.get(name)
        if prov is None:
            s = self.settings
            timeout = s.llm_timeout.total_seconds()
            if name == "openai":
                key = s.llm_api_key or os.environ.get("OPENAI_API_KEY", "").strip() or None
                prov = OpenAIProvider(s.llm_base_url, key, timeout, s.llm_concurrency)
            elif name == "simulated":
                prov = SimulatedProvider(simulator_settings(s))
            else:
                raise Permanent(f"unknown llm provider {name!r}: use one of {PROVIDERS}")
            self._providers[name] = prov
            self._limiters[name] = RateLimiter(s.llm_rpm, s.llm_tpm)
        return prov

    def check(self, defn: WorkflowDef, worker: Any) -> None:
        """Refuse a workflow whose ``llm`` steps are invalid, when ``worker`` (the engine's
        ``llm`` worker) runs this built-in handler (a user's own ``llm`` handler has its
        own options)."""
        if worker is None or getattr(worker.handler, "fn", None) != self.handle:
            return
        problems = check_workflow(defn)
        if problems:
            raise workflow_error(problems)

    async def close(self) -> None:
        await self.recorder.flush(wait=True)
        for prov in self._providers.values():
            await prov.close()
        self._providers.clear()

    async def _step(self, ctx: TaskContext) -> tuple[StepDef, LLMOptions]:
        defn = await self.resolve_def(ctx.run_id, ctx.workflow_name, ctx.def_hash)
        key = (id(defn), ctx.step_id)
        hit = self._options.get(key)
        if hit is None:
            step = defn.step(ctx.step_id)
            if len(self._options) > 4096:
                self._options.clear()
            hit = self._options[key] = (defn, step, parse_options(step))
        return hit[1], hit[2]

    async def handle(self, ctx: TaskContext) -> dict[str, Any]:
        """Run one llm step attempt: render, call, record, map failures to signals."""
        step, opts = await self._step(ctx)
        scope = template_scope(step, ctx.input)
        planner = step.type == "planner"
        try:
            messages = []
            if opts.system:
                messages.append({"role": "system", "content": render(opts.system, scope)})
            prompt = render(opts.prompt, scope) + (plan_instructions(step) if planner else "")
            messages.append({"role": "user", "content": prompt})
        except TemplateError as exc:
            raise TemplateError(f"step '{ctx.step_id}' prompt template: {exc}") from None
        name = opts.provider or self.default
        provider = self.provider(name)
        req = ChatRequest(
            model=opts.model or self.settings.llm_model,
            messages=messages,
            temperature=opts.temperature,
            max_tokens=opts.max_tokens,
            json=opts.response_format == "json" or planner,
            stream=opts.stream,
            attempt=ctx.attempt,
        )
        limiter = self._limiters[name]
        waited = 0.0
        if limiter.active:
            chars = sum(len(m["content"]) for m in messages)
            waited = await limiter.acquire(math.ceil(chars / 4) + (opts.max_tokens or 256))
        tokens = TokenPublisher(self.nc, ctx) if opts.stream else None
        record = {
            "run_id": ctx.run_id,
            "step_id": ctx.step_id,
            "map_index": ctx.map_index,
            "attempt": ctx.attempt,
            "workflow": ctx.workflow_name,
            "provider": name,
            "model": ("simulated:" if name == "simulated" else "") + req.model,
            "stream": opts.stream,
            "rate_wait_ms": round(waited * 1000, 1),
            "worker_id": self.worker_id,
        }
        t0 = time.perf_counter()
        try:
            done = await provider.complete(req, tokens.send if tokens else None)
        except ProviderError as exc:
            await self._failed(record, t0, exc.kind, exc.status, str(exc), tokens)
            raise exc.signal() from None
        except asyncio.CancelledError:  # the step's timeout, or the engine stopping
            await self._failed(record, t0, "cancelled", None, "call cancelled", tokens)
            raise
        except Exception as exc:  # not a provider's answer: a bug here or in a library
            err = f"{type(exc).__name__}: {exc}"
            await self._failed(record, t0, "error", None, err, tokens)
            raise
        latency_ms = round((time.perf_counter() - t0) * 1000, 1)
        out: dict[str, Any]
        try:
            if planner:
                out = plan_reply(parse_json_reply(done.text, done.model), done.model)
            elif req.json:
                out = {"json": parse_json_reply(done.text, done.model)}
            else:
                out = {"text": done.text}
        except BadReply as exc:
            await self._failed(record, t0, "bad_json", None, str(exc), tokens, done)
            raise
        record.update(_usage(done), model=done.model, status="ok", latency_ms=latency_ms)
        self.recorder.record(record)
        if tokens is not None:
            await tokens.done(finish_reason=done.finish_reason)
        out.update(
            model=done.model,
            usage={
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
            },
            latency_ms=latency_ms,
            finish_reason=done.finish_reason,
        )
        return out

    async def _failed(
        self,
        record: dict[str, Any],
        t0: float,
        status: str,
        http_status: int | None,
        error: str,
        tokens: TokenPublisher | None,
        done: Completion | None = None,
    ) -> None:
        record.update(
            status=status,
            http_status=http_status,
            error=error[:500],
            latency_ms=round((time.perf_counter() - t0) * 1000, 1),
        )
        if done is not None:
            record.update(_usage(done), model=done.model)
        self.recorder.record(record)
        if tokens is not None:
            await tokens.done(error=error[:500])


LLM_CACHE_EPOCH = "1"  # raise when the llm task's output changes in a way its code hides


def llm_version() -> str:
    """The built-in llm handler's version in cache keys: a hash of its code and of the code
    that shapes its output here (templates, replies), and ``LLM_CACHE_EPOCH``."""
    parts = [LLM_CACHE_EPOCH]
    for fn in (LLMService.handle, render, template_scope, plan_reply, parse_json_reply):
        parts.append(code_version(fn))
    return "llm-" + hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def _usage(done: Completion) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens}


def simulator_settings(s: Settings) -> SimulatorSettings:
    return SimulatorSettings(
        seed=s.llm_sim_seed,
        latency_ms=s.llm_sim_latency_ms,
        sigma=s.llm_sim_latency_sigma,
        tokens_per_s=s.llm_sim_tokens_per_s,
        rate_429=s.llm_sim_429_rate,
        rate_500=s.llm_sim_500_rate,
        rate_timeout=s.llm_sim_timeout_rate,
        retry_after=s.llm_sim_retry_after.total_seconds(),
        timeout=s.llm_timeout.total_seconds(),
    )


class TokenPublisher:
    """Publishes a streaming step's tokens on core NATS ``stream.{run_id}.{step_id}``.

    Each message is JSON: ``{"delta", "seq", "attempt"[, "map_index"]}``; the last of an
    attempt is ``{"done": true, "attempt", "finish_reason" | "error"[, "map_index"]}``."""

    def __init__(self, nc: Any, ctx: TaskContext) -> None:
        self.nc = nc
        self.subject = protocol.stream_subject(ctx.run_id, ctx.step_id)
        self.base: dict[str, Any] = {"attempt": ctx.attempt}
        if ctx.map_index is not None:
            self.base["map_index"] = ctx.map_index
        self.seq = 0

    async def send(self, delta: str) -> None:
        await self.nc.publish(
            self.subject, protocol.dumps({"delta": delta, "seq": self.seq, **self.base})
        )
        self.seq += 1

    async def done(self, **fields: Any) -> None:
        body = {"done": True, **self.base, **{k: v for k, v in fields.items() if v is not None}}
        await self.nc.publish(self.subject, protocol.dumps(body))
