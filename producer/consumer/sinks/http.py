"""What the HTTP sinks share: the client (TLS, auth, secrets from files or the environment) and the
retry loop over the items a server asked to see again.

``HttpTarget`` builds one ``httpx2.Client`` from ``HttpOptions``; a secret
(password, token) is read from a file or an environment variable, never from
the command line, and never appears in an error or a log line.

``resend`` drives a sink's attempts: each attempt sends the items still to
send and sorts them into done, to retry (a 429 or 5xx for the item or the
request, a connection failure) and refused for good (a 4xx for the item).
Retries back off exponentially with jitter up to ``retry_s``; after that the
sink gives up with a non-retriable ``SinkError`` (the runner stops without
committing, and a restart sends them again).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from producer.errors import ConfigError, SinkError

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class HttpOptions:
    user: str = ""                      # basic auth user (the password from password_file / password_env)
    password_file: str = ""
    password_env: str = "HDRLOG_SINK_PASSWORD"
    token_file: str = ""                # HEC token (or an API key) from a file ...
    token_env: str = "HDRLOG_SINK_TOKEN"  # ... or this environment variable
    ca_file: str = ""                   # verify the server against this CA bundle (default: the system's)
    insecure: bool = False              # do not verify the server's certificate (tests, never production)
    timeout_s: float = 30.0
    retry_s: float = 300.0              # how long items a server asked to retry are retried
    max_bytes: int = 5 << 20            # at most this much per request


def read_secret(path: str, env: str, what: str) -> str:
    """A secret from a file (first line, stripped) or else the environment; '' if neither is set."""
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"cannot read the {what} from {path}: {getattr(exc, 'strerror', None) or 'empty'}") \
                from None
    return os.environ.get(env, "")


class HttpTarget:
    def __init__(self, base_url: str, opts: HttpOptions, headers: dict[str, str] | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{base_url.split('@')[-1]!r} is not an http(s) URL")
        if "@" in base_url.split("://", 1)[1].split("/", 1)[0]:
            raise ConfigError("credentials in the sink URL would reach logs and dead-letter headers: give "
                              "--sink-user and --sink-password-file (or HDRLOG_SINK_PASSWORD) instead")
        self.base_url = base_url.rstrip("/")
        self.opts = opts
        auth: Any = None
        if opts.user:
            auth = (opts.user, read_secret(opts.password_file, opts.password_env, "password"))
        verify: Any = False if opts.insecure else (opts.ca_file or True)
        self.client = httpx2.Client(auth=auth, verify=verify, timeout=opts.timeout_s, headers=headers or {})

    def post(self, path: str, body: bytes, content_type: str) -> httpx2.Response:
        """One POST; a connection failure is a retriable SinkError (the URL, never a secret, in its text)."""
        try:
            return self.client.post(self.base_url + path, content=body, headers={"Content-Type": content_type})
        except httpx2.HTTPError as exc:
            raise SinkError(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}", retriable=True) from exc

    def close(self) -> None:
        self.client.close()


def refused(r: httpx2.Response, what: str) -> SinkError:
    """A whole request refused: retriable for 408/429/5xx, not otherwise (401, 403: fix the settings)."""
    text = r.text[:300].replace("\n", " ")
    return SinkError(f"{what} answered HTTP {r.status_code}: {text}", retriable=r.status_code in RETRY_STATUSES)


Attempt = Callable[[list[int]], tuple[list[int], list[tuple[int, str]], str]]


def resend(items: Sequence[int], attempt: Attempt, opts: HttpOptions, what: str, *,
           sleep: Callable[[float], None] | None = None, clock: Callable[[], float] = time.monotonic,
           on_retry: Callable[[int, str], None] | None = None) -> list[tuple[int, str]]:
    """Run ``attempt`` (items -> to retry, refused, why) until nothing is left to retry.

    Returns the refused items with their reasons; raises a non-retriable SinkError after ``retry_s``.
    """
    todo = list(items)
    rejected: list[tuple[int, str]] = []
    deadline = clock() + opts.retry_s
    delay = 0.2
    while todo:
        todo, refused_now, why = attempt(todo)
        rejected += refused_now
        if not todo:
            break
        if clock() + delay > deadline:
            raise SinkError(f"{what}: {len(todo)} items still not taken after {opts.retry_s:g} s: {why}")
        if on_retry is not None:
            on_retry(len(todo), why)
        (sleep or time.sleep)(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not security
        delay = min(delay * 2, 30.0)
    return sorted(rejected)


def chunks(sizes: Sequence[int], items: Sequence[int], max_bytes: int) -> list[list[int]]:
    """``items`` in order, grouped so that each group's ``sizes`` add up to at most ``max_bytes`` (or one item)."""
    out: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i in items:
        if cur and total + sizes[i] > max_bytes:
            out.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += sizes[i]
    if cur:
        out.append(cur)
    return out
