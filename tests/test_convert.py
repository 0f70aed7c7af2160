"""Kernel record bytes -> the schemas' fields -> Avro (Confluent framing, both shapes) and back."""

from __future__ import annotations

import io

import fastavro
import numpy as np

from producer import abi
from producer.decode.convert import InterfaceNames, MonotonicToWall, RecordDecoder
from producer.records import Batch, RingMark
from producer.render import render
from producer.serialize.avro import parse_frame
from producer.serialize.encoder import AvroBatchEncoder, AvroRecordEncoder, Identity
from producer.serialize.schemas import AvroSchema
from tests.conftest import ROOT


def _decoder() -> RecordDecoder:
    clock = MonotonicToWall(wall_ns=lambda: 1_000_000_000_000, mono_ns=lambda: 1_000)
    return RecordDecoder(InterfaceNames(lambda i: f"eth{i}"), clock)


def _tcp_v4() -> np.ndarray:
    a = np.zeros(1, dtype=abi.RECORD_DTYPE)
    r = a[0]
    r["ts_ns"] = 5_000
    r["ifindex"] = 3
    r["pkt_len"] = 74
    r["src_ip"][:4] = [10, 0, 0, 1]
    r["dst_ip"][:4] = [10, 0, 0, 2]
    r["src_mac"] = [2, 0, 0, 0, 0, 1]
    r["dst_mac"] = [2, 0, 0, 0, 0, 2]
    r["vlan_ids"] = [100, 200]
    r["vlan_count"] = 2
    r["ether_type"] = 0x0800
    r["ip_version"], r["ip_proto"], r["ttl"], r["tos"] = 4, 6, 64, (46 << 2) | 1
    r["ip_total_length"], r["ip_id"] = 60, 4242
    r["src_port"], r["dst_port"] = 40000, 443
    r["tcp_flags"], r["tcp_seq"], r["tcp_ack"], r["tcp_window"] = 0x102, 0xFFFFFFFF, 7, 64240
    r["gso_segments"], r["sample_rate"], r["direction"] = 1, 1, abi.DIR_EGRESS
    r["flags"] = (abi.F_IP | abi.F_PORTS | abi.F_TCP | abi.F_IP_ID | abi.F_FRAG
                  | abi.F_DF)
    return a


def test_decode_fields() -> None:
    [rec] = _decoder().decode(_tcp_v4(), host_id="host-a")
    shown = render(rec)
    assert shown["timestamp_ns"] == 1_000_000_000_000 - 1_000 + 5_000
    assert (shown["interface"], shown["direction"], shown["host_id"]) == ("eth3", "EGRESS", "host-a")
    assert (shown["src_ip"], shown["dst_ip"]) == ("10.0.0.1", "10.0.0.2")
    assert (shown["src_mac"], shown["vlan_ids"]) == ("02:00:00:00:00:01", [100, 200])
    assert (shown["dscp"], shown["ecn"], shown["dont_fragment"], shown["more_fragments"]) == (46, 1, True, False)
    assert (shown["tcp_flags"], shown["tcp_seq"], shown["src_port"]) == (0x102, 0xFFFFFFFF, 40000)
    assert shown["icmp_type"] is None and shown["truncated"] is False


def test_absent_groups_are_null() -> None:
    a = _tcp_v4()
    a[0]["flags"] = abi.F_TRUNCATED  # only layer 2 survived
    [rec] = _decoder().decode(a, host_id="host-a")
    for key in ("ip_version", "src_ip", "dst_ip", "ttl", "dscp", "src_port", "tcp_flags",
                "ip_id", "dont_fragment", "fragment_offset"):
        assert rec[key] is None, key
    assert rec["truncated"] is True


def _many(n: int) -> np.ndarray:
    a = np.repeat(_tcp_v4(), n)
    a["cpu"] = np.arange(n) % 2
    a["seq"] = np.arange(n) // 2
    a["ts_ns"] = 5_000 + np.arange(n)
    return a


