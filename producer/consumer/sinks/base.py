"""The sink contract: ``write`` events, ``flush`` until they are acknowledged, then the runner commits.

``write(events)`` hands the events of a consume() batch to the sink, in offset
order: an ``Events`` of parts that are JSON-ready dicts (the dict path) or
``Block``s (render.py: an Arrow record batch, with its NDJSON written in C),
or a plain list of dicts.  A sink takes what suits it: the file sinks the
NDJSON, Parquet the Arrow batches, the others dicts.  It returns the events the sink refused *for good* (a 400 for one
document of a bulk request), as ``(index, reason)``: the runner dead-letters
their messages.  Transient failures are retried inside the sink (``retry.py``'s
policy, up to the sink's deadline) and then raised as a retriable
``SinkError``: the runner stops without committing, so a restart re-reads them.

``flush()`` returns once everything written so far is acknowledged: fsynced
(files), in a committed file (Parquet), answered 2xx (HTTP), acknowledged by
the broker (Kafka).  Only then are the offsets of those events committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from producer.consumer.render import Block

Event = dict[str, Any]


class LogPart(list[Event]):
    """Events mapped from LogEvents (the HTTP ingest's), not header records: a sink with a fixed
    schema per kind (Parquet) keeps them apart."""


class Events:
    """The events of one consume() batch, in order: lists of dicts and Blocks."""

    def __init__(self, parts: Sequence[list[Event] | Block] = ()) -> None:
        self.parts = [p for p in parts if len(p)]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def dicts(self) -> list[Event]:
        """Every event as a dict (a Block's read back from its JSON: the same values)."""
        out: list[Event] = []
        for p in self.parts:
            out.extend(p.dicts() if isinstance(p, Block) else p)
        return out

    def ndjson(self, line: Callable[[Event], bytes] | None = None) -> bytes:
        """All events as JSON lines (``line`` renders a dict; Blocks are JSON whatever it is)."""
        render = line or json_line
        return b"".join(p.ndjson()[0] if isinstance(p, Block) else b"".join(map(render, p)) for p in self.parts)

    def keyed_lines(self, event_id: Callable[[Event], str]) -> list[tuple[str, bytes]]:
        """(event id, JSON line with its newline) of every event."""
        out: list[tuple[str, bytes]] = []
        for p in self.parts:
            if isinstance(p, Block):
                out.extend(zip(p.ids(), p.lines(), strict=True))
            else:
                out.extend((event_id(e), json_line(e)) for e in p)
        return out

    def dates(self, date: Callable[[Event], str]) -> list[str]:
        """The UTC date (YYYY-MM-DD) of every event."""
        out: list[str] = []
        for p in self.parts:
            out.extend(p.dates().to_pylist() if isinstance(p, Block) else map(date, p))
        return out


def as_events(events: Events | Sequence[Event]) -> Events:
    return events if isinstance(events, Events) else Events([list(events)])


EventsIn = Events | Sequence[Event]


class Sink(Protocol):
    name: str

    def write(self, events: EventsIn) -> list[tuple[int, str]]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def json_line(event: dict[str, Any]) -> bytes:
    """One event as a line of compact UTF-8 JSON (orjson: the same text as json.dumps, faster)."""
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
