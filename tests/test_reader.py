"""The consumer's compiled Avro reader gives fastavro's values, and survives any body.

Records of every kind the kernel writes (random values, every presence-flag
combination, every protocol and malformed-frame case) are encoded by the
agent's encoder in both shapes and read by both readers; then bodies are
truncated, bit-flipped and randomised, and the compiled reader must either
give fastavro's answer or refuse with ValueError, never crash or read out of
bounds; the decoder then falls back to fastavro, which decides.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any

import fastavro
import numpy as np
import pytest

from producer.consumer.decoding import MessageDecoder
from producer.consumer.reader import CompiledReader
from producer.errors import PoisonMessage
from producer.records import Batch, RingMark
from producer.serialize.columnar import ColumnarBatchEncoder, ColumnarRecordEncoder
from producer.serialize.encoder import Identity
from producer.serialize.schemas import AvroSchema
from tests.test_columnar import CLOCK, _names, _protocol_records, random_records
from tests.test_consumer_mapping import FakeRegistry


def _bodies(shape: str, seed: int) -> list[bytes]:
    arr = np.concatenate([random_records(700, seed), _protocol_records()])
    if shape == "batch":
        enc = ColumnarBatchEncoder(AvroSchema.load("HeaderBatch"), 1, "t", Identity("host-é", "inst"), _names(),
                                   CLOCK, 64_000)
        return [e.payload[5:] for e in enc.encode(Batch("cap", arr, RingMark("c", len(arr))))]
    enc2 = ColumnarRecordEncoder(AvroSchema.load("HeaderRecord"), 2, "t", Identity("host", "inst"), _names(), CLOCK)
    [entry] = enc2.encode(Batch("cap", arr, None))
    assert entry.offsets is not None
    bounds = [*entry.offsets, len(entry.payload)]
    return [entry.payload[a + 5:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _schema(shape: str) -> dict[str, Any]:
    return dict(json.loads(AvroSchema.load("HeaderBatch" if shape == "batch" else "HeaderRecord").text))


@pytest.mark.parametrize("shape", ["batch", "record"])
@pytest.mark.parametrize("seed", range(3))
def test_the_compiled_reader_gives_fastavros_values(shape: str, seed: int) -> None:
    schema = _schema(shape)
    reader = CompiledReader.compile(schema)
    assert reader is not None
    parsed = fastavro.parse_schema(schema)
    bodies = _bodies(shape, seed)
    assert len(bodies) > (1 if shape == "batch" else 500)
    for body in bodies:
        assert reader.read(body) == fastavro.schemaless_reader(io.BytesIO(body), parsed, None)


def test_every_registered_version_compiles_and_others_fall_back() -> None:
    for text in FakeRegistry().texts.values():
        assert CompiledReader.compile(json.loads(text)) is not None
    with_double = {"type": "record", "name": "X", "fields": [{"name": "d", "type": "double"}]}
    nested_union = {"type": "record", "name": "Y", "fields": [{"name": "u", "type": ["null", "int", "string"]}]}
    assert CompiledReader.compile(with_double) is None and CompiledReader.compile(nested_union) is None


@pytest.mark.parametrize("shape", ["batch", "record"])
def test_hostile_bodies_are_refused_or_read_as_fastavro_reads_them(shape: str) -> None:
    schema = _schema(shape)
    reader = CompiledReader.compile(schema)
    assert reader is not None
    parsed = fastavro.parse_schema(schema)
    rng = random.Random(17)
    bodies = _bodies(shape, 9)[:40]
    tried = refused = 0
    for body in bodies:
        variants = [body[:rng.randrange(len(body))] for _ in range(5)]  # truncated
        for _ in range(5):  # a few bytes flipped
            b = bytearray(body)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            variants.append(bytes(b))
        variants.append(bytes(rng.getrandbits(8) for _ in range(rng.randrange(64))))  # noise
        variants.append(b"\xff" * 12)  # an endless varint
        for v in variants:
            tried += 1
            try:
                got = reader.read(v)
            except (ValueError, UnicodeDecodeError):
                refused += 1
                continue
            buf = io.BytesIO(v)
            assert got == fastavro.schemaless_reader(buf, parsed, None) and buf.tell() == len(v)
    assert refused > tried // 2  # most corruptions are caught, none crashed


def test_the_decoder_uses_it_and_falls_back_to_fastavro_for_what_it_refuses() -> None:
    bodies = _bodies("batch", 4)
    fast, slow = MessageDecoder(FakeRegistry()), MessageDecoder(FakeRegistry(), compiled=False)  # type: ignore[arg-type]
    header = b"\x00\x00\x00\x00\x01"
    for body in bodies:
        assert fast.records(header + body) == slow.records(header + body)
    for bad in (bodies[0][:-3], bodies[0] + b"\x00"):
        for decoder in (fast, slow):
            with pytest.raises(PoisonMessage) as err:
                decoder.records(header + bad)
            assert err.value.reason == "decode_error"