def test_batch_shape_round_trip() -> None:
    schema = AvroSchema.load("HeaderBatch")
    ident = Identity("host-a", "inst-1")
    enc = AvroBatchEncoder(schema, 77, "t", ident, _decoder(), 1_000_000)
    batch = Batch("cap-1", _many(5), RingMark("cap-1", 640))
    [entry] = enc.encode(batch)
    assert (entry.topic, entry.key, entry.records, entry.offsets, entry.mark) == ("t", b"host-a", 5, None, batch.mark)
    schema_id, body = parse_frame(entry.payload)
    assert schema_id == 77 and entry.payload[0] == 0
    back = fastavro.schemaless_reader(io.BytesIO(body), schema.parsed)
    assert (back["host_id"], back["agent_instance"], back["sequence"], back["capture_id"]) == (
        "host-a", "inst-1", 0, "cap-1")
    wall = 1_000_000_000_000 - 1_000
    assert (back["first_timestamp_ns"], back["last_timestamp_ns"]) == (wall + 5_000, wall + 5_004)
    assert [(r["capture_cpu"], r["capture_seq"]) for r in back["records"]] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
    assert back["records"][0] == {k: v for k, v in _decoder().decode(_many(1))[0].items()}
    [again] = enc.encode(batch)
    assert fastavro.schemaless_reader(io.BytesIO(parse_frame(again.payload)[1]), schema.parsed)["sequence"] == 1


def test_batch_over_max_bytes_is_split_with_increasing_sequences() -> None:
    schema = AvroSchema.load("HeaderBatch")
    enc = AvroBatchEncoder(schema, 1, "t", Identity("h", "i"), _decoder(), 4096)
    entries = enc.encode(Batch("c", _many(200), RingMark("c", 9)))
    assert len(entries) > 1 and sum(e.records for e in entries) == 200
    assert all(len(e.payload) <= 4096 for e in entries)
    seqs, cpu_seq = [], []
    for e in entries:
        back = fastavro.schemaless_reader(io.BytesIO(parse_frame(e.payload)[1]), schema.parsed)
        seqs.append(back["sequence"])
        cpu_seq += [(r["capture_cpu"], r["capture_seq"]) for r in back["records"]]
    assert seqs == list(range(len(entries)))
    assert cpu_seq == [(i % 2, i // 2) for i in range(200)]  # every record once, in order
    # the ring may be released only once the last part is stored
    assert [e.mark for e in entries] == [None] * (len(entries) - 1) + [RingMark("c", 9)]


def test_record_shape_one_message_per_record_in_one_entry() -> None:
    schema = AvroSchema.load("HeaderRecord")
    enc = AvroRecordEncoder(schema, 5, "t", Identity("host-a", "inst-1", start=10), _decoder())
    [entry] = enc.encode(Batch("cap-1", _many(3), None))
    assert entry.records == entry.messages == 3
    backs = []
    for value in entry.values():
        schema_id, body = parse_frame(value)
        assert schema_id == 5
        backs.append(fastavro.schemaless_reader(io.BytesIO(body), schema.parsed))
    assert [b["sequence"] for b in backs] == [10, 11, 12]
    assert [(b["capture_id"], b["capture_cpu"], b["capture_seq"]) for b in backs] == [
        ("cap-1", 0, 0), ("cap-1", 1, 0), ("cap-1", 0, 1)]
    assert all(b["host_id"] == "host-a" and b["agent_instance"] == "inst-1" for b in backs)


def test_record_shape_reads_version_1_data_backward() -> None:
    """A v2 reader (the current schema) reads what v1 wrote: the new fields default to null."""
    v1 = AvroSchema.load("HeaderRecord.v1", ROOT / "schemas" / "history")
    v2 = AvroSchema.load("HeaderRecord")
    rec = _decoder().decode(_tcp_v4(), host_id="h")[0]
    old = {k: v for k, v in rec.items() if k not in ("capture_cpu", "capture_seq")}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v1.parsed, old)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, v1.parsed, v2.parsed)
    assert {k: back[k] for k in old} == old
    assert all(back[k] is None for k in ("capture_id", "capture_cpu", "capture_seq", "agent_instance", "sequence"))
