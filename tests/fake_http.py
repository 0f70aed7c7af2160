"""A local HTTP server for sink tests: it answers what a script says, and records every request.

Real OpenSearch and Splunk nodes do not produce partial failures, 429s or
HEC's ``invalid-event-number`` on demand; this server answers with the
documented response bodies of those cases (the tests spell them out), so the
sinks' handling of each is exercised over real HTTP.  ``serve_raw`` answers any
method with bytes as given (a registry that answers garbage).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def ndjson(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    def concatenated_json(self) -> list[dict[str, Any]]:
        """HEC's batch format: JSON objects back to back."""
        dec, text, out, i = json.JSONDecoder(), self.body.decode(), [], 0
        while i < len(text):
            obj, i = dec.raw_decode(text, i)
            out.append(obj)
            while i < len(text) and text[i].isspace():
                i += 1
        return out


Handler = Callable[[Request], tuple[int, Any]]


@dataclass
class FakeServer:
    url: str
    requests: list[Request] = field(default_factory=list)


@contextmanager
def _running(handler_class: type[BaseHTTPRequestHandler], state: FakeServer) -> Iterator[None]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def serve(handler: Handler) -> Iterator[FakeServer]:
    state = FakeServer("")

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            req = Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            state.requests.append(req)
            status, doc = handler(req)
            out = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *_args: object) -> None:
            pass

    with _running(H, state):
        yield state


RawHandler = Callable[[Request], tuple[int, str, bytes]]


@contextmanager
def serve_raw(handler: RawHandler) -> Iterator[FakeServer]:
    """Every GET, POST and PUT answered with ``handler``'s (status, content type, body bytes)."""
    state = FakeServer("")

    class H(BaseHTTPRequestHandler):
        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            state.requests.append(req)
            status, content_type, out = handler(req)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = _any  # noqa: N815 - the stdlib's names

        def log_message(self, *_args: object) -> None:
            pass

    with _running(H, state):
        yield state
