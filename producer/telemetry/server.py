"""The agent's local HTTP server: ``GET /metrics`` and ``GET /api/v1/status``.

aiohttp on its own event loop in its own thread, so a slow client never holds
a pipeline thread.  Bound to 127.0.0.1 unless ``telemetry.listen`` says
otherwise; port 0 takes any free port (the log line says which).  ``start``
binds before returning, so a taken port is a one-line start-up error.
Handlers only read snapshots; nothing here changes the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from producer.errors import ConfigError

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class TelemetryServer:
    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any]],
                 metrics: Callable[[], bytes]) -> None:
        self._host = host
        self._port = port
        self._status = status
        self._metrics = metrics
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    async def _get_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics(), headers={"Content-Type": PROMETHEUS_TEXT})

    async def _get_status(self, _request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._status(), indent=1), content_type="application/json")

    async def _setup(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/api/v1/status", self._get_status)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp keeps the bound sockets here
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self._port

    def start(self) -> int:
        """Bind and serve; returns the bound port.  Raises ConfigError if the address cannot be bound."""
        try:
            self._loop.run_until_complete(self._setup())
        except OSError as exc:
            self._loop.run_until_complete(self._cleanup())
            self._loop.close()
            raise ConfigError(f"invalid value for telemetry.listen: cannot listen on "
                              f"{self._host}:{self._port}: {exc.strerror}") from exc
        self._thread = threading.Thread(target=self._loop.run_forever, name="hdrlog-http", daemon=True)
        self._thread.start()
        shown = f"[{self._host}]" if ":" in self._host else self._host
        log.info("serving /metrics and /api/v1/status on http://%s:%d", shown, self.port)
        return self.port

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._cleanup(), self._loop)
        try:
            fut.result(5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._thread = None
