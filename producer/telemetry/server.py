"""The agent's local HTTP server: ``GET /metrics``, ``GET /api/v1/status`` and ``POST /api/v1/logging``.

granian (its HTTP/1.1 server in Rust, embedded: the RSGI interface) on an
event loop of its own thread, so a slow client never holds a pipeline thread
and parsing HTTP costs the GIL nothing: about half the agent's CPU per request
that aiohttp took, which is what lets the ingest take over 5,000 requests a
second beside capture (BENCHMARKS.md).  Bound to 127.0.0.1 unless
``telemetry.listen`` says otherwise; port 0 takes any free port (the log line
says which).  The socket is bound here, before granian starts, so a taken
port is a one-line start-up error.

With ``telemetry.token_file`` every request must carry ``Authorization: Bearer
<token>`` (401 otherwise, counted for the ingest); with ``telemetry.tls_cert_file``
and ``tls_key_file`` it serves HTTPS only (TLS 1.2 at least).  The GET handlers
only read snapshots.  The POST handlers (``/api/v1/logging``,
``/api/v1/logging/kong``, ``/api/v1/logging/apisix``) read the body (at most
``max_body_bytes``: 413; a Content-Length is required: 411; whole within
``ingest.body_timeout_s``: 408), have it parsed and encoded (ingest/workers.py: a
parse worker process; 503 if it died with the request, 429 if too many body bytes
wait for one) and hand the events to the
ingest stage (ingest/stage.py), whose answer they wait for: 202 once the
events are durable, else the status and reason of ``Refusal``.  Headers must
arrive within ``HEADER_TIMEOUT_S`` (granian closes the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import uvloop
from granian._granian import RSGIProtocolClosed as ProtocolClosed
from granian._granian import RSGIProtocolError as ProtocolError
from granian._granian import SocketHolder
from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings
from granian.server import common as granian_common
from granian.server.embed import Server

from producer.config import TelemetryConfig
from producer.errors import ConfigError, SerializationError
from producer.ingest.parse import BodyError, Parsed, Shape
from producer.ingest.stage import Answer, IngestStage, Pending, refusal
from producer.ingest.workers import Parser, WorkerGone, WorkersBusy
from producer.telemetry.events import Refusal, Telemetry

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"
SHAPES = {"/api/v1/logging": Shape.GENERIC, "/api/v1/logging/kong": Shape.KONG,
          "/api/v1/logging/apisix": Shape.APISIX}
GETS = ("/metrics", "/api/v1/status")
#: the longest Idempotency-Key taken
MAX_KEY = 255
#: connections waiting to be accepted
BACKLOG = 1024
#: how long ``stop`` waits for the server's thread
STOP_TIMEOUT_S = 10.0
#: how long a request's headers may take to arrive (granian closes the connection after)
HEADER_TIMEOUT_S = 10.0
#: how often body reads are checked against ingest.body_timeout_s (a 408 comes up to this much later)
SWEEP_S = 0.25


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    token: str | None = None
    tls: TlsFiles | None = None


@dataclass(frozen=True, slots=True)
class Ingest:
    """What the POST handlers need."""

    stage: IngestStage
    telemetry: Telemetry
    max_body_bytes: int
    body_timeout_s: float
    parser: Parser  # the body to encoded events: parse workers, or inline
    clock_ns: Callable[[], int] = time.time_ns


class _Server(Server):
    """granian's embedded server on a socket bound beforehand (granian would bind its own, and a port 0
    would then be unknown): the one place that touches granian's internals; the version is pinned."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sock = sock

    def _init_shared_socket(self) -> None:
        self._ssp = None
        # (fd, is a Unix socket, backlog): granian owns (closes) the dup; its stub does not declare these
        self._shd = SocketHolder(os.dup(self._sock.fileno()), False, BACKLOG)  # type: ignore[call-arg,assignment]


