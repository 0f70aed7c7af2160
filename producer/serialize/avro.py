"""The Confluent wire format: magic byte 0, the 4-byte big-endian schema id, then the
Avro binary body (schemaless).  The id comes from the registry once at start, so a
registry outage after start does not stop production.
"""

from __future__ import annotations

import struct

from producer.errors import SerializationError

MAGIC = 0


def frame_header(schema_id: int) -> bytes:
    return struct.pack(">bI", MAGIC, schema_id)


def parse_frame(message: bytes) -> tuple[int, bytes]:
    """Split a Confluent-framed message into (schema id, Avro body)."""
    if len(message) < 5 or message[0] != MAGIC:
        raise SerializationError("message is not in the Confluent wire format (magic byte 0)")
    (schema_id,) = struct.unpack_from(">I", message, 1)
    return int(schema_id), message[5:]
