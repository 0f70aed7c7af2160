"""Rows of Python values to Confluent-framed Avro messages, for flat record schemas (LogEvent).

``RowEncoder(schema, schema_id, consts)`` compiles a record schema whose
fields are long, int, string, bytes, enum or map<string>, each optionally in a
union with null, into a program for ``_rows.c``.  Fields named in ``consts``
are written from pre-encoded values (host id, agent instance); a field named
``sequence`` is the row's index plus a base; every other field takes the
next value of the row's tuple, in schema order (``value_fields``).

``parts(rows)`` encodes rows before their sequence is known (in the HTTP
ingest's parse workers, ingest/workers.py): every field but the sequence,
and where it goes; ``splice(parts, seq_base)`` then gives exactly what
``encode(rows, seq_base)`` gives.

Why not fastavro: it takes ~16 µs a LogEvent here, and the HTTP ingest's
target is 100,000 events a second on a machine whose two cores also capture.
fastavro is the reference: tests/test_rows.py requires its bytes exactly.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np

from producer.errors import SerializationError
from producer.serialize import _rows  # type: ignore[attr-defined]
from producer.serialize.schemas import AvroSchema

W_CONST, W_SEQ, W_LONG, W_STRING, W_BYTES, W_ENUM, W_MAP = 1, 2, 3, 4, 5, 6, 7
SEQUENCE = "sequence"
_SIMPLE = {"long": (W_LONG, 64), "int": (W_LONG, 32), "string": (W_STRING, 0), "bytes": (W_BYTES, 0)}


def _instruction(name: str, t: Any) -> tuple[int, int]:
    """(op, arg) of a field's type without its union."""
    if isinstance(t, str) and t in _SIMPLE:
        return _SIMPLE[t]
    if isinstance(t, dict) and t.get("type") in _SIMPLE and "logicalType" not in t:
        return _SIMPLE[t["type"]]
    if isinstance(t, dict) and t.get("type") == "enum":
        return W_ENUM, len(t["symbols"])
    if isinstance(t, dict) and t.get("type") == "map" and t.get("values") == "string":
        return W_MAP, 0
    raise SerializationError(f"field {name}: type {t!r} is not one the row encoder writes")


def _encode_value(schema: AvroSchema, name: str, value: Any) -> bytes:
    """A constant field's bytes, encoded by fastavro (the reference) from the field's own type."""
    field = next(f for f in schema.raw["fields"] if f["name"] == name)
    parsed = fastavro.parse_schema({"type": "record", "name": "One", "fields": [{"name": "v", "type": field["type"]}]})
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, {"v": value})
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Parts:
    """Rows encoded without their sequence: ``blob`` back to back; ``cuts`` two native uint64 a row
    (where it starts in ``blob``, where its sequence goes)."""

    blob: bytes
    cuts: bytes

    @property
    def count(self) -> int:
        return len(self.cuts) // 16


class RowEncoder:
    """One flat record schema, compiled; ``encode(rows, seq_base)`` -> (payload, offsets)."""

    def __init__(self, schema: AvroSchema, schema_id: int, consts: Mapping[str, Any]) -> None:
        code: list[int] = []
        values: list[bytes] = []
        self.value_fields: list[str] = []
        self.enums: dict[str, tuple[str, ...]] = {}
        for f in schema.raw["fields"]:
            name, t = f["name"], f["type"]
            if name in consts:
                code += [W_CONST, 0, len(values)]
                values.append(_encode_value(schema, name, consts[name]))
                continue
            if name == SEQUENCE:
                code += [W_SEQ, 0, 0]
                continue
            nullable = 0
            if isinstance(t, list):
                if len(t) != 2 or "null" not in t:
                    raise SerializationError(f"field {name}: only unions with null are written")
                nullable = 1 if t[0] == "null" else 2
                t = t[1] if nullable == 1 else t[0]
            op, arg = _instruction(name, t)
            if op == W_ENUM:
                self.enums[name] = tuple(t["symbols"])
            code += [op, nullable, arg]
            self.value_fields.append(name)
        self._code = np.array(code, dtype=np.int64).tobytes()
        self._consts = tuple(values)
        self.prefix = b"\x00" + struct.pack(">I", schema_id)

    def encode(self, rows: list[tuple[Any, ...]], seq_base: int = 0) -> tuple[bytes, tuple[int, ...]]:
        """Every row as one framed message, back to back, and where each starts.
        Raises SerializationError naming the first row and field that does not fit."""
        try:
            payload, offsets = _rows.encode_rows(self._code, self._consts, rows, seq_base, self.prefix)
        except ValueError as exc:
            raise SerializationError(f"a log event does not fit the schema: {exc}") from exc
        return payload, offsets

    def parts(self, rows: list[tuple[Any, ...]]) -> Parts:
        """``rows`` encoded but for the sequence; SerializationError as ``encode``."""
        try:
            blob, cuts = _rows.encode_parts(self._code, self._consts, rows)
        except ValueError as exc:
            raise SerializationError(f"a log event does not fit the schema: {exc}") from exc
        return Parts(blob, cuts)

    def splice(self, parts: list[Parts], seq_base: int) -> tuple[bytes, tuple[int, ...]]:
        """What ``encode`` gives for the rows of ``parts``, in order, numbered from ``seq_base``."""
        payload, offsets = _rows.splice([(p.blob, p.cuts) for p in parts], seq_base, self.prefix)
        return payload, offsets
