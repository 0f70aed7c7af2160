"""Kafka message values -> HeaderRecord dicts, whatever shape or schema version wrote them.

The schema is fetched from the registry by the id in each message's 5-byte
Confluent header and cached by id, so every registered version decodes with
the schema it was written with.  A HeaderBatch is expanded into HeaderRecords
(each item plus the batch's host, capture, instance and sequence); a
HeaderRecord of version 1 gets the identity fields as null.
"""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro

from producer.errors import SerializationError
from producer.serialize.avro import parse_frame
from producer.serialize.registry import Registry

IDENTITY_FIELDS = ("capture_id", "capture_cpu", "capture_seq", "agent_instance", "sequence")
BATCH_FIELDS = ("host_id", "capture_id", "agent_instance", "sequence")


class MessageDecoder:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._schemas: dict[int, tuple[str, Any]] = {}

    def _schema(self, schema_id: int) -> tuple[str, Any]:
        found = self._schemas.get(schema_id)
        if found is None:
            raw = json.loads(self._registry.schema_text(schema_id))
            parsed = fastavro.parse_schema(raw)
            found = (str(raw.get("name", "")).rsplit(".", 1)[-1], parsed)
            self._schemas[schema_id] = found
        return found

    def decode(self, value: bytes) -> tuple[str, dict[str, Any]]:
        """(schema name, the datum as written)."""
        schema_id, body = parse_frame(value)
        name, parsed = self._schema(schema_id)
        try:
            datum = fastavro.schemaless_reader(io.BytesIO(body), parsed, None)
        except (EOFError, ValueError, TypeError, IndexError) as exc:
            raise SerializationError(f"message does not match its schema id {schema_id}: {exc}") from exc
        if not isinstance(datum, dict):
            raise SerializationError(f"schema id {schema_id} is not a record schema")
        return name, datum

    def records(self, value: bytes) -> list[dict[str, Any]]:
        name, datum = self.decode(value)
        if name == "HeaderBatch":
            common = {k: datum[k] for k in BATCH_FIELDS}
            return [{**common, **item} for item in datum["records"]]
        if name == "HeaderRecord":
            for k in IDENTITY_FIELDS:
                datum.setdefault(k, None)
            return [datum]
        raise SerializationError(f"schema {name!r} is not a header record schema")
