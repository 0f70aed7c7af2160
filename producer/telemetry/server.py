"""The agent's local HTTP server: ``GET /metrics``, ``GET /api/v1/status`` and ``POST /api/v1/logging``.

aiohttp on its own event loop in its own thread, so a slow client never holds
a pipeline thread.  Bound to 127.0.0.1 unless ``telemetry.listen`` says
otherwise; port 0 takes any free port (the log line says which).  ``start``
binds before returning, so a taken port is a one-line start-up error.

With ``telemetry.token_file`` every request must carry ``Authorization: Bearer
<token>`` (401 otherwise, counted for the ingest); with ``telemetry.tls_cert_file``
and ``tls_key_file`` it serves HTTPS only.  The GET handlers only read
snapshots.  The POST handlers (``/api/v1/logging``, ``/api/v1/logging/kong``,
``/api/v1/logging/apisix``) parse the body (ingest/parse.py) and hand the
events to the ingest stage (ingest/stage.py), whose answer they wait for:
202 once the events are durable, else the status and reason of ``Refusal``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop
from aiohttp import web

from producer.errors import ConfigError
from producer.ingest.parse import BodyError, Shape, Values, parse
from producer.ingest.stage import Answer, IngestStage, Pending, refusal
from producer.telemetry.events import Refusal, Telemetry

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
SHAPES = {"": Shape.GENERIC, "kong": Shape.KONG, "apisix": Shape.APISIX}
#: the longest Idempotency-Key taken
MAX_KEY = 255


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    token: str | None = None
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class Ingest:
    """What the POST handlers need."""

    stage: IngestStage
    telemetry: Telemetry
    max_body_bytes: int
    clock_ns: Callable[[], int] = time.time_ns
    values: Values = field(default_factory=Values)


class TelemetryServer:
    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any]],
                 metrics: Callable[[], bytes], *, security: ServerSecurity | None = None,
                 ingest: Ingest | None = None) -> None:
        self._host = host
        self._port = port
        self._status = status
        self._metrics = metrics
        self._security = security or ServerSecurity()
        self._ingest = ingest
        self._loop = uvloop.new_event_loop()  # about a fifth more requests a second than asyncio's own
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    async def _get_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics(), headers={"Content-Type": PROMETHEUS_TEXT})

    async def _get_status(self, _request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._status(), indent=1), content_type="application/json")

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = self._security.token
        if token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                if request.method == "POST" and self._ingest is not None:
                    self._ingest.telemetry.ingest_request(0)
                    self._ingest.telemetry.refused(Refusal.UNAUTHORIZED, 0)
                return _json(401, {"error": "a bearer token is required (Authorization: Bearer <token>)"},
                             {"WWW-Authenticate": "Bearer"})
        response: web.StreamResponse = await handler(request)
        return response

    async def _post_logging(self, request: web.Request) -> web.Response:
        ing = self._ingest
        if ing is None:
            return _json(503, {"error": "the ingest is off: the agent writes JSON lines, not to Kafka"})
        start = time.monotonic()
        received_ns = ing.clock_ns()
        tel = ing.telemetry
        shape = SHAPES[request.match_info.get("shape", "")]
        if request.content_length is not None and request.content_length > ing.max_body_bytes:
            tel.ingest_request(0)
            return self._refused(Refusal.TOO_LARGE, f"the body is over {ing.max_body_bytes} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            tel.ingest_request(0)
            return self._refused(Refusal.TOO_LARGE, f"the body is over {ing.max_body_bytes} bytes")
        tel.ingest_request(len(body))
        key = request.headers.get("Idempotency-Key")
        if key is not None and not (0 < len(key) <= MAX_KEY and key.isprintable()):
            return self._refused(Refusal.INVALID, f"Idempotency-Key must be 1..{MAX_KEY} printable characters")
        try:
            parsed = parse(body, request.content_type, shape, received_ns, ing.values)
        except BodyError as exc:
            return self._refused(Refusal.INVALID, str(exc))
        if parsed.errors:
            tel.refused(Refusal.INVALID, parsed.items)
            return _json(400, parsed.error_body())
        fut: asyncio.Future[Answer] = self._loop.create_future()
        answer = ing.stage.submit(Pending(parsed.rows, key, len(body), fut))
        if answer is None:
            answer = await fut
        if answer.status == 202:
            tel.answered(time.monotonic() - start)
        headers = {} if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
        return _json(answer.status, answer.body(), headers)

    def _refused(self, reason: Refusal, text: str) -> web.Response:
        """A refusal the handler gives before the stage sees the request (its events are not known)."""
        assert self._ingest is not None
        self._ingest.telemetry.refused(reason, 0)
        answer = refusal(reason, text, 0)
        return _json(answer.status, answer.body())

    def reply(self, answered: list[Pending]) -> None:
        """The ingest stage's answers (from its thread): one hand-over to the event loop for all of them."""
        self._loop.call_soon_threadsafe(_resolve, answered)

    async def _setup(self) -> None:
        limit = self._ingest.max_body_bytes if self._ingest is not None else 1 << 20
        # the check is a middleware only when there is a token: it costs every request a coroutine
        app = web.Application(middlewares=[self._authorize] if self._security.token is not None else [],
                              client_max_size=limit)
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/api/v1/status", self._get_status)
        app.router.add_post("/api/v1/logging", self._post_logging)
        app.router.add_post("/api/v1/logging/{shape:kong|apisix}", self._post_logging)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True,
                           ssl_context=self._security.tls)
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
        scheme = "https" if self._security.tls is not None else "http"
        routes = "/metrics, /api/v1/status" + (" and /api/v1/logging" if self._ingest is not None else "")
        log.info("serving %s on %s://%s:%d", routes, scheme, shown, self.port)
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


def _resolve(answered: list[Pending]) -> None:
    for p in answered:
        fut = p.reply
        if not fut.done() and p.answer is not None:
            fut.set_result(p.answer)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server side of ``telemetry.tls_cert_file``/``tls_key_file``; ConfigError naming what is wrong."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"invalid value for telemetry.tls_cert_file: cannot load {cert_file} with "
                          f"{key_file}: {getattr(exc, 'strerror', None) or exc}") from exc
    return ctx
