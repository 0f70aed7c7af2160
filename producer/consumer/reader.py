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

``read`` turns the columns into the dicts fastavro would give; ``columns``
reads the bodies of many messages into one ``Columns`` (a batch's envelope
repeated for each of its records), which the columnar formats (render.py) map
without a dict.
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
        self.always = [f.column for f in fields if f.null_branch < 0]  # never null: `present` is not read
        # the fewest bytes a record takes: a byte a field (a union's branch, a length, a count),
        # a fixed field its size
        self.min_size = max(1, sum(f.arg if f.op == R_FIXED and f.null_branch < 0 else 1 for f in fields))
        self.code = np.array([[f.op, f.column, f.arg, f.null_branch] for f in fields], dtype=np.int64).reshape(-1)

    def empty(self, n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """Columns for n records; ``present`` is 1 for the fields that are not unions with null
        (the reader writes it only for those that are)."""
        present = np.zeros((self.columns, n), dtype=np.uint8)
        present[self.always] = 1
        return np.zeros((self.columns, n), dtype=np.int64), present

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
        _check_enum(f, vals[c], present[c])
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


def _check_enum(f: Field, vals: npt.NDArray[np.int64], present: npt.NDArray[np.uint8]) -> None:
    """ValueError for an enum index outside the symbols (fastavro's IndexError; Python's negative
    indexing must not turn it into a symbol)."""
    bad = ((vals < 0) | (vals >= len(f.symbols))) & (present != 0)
    if bad.any():
        raise ValueError(f"record {int(np.argmax(bad))}: {f.name} has no symbol {int(vals[np.argmax(bad)])}")


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


@dataclass(frozen=True, slots=True)
class Columns:
    """The records of some messages as columns: ``vals``/``present`` are [column, row]; a bytes,
    string or fixed field's offsets point into ``buf``; ``starts[k]`` is the first row of message
    k (``starts[-1] == n``)."""

    buf: bytes
    n: int
    vals: npt.NDArray[np.int64]
    present: npt.NDArray[np.uint8]
    fields: dict[str, Field]
    starts: npt.NDArray[np.int64]
    names: tuple[str, ...]  # a record's keys, in the order the dict path has them

    def long(self, name: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """(values, present) of an int, long, enum or boolean field, or of a bytes field's offsets."""
        c = self.fields[name].column
        return self.vals[c, :self.n], self.present[c, :self.n]

    def span(self, name: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """(offsets, lengths, present) of a bytes or string field."""
        c = self.fields[name].column
        return self.vals[c, :self.n], self.vals[c + 1, :self.n], self.present[c, :self.n]

    def item(self, name: str, k: int) -> npt.NDArray[np.int64]:
        """Item ``k`` of an array field (0 where the array is shorter)."""
        c = self.fields[name].column
        return self.vals[c + 1 + k, :self.n]

    def records(self, k: int) -> list[dict[str, Any]]:
        """The records of message k as dicts (what the dict path maps)."""
        lo, hi = int(self.starts[k]), int(self.starts[k + 1])
        program = Program([self.fields[name] for name in self.names])
        values = program.values(self.buf, self.vals[:, lo:hi], self.present[:, lo:hi], hi - lo)
        return [dict(zip(self.names, row, strict=True)) for row in zip(*values, strict=True)]


def _check_enums(fields: dict[str, Field], vals: npt.NDArray[np.int64], present: npt.NDArray[np.uint8]) -> None:
    for f in fields.values():
        if f.convert == "enum":
            _check_enum(f, vals[f.column], present[f.column])


class CompiledReader:
    """Header records of one writer schema, read by ``_reader.c`` (see the module docstring)."""

    def __init__(self, envelope: Program, items: Program | None, array_field: str | None) -> None:
        self.envelope = envelope
        self.items = items
        self.array_field = array_field
        self._rows = np.empty((0, 0), dtype=np.int64)
        self._rows_present = np.empty((0, 0), dtype=np.uint8)

    def _scratch(self, n: int, width: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """Row-major space for n records, kept from call to call (its pages stay mapped: fresh
        memory costs the kernel a zeroing on first touch); the columns are copies out of it."""
        if self._rows.shape[0] < n or self._rows.shape[1] != width:
            self._rows = np.empty((max(n, 2 * self._rows.shape[0]), width), dtype=np.int64)
            self._rows_present = np.empty(self._rows.shape, dtype=np.uint8)
        return self._rows, self._rows_present

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

    def columns(self, bodies: list[bytes], carry: tuple[str, ...] = (), *, skip: int = 0) -> Columns:
        """The records of these message bodies in one set of columns; ValueError (naming the
        message) for a body the reader refuses.  ``carry``: as for ``read``; ``skip``: bytes
        before each body (a Confluent header), left out without a copy."""
        buf = b"".join(bodies)
        view = memoryview(buf)
        bounds = np.zeros(len(bodies) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in bodies], out=bounds[1:])
        if skip and any(len(b) < skip for b in bodies):
            raise ValueError(f"a message shorter than its {skip}-byte header")
        # the reader writes row-major (a record's values side by side: cache lines in order), and
        # the columns are a transposed copy; every slot of a row read is written (no zeroing)
        # except `present` of fields that are never null, set here
        if self.items is None:  # one record per message
            prog = self.envelope
            n = len(bodies)
            rows, rows_present = self._scratch(max(1, n), prog.columns)
            if bodies:
                _reader.read_spans(buf, bounds[:-1] + skip, bounds[1:].copy(), prog.code, rows[:n], rows_present[:n],
                                   n, True)
            # copies (never views: the scratch is written again by the next call)
            vals, present = rows[:n].T.copy(), rows_present[:n].T.copy()
            present[prog.always] = 1
            fields = {f.name: f for f in prog.fields}
            _check_enums(fields, vals, present)
            return Columns(buf, n, vals, present, fields, np.arange(n + 1, dtype=np.int64), tuple(fields))
        env, items = self.envelope, self.items
        shift = items.columns  # the envelope's columns follow the items'
        cap = max(1, len(buf) // items.min_size)
        rows, rows_present = self._scratch(cap, shift)
        evals, epresent = env.empty(len(bodies))
        one_v, one_p = env.empty(1)
        starts = np.zeros(len(bodies) + 1, dtype=np.int64)
        n = 0
        for k in range(len(bodies)):
            try:
                body = view[:bounds[k + 1]]
                end = _reader.read_one(body, int(bounds[k]) + skip, env.code, one_v, one_p)
                count, end = _reader.read_array(body, end, items.code, rows[:cap], rows_present[:cap], cap, n, True)
            except ValueError as exc:
                raise ValueError(f"message {k}: {exc}") from exc
            if end != bounds[k + 1]:
                raise ValueError(f"message {k}: {bounds[k + 1] - end} bytes left after the array")
            evals[:, k], epresent[:, k] = one_v[:, 0], one_p[:, 0]
            n += count
            starts[k + 1] = n
        vals = np.empty((shift + env.columns, n), dtype=np.int64)
        present = np.empty((shift + env.columns, n), dtype=np.uint8)
        vals[:shift] = rows[:n].T
        present[:shift] = rows_present[:n].T
        present[items.always] = 1
        owner = np.repeat(np.arange(len(bodies)), np.diff(starts))  # each record's message
        vals[shift:] = evals[:, owner]
        present[shift:] = epresent[:, owner]
        fields = {f.name: f for f in items.fields}
        for f in env.fields:
            fields.setdefault(f.name, Field(f.name, f.op, f.column + shift, f.arg, f.null_branch, f.convert,
                                            f.symbols))
        _check_enums(fields, vals, present)
        return Columns(buf, n, vals, present, fields, starts, (*carry, *(f.name for f in items.fields)))

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
        cap = max(1, (len(body) - end) // self.items.min_size)
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