class TelemetryServer:
    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any]],
                 metrics: Callable[[], bytes], *, security: ServerSecurity | None = None,
                 ingest: Ingest | None = None) -> None:
        self._host = host
        self._port = port
        self._status = status
        self._metrics = metrics
        self._security = security or ServerSecurity()
        self._bearer = None if self._security.token is None else f"Bearer {self._security.token}".encode()
        self._ingest = ingest
        self._loop = uvloop.new_event_loop()
        self._server: _Server | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None
        self._stopping = False
        self._reads: dict[asyncio.Task[Any], float] = {}  # body reads and their deadlines (loop only)
        self._late: set[asyncio.Task[Any]] = set()  # those _sweep cancelled
        self.port = 0

    # -- requests (on the server's loop) ------------------------------------------------

    async def __call__(self, scope: Any, proto: Any) -> None:
        """The RSGI application: every request."""
        if scope.proto != "http":
            return
        try:
            await self._request(scope, proto)
        except (ProtocolClosed, ProtocolError) as exc:  # the client went away: nobody to answer
            log.debug("%s %s: the client went away: %s", scope.method, scope.path, exc)
        except Exception:  # noqa: BLE001 - a bug answers 500 and is logged, the server goes on
            log.exception("the HTTP handler failed on %s %s", scope.method, scope.path)
            with contextlib.suppress(ProtocolClosed, ProtocolError):
                _respond(proto, 500, {"error": "internal error (the agent's log says which)"})

    async def _request(self, scope: Any, proto: Any) -> None:
        path, method = scope.path, scope.method
        shape = SHAPES.get(path)
        if shape is None and path not in GETS:
            _respond(proto, 404, {"error": f"no such path: {path}"})
            return
        if self._bearer is not None:
            given = scope.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), self._bearer):
                if shape is not None and method == "POST" and self._ingest is not None:
                    self._ingest.telemetry.ingest_request(0)
                    self._ingest.telemetry.refused(Refusal.UNAUTHORIZED, 0)
                _respond(proto, 401, {"error": "a bearer token is required (Authorization: Bearer <token>)"},
                         [("www-authenticate", "Bearer")])
                return
        if shape is not None:
            if method != "POST":
                _respond(proto, 405, {"error": f"{path} takes POST"}, [("allow", "POST")])
                return
            await self._post_logging(scope, proto, shape)
        elif method not in ("GET", "HEAD"):
            _respond(proto, 405, {"error": f"{path} takes GET"}, [("allow", "GET")])
        elif path == "/metrics":
            proto.response_bytes(200, [("content-type", PROMETHEUS_TEXT)], self._metrics())
        else:
            proto.response_bytes(200, [("content-type", JSON)],
                                 json.dumps(self._status(), indent=1).encode())

    async def _post_logging(self, scope: Any, proto: Any, shape: Shape) -> None:
        ing = self._ingest
        if ing is None:
            _respond(proto, 503, {"error": "the ingest is off: the agent writes JSON lines, not to Kafka"})
            return
        start = time.monotonic()
        received_ns = ing.clock_ns()
        tel = ing.telemetry
        headers = scope.headers
        length = headers.get("content-length")
        if length is None and "chunked" in headers.get("transfer-encoding", "").lower():
            # a chunked body cut off half-way is not told apart from a whole one: taking it could
            # accept part of a request (and then call its retry a duplicate); a length is required
            tel.ingest_request(0)
            tel.refused(Refusal.INCOMPLETE, 0)
            _respond(proto, 411, {"error": "a Content-Length is required (chunked bodies are not taken)"})
            return
        if length is not None and (not length.isdigit() or int(length) > ing.max_body_bytes):
            tel.ingest_request(0)
            self._refused(proto, Refusal.TOO_LARGE, f"the body is over {ing.max_body_bytes} bytes")
            return
        try:  # a client that sends its body slowly holds a connection, not the server
            body = b"" if length is None else await self._body(proto, start + ing.body_timeout_s)
        except TimeoutError:
            tel.ingest_request(0)
            self._refused(proto, Refusal.INCOMPLETE, f"the body did not arrive whole within {ing.body_timeout_s:g} s")
            return
        tel.ingest_request(len(body))
        try:  # from here on the request is counted once: refused here, or by the stage
            key = headers.get("idempotency-key")
            if key is not None and not (0 < len(key) <= MAX_KEY and key.isprintable()):
                self._refused(proto, Refusal.INVALID, f"Idempotency-Key must be 1..{MAX_KEY} printable characters")
                return
            try:
                taken = await ing.parser.take(body, headers.get("content-type", "").lower(), shape, received_ns)
            except BodyError as exc:
                self._refused(proto, Refusal.INVALID, str(exc))
                return
            except WorkersBusy as exc:
                self._refused(proto, Refusal.OVERLOADED, str(exc))
                return
            except WorkerGone as exc:
                self._refused(proto, Refusal.UNAVAILABLE, f"{exc}; retry")
                return
            except SerializationError as exc:  # the parser let through what the schema refuses: a bug
                log.error("a request's events could not be encoded: %s", exc)
                self._refused(proto, Refusal.FAILED, f"the events could not be encoded: {exc}")
                return
            if isinstance(taken, Parsed):
                tel.refused(Refusal.INVALID, taken.items)
                _respond(proto, 400, taken.error_body())
                return
            fut: asyncio.Future[Answer] = self._loop.create_future()
            answer = ing.stage.submit(Pending(taken, key, len(body), fut))
        except (ProtocolClosed, ProtocolError):
            raise  # an answer could not be sent: the refusal was counted
        except Exception:
            tel.refused(Refusal.FAILED, 0)  # a bug: __call__ logs it and answers 500
            raise
        if answer is None:
            answer = await fut
        if answer.status == 202:
            tel.answered(time.monotonic() - start)
        retry = answer.retry_after
        _respond(proto, answer.status, answer.body(), None if retry is None else [("retry-after", str(retry))])

    async def _body(self, proto: Any, deadline: float) -> bytes:
        """The request's body; TimeoutError if it is not whole by ``deadline`` (monotonic), as ``_sweep``
        finds (a timer a request, asyncio.timeout or wait_for, took a sixth of the loop's time)."""
        task = asyncio.current_task()
        assert task is not None
        self._reads[task] = deadline
        try:
            return bytes(await proto())
        except asyncio.CancelledError:
            if task not in self._late:
                raise
            task.uncancel()
            raise TimeoutError from None
        finally:
            self._reads.pop(task, None)
            self._late.discard(task)

    def _sweep(self) -> None:
        """Every SWEEP_S, on the loop: cancel the body reads that are past their deadline; have the parse
        workers checked."""
        self._loop.call_later(SWEEP_S, self._sweep)  # (first: nothing below may stop the sweeps)
        now = time.monotonic()
        for task, deadline in list(self._reads.items()):
            if deadline <= now and task not in self._late:
                self._late.add(task)
                task.cancel()
        if self._ingest is not None:
            self._ingest.parser.check()  # a stuck parse worker is killed

    def _refused(self, proto: Any, reason: Refusal, text: str) -> None:
        """A refusal the handler gives before the stage sees the request (its events are not known)."""
        assert self._ingest is not None
        self._ingest.telemetry.refused(reason, 0)
        answer = refusal(reason, text, 0)
        retry = answer.retry_after
        _respond(proto, answer.status, answer.body(), None if retry is None else [("retry-after", str(retry))])

    def reply(self, answered: list[Pending]) -> None:
        """The ingest stage's answers (from its thread): one hand-over to the event loop for all of them."""
        self._loop.call_soon_threadsafe(_resolve, answered)

    # -- life -------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"invalid value for telemetry.listen: cannot listen on "
                              f"{self._host}:{self._port}: {exc.strerror or exc}") from exc
        sock.setblocking(False)
        return sock

    def start(self) -> int:
        """Bind and serve; returns the bound port.  Raises ConfigError if the address cannot be bound."""
        self._sock = self._bind()
        self.port = int(self._sock.getsockname()[1])
        tls = self._security.tls
        # granian's constructor would dictConfig the process's logging (closing every handler, and
        # sending its own to stdout, which may carry the JSON lines): its logger goes through ours
        saved = granian_common.configure_logging  # type: ignore[attr-defined]
        granian_common.configure_logging = lambda *_a, **_k: None  # type: ignore[attr-defined]
        try:
            self._server = _Server(
                self._sock, self, address=self._host, port=self.port, interface=Interfaces.RSGI,
                http=HTTPModes.http1, websockets=False, backlog=BACKLOG,
                http1_settings=HTTP1Settings(header_read_timeout=int(HEADER_TIMEOUT_S * 1000)),
                ssl_cert=None if tls is None else Path(tls.cert_file),
                ssl_key=None if tls is None else Path(tls.key_file), ssl_protocol_min=SSLProtocols.tls12)
        finally:
            granian_common.configure_logging = saved  # type: ignore[attr-defined]
        logging.getLogger("_granian").setLevel(logging.ERROR)  # (its "experimental" warning is not news)
        self._thread = threading.Thread(target=self._run, name="hdrlog-http", daemon=True)
        self._thread.start()
        problem = self._probe()
        if problem is not None:
            self.stop()
            raise ConfigError(f"the HTTP server did not start on {self._host}:{self.port}: {problem}")
        shown = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "https" if tls is not None else "http"
        routes = "/metrics, /api/v1/status" + (" and /api/v1/logging" if self._ingest is not None else "")
        log.info("serving %s on %s://%s:%d", routes, scheme, shown, self.port)
        return self.port

    def _probe(self) -> str | None:
        """None once the server answers a request on its own socket (granian's worker may fail after
        its start-up hook: a key rustls refuses); else what went wrong."""
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else "::1" if self._host == "::" else self._host
        deadline = time.monotonic() + STOP_TIMEOUT_S
        last = "no answer"
        while time.monotonic() < deadline:
            if self._failed is not None or self._thread is None or not self._thread.is_alive():
                return str(self._failed or "the server's thread ended")
            try:
                conn: Any = socket.create_connection((host, self.port), timeout=1.0)
                try:
                    if self._security.tls is not None:
                        ctx = ssl.create_default_context()
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE  # our own certificate, checked when loaded
                        conn = ctx.wrap_socket(conn)
                    conn.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                    if conn.recv(12).startswith(b"HTTP/1.1 "):
                        return None
                finally:
                    conn.close()
            except (OSError, ssl.SSLError) as exc:
                last = str(exc)
            time.sleep(0.05)
        return last

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        assert self._server is not None
        self._loop.call_soon(self._sweep)
        try:
            self._loop.run_until_complete(self._server.serve())
            if self._ingest is not None:
                self._loop.run_until_complete(self._ingest.parser.detach())
        except BaseException as exc:  # noqa: BLE001 - start() reports it
            if not self._stopping:
                self._failed = exc
                log.error("the HTTP server stopped: %s", exc)

    def stop(self) -> None:
        """Stop serving: requests being answered finish (granian waits for its connections); a client
        that holds one open without sending is cut off after ``STOP_TIMEOUT_S``."""
        if self._thread is None:
            return
        self._stopping = True
        if self._thread.is_alive() and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.stop)
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _resolve(answered: list[Pending]) -> None:
    for p in answered:
        fut = p.reply
        if not fut.done() and p.answer is not None:
            fut.set_result(p.answer)


