"""The offline LLM simulator: a provider that calls nothing and is named as a simulator
everywhere (its replies' ``model`` is ``simulated:<model>``).

Deterministic for a seed: a call's latency, failure and reply are drawn from a generator
seeded with the seed, the request and the step's attempt number, so the same request gets
the same answer whatever else runs concurrently, and a retry may fare differently.

- latency: log-normal with median ``latency_ms`` and ``sigma`` (0: always ``latency_ms``);
  it is the whole reply's latency, or the first token's when streaming, after which tokens
  follow at ``tokens_per_s`` (0: all at once);
- failures: ``rate_429`` (HTTP 429 with ``Retry-After: retry_after``), ``rate_500`` and
  ``rate_timeout`` (the call hangs for the timeout), each a fraction of calls;
- replies: words drawn from the prompt (from its text after the last ``:`` when that has
  five words or more); a JSON reply is ``{"label", "confidence"}`` with the
  label drawn from a list written as ``one of: a, b, c`` in the prompt when there is one;
  a planner's prompt (it names ``Allowed tasks:`` and ``at most N steps``) gets a valid
  plan: a chain of 1 to 3 steps of those tasks (an ``llm`` step with a prompt).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import dataclass

from .providers import ChatRequest, Completion, OnToken, ProviderError

PREFIX = "simulated:"
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_CHOICES = re.compile(r"one of:?\s*([^.\n]+)", re.IGNORECASE)
_FILLER = ["the", "a", "of", "and", "to", "in", "is", "that", "for", "it", "with", "as", "on"]


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    seed: int = 0
    latency_ms: float = 800.0
    sigma: float = 0.5
    tokens_per_s: float = 40.0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    retry_after: float = 1.0
    timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What one simulated call will do."""

    outcome: str  # ok | rate_limited | unavailable | timeout
    latency_s: float
    words: tuple[str, ...]
    reply: str


class SimulatedProvider:
    """A provider that answers from a seeded generator after a simulated delay."""

    name = "simulated"

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings

    async def close(self) -> None:
        return None

    def plan(self, req: ChatRequest) -> Plan:
        """Draw the call's outcome, latency and reply (pure and deterministic)."""
        s = self.settings
        key = json.dumps(
            [
                s.seed,
                req.model,
                req.messages,
                req.temperature,
                req.max_tokens,
                req.json,
                req.attempt,
            ],
            sort_keys=True,
        )
        rng = random.Random(hashlib.sha256(key.encode()).digest())
        u = rng.random()
        latency = s.latency_ms / 1000
        if s.sigma > 0:
            latency *= math.exp(rng.gauss(0.0, s.sigma))
        if u < s.rate_429:
            outcome = "rate_limited"
        elif u < s.rate_429 + s.rate_500:
            outcome = "unavailable"
        elif u < s.rate_429 + s.rate_500 + s.rate_timeout:
            outcome = "timeout"
        else:
            outcome = "ok"
        prompt = req.messages[-1]["content"] if req.messages else ""
        if req.json:
            reply = _json_reply(rng, prompt)
            words = tuple(re.findall(r"\S+\s*", reply))
        else:
            words = _words(rng, prompt, req.max_tokens)
            reply = "".join(words)
        return Plan(outcome, latency, words, reply)

    async def complete(self, req: ChatRequest, on_token: OnToken | None) -> Completion:
        s = self.settings
        plan = self.plan(req)
        model = PREFIX + req.model
        if plan.outcome == "timeout":
            await asyncio.sleep(s.timeout)
            raise ProviderError("timeout", f"simulator: {model} timed out after {s.timeout:g}s")
        if plan.outcome == "rate_limited":
            await asyncio.sleep(min(plan.latency_s, 0.05))
            raise ProviderError(
                "rate_limited",
                f"simulator replied HTTP 429: rate limit of {model} reached",
                status=429,
                retry_after=s.retry_after,
            )
        await asyncio.sleep(plan.latency_s)
        if plan.outcome == "unavailable":
            raise ProviderError(
                "unavailable", f"simulator replied HTTP 500: {model} failed", status=500
            )
        if req.stream and on_token is not None:
            gap = 1 / s.tokens_per_s if s.tokens_per_s > 0 else 0.0
            for i, word in enumerate(plan.words):
                if i and gap:
                    await asyncio.sleep(gap)
                await on_token(word)
        prompt_chars = sum(len(m.get("content", "")) for m in req.messages)
        finish = "stop"
        if req.max_tokens is not None and len(plan.words) >= req.max_tokens and not req.json:
            finish = "length"
        return Completion(
            text=plan.reply,
            model=model,
            prompt_tokens=max(1, math.ceil(prompt_chars / 4)),
            completion_tokens=len(plan.words),
            finish_reason=finish,
        )


def _words(rng: random.Random, prompt: str, max_tokens: int | None) -> tuple[str, ...]:
    tail = _WORD.findall(prompt.rpartition(":")[2])  # the text after "Summarise this:"
    vocab = tail if len(tail) >= 5 else _WORD.findall(prompt) or ["simulated", "reply"]
    n = rng.randint(8, 32)
    if max_tokens is not None:
        n = min(n, max_tokens)
    if n <= 0:
        return ()
    # 70 % words of the prompt, 30 % filler, in one draw
    picked = rng.choices(vocab + _FILLER, cum_weights=_weights(len(vocab)), k=n)
    picked[0] = picked[0][:1].upper() + picked[0][1:]
    out = [w + " " for w in picked]
    out[-1] = picked[-1] + "."
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _weights(vocab_size: int) -> list[float]:
    each = [0.7 / vocab_size] * vocab_size + [0.3 / len(_FILLER)] * len(_FILLER)
    return list(itertools.accumulate(each))


_ALLOWED = re.compile(r"Allowed tasks: ([^.\n]+)\.")
_AT_MOST = re.compile(r"at most (\d+) steps")


def _plan_reply(rng: random.Random, prompt: str) -> str | None:
    """A plan when the prompt asks for one (see ``llm.handler.plan_instructions``)."""
    allowed, most = _ALLOWED.search(prompt), _AT_MOST.search(prompt)
    if allowed is None or most is None:
        return None
    tasks = [t.strip() for t in allowed.group(1).split(",") if t.strip()]
    if not tasks or tasks == ["any task a worker serves"]:
        tasks = ["llm"]
    topic = " ".join(_WORD.findall(prompt.partition("Reply with JSON")[0])[-6:]) or "the task"
    steps = []
    for i in range(rng.randint(1, max(1, min(3, int(most.group(1)))))):
        task = rng.choice(tasks)
        step: dict = {"id": f"step{i + 1}", "task": task}
        if i:
            step["depends_on"] = [f"step{i}"]
        if task == "llm":
            step["config"] = {"prompt": f"Part {i + 1} of the work on {topic}: {{input}}"}
        steps.append(step)
    return json.dumps({"steps": steps})


def _json_reply(rng: random.Random, prompt: str) -> str:
    plan = _plan_reply(rng, prompt)
    if plan is not None:
        return plan
    match = _CHOICES.search(prompt)
    choices = ["positive", "negative", "neutral"]
    if match:
        found = [c.strip(" '\"`*") for c in re.split(r",|\bor\b", match.group(1))]
        choices = [c for c in found if c] or choices
    label = rng.choice(choices)
    return json.dumps({"label": label, "confidence": round(rng.uniform(0.5, 0.99), 2)})
