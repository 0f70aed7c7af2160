"""Kernel record bytes -> HeaderRecord dicts -> Avro (Confluent framing) and back."""

from __future__ import annotations

import io

import fastavro
import numpy as np

from producer.decode import layout
from producer.decode.convert import InterfaceNames, MonotonicToWall, RecordDecoder
from producer.records import render
from producer.serialize.avro import ConfluentAvroSerializer, parse_frame
from producer.serialize.schemas import AvroSchema


def _decoder() -> RecordDecoder:
    clock = MonotonicToWall(wall_ns=lambda: 1_000_000_000_000, mono_ns=lambda: 1_000)
    return RecordDecoder("host-a", InterfaceNames(lambda i: f"eth{i}"), clock)


def _tcp_v4() -> np.ndarray:
    a = np.zeros(1, dtype=layout.RECORD_DTYPE)
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
    r["gso_segments"], r["sample_rate"], r["direction"] = 1, 1, layout.DIR_EGRESS
    r["flags"] = (layout.F_IP | layout.F_PORTS | layout.F_TCP | layout.F_IP_ID | layout.F_FRAG
                  | layout.F_DF)
    return a


def test_decode_fields() -> None:
    [rec] = _decoder().decode(_tcp_v4())
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
    a[0]["flags"] = layout.F_TRUNCATED  # only layer 2 survived
    [rec] = _decoder().decode(a)
    for key in ("ip_version", "src_ip", "dst_ip", "ttl", "dscp", "src_port", "tcp_flags",
                "ip_id", "dont_fragment", "fragment_offset"):
        assert rec[key] is None, key
    assert rec["truncated"] is True


def test_avro_round_trip_with_confluent_framing() -> None:
    schema = AvroSchema.load("HeaderRecord")
    [rec] = _decoder().decode(_tcp_v4())
    msg = ConfluentAvroSerializer(schema, 77).serialize(rec)
    schema_id, body = parse_frame(msg)
    assert schema_id == 77 and msg[0] == 0
    back = fastavro.schemaless_reader(io.BytesIO(body), schema.parsed)
    assert back == rec
