"""The columnar encoder writes exactly fastavro's bytes, for both shapes, on thousands of random records.

fastavro (through the reference encoders, a dict per record) is the reference;
the records are random in every field the kernel fills, with every presence
flag combination, IPv4 and IPv6, zero to two VLAN ids, extreme values, and
interface names of every length a Linux name can have.
"""

from __future__ import annotations

import numpy as np
import pytest

from producer import abi
from producer.decode.convert import InterfaceNames, MonotonicToWall, RecordDecoder
from producer.records import Batch, RingMark
from producer.serialize.columnar import ColumnarBatchEncoder, ColumnarRecordEncoder, varint
from producer.serialize.encoder import AvroBatchEncoder, AvroRecordEncoder, Identity
from producer.serialize.schemas import AvroSchema


def random_records(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros(n, dtype=abi.RECORD_DTYPE)
    for name in abi.RECORD_DTYPE.names:
        dt = abi.RECORD_DTYPE.fields[name][0]
        base = dt.base if dt.subdtype else dt
        info = np.iinfo(base)
        shape = (n, *dt.shape) if dt.subdtype else (n,)
        hi = min(int(info.max), 2**62)
        # extremes as well as ordinary values
        vals = rng.integers(0, hi, size=shape, dtype=np.uint64, endpoint=True)
        pick = rng.random(shape)
        vals = np.where(pick < 0.1, hi, np.where(pick < 0.2, 0, vals))
        a[name] = vals.astype(base)
    a["ts_ns"] = rng.integers(0, 2**40, size=n)
    a["flags"] = rng.integers(0, 1 << 11, size=n)  # every combination of the presence bits
    a["ip_version"] = rng.choice([4, 6], size=n)
    a["direction"] = rng.integers(0, 2, size=n)
    a["vlan_count"] = rng.integers(0, 3, size=n)
    a["vlan_ids"] = rng.integers(0, 4096, size=(n, 2))
    a["ifindex"] = rng.integers(1, 40, size=n)
    a["seq"] = rng.integers(0, 2**62, size=n)
    for name in ("pkt_len", "sample_rate", "cpu"):  # Avro int fields: the kernel's values stay below 2**31
        a[name] = np.minimum(a[name], 2**31 - 1)
    return a


def _names() -> InterfaceNames:
    return InterfaceNames(lambda i: ("e" * (i % 15 + 1)) if i % 7 else f"veth{i}é")


CLOCK = MonotonicToWall(wall_ns=lambda: 1_795_000_000_000_000_000, mono_ns=lambda: 123_456_789)


@pytest.mark.parametrize("seed", range(5))
def test_batch_shape_is_byte_identical(seed: int) -> None:
    schema = AvroSchema.load("HeaderBatch")
    names = _names()
    ref = AvroBatchEncoder(schema, 42, "t", Identity("host-é", "inst", start=7), RecordDecoder(names, CLOCK), 1_000_000)
    fast = ColumnarBatchEncoder(schema, 42, "t", Identity("host-é", "inst", start=7), names, CLOCK, 1_000_000)
    for i, size in enumerate((1, 2, 100, 1000)):
        batch = Batch(f"cap-{seed}", random_records(size, seed * 10 + i), RingMark("c", size))
        want, got = ref.encode(batch), fast.encode(batch)
        assert [e.payload for e in got] == [e.payload for e in want]
        assert [(e.records, e.mark, e.captured_ns) for e in got] == [(e.records, e.mark, e.captured_ns) for e in want]


def test_batch_split_is_byte_identical() -> None:
    schema = AvroSchema.load("HeaderBatch")
    names = _names()
    ref = AvroBatchEncoder(schema, 1, "t", Identity("h", "i"), RecordDecoder(names, CLOCK), 8192)
    fast = ColumnarBatchEncoder(schema, 1, "t", Identity("h", "i"), names, CLOCK, 8192)
    batch = Batch("c", random_records(700, 99), RingMark("c", 1))
    want, got = ref.encode(batch), fast.encode(batch)
    assert len(want) > 1 and [e.payload for e in got] == [e.payload for e in want]


@pytest.mark.parametrize("seed", range(5))
def test_record_shape_is_byte_identical(seed: int) -> None:
    schema = AvroSchema.load("HeaderRecord")
    names = _names()
    ref = AvroRecordEncoder(schema, 9, "t", Identity("host", "inst", start=3), RecordDecoder(names, CLOCK))
    fast = ColumnarRecordEncoder(schema, 9, "t", Identity("host", "inst", start=3), names, CLOCK)
    for i, size in enumerate((1, 3, 1000)):
        batch = Batch(f"cap-{seed}", random_records(size, 100 + seed * 10 + i), None)
        [want], [got] = ref.encode(batch), fast.encode(batch)
        assert got.offsets == want.offsets and got.payload == want.payload


def test_varint_matches_avro_zigzag() -> None:
    import io

    from fastavro.io.binary_encoder import BinaryEncoder

    values = np.array([0, -1, 1, -64, 63, 64, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)], dtype=np.int64)
    m, lens = varint(values)
    for v, row, ln in zip(values.tolist(), m, lens, strict=True):
        buf = io.BytesIO()
        enc = BinaryEncoder(buf)
        enc.write_long(v)
        enc.flush()
        assert bytes(row[:ln]) == buf.getvalue(), v
