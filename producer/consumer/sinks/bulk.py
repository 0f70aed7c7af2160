"""Elasticsearch / OpenSearch ``_bulk``: every event indexed under its event id, so a replay overwrites.

Each request is NDJSON (``{"index": {"_index": ..., "_id": ...}}`` then the
event), at most ``max_bytes``.  The answer is read per item: 2xx is done; 429
and 5xx (the node is busy) are sent again with backoff; any other 4xx (a
mapping conflict, a document the index refuses) is refused for good and the
runner dead-letters its message; but an item refused for a reason that holds
for every document (401/403: the credentials or their privileges; 404: the
index does not exist and may not be created; a closed or blocked index)
stops the consumer, as does a whole request answered 401/403.  A whole
request answered 429/503 is sent again; 413 halves the request size; an
answer that is not the bulk API's (a proxy's page) stops the consumer.  The index name may hold ``{date}``,
the event's UTC date as ``YYYY.MM.DD`` (daily indices; a replay lands in the
same one).  The README ships the index template for ECS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from producer.consumer.mapping import Formatter
from producer.consumer.sinks.base import EventsIn, as_events
from producer.consumer.sinks.http import RETRY_STATUSES, HttpOptions, HttpTarget, chunks, refused, resend
from producer.errors import SinkError

#: item errors that hold for every document of the index: the consumer stops instead of dead-lettering
INDEX_REFUSALS = frozenset({"cluster_block_exception", "index_closed_exception", "index_not_found_exception",
                            "security_exception"})


def _items(r: Any, expected: int, url: str) -> list[dict[str, Any]]:
    """The per-item results of a 200 answer; a SinkError if it is not the bulk API's answer."""
    try:
        items = orjson.loads(r.content)["items"]
        if len(items) == expected and all(isinstance(i, dict) and len(i) == 1 and
                                          "status" in next(iter(i.values())) for i in items):
            return list(items)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    raise SinkError(f"_bulk at {url} answered HTTP 200 with something that is not the bulk API's answer for "
                    f"{expected} documents: {r.text[:200]!r}")


class BulkSink:
    name = "opensearch"

    def __init__(self, url: str, formatter: Formatter, index: str, opts: HttpOptions | None = None, *,
                 sleep: Callable[[float], None] | None = None,
                 on_retry: Callable[[int, str], None] | None = None) -> None:
        self._opts = opts or HttpOptions()
        self._target = HttpTarget(url, self._opts)
        self._formatter = formatter
        self._index = index
        self._max_bytes = self._opts.max_bytes
        self._sleep = sleep
        self._on_retry = on_retry
        self.requests = 0

    def _index_of(self, date: str) -> str:
        """The index of an event of that UTC date (YYYY-MM-DD)."""
        if "{date}" not in self._index:
            return self._index
        return self._index.replace("{date}", date.replace("-", "."))

    def write(self, batch: EventsIn) -> list[tuple[int, str]]:
        events = as_events(batch)
        dates = events.dates(lambda e: self._formatter.partition(e)[0]) if "{date}" in self._index else \
            [""] * len(events)
        lines = [orjson.dumps({"index": {"_index": self._index_of(date), "_id": eid}}) + b"\n" + line
                 for (eid, line), date in zip(events.keyed_lines(self._formatter.event_id), dates, strict=True)]
        sizes = [len(line) for line in lines]

        def attempt(todo: list[int]) -> tuple[list[int], list[tuple[int, str]], str]:
            retry: list[int] = []
            rejected: list[tuple[int, str]] = []
            why = ""
            for chunk in chunks(sizes, todo, self._max_bytes):
                try:
                    r = self._target.post("/_bulk", b"".join(lines[i] for i in chunk), "application/x-ndjson")
                except SinkError as exc:
                    retry += chunk
                    why = str(exc)
                    continue
                self.requests += 1
                if r.status_code == 413:
                    if len(chunk) == 1:
                        rejected.append((chunk[0], "HTTP 413: the document is larger than the node accepts"))
                    else:
                        self._max_bytes = max(1, self._max_bytes // 2)
                        retry += chunk
                        why = "HTTP 413: request too large, halving it"
                    continue
                if r.status_code != 200:
                    err = refused(r, f"_bulk at {self._target.base_url}")
                    if not err.retriable:
                        raise err
                    retry += chunk
                    why = str(err)
                    continue
                items = _items(r, len(chunk), self._target.base_url)
                for i, item in zip(chunk, items, strict=True):
                    result = next(iter(item.values()))
                    status = int(result["status"])
                    if status < 300:
                        continue
                    error = result.get("error") or {}
                    reason = f"HTTP {status} {error.get('type', '')}: {error.get('reason', '')}".strip()
                    if status in (401, 403, 404) or error.get("type") in INDEX_REFUSALS:
                        raise SinkError(f"_bulk at {self._target.base_url} refuses every document: {reason}")
                    if status in RETRY_STATUSES:
                        retry.append(i)
                        why = reason
                    else:
                        rejected.append((i, reason))
            return retry, rejected, why

        return resend(range(len(events)), attempt, self._opts, f"_bulk at {self._target.base_url}", sleep=self._sleep,
                      on_retry=self._on_retry)

    def flush(self) -> None:
        """Nothing held: a 2xx item is indexed (refresh makes it searchable; durability is the node's)."""

    def close(self) -> None:
        self._target.close()
