"""Raw JetStream API requests (``$JS.API.*``), for what nats-py's typed wrappers lack: every
field as the server sends it (observe.stats), and the snapshot/restore API nats-py has no
call for (ops.backup).

One request function, :func:`js_api`, and one error, :class:`JetStreamAPIError`, whether
nobody answers, the answer is late or not JSON, or JetStream answers with an error. A
JetStream domain is a prefix: ``$JS.<domain>.API`` (:func:`api_prefix`).
"""

from __future__ import annotations

import json
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from dagnats_nb.errors import DagnatsError

__all__ = [
    "DEFAULT_API",
    "JetStreamAPIError",
    "api_prefix",
    "delete_stream",
    "error_text",
    "js_api",
    "stream_exists",
]

DEFAULT_API = "$JS.API"
STREAM_NOT_FOUND = 10059  # JSStreamNotFoundErr


class JetStreamAPIError(DagnatsError):
    """A JetStream API request failed. ``reply`` is the server's answer when it answered
    with an error (``code``, ``err_code`` and ``description`` from it), else None."""

    def __init__(self, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reply = reply
        error = (reply or {}).get("error") or {}
        self.code: int | None = error.get("code")
        self.err_code: int | None = error.get("err_code")
        self.description: str | None = error.get("description")


def api_prefix(domain: str | None = None) -> str:
    """``$JS.API``, or ``$JS.<domain>.API`` for a JetStream domain."""
    return f"$JS.{domain}.API" if domain else DEFAULT_API


def error_text(reply: dict[str, Any]) -> str | None:
    """The ``error`` of an API reply as one line (None when there is none)."""
    err = reply.get("error")
    if not err:
        return None
    return f"{err.get('description', 'error')} (code {err.get('code')}/{err.get('err_code')})"


async def js_api(
    nc: NATS,
    subject: str,
    body: dict[str, Any] | bytes | None = None,
    *,
    prefix: str = DEFAULT_API,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """One JetStream API request to ``prefix.subject`` (``prefix`` "" when ``subject`` is
    complete); its JSON reply, or JetStreamAPIError."""
    full = f"{prefix}.{subject}" if prefix else subject
    data = json.dumps(body).encode() if isinstance(body, dict) and body else body or b""
    try:
        msg = await nc.request(full, data, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise JetStreamAPIError(
            f"no JetStream API answers on {full}: is JetStream enabled on this server "
            "(and jetstream_domain right)?"
        ) from None
    except nats.errors.TimeoutError:
        raise JetStreamAPIError(f"JetStream did not answer {full} within {timeout:g} s") from None
    try:
        reply = json.loads(msg.data)
    except ValueError:
        raise JetStreamAPIError(f"JetStream answered {full} with non-JSON data") from None
    if not isinstance(reply, dict):
        raise JetStreamAPIError(f"JetStream answered {full} with {type(reply).__name__}")
    if reply.get("error"):
        raise JetStreamAPIError(f"{full}: {error_text(reply)}", reply)
    return reply


async def stream_exists(nc: NATS, name: str, *, prefix: str = DEFAULT_API) -> bool:
    """Whether stream ``name`` exists (JetStreamAPIError when the server cannot say)."""
    try:
        await js_api(nc, f"STREAM.INFO.{name}", prefix=prefix)
    except JetStreamAPIError as exc:
        if exc.err_code == STREAM_NOT_FOUND or exc.code == 404:
            return False
        raise
    return True


async def delete_stream(nc: NATS, name: str, *, prefix: str = DEFAULT_API) -> None:
    """Delete stream ``name``; one that does not exist is not an error."""
    try:
        await js_api(nc, f"STREAM.DELETE.{name}", prefix=prefix)
    except JetStreamAPIError as exc:
        if exc.err_code != STREAM_NOT_FOUND:
            raise
