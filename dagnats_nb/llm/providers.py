"""LLM providers: the OpenAI-compatible Chat Completions API over httpx, and how their
failures map onto the engine's retry signals.

A provider turns a :class:`ChatRequest` into a :class:`Completion` or raises
:class:`ProviderError`, whose ``kind`` says what the step should do:

- ``rate_limited`` (HTTP 429): retry after the provider's ``Retry-After`` when it gives one;
- ``unavailable`` (408, 5xx, connection errors) and ``timeout``: retriable;
- ``rejected`` (any other 4xx: bad key, unknown model, context too long): permanent, with
  the provider's own message.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from dagnats_nb.runtime.handlers import Permanent, RetryAfter

OnToken = Callable[[str], Awaitable[None]]
DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(slots=True)
class ChatRequest:
    """One chat completion call."""

    model: str
    messages: list[dict[str, str]]
    temperature: float | None = None
    max_tokens: int | None = None
    json: bool = False
    stream: bool = False
    attempt: int = 1  # the step's attempt (the simulator draws from it)

    def body(self) -> dict[str, Any]:
        """The JSON body of ``POST /chat/completions``."""
        out: dict[str, Any] = {"model": self.model, "messages": self.messages}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.json:
            out["response_format"] = {"type": "json_object"}
        if self.stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
        return out


@dataclass(slots=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ProviderError(Exception):
    """A failed call; ``kind`` is rate_limited, unavailable, timeout or rejected."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after

    def signal(self) -> Exception:
        """The exception a handler raises for this failure (see the module docstring)."""
        if self.kind == "rejected":
            return Permanent(str(self))
        if self.kind == "rate_limited" and self.retry_after is not None:
            return RetryAfter(self.retry_after, str(self))
        return self


class Provider(Protocol):
    name: str

    async def complete(self, req: ChatRequest, on_token: OnToken | None) -> Completion: ...

    async def close(self) -> None: ...


def failure_for(status: int, body: bytes, headers: httpx.Headers, provider: str) -> ProviderError:
    """The :class:`ProviderError` for an HTTP error reply."""
    message = provider_message(body)
    text = f"{provider} replied HTTP {status}: {message}"
    if status == 429:
        return ProviderError(
            "rate_limited", text, status=status, retry_after=retry_after_seconds(headers)
        )
    if status == 408 or status >= 500:
        return ProviderError("unavailable", text, status=status)
    return ProviderError("rejected", text, status=status)


def provider_message(body: bytes) -> str:
    """The error message of an OpenAI-style error body (``{"error": {"message": ...}}``)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500] or "(empty reply)"
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])[:500]
    if isinstance(err, str):
        return err[:500]
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])[:500]
    return json.dumps(data)[:500]


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIProvider:
    """Any OpenAI-compatible server (OpenAI, Ollama, vLLM, llama.cpp, LM Studio...)."""

    name = "openai"

    def __init__(
        self, base_url: str | None, api_key: str | None, timeout: float, concurrency: int
    ) -> None:
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def complete(self, req: ChatRequest, on_token: OnToken | None) -> Completion:
        try:
            if req.stream:
                return await self._stream(req, on_token)
            resp = await self.client.post("/chat/completions", json=req.body())
            if resp.status_code != 200:
                raise failure_for(resp.status_code, resp.content, resp.headers, self.name)
            return self._parse(resp.content, req)
        except httpx.TimeoutException as exc:
            what = type(exc).__name__
            raise ProviderError("timeout", f"{self.base_url} timed out ({what})") from None
        except httpx.TransportError as exc:
            raise ProviderError(
                "unavailable", f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}"
            ) from None

    def _parse(self, content: bytes, req: ChatRequest) -> Completion:
        try:
            data = json.loads(content)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(
                "unavailable",
                f"{self.name} sent a reply that is not a chat completion: "
                f"{content[:300].decode('utf-8', 'replace')}",
            ) from None
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            model=data.get("model") or req.model,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
        )

    async def _stream(self, req: ChatRequest, on_token: OnToken | None) -> Completion:
        parts: list[str] = []
        model, finish, usage = req.model, None, {}
        async with self.client.stream("POST", "/chat/completions", json=req.body()) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise failure_for(resp.status_code, resp.content, resp.headers, self.name)
            async for data in sse_data(resp.aiter_lines()):
                if data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise ProviderError(
                        "unavailable",
                        f"{self.name} streamed a chunk that is not JSON: {data[:200]}",
                    ) from None
                if chunk.get("error"):
                    msg = provider_message(json.dumps(chunk).encode())
                    raise ProviderError("unavailable", f"{self.name} stream failed: {msg}")
                model = chunk.get("model") or model
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        parts.append(delta)
                        if on_token is not None:
                            await on_token(delta)
                    finish = choice.get("finish_reason") or finish
        text = "".join(parts)
        return Completion(
            text=text,
            model=model,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0) or len(parts),
            finish_reason=finish,
        )


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines)."""
    data: list[str] = []
    async for line in lines:
        line = line.rstrip("\r")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)
