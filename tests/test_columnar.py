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
from producer.serialize.columnar import ColumnarBatchEncoder, ColumnarRecordEncoder
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


def _protocol_records() -> np.ndarray:
    """Records as the kernel writes them for every protocol it parses, and for malformed frames."""
    rng = np.random.default_rng(7)
    cases = [  # (flags, ip_version, ip_proto, vlan_count)
        (abi.F_IP | abi.F_PORTS | abi.F_TCP | abi.F_IP_ID | abi.F_FRAG | abi.F_DF, 4, 6, 0),  # TCP, DF
        (abi.F_IP | abi.F_PORTS, 6, 17, 1),  # UDP over IPv6, one VLAN tag
        (abi.F_IP | abi.F_ICMP | abi.F_IP_ID, 4, 1, 2),  # ICMP, QinQ
        (abi.F_IP | abi.F_ICMP, 6, 58, 0),  # ICMPv6
        (abi.F_IP | abi.F_IP_ID | abi.F_FRAG | abi.F_MF, 4, 17, 0),  # a first fragment: no ports
        (abi.F_IP | abi.F_FRAG, 6, 44, 0),  # an IPv6 later fragment
        (abi.F_IP, 4, 47, 0),  # GRE: IP only
        (abi.F_ARP, 0, 0, 0),  # ARP: no IP
        (0, 0, 0, 2),  # an unknown ether type behind two tags
        (abi.F_IP | abi.F_TRUNCATED | abi.F_ANOMALY, 4, 6, 0),  # a truncated TCP header
        (abi.F_ANOMALY | abi.F_TRUNCATED, 0, 0, 0),  # an IPv4 header shorter than 20 bytes
        (abi.F_IP | abi.F_ANOMALY, 6, 0, 0),  # a 7-deep extension chain the parser gave up on
    ]
    a = random_records(len(cases) * 50, 123)
    for i, (flags, version, proto, vlans) in enumerate(cases * 50):
        a[i]["flags"], a[i]["ip_version"], a[i]["ip_proto"], a[i]["vlan_count"] = flags, version, proto, vlans
    a["vlan_ids"] = rng.integers(0, 4096, size=(len(a), 2))
    return a


def _apache_reader(schema: AvroSchema):  # type: ignore[no-untyped-def]
    import json

    import avro.io
    import avro.schema

    return avro.io.DatumReader(avro.schema.parse(json.dumps(schema.raw)))


def _apache_decode(reader, framed: bytes, schema_id: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
    import io

    import avro.io

    assert framed[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    buf = io.BytesIO(framed[5:])
    value = reader.read(avro.io.BinaryDecoder(buf))
    assert buf.tell() == len(framed) - 5, "the reader must consume the whole body"
    return value  # type: ignore[no-any-return]


def test_apache_avro_reads_what_the_fast_path_writes() -> None:
    """Every protocol, nulls, IPv6, VLAN stacks and malformed frames: the fast path's bytes equal fastavro's,
    and the Apache implementation decodes them to the same values fastavro does."""
    import io

    from fastavro import schemaless_reader

    names = _names()
    records = np.concatenate([_protocol_records(), random_records(2000, 5)])
    for name in ("HeaderRecord", "HeaderBatch"):
        schema = AvroSchema.load(name)
        if name == "HeaderRecord":
            ref = AvroRecordEncoder(schema, 5, "t", Identity("h", "i"), RecordDecoder(names, CLOCK))
            fast = ColumnarRecordEncoder(schema, 5, "t", Identity("h", "i"), names, CLOCK)
        else:
            ref = AvroBatchEncoder(schema, 5, "t", Identity("h", "i"), RecordDecoder(names, CLOCK), 1 << 20)
            fast = ColumnarBatchEncoder(schema, 5, "t", Identity("h", "i"), names, CLOCK, 1 << 20)
        batch = Batch("cap", records, None)
        want, got = ref.encode(batch), fast.encode(batch)
        assert [e.payload for e in got] == [e.payload for e in want]
        reader = _apache_reader(schema)
        messages = [v for e in got for v in e.values()]
        assert len(messages) == (len(records) if name == "HeaderRecord" else 1)
        decoded = 0
        for framed in messages:
            by_apache = _apache_decode(reader, framed, 5)
            by_fastavro = schemaless_reader(io.BytesIO(framed[5:]), schema.parsed)
            assert by_apache == by_fastavro
            decoded += len(by_apache["records"]) if name == "HeaderBatch" else 1
        assert decoded == len(records)


@pytest.mark.parametrize("instruction", [
    [3, 0, -5, 0, 0, 0, 0, 0],  # fixed bytes of a negative width
    [3, 118, 6, 0, 0, 0, 0, 0],  # fixed bytes past the record's end
    [5, 105, 100, 0, 0, 0, 0, 76],  # a VLAN array longer than the record holds
    [1, 0, 3, 0, 0, 0, 0, 0],  # an integer 3 bytes wide
    [1, 0, 8, 0, 64, 0, 0, 0],  # a shift beyond 63
    [4, 110, 16, 0, 0, 0, 0, 0],  # an IP address past the end
    [6, 0, 0, 0, 0, 0, 0, 2],  # a constant that was not given
    [9, 0, 0, 0, 0, 0, 0, 0],  # an unknown instruction
])
def test_the_compiled_encoder_refuses_a_program_that_reads_outside_the_record(instruction: list[int]) -> None:
    from producer.serialize import _fastpath  # type: ignore[attr-defined]

    records = random_records(2, 1)
    offsets = np.empty(3, dtype=np.int64)
    with pytest.raises(ValueError, match="fastpath.encode: instruction 0"):
        _fastpath.encode(records.view(np.uint8).reshape(-1), abi.RECORD_SIZE, 96,
                         np.array([instruction], dtype=np.int64), (), np.empty(0, np.uint32), (), 0, 0, b"", offsets)
