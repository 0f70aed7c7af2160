"""A compiled Avro reader for the header schemas: a message body into columns, then into records.

``CompiledReader.compile(schema)`` turns a writer schema as the registry gives
it (HeaderBatch: an envelope and an array of records; HeaderRecord: one
record) into programs for ``_reader.c``: one instruction per field, for the
types our schemas use (int, long, boolean, enum, string, bytes, fixed,
array<int|long> of at most MAX_ARRAY items, each optionally in a union with
null).  A schema with anything else compiles to None and the decoder keeps
fastavro for it; a body the reader refuses (ValueError) goes to fastavro too,
which then decides (a poison message, or a value the reader does not take,
such as a longer array).  fastavro is the reference: tests/test_reader.py
requires the same records on thousands of random ones, and a malformed body
must never crash the reader.

Today the columns become the same dicts fastavro would give; they are what the
columnar path (docs/architecture.md, "Next stages") will map without a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from producer.consumer import _reader  # type: ignore[attr-defined]

R_LONG, R_BOOL, R_BYTES, R_FIXED, R_ARRAY_LONG = 1, 2, 3, 4, 5
MAX_ARRAY = 4
_WIDTH = {R_LONG: 1, R_BOOL: 1, R_BYTES: 2, R_FIXED: 1, R_ARRAY_LONG: 1 + MAX_ARRAY}


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    op: int
    column: int
    arg: int
    null_branch: int  # -1: not a union with null
    convert: str      # how a value becomes Python: long, bool, enum, string, bytes, fixed, array
    symbols: tuple[str, ...] = ()


class Program:
    """The instructions of one record schema and how to turn its columns back into values."""

    def __init__(self, fields: list[Field]) -> None:
        self.fields = fields
        self.columns = sum(_WIDTH[f.op] for f in fields)
        self.code = np.array([[f.op, f.column, f.arg, f.null_branch] for f in fields], dtype=np.int64).reshape(-1)

    def empty(self, n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        return np.zeros((self.columns, n), dtype=np.int64), np.zeros((self.columns, n), dtype=np.uint8)

    def values(self, buf: bytes, vals: npt.NDArray[np.int64], present: npt.NDArray[np.uint8],
               n: int) -> list[list[Any]]:
        """One list per field, of ``n`` Python values (None where the union chose null)."""
        out = []
        for f in self.fields:
            out.append(_convert(f, buf, vals[:, :n], present[:, :n]))
        return out


def _convert(f: Field, buf: bytes, vals: npt.NDArray[np.int64], present: npt.NDArray[np.uint8]) -> list[Any]:
    c = f.column
    col: list[int] = vals[c].tolist()
    values: list[Any]
    if f.convert == "long":
        values = col
    elif f.convert == "bool":
        values = [v == 1 for v in col]
    elif f.convert == "enum":
        values = [f.symbols[v] for v in col]
    elif f.convert in ("bytes", "string"):
        lens = vals[c + 1].tolist()
        raw = [buf[o:o + n] for o, n in zip(col, lens, strict=True)]
        values = [r.decode() for r in raw] if f.convert == "string" else raw
    elif f.convert == "fixed":
        size = f.arg
        values = [buf[o:o + size] for o in col]
    else:  # array
        items = vals[c + 1:c + 1 + MAX_ARRAY].T.tolist()
        values = [row[:k] for row, k in zip(items, col, strict=True)]
    if f.null_branch < 0:
        return values
    mask = present[c].tolist()
    return [v if p else None for v, p in zip(values, mask, strict=True)]


def _resolve(t: Any, named: dict[str, Any], namespace: str) -> Any:
    if isinstance(t, str) and t not in ("null", "boolean", "int", "long", "float", "double", "bytes", "string"):
        return named.get(t) or named.get(f"{namespace}.{t}")
    return t


def _define(t: Any, named: dict[str, Any], namespace: str) -> None:
    """Record every named type a schema defines (records, enums, fixed), by short and full name."""
    if isinstance(t, list):
        for u in t:
            _define(u, named, namespace)
    elif isinstance(t, dict):
        kind = t.get("type")
        if kind in ("record", "enum", "fixed") and "name" in t:
            ns = t.get("namespace", namespace)
            named[t["name"]] = t
            named[f"{ns}.{t['name']}"] = t
            for f in t.get("fields", []):
                _define(f["type"], named, ns)
        elif kind == "array":
            _define(t["items"], named, namespace)


def _field(name: str, t: Any, column: int, named: dict[str, Any], ns: str) -> Field | None:
    null_branch = -1
    if isinstance(t, list):
        if len(t) != 2 or "null" not in t:
            return None
        null_branch = t.index("null")
        t = t[1 - null_branch]
    t = _resolve(t, named, ns)
    if isinstance(t, dict) and t.get("type") in ("int", "long", "string", "bytes", "boolean") and \
            "logicalType" not in t:
        t = t["type"]
    if t in ("int", "long"):
        return Field(name, R_LONG, column, 0, null_branch, "long")
    if t == "boolean":
        return Field(name, R_BOOL, column, 0, null_branch, "bool")
    if t in ("string", "bytes"):
        return Field(name, R_BYTES, column, 0, null_branch, t)
    if isinstance(t, dict) and t.get("type") == "enum":
        return Field(name, R_LONG, column, 0, null_branch, "enum", tuple(t["symbols"]))
    if isinstance(t, dict) and t.get("type") == "fixed":
        return Field(name, R_FIXED, column, int(t["size"]), null_branch, "fixed")
    if isinstance(t, dict) and t.get("type") == "array" and _resolve(t["items"], named, ns) in ("int", "long"):
        return Field(name, R_ARRAY_LONG, column, MAX_ARRAY, null_branch, "array")
    return None


def _program(record: dict[str, Any], named: dict[str, Any], skip: str | None = None) -> Program | None:
    fields: list[Field] = []
    column = 0
    ns = record.get("namespace", "")
    for f in record["fields"]:
        if f["name"] == skip:
            continue
        field = _field(f["name"], f["type"], column, named, ns)
        if field is None:
            return None
        fields.append(field)
        column += _WIDTH[field.op]
    return Program(fields)


class CompiledReader:
    """Header records of one writer schema, read by ``_reader.c`` (see the module docstring)."""

    def __init__(self, envelope: Program, items: Program | None, array_field: str | None) -> None:
        self.envelope = envelope
        self.items = items
        self.array_field = array_field

    @classmethod
    def compile(cls, schema: dict[str, Any]) -> CompiledReader | None:
        if not isinstance(schema, dict) or schema.get("type") != "record":
            return None
        named: dict[str, Any] = {}
        _define(schema, named, schema.get("namespace", ""))
        arrays = [f for f in schema["fields"] if isinstance(f["type"], dict) and f["type"].get("type") == "array"
                  and isinstance(_resolve(f["type"]["items"], named, schema.get("namespace", "")), dict)]
        if len(arrays) > 1 or (arrays and schema["fields"][-1] is not arrays[0]):
            return None  # the reader takes one array of records, and only as the last field
        if arrays:
            item = _resolve(arrays[0]["type"]["items"], named, schema.get("namespace", ""))
            if item.get("type") != "record":
                return None
            envelope = _program(schema, named, skip=arrays[0]["name"])
            items = _program(item, named)
            if envelope is None or items is None:
                return None
            return cls(envelope, items, arrays[0]["name"])
        whole = _program(schema, named)
        return cls(whole, None, None) if whole is not None else None

    def read(self, body: bytes, carry: tuple[str, ...] = ()) -> dict[str, Any]:
        """The datum as fastavro would give it; ValueError (or UnicodeDecodeError) for a body it refuses.

        ``carry``: envelope fields to put first into each item's dict as well (what a HeaderBatch's
        records share), built in one go rather than merged after."""
        vals, present = self.envelope.empty(1)
        end = _reader.read_one(body, 0, self.envelope.code, vals, present)
        datum = {f.name: v[0] for f, v in zip(self.envelope.fields, self.envelope.values(body, vals, present, 1),
                                              strict=True)}
        if self.items is None:
            if end != len(body):
                raise ValueError(f"{len(body) - end} bytes left after the record")
            return datum
        cap = max(1, (len(body) - end) // max(1, len(self.items.fields)))  # every field takes at least a byte
        ivals, ipresent = self.items.empty(cap)
        n, end = _reader.read_array(body, end, self.items.code, ivals, ipresent, cap)
        if end != len(body):
            raise ValueError(f"{len(body) - end} bytes left after the array")
        names = [*carry, *(f.name for f in self.items.fields)]
        columns = [*(repeat(datum[k], n) for k in carry), *self.items.values(body, ivals, ipresent, n)]
        assert self.array_field is not None
        datum[self.array_field] = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)] \
            if n else []
        return datum