def _respond(proto: Any, status: int, body: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> None:
    proto.response_bytes(status, [("content-type", JSON), *(headers or ())], orjson.dumps(body))


def security_of(t: TelemetryConfig) -> ServerSecurity:
    """The bearer token and TLS files ``[telemetry]`` gives a local server (ConfigError if unusable)."""
    return ServerSecurity(t.token(), tls_files(t.tls_cert_file, t.tls_key_file) if t.tls_cert_file else None)


def tls_files(cert_file: str, key_file: str) -> TlsFiles:
    """``telemetry.tls_cert_file``/``tls_key_file``, checked by loading them: ConfigError naming what is
    wrong, at start-up rather than at the first handshake.  The key must be one granian's TLS (rustls)
    takes: RSA, ECDSA on P-256 or P-384, or Ed25519 (it aborts the process on any other), unencrypted."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    what = f"invalid value for telemetry.tls_key_file: {key_file}"
    try:
        key = load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror}") from exc
    except (TypeError, ValueError) as exc:  # encrypted, or not a PEM private key
        raise ConfigError(f"{what}: {exc}") from exc
    if not (isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey))
            or (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ("secp256r1", "secp384r1"))):
        kind = getattr(getattr(key, "curve", None), "name", None) or type(key).__name__
        raise ConfigError(f"{what}: {kind} keys are not supported (use RSA, ECDSA P-256/P-384 or Ed25519)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"invalid value for telemetry.tls_cert_file: cannot load {cert_file} with "
                          f"{key_file}: {getattr(exc, 'strerror', None) or exc}") from exc
    return TlsFiles(cert_file, key_file)
