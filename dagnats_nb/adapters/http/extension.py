"""The HTTP side of an engine, plugged in with ``Engine.add_extension``: ``/health`` and
``/ready`` on ``http_addr``, the webhook triggers (each off without a secret), the http
triggers under ``/api/`` and the worker bridge (off without ``bridge_token``)."""

from __future__ import annotations

import asyncio
from typing import Any

from dagnats_nb.adapters.http.approvals import Approvals
from dagnats_nb.adapters.http.bridge import Bridge
from dagnats_nb.adapters.http.hooks import Webhooks
from dagnats_nb.adapters.http.http_triggers import HTTPTriggers
from dagnats_nb.adapters.http.server import HTTPServer, Request
from dagnats_nb.facade import Engine
from dagnats_nb.observe import stats


class HTTPSide:
    """The HTTP server of one engine and what it serves."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.server: HTTPServer | None = None
        self.bridge: Bridge | None = None

    async def start(self) -> None:
        eng = self.engine
        routes = {("GET", "/health"): self.health, ("GET", "/ready"): self.ready}
        routes.update(Webhooks(eng).routes())
        routes.update(Approvals(eng).routes())
        routes.update(HTTPTriggers(eng).routes())  # /api/...: http triggers (respond step)
        if eng.settings.bridge_token:
            self.bridge = Bridge(eng)
            routes.update(self.bridge.routes())
        s = eng.settings
        self.server = HTTPServer(
            routes,
            header_deadline=s.http_header_timeout.total_seconds(),
            body_deadline=s.http_body_timeout.total_seconds(),
            max_connections=s.http_max_connections,
        )
        eng.http_url = await self.server.start(eng.settings.http_addr)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.bridge is not None:
            await self.bridge.stop()

    async def health(self, request: Request | None = None) -> tuple[int, dict[str, Any]]:
        """200 only if NATS is connected and JetStream answers."""
        eng = self.engine
        if eng._nc is None or not eng._nc.is_connected:
            return 503, {"status": "unhealthy", "reason": f"not connected to NATS at {eng.url}"}
        try:
            await asyncio.wait_for(stats.api(eng._nc, "INFO", api=eng.jetstream_api), 2)
        except Exception as exc:
            reason = f"JetStream does not answer: {type(exc).__name__}: {exc}"
            return 503, {"status": "unhealthy", "reason": reason}
        return 200, {"status": "healthy", "url": eng.url}

    async def ready(self, request: Request | None = None) -> tuple[int, dict[str, Any]]:
        """200 only once server, resources, orchestrator replay and workers have started."""
        eng = self.engine
        components = dict(eng._started)
        waiting = [part for part, done in components.items() if not done]
        if not waiting:
            status, body = await self.health(request)
            if status != 200:
                return 503, {"status": "not ready", "reason": body["reason"]}
            refused = eng.host.gate.reason if eng.host is not None else None
            if refused:  # a full disk or store: results are held, no task is taken
                reason = f"JetStream refuses to store results ({refused}): see health()"
                return 503, {"status": "not ready", "reason": reason, "components": components}
            return 200, {"status": "ready", "components": components}
        reason = f"waiting for {', '.join(waiting)}"
        o = eng.orchestrator
        if o is not None and o.replaying:
            reason += f" (replaying history: {o.replayed_events} events applied)"
        return 503, {"status": "not ready", "reason": reason, "components": components}


def http_extension(engine: Engine) -> HTTPSide | None:
    """The engine's HTTP side when ``http_addr`` is set."""
    return HTTPSide(engine) if engine.settings.http_addr else None


def http_side(engine: Engine) -> HTTPSide | None:
    """The HTTP side a running engine started, if any."""
    return next((x for x in engine.extensions if isinstance(x, HTTPSide)), None)
