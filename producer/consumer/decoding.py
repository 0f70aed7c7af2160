"""Kafka message values -> HeaderRecord dicts, whatever shape or schema version wrote them.

The schema is fetched from the registry by the id in each message's 5-byte
Confluent header and cached by id, so every registered version decodes with
the schema it was written with.  Bodies are read by the compiled reader
(reader.py) where the schema compiles, by fastavro otherwise and whenever the
compiled reader refuses a body.  A HeaderBatch is expanded into HeaderRecords
(each item plus the batch's host, capture, instance and sequence); a
HeaderRecord of version 1 gets the identity fields as null.

A message that can never decode raises ``PoisonMessage`` with its reason
(the runner dead-letters it and moves on); a registry that is down raises a
retriable ``RegistryError`` (the runner waits: nothing is committed).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fastavro

from producer.consumer.reader import Columns, CompiledReader
from producer.consumer.telemetry import Poison
from producer.errors import PoisonMessage, RegistryError, SerializationError
from producer.serialize.avro import parse_frame
from producer.serialize.registry import Registry

IDENTITY_FIELDS = ("capture_id", "capture_cpu", "capture_seq", "agent_instance", "sequence")
BATCH_FIELDS = ("host_id", "capture_id", "agent_instance", "sequence")
HEADER_SCHEMAS = ("HeaderBatch", "HeaderRecord")
LOG_SCHEMA = "LogEvent"  # the HTTP ingest's events (consumer/logs.py maps them)
SCHEMA_NOT_FOUND = 40403  # the Confluent API's error code (Apicurio's ccompat API answers the same)


@dataclass(frozen=True, slots=True)
class Frame:
    """What a header message's 5-byte Confluent header says: its schema, and the compiled reader
    that reads many such messages into columns at once (None: fastavro reads them one by one)."""

    schema_id: int
    name: str
    reader: CompiledReader | None


class MessageDecoder:
    def __init__(self, registry: Registry, *, compiled: bool = True) -> None:
        self._registry = registry
        self._compiled = compiled
        self._schemas: dict[int, tuple[str, Any]] = {}
        self._readers: dict[int, CompiledReader | None] = {}
        self._unknown: set[int] = set()  # ids the registry said it does not have (bounded)

    def _schema(self, schema_id: int) -> tuple[str, Any]:
        found = self._schemas.get(schema_id)
        if found is None:
            if schema_id in self._unknown:
                raise PoisonMessage(f"the registry has no schema id {schema_id}", Poison.UNKNOWN_SCHEMA)
            try:
                text = self._registry.schema_text(schema_id)
            except RegistryError as exc:
                # only the registry's "schema not found" (40403): a 404 for a wrong URL path is a
                # settings error that must stop the consumer, not empty the topic into the DLQ
                if exc.status == 404 and exc.code == SCHEMA_NOT_FOUND:
                    if len(self._unknown) >= 10_000:
                        self._unknown.clear()
                    self._unknown.add(schema_id)
                    raise PoisonMessage(f"the registry has no schema id {schema_id}", Poison.UNKNOWN_SCHEMA) from exc
                raise
            try:
                raw = json.loads(text)
                parsed = fastavro.parse_schema(raw)
            except (ValueError, fastavro.schema.SchemaParseException) as exc:  # not Avro (JSON Schema, Protobuf)
                raise PoisonMessage(f"schema id {schema_id} is not an Avro schema: {exc}", Poison.WRONG_SCHEMA) from exc
            found = (str(raw.get("name", "")).rsplit(".", 1)[-1] if isinstance(raw, dict) else "", parsed)
            self._schemas[schema_id] = found
            self._readers[schema_id] = CompiledReader.compile(raw) if self._compiled else None
        return found

    def frame(self, value: bytes) -> Frame:
        """The frame of a header message (PoisonMessage for any other; RegistryError: retry)."""
        try:
            schema_id, _body = parse_frame(value)
        except SerializationError as exc:
            raise PoisonMessage(str(exc), Poison.BAD_MAGIC) from exc
        name, _parsed = self._schema(schema_id)
        if name not in HEADER_SCHEMAS and name != LOG_SCHEMA:
            raise PoisonMessage(f"schema id {schema_id} is {name or 'unnamed'}, not a header record or log schema",
                                Poison.WRONG_SCHEMA)
        return Frame(schema_id, name, self._readers.get(schema_id))

    @staticmethod
    def columns(frame: Frame, values: list[bytes]) -> Columns:
        """The records of messages of one frame (with a reader) as columns: a HeaderBatch's shared
        fields repeated for each of its records.  ValueError if the reader refuses any of them
        (``records``, message by message, then decides)."""
        if frame.reader is None:
            raise ValueError(f"schema id {frame.schema_id} has no compiled reader")
        return frame.reader.columns(values, BATCH_FIELDS if frame.name == "HeaderBatch" else (), skip=5)

    def decode(self, value: bytes) -> tuple[str, dict[str, Any]]:
        """(schema name, the datum as written), of any record schema (AgentStats too)."""
        name, datum, _carried = self._decode(value)
        return name, datum

    def _decode(self, value: bytes, carry: tuple[str, ...] = ()) -> tuple[str, dict[str, Any], bool]:
        """As ``decode``; the third value says whether the compiled reader put ``carry`` into the items."""
        try:
            schema_id, body = parse_frame(value)
        except SerializationError as exc:
            raise PoisonMessage(str(exc), Poison.BAD_MAGIC) from exc
        name, parsed = self._schema(schema_id)
        # message by message, the compiled reader pays per call what fastavro pays per record: it
        # reads a HeaderBatch (thousands of records a call), not one record a message (``columns``
        # reads runs of those)
        compiled = self._readers.get(schema_id)
        if compiled is not None and compiled.items is not None:
            try:
                return name, compiled.read(body, carry), True
            except (ValueError, UnicodeDecodeError):
                pass  # fastavro decides: a poison message, or a value the compiled reader does not take
        reader = io.BytesIO(body)
        try:
            datum = fastavro.schemaless_reader(reader, parsed, None)
        except (EOFError, ValueError, TypeError, IndexError, UnicodeDecodeError, MemoryError, OverflowError) as exc:
            raise PoisonMessage(f"the body does not match schema id {schema_id}: {type(exc).__name__}: {exc}",
                                Poison.DECODE_ERROR) from exc
        if reader.tell() != len(body):
            raise PoisonMessage(f"{len(body) - reader.tell()} bytes left after the datum of schema id {schema_id}",
                                Poison.DECODE_ERROR)
        if not isinstance(datum, dict):
            raise PoisonMessage(f"schema id {schema_id} is not a record schema", Poison.WRONG_SCHEMA)
        return name, datum, False

    def message(self, value: bytes) -> tuple[str, list[dict[str, Any]]]:
        """(schema name, its records): the header records of a HeaderBatch or HeaderRecord message, or
        the one LogEvent of a log message; any other schema is poison here."""
        if self.frame(value).name == LOG_SCHEMA:
            name, datum, _carried = self._decode(value)
            return name, [datum]
        return "", self._header_records(value)

    def records(self, value: bytes) -> list[dict[str, Any]]:
        """The header records of a HeaderBatch or HeaderRecord message; any other schema is poison here."""
        if self.frame(value).name == LOG_SCHEMA:
            raise PoisonMessage("a LogEvent, not a header record", Poison.WRONG_SCHEMA)
        return self._header_records(value)

    def _header_records(self, value: bytes) -> list[dict[str, Any]]:
        """``records`` once the frame is known to be a header schema's (``frame`` checked it)."""
        name, datum, carried = self._decode(value, BATCH_FIELDS)
        try:
            if name == "HeaderBatch":
                if carried:  # the compiled reader put the shared fields into each record already
                    return list(datum["records"])
                common = {k: datum[k] for k in BATCH_FIELDS}
                return [{**common, **item} for item in datum["records"]]
        except (KeyError, TypeError) as exc:  # a record schema of that name, but not ours
            raise PoisonMessage(f"a HeaderBatch without the fields of ours: {type(exc).__name__}: {exc}",
                                Poison.WRONG_SCHEMA) from exc
        for k in IDENTITY_FIELDS:
            datum.setdefault(k, None)
        return [datum]
