"""The sink contract: ``write`` events, ``flush`` until they are acknowledged, then the runner commits.

``write(events)`` hands a list of events (JSON-ready dicts, in offset order) to
the sink.  It returns the events the sink refused *for good* (a 400 for one
document of a bulk request), as ``(index, reason)``: the runner dead-letters
their messages.  Transient failures are retried inside the sink (``retry.py``'s
policy, up to the sink's deadline) and then raised as a retriable
``SinkError``: the runner stops without committing, so a restart re-reads them.

``flush()`` returns once everything written so far is acknowledged: fsynced
(files), in a committed file (Parquet), answered 2xx (HTTP), acknowledged by
the broker (Kafka).  Only then are the offsets of those events committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import orjson


class Sink(Protocol):
    name: str

    def write(self, events: Sequence[dict[str, Any]]) -> list[tuple[int, str]]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def json_line(event: dict[str, Any]) -> bytes:
    """One event as a line of compact UTF-8 JSON (orjson: the same text as json.dumps, faster)."""
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
