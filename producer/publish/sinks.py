"""Where decoded records go: Kafka (Avro, Confluent framing) or JSON lines on stdout.

Each sink either delivers a record or counts it under a named drop reason
(telemetry/counters.py); none drops silently.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from producer.decode.convert import HeaderRecord
from producer.errors import SerializationError
from producer.publish.kafka import KafkaPublisher
from producer.records import render
from producer.serialize.avro import ConfluentAvroSerializer
from producer.telemetry.counters import Counters

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """Where decoded records go: Kafka, or JSON lines on stdout."""

    def write(self, records: list[HeaderRecord]) -> None: ...
    def poll(self) -> None: ...
    def close(self, deadline_s: float) -> None: ...
    def begin_exit(self, deadline: float) -> None: ...


class StdoutSink:
    """``--stdout``: one JSON object per record, no Kafka at all.

    When the reader goes away (``hdrlog agent --stdout | head``) the agent stops
    and what it could not print is counted as ``dropped_stdout_closed``.
    """

    def __init__(self, out: TextIO, counters: Counters, on_closed: Callable[[], None]) -> None:
        self._out = out
        self._counters = counters
        self._on_closed = on_closed
        self._closed = False

    def write(self, records: list[HeaderRecord]) -> None:
        if self._closed:
            self._counters.add("dropped_stdout_closed", len(records))
            return
        text = "".join(json.dumps(render(rec), separators=(",", ":")) + "\n" for rec in records)
        try:
            self._out.write(text)
            self._out.flush()
        except BrokenPipeError:
            self._closed = True
            self._counters.add("dropped_stdout_closed", len(records))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._out.fileno())  # no second error when Python flushes at exit
            os.close(devnull)
            self._on_closed()
            return
        self._counters.add("printed", len(records))

    def poll(self) -> None:
        return None

    def close(self, deadline_s: float) -> None:
        return None

    def begin_exit(self, deadline: float) -> None:
        return None


class KafkaSink:
    """Avro (Confluent framing) per record, keyed by host id.

    Exit is bounded: once ``begin_exit(deadline)`` is called, a full producer queue is
    waited on only until the deadline; what cannot be queued or flushed by then is
    counted as ``dropped_unflushed_at_exit``.
    """

    def __init__(self, publisher: KafkaPublisher, serializer: ConfluentAvroSerializer,
                 key: bytes, counters: Counters) -> None:
        self._publisher = publisher
        self._serializer = serializer
        self._key = key
        self._counters = counters
        self._exit_at: float | None = None

    def begin_exit(self, deadline: float) -> None:
        self._exit_at = deadline

    def _past_deadline(self) -> bool:
        return self._exit_at is not None and time.monotonic() >= self._exit_at

    def write(self, records: list[HeaderRecord]) -> None:
        for rec in records:
            try:
                value = self._serializer.serialize(rec)
            except SerializationError as exc:
                self._counters.add("dropped_serialize_error")
                log.error("%s", exc)
                continue
            if not self._publisher.publish(self._key, value, self._past_deadline):
                self._counters.add("dropped_unflushed_at_exit")
        self._publisher.poll(0)

    def poll(self) -> None:
        self._publisher.poll(0)

    def close(self, deadline_s: float) -> None:
        if self._exit_at is not None:
            deadline_s = max(0.0, self._exit_at - time.monotonic())
        left = self._publisher.flush(deadline_s)
        if left:
            self._counters.add("dropped_unflushed_at_exit", left)
            log.error("%d records still undelivered at the flush deadline", left)
