"""Elasticsearch / OpenSearch ``_bulk``: every event indexed under its event id, so a replay overwrites.

Each request is NDJSON (``{"index": {"_index": ..., "_id": ...}}`` then the
event), at most ``max_bytes``.  The answer is read per item: 2xx is done; 429
and 5xx (the node is busy) are sent again with backoff; any other 4xx (a
mapping conflict, a document the index refuses) is refused for good and the
runner dead-letters its message.  A whole request answered 429/503 is sent
again; 401/403 stop the consumer (the credentials are wrong, retrying will
not help); 413 halves the request size.  The index name may hold ``{date}``,
the event's UTC date as ``YYYY.MM.DD`` (daily indices; a replay lands in the
same one).  The README ships the index template for ECS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from producer.consumer.mapping import Formatter
from producer.consumer.sinks.base import json_line
from producer.consumer.sinks.http import RETRY_STATUSES, HttpOptions, HttpTarget, chunks, refused, resend
from producer.errors import SinkError


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

    def _index_of(self, event: dict[str, Any]) -> str:
        if "{date}" not in self._index:
            return self._index
        return self._index.replace("{date}", self._formatter.partition(event)[0].replace("-", "."))

    def write(self, events: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        lines = [json.dumps({"index": {"_index": self._index_of(e), "_id": self._formatter.event_id(e)}},
                            separators=(",", ":")).encode() + b"\n" + json_line(e) for e in events]
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
                items = r.json().get("items") or []
                if len(items) != len(chunk):
                    raise SinkError(f"_bulk at {self._target.base_url} answered {len(items)} items for {len(chunk)}")
                for i, item in zip(chunk, items, strict=True):
                    result = next(iter(item.values()))
                    status = int(result.get("status", 0))
                    if status < 300:
                        continue
                    error = result.get("error") or {}
                    reason = f"HTTP {status} {error.get('type', '')}: {error.get('reason', '')}".strip()
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
