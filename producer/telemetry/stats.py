"""Every ``telemetry.stats_interval_s``: one ``stats {...}`` log line and one AgentStats record.

Both come from the same snapshot.  The AgentStats record goes to the stats
topic (Avro, Confluent framing, key = host id) outside the buffer: it is
telemetry, not data; one that cannot be delivered is counted
(``Stat.STATS_FAILED``), never retried, and the next one supersedes it.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import fastavro

from producer.buffer.base import Buffer
from producer.serialize.avro import frame_header
from producer.serialize.encoder import Identity
from producer.serialize.schemas import AvroSchema
from producer.telemetry.events import Stat, Telemetry

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes, Callable[[bool], None]], bool]


class StatsReporter:
    def __init__(self, identity: Identity, hook: str, interfaces: Callable[[], list[str]],
                 kernel: Callable[[], dict[str, int]], telemetry: Telemetry, buffer: Buffer,
                 publish: tuple[str, AvroSchema, int, Send] | None = None,
                 wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._id = identity
        self._hook = hook
        self._interfaces = interfaces
        self._kernel = kernel
        self._tel = telemetry
        self._buffer = buffer
        self._publish = publish
        self._wall = wall
        self._mono = monotonic
        self._started = monotonic()

    def snapshot(self) -> dict[str, Any]:
        state = self._buffer.state()
        err = self._tel.last_delivery_error
        outage = self._tel.outage_since
        return {
            "host_id": self._id.host_id, "agent_instance": self._id.instance_id,
            "timestamp_ms": int(self._wall() * 1000), "uptime_s": round(self._mono() - self._started, 3),
            "hook": self._hook, "interfaces": self._interfaces(), "kernel": self._kernel(),
            "agent": self._tel.snapshot(), "buffer_type": self._buffer.kind,
            "buffer_records": state.records, "buffer_bytes": state.bytes,
            "outage_since_ms": None if outage is None else int(outage * 1000),
            "last_delivery_error": None if err is None else err.text,
        }

    def __call__(self) -> None:
        snap = self.snapshot()
        log.info("stats %s", json.dumps({"kernel": snap["kernel"], "agent": snap["agent"]}))
        if self._publish is None:
            return
        topic, schema, schema_id, send = self._publish
        buf = io.BytesIO()
        buf.write(frame_header(schema_id))
        fastavro.schemaless_writer(buf, schema.parsed, snap)

        def done(ok: bool) -> None:
            self._tel.add(Stat.STATS_PUBLISHED if ok else Stat.STATS_FAILED)

        if not send(topic, self._id.key, buf.getvalue(), done):
            self._tel.add(Stat.STATS_FAILED)
