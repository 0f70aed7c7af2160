"""Batches -> buffer entries: the bytes that will go to Kafka, stdout or a file.

``Encoder`` is the seam: ``encode(batch)`` returns the entries for one batch
(usually one; more when a batch message would exceed ``max_bytes``).  The Avro
encoders here are the *reference* ones, fastavro with a dict per record: the
agent's Kafka path uses serialize/columnar.py (no Python object per record),
which tests/test_columnar.py proves byte-identical to these; a compiled encoder
would go behind the same seam under the same proof.  ``JsonLinesEncoder`` is
the --stdout / --output path, which does build a dict per record.

Message shapes (schemas/):
    batch   one HeaderBatch per message: host, instance, sequence, capture, records
    record  one HeaderRecord per message, all the messages of a batch in one entry

Every message carries this agent instance's ``sequence``, which only
increases; a record's identity (capture id, cpu, seq) comes from the kernel,
so a replayed or re-drained record is recognisable downstream.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import fastavro

from producer.buffer.base import Buffer
from producer.channel import Cancel, Channel, Closed
from producer.decode.convert import RecordDecoder, rows
from producer.errors import SerializationError
from producer.records import Batch, Encoded, RingMark
from producer.render import render
from producer.serialize.avro import frame_header
from producer.serialize.schemas import AvroSchema
from producer.telemetry.events import Drop, Stat, Telemetry

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """Turns one batch into buffer entries; raises SerializationError for a batch that does not fit."""

    def encode(self, batch: Batch) -> list[Encoded]: ...


class Identity:
    """What an agent instance stamps on its messages: host, instance id, the message sequence."""

    def __init__(self, host_id: str, instance_id: str, start: int = 0) -> None:
        self.host_id = host_id
        self.instance_id = instance_id
        self.key = host_id.encode()
        self.sequence = start  # the next message's

    def next_sequence(self) -> int:
        seq = self.sequence
        self.sequence += 1
        return seq


def _avro(parsed: Any, header: bytes, datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(header)
    try:
        fastavro.schemaless_writer(buf, parsed, datum)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise SerializationError(f"a record does not fit the schema: {exc}") from exc
    return buf.getvalue()


def batch_messages(batch: Batch, message: Callable[[int, int], bytes], max_bytes: int, identity: Identity,
                   topic: str) -> list[Encoded]:
    """The HeaderBatch entries of ``batch``: ``message(lo, hi)`` encodes records[lo:hi] with
    ``identity.sequence``; a message over ``max_bytes`` is bisected.  A part's sequence number
    is taken only once it fits, so sequences increase in output order; only the last part
    carries the ring mark (the ring may be released once all of the batch is stored)."""
    parts: list[tuple[int, int, bytes]] = []

    def fit(lo: int, hi: int) -> None:
        body = message(lo, hi)
        if len(body) > max_bytes and hi - lo > 1:
            mid = (lo + hi) // 2
            fit(lo, mid)
            fit(mid, hi)
            return
        if len(body) > max_bytes:
            log.warning("one record encodes to %d bytes, over batch.max_bytes %d", len(body), max_bytes)
        identity.next_sequence()
        parts.append((lo, hi, body))

    fit(0, len(batch))
    ts = batch.records["ts_ns"]
    return [Encoded(topic, identity.key, body, None, hi - lo, int(ts[lo:hi].min()),
                    batch.mark if hi == len(batch) else None) for lo, hi, body in parts]


class AvroBatchEncoder:
    """``batch`` shape: one Confluent-framed HeaderBatch per message, at most ``max_bytes`` each."""

    def __init__(self, schema: AvroSchema, schema_id: int, topic: str, identity: Identity,
                 decoder: RecordDecoder, max_bytes: int) -> None:
        self._parsed = schema.parsed
        self._header = frame_header(schema_id)
        self._topic = topic
        self._id = identity
        self._decoder = decoder
        self._max = max_bytes

    def encode(self, batch: Batch) -> list[Encoded]:
        if not len(batch):
            return []
        items = rows(self._decoder.columns(batch.records))

        def message(lo: int, hi: int) -> bytes:
            ts = [r["timestamp_ns"] for r in items[lo:hi]]
            return _avro(self._parsed, self._header, {
                "host_id": self._id.host_id, "agent_instance": self._id.instance_id, "sequence": self._id.sequence,
                "capture_id": batch.capture_id, "first_timestamp_ns": min(ts), "last_timestamp_ns": max(ts),
                "records": items[lo:hi]})

        return batch_messages(batch, message, self._max, self._id, self._topic)


class AvroRecordEncoder:
    """``record`` shape: one Confluent-framed HeaderRecord per message; a batch's messages form one entry."""

    def __init__(self, schema: AvroSchema, schema_id: int, topic: str, identity: Identity,
                 decoder: RecordDecoder) -> None:
        self._parsed = schema.parsed
        self._header = frame_header(schema_id)
        self._topic = topic
        self._id = identity
        self._decoder = decoder

    def encode(self, batch: Batch) -> list[Encoded]:
        if not len(batch):
            return []
        records = self._decoder.decode(batch.records, host_id=self._id.host_id, capture_id=batch.capture_id,
                                       agent_instance=self._id.instance_id, sequence=0)
        buf = io.BytesIO()
        offsets: list[int] = []
        for rec in records:
            offsets.append(buf.tell())
            rec["sequence"] = self._id.next_sequence()
            buf.write(self._header)
            try:
                fastavro.schemaless_writer(buf, self._parsed, rec)
            except (ValueError, TypeError, KeyError, OverflowError) as exc:
                raise SerializationError(f"a record does not fit the schema: {exc}") from exc
        return [Encoded(self._topic, self._id.key, buf.getvalue(), tuple(offsets), len(records),
                        batch.first_ts_ns, batch.mark)]


