"""Splunk HTTP Event Collector: ``POST /services/collector/event``, CIM field names (``--format cim``).

The token comes from a file (``--sink-token-file``) or ``HDRLOG_SINK_TOKEN``,
never the command line, and is sent as ``Authorization: Splunk <token>``.
Events are batched as concatenated JSON envelopes (``time``, ``host``,
``source``, ``sourcetype``, optional ``index``, ``event``), at most
``max_bytes`` a request.  HEC's answers, as documented:

- 200 ``{"text": "Success", "code": 0}``: all indexed.
- 400 with ``invalid-event-number`` N (code 6, "Invalid data format"; 12, 13,
  15: a field of that event): the events before N were indexed, N is refused
  for good (dead-lettered), the ones after it are sent again.
- 400 otherwise (7 "Incorrect index", 10/11 a channel is required, ...): a
  setting is wrong for every event, so the consumer stops (nothing is
  dead-lettered or committed).
- 401 / 403 (token missing, invalid, disabled): the consumer stops.
- 429, 500, 503 (code 9, "Server is busy"): sent again with backoff.

Without HEC's indexer acknowledgement (channels), a 200 means HEC accepted
the events; that is what the runner commits on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from producer.consumer.sinks.base import EventsIn, as_events
from producer.consumer.sinks.http import RETRY_STATUSES, HttpOptions, HttpTarget, chunks, read_secret, refused, resend
from producer.errors import ConfigError, SinkError

PATH = "/services/collector/event"


class HecSink:
    name = "hec"

    def __init__(self, url: str, opts: HttpOptions | None = None, *, index: str = "", source: str = "hdrlog",
                 sourcetype: str = "hdrlog:headers", sleep: Callable[[float], None] | None = None,
                 on_retry: Callable[[int, str], None] | None = None) -> None:
        self._opts = opts or HttpOptions()
        token = read_secret(self._opts.token_file, self._opts.token_env, "HEC token")
        if not token:
            raise ConfigError(f"the hec sink needs a token: --sink-token-file FILE or {self._opts.token_env}")
        self._target = HttpTarget(url, self._opts, headers={"Authorization": f"Splunk {token}"})
        self._meta: dict[str, str] = {"source": source, "sourcetype": sourcetype}
        if index:
            self._meta["index"] = index
        self._sleep = sleep
        self._on_retry = on_retry
        self.requests = 0

    def _envelope(self, event: dict[str, Any]) -> bytes:
        body = {k: v for k, v in event.items() if k != "_time"}
        doc = {"time": event["_time"], "host": event.get("dvc", ""), **self._meta, "event": body}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    def write(self, batch: EventsIn) -> list[tuple[int, str]]:
        events = as_events(batch).dicts()
        if events and "_time" not in events[0]:
            raise SinkError("the hec sink takes --format cim events")
        bodies = [self._envelope(e) for e in events]
        sizes = [len(b) for b in bodies]

        def attempt(todo: list[int]) -> tuple[list[int], list[tuple[int, str]], str]:
            retry: list[int] = []
            rejected: list[tuple[int, str]] = []
            why = ""
            for chunk in chunks(sizes, todo, self._opts.max_bytes):
                try:
                    r = self._target.post(PATH, b"".join(bodies[i] for i in chunk), "application/json")
                except SinkError as exc:
                    retry += chunk
                    why = str(exc)
                    continue
                self.requests += 1
                if r.status_code == 200:
                    continue
                if r.status_code == 400:
                    try:
                        doc = r.json()
                    except ValueError:
                        doc = {}
                    reason = f"HTTP 400 code {doc.get('code')}: {doc.get('text', r.text[:200])}"
                    bad = doc.get("invalid-event-number")
                    if not isinstance(bad, int) or not 0 <= bad < len(chunk):
                        raise SinkError(f"HEC at {self._target.base_url} refuses every event: {reason}")
                    rejected.append((chunk[bad], reason))
                    retry += chunk[bad + 1:]  # not indexed: HEC stops at the invalid event
                    why = reason
                    continue
                err = refused(r, f"HEC at {self._target.base_url}")
                if r.status_code not in RETRY_STATUSES:
                    raise err
                retry += chunk
                why = str(err)
            return retry, rejected, why

        return resend(range(len(events)), attempt, self._opts, f"HEC at {self._target.base_url}", sleep=self._sleep,
                      on_retry=self._on_retry)

    def flush(self) -> None:
        """Nothing held: a 200 means HEC took the events."""

    def close(self) -> None:
        self._target.close()
