"""The row encoder (producer/serialize/rows.py, _rows.c) against fastavro, the reference.

LogEvent rows of every kind, random and at the edges, must encode to exactly
fastavro's bytes (each after the Confluent prefix), and a row that does not
fit the schema must be refused with its row and field named, never encoded.
"""

from __future__ import annotations

import io
import random
import struct
from typing import Any

import fastavro
import pytest

from producer.errors import SerializationError
from producer.serialize.rows import RowEncoder
from producer.serialize.schemas import AvroSchema

SCHEMA = AvroSchema.load("LogEvent")
CONSTS = {"host_id": "node-1 ✓ \"quoted\"", "agent_instance": "8c0b6f5e-1d2a-4c3b-9e8f-7a6b5c4d3e2f"}
TEXTS = ["", "a", "GET /api/v1/items?id=1 200", "é€𝄞 mixed", "x" * 300, "\x00nul\x7f", "line\nbreak"]
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def _random_value(name: str, t: Any, rnd: random.Random) -> Any:
    if isinstance(t, list):
        if rnd.random() < 0.3:
            return None
        t = next(x for x in t if x != "null")
    if t == "string":
        return rnd.choice(TEXTS)
    if t == "bytes":
        return rnd.choice([bytes(4), bytes(range(16)), b"", bytes(rnd.getrandbits(8) for _ in range(4))])
    if t == "int":
        return rnd.choice([0, 1, -1, 65535, *INT32, rnd.randint(*INT32)])
    if t == "long":
        return rnd.choice([0, -1, 2**40, *INT64, rnd.randint(*INT64)])
    if isinstance(t, dict) and t["type"] == "enum":
        return rnd.randrange(len(t["symbols"]))
    if isinstance(t, dict) and t["type"] == "map":
        return {rnd.choice(TEXTS) + str(i): rnd.choice(TEXTS) for i in range(rnd.choice([0, 1, 2, 5]))}
    raise AssertionError(f"{name}: {t}")


def _reference(enc: RowEncoder, row: tuple[Any, ...], seq: int) -> bytes:
    record = dict(CONSTS, sequence=seq)
    for name, value in zip(enc.value_fields, row, strict=True):
        record[name] = enc.enums[name][value] if name in enc.enums else value
    out = io.BytesIO()
    fastavro.schemaless_writer(out, SCHEMA.parsed, record)
    return enc.prefix + out.getvalue()


def test_random_rows_are_fastavros_bytes() -> None:
    enc = RowEncoder(SCHEMA, 77, CONSTS)
    types = {f["name"]: f["type"] for f in SCHEMA.raw["fields"]}
    rnd = random.Random(5)
    rows = [tuple(_random_value(n, types[n], rnd) for n in enc.value_fields) for _ in range(5000)]
    payload, offsets = enc.encode(rows, seq_base=2**40)
    assert len(offsets) == 5000 and offsets[0] == 0
    ends = (*offsets[1:], len(payload))
    for i, (row, a, b) in enumerate(zip(rows, offsets, ends, strict=True)):
        assert payload[a:b] == _reference(enc, row, 2**40 + i), f"row {i}: {row}"
    assert enc.prefix == b"\x00" + struct.pack(">I", 77)


def test_no_rows_is_empty() -> None:
    assert RowEncoder(SCHEMA, 1, CONSTS).encode([]) == (b"", ())


@pytest.mark.parametrize(("field", "value", "why"), [
    ("src_port", 2**31, "out of range"),
    ("src_port", True, "not an int"),
    ("http_request_bytes", 2**63, "out of range"),
    ("source", 3, "out of range"),
    ("source", -1, "out of range"),
    ("message", None, "null in a field that is not nullable"),
    ("message", "\ud800", "not encodable as UTF-8"),
    ("message", b"bytes", "not a str"),
    ("src_ip", "10.0.0.1", "not bytes"),
    ("attributes", {"k": 1}, "not a str"),
    ("attributes", [("k", "v")], "not a dict"),
])
def test_a_value_that_does_not_fit_is_refused_by_row_and_field(field: str, value: Any, why: str) -> None:
    enc = RowEncoder(SCHEMA, 1, CONSTS)
    good = {"timestamp_ns": 1, "received_ns": 2, "source": 0, "level": None, "message": "m", "attributes": {}}
    row = tuple(value if n == field else good.get(n) for n in enc.value_fields)
    with pytest.raises(SerializationError, match=f"row 1, field .*: {why}"):
        enc.encode([tuple(good.get(n) for n in enc.value_fields), row])


def test_a_row_of_the_wrong_width_is_refused() -> None:
    enc = RowEncoder(SCHEMA, 1, CONSTS)
    with pytest.raises(SerializationError, match="too few values"):
        enc.encode([(1, 2)])
    good = {"timestamp_ns": 1, "received_ns": 2, "source": 0, "message": "m", "attributes": {}}
    with pytest.raises(SerializationError, match="more values"):
        enc.encode([(*(good.get(n) for n in enc.value_fields), "extra")])


def test_parts_spliced_are_encodes_bytes() -> None:
    """The parse workers' path (parts now, the sequence later) gives exactly encode's bytes and offsets,
    however the rows are split between requests."""
    enc = RowEncoder(SCHEMA, 77, CONSTS)
    types = {f["name"]: f["type"] for f in SCHEMA.raw["fields"]}
    rnd = random.Random(6)
    rows = [tuple(_random_value(n, types[n], rnd) for n in enc.value_fields) for _ in range(3000)]
    groups, at = [], 0
    while at < len(rows):
        size = rnd.choice([0, 1, 2, 7, 100, 333])
        groups.append(rows[at:at + size])
        at += size
    parts = [enc.parts(g) for g in groups]
    assert [p.count for p in parts] == [len(g) for g in groups]
    for base in (0, 2**40, 2**63 - 3001):
        assert enc.splice(parts, base) == enc.encode(rows, base)
    assert enc.splice([], 5) == (b"", ())
    assert enc.splice([enc.parts([])], 5) == (b"", ())


def test_parts_refuse_what_encode_refuses() -> None:
    enc = RowEncoder(SCHEMA, 1, CONSTS)
    good = {"timestamp_ns": 1, "received_ns": 2, "source": 0, "level": None, "message": "m", "attributes": {}}
    row = tuple(2**31 if n == "src_port" else good.get(n) for n in enc.value_fields)
    with pytest.raises(SerializationError, match="row 0, field .*: out of range"):
        enc.parts([row])


def test_splice_refuses_cuts_outside_the_blob() -> None:
    enc = RowEncoder(SCHEMA, 1, CONSTS)
    good = enc.parts([tuple({"timestamp_ns": 1, "received_ns": 2, "source": 0, "message": "m",
                             "attributes": {}}.get(n) for n in enc.value_fields)])
    for cuts in (struct.pack("=QQ", 0, len(good.blob) + 1), struct.pack("=QQ", 3, 2), good.cuts[:-1]):
        with pytest.raises(ValueError, match="cuts"):
            enc.splice([type(good)(good.blob, cuts)], 0)
