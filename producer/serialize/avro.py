"""HeaderRecord dicts -> Avro in the Confluent wire format.

Framing: magic byte 0, the 4-byte big-endian schema id, then the Avro binary
body (schemaless).  The id comes from the registry once at start (cached), so a
registry outage after start does not stop production.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from producer.errors import SerializationError
from producer.serialize.schemas import AvroSchema

MAGIC = 0


def frame_header(schema_id: int) -> bytes:
    return struct.pack(">bI", MAGIC, schema_id)


class ConfluentAvroSerializer:
    """Encodes one record per message with a fixed registered schema id."""

    def __init__(self, schema: AvroSchema, schema_id: int) -> None:
        self._parsed = schema.parsed
        self._header = frame_header(schema_id)
        self.schema_id = schema_id

    def serialize(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self._parsed, record)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise SerializationError(f"record does not fit the schema: {exc}") from exc
        return buf.getvalue()


def parse_frame(message: bytes) -> tuple[int, bytes]:
    """Split a Confluent-framed message into (schema id, Avro body)."""
    if len(message) < 5 or message[0] != MAGIC:
        raise SerializationError("message is not in the Confluent wire format (magic byte 0)")
    (schema_id,) = struct.unpack_from(">I", message, 1)
    return int(schema_id), message[5:]