class JsonLinesEncoder:
    """``--stdout`` / ``--output``: one JSON object per record (the HeaderRecord fields, addresses as text)."""

    def __init__(self, identity: Identity, decoder: RecordDecoder) -> None:
        self._id = identity
        self._decoder = decoder

    def encode(self, batch: Batch) -> list[Encoded]:
        if not len(batch):
            return []
        records = self._decoder.decode(batch.records, host_id=self._id.host_id, capture_id=batch.capture_id)
        text = "".join(json.dumps(render(r), separators=(",", ":")) + "\n" for r in records)
        return [Encoded("", self._id.key, text.encode(), None, len(records), batch.first_ts_ns, batch.mark)]


class EncodeStage:
    """Batch channel -> encoder -> buffer.  After an entry is stored (or counted by the buffer's
    policy) its ring position is released, so a disk buffer holds every record before the
    kernel may overwrite it.  A batch that does not fit the schema is counted and skipped."""

    name = "encode"

    def __init__(self, encoder: Encoder, inbox: Channel[Batch], buffer: Buffer, telemetry: Telemetry,
                 cancel: Cancel, release: Callable[[RingMark], None]) -> None:
        self._encoder = encoder
        self._in = inbox
        self._buffer = buffer
        self._tel = telemetry
        self._cancel = cancel
        self._release = release

    def run(self) -> None:
        try:
            while True:
                try:
                    batch = self._in.get(0.5)
                except Closed:
                    return
                if batch is not None:
                    try:
                        self._handle(batch)
                    except BaseException:
                        # a bug: the agent stops; the batch in hand is counted, not lost unseen
                        self._tel.drop(Drop.AFTER_FAILURE, len(batch), "the encode stage failed on it")
                        raise
        finally:
            self._buffer.close_input()

    def _handle(self, batch: Batch) -> None:
        try:
            entries = self._encoder.encode(batch)
        except SerializationError as exc:
            self._tel.drop(Drop.SERIALIZE_ERROR, len(batch), str(exc))
            entries = []
        for entry in entries:
            self._tel.add(Stat.ENCODED, entry.records)
            if not self._buffer.put(entry, self._cancel):
                self._tel.drop(self._cancel.reason, entry.records, "the buffer no longer takes entries")
        if batch.mark is not None:
            self._release(batch.mark)
