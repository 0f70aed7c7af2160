"""Avro binary straight from the kernel's record array, column by column: no Python object per record.

The encoding is driven by the schema: each field of HeaderRecord / PacketHeader
is bound to a column of the drained numpy array (``_COLUMNS``), and each Avro
type becomes a vectorised writer that returns, for every record, up to ``w``
bytes and how many of them count:

    long, int   zig-zag varint (one numpy pass per 7 bits)
    boolean     one byte            enum     varint of the symbol index
    fixed       the raw bytes       bytes    varint length + raw bytes
    string      varint length + UTF-8 (interface names from a small table)
    ["null", T] the branch (0 or 2) + T where present
    array<int>  count, items, 0 (VLAN ids; an empty array is the single byte 0)

All the writers' outputs (parts) side by side form an (n, W) byte matrix and a
mask of the bytes that count; ``matrix[mask]`` is, row after row, every
record's body: the compaction does all the packing in one numpy call.
A HeaderBatch is its envelope, one array block and the bodies; record shape
cuts the bodies at the per-record lengths.  fastavro stays the reference:
tests/test_columnar.py requires byte-identical output on thousands of random
records (nulls, IPv6, VLAN stacks, every flag combination), and the compiled
encoder of the performance work must do the same behind the same ``Encoder`` seam.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from producer import abi
from producer.decode.convert import InterfaceNames, MonotonicToWall
from producer.errors import SerializationError
from producer.records import Batch, Encoded, Records
from producer.serialize.avro import frame_header
from producer.serialize.encoder import Identity, batch_messages
from producer.serialize.schemas import AvroSchema

U8 = npt.NDArray[np.uint8]
Bytes = tuple[U8, npt.NDArray[np.int64]]  # (n, w) bytes and (n,) counts
Parts = list[Bytes]  # written one after the other within each record


def varint(values: npt.NDArray[Any]) -> Bytes:
    """Avro's zig-zag varint of int64 ``values``: (n, up to 10) bytes and their lengths."""
    v = values.astype(np.int64)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    n = len(z)
    cols: list[U8] = []
    lens = np.zeros(n, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    while True:
        low = (z & np.uint64(0x7F)).astype(np.uint8)
        z = z >> np.uint64(7)
        more = z != 0
        cols.append(low | (more.astype(np.uint8) << 7))
        lens += active
        active &= more
        if not active.any():
            break
    return np.stack(cols, axis=1), lens


def _fixed(columns: U8) -> Bytes:
    n, w = columns.shape
    return np.ascontiguousarray(columns, dtype=np.uint8), np.full(n, w, dtype=np.int64)


def _byte(values: npt.NDArray[Any]) -> Bytes:
    return values.astype(np.uint8).reshape(-1, 1), np.ones(len(values), dtype=np.int64)


def _union(present: npt.NDArray[np.bool_], value: Parts) -> Parts:
    """["null", T]: branch 0 (byte 0x00) or branch 1 (byte 0x02) followed by T where present."""
    branch = np.where(present, 2, 0).astype(np.uint8).reshape(-1, 1)
    return [(branch, np.ones(len(present), dtype=np.int64))] + [(m, np.where(present, ln, 0)) for m, ln in value]


def _constant(encoded: bytes, n: int) -> Bytes:
    row = np.frombuffer(encoded, dtype=np.uint8)
    return np.broadcast_to(row, (n, len(row))), np.full(n, len(row), dtype=np.int64)


def _string_bytes(text: str) -> bytes:
    raw = text.encode()
    m, ln = varint(np.array([len(raw)]))
    return bytes(m[0, : ln[0]]) + raw


def _ip(records: Records, column: str) -> Parts:
    raw = records[column]
    v6 = records["ip_version"] == 6
    head = np.where(v6, 32, 8).astype(np.uint8).reshape(-1, 1)  # the varint of 16 or 4
    return [(head, np.ones(len(raw), dtype=np.int64)), (raw, np.where(v6, 16, 4))]


def _vlans(records: Records) -> Parts:
    count = records["vlan_count"].astype(np.int64)
    ids = records["vlan_ids"].astype(np.int64)
    a_m, a_l = varint(ids[:, 0])
    b_m, b_l = varint(ids[:, 1])
    end = np.zeros((len(count), 1), dtype=np.uint8)
    return [varint(count), (a_m, np.where(count >= 1, a_l, 0)), (b_m, np.where(count >= 2, b_l, 0)),
            (end, (count > 0).astype(np.int64))]


@dataclass
class _Context:
    records: Records
    flags: npt.NDArray[np.uint32]
    wall_offset_ns: int
    names: InterfaceNames
    constants: Mapping[str, Any]


Column = tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]  # values, and presence (None: always there)


def _opt(column: str, bit: int) -> Callable[[_Context], Column]:
    return lambda c: (c.records[column], (c.flags & bit) != 0)


def _interfaces(c: _Context) -> Parts:
    idx = c.records["ifindex"]
    uniq, inverse = np.unique(idx, return_inverse=True)
    encoded = [_string_bytes(c.names.name(int(i))) for i in uniq]
    width = max(len(e) for e in encoded)
    table = np.zeros((len(encoded), width), dtype=np.uint8)
    lens = np.array([len(e) for e in encoded], dtype=np.int64)
    for i, e in enumerate(encoded):
        table[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
    return [(table[inverse], lens[inverse])]


# How each schema field is computed from the record array: a numeric column (with a presence
# test for unions), or a writer of its own.
_NUMERIC: dict[str, Callable[[_Context], Column]] = {
    "timestamp_ns": lambda c: (c.records["ts_ns"].astype(np.int64) + c.wall_offset_ns, None),
    "ifindex": lambda c: (c.records["ifindex"], None),
    "ether_type": lambda c: (c.records["ether_type"], None),
    "ip_version": _opt("ip_version", abi.F_IP),
    "ip_proto": _opt("ip_proto", abi.F_IP),
    "ttl": _opt("ttl", abi.F_IP),
    "dscp": lambda c: (c.records["tos"] >> 2, (c.flags & abi.F_IP) != 0),
    "ecn": lambda c: (c.records["tos"] & 3, (c.flags & abi.F_IP) != 0),
    "ip_total_length": _opt("ip_total_length", abi.F_IP),
    "ip_id": _opt("ip_id", abi.F_IP_ID),
    "fragment_offset": _opt("fragment_offset", abi.F_FRAG),
    "src_port": _opt("src_port", abi.F_PORTS),
    "dst_port": _opt("dst_port", abi.F_PORTS),
    "tcp_flags": _opt("tcp_flags", abi.F_TCP),
    "tcp_seq": _opt("tcp_seq", abi.F_TCP),
    "tcp_ack": _opt("tcp_ack", abi.F_TCP),
    "tcp_window": _opt("tcp_window", abi.F_TCP),
    "icmp_type": _opt("icmp_type", abi.F_ICMP),
    "icmp_code": _opt("icmp_code", abi.F_ICMP),
    "packet_length": lambda c: (c.records["pkt_len"], None),
    "gso_segments": lambda c: (c.records["gso_segments"], None),
    "sample_rate": lambda c: (c.records["sample_rate"], None),
    "capture_cpu": lambda c: (c.records["cpu"], None),
    "capture_seq": lambda c: (c.records["seq"], None),
    "dont_fragment": lambda c: ((c.flags & abi.F_DF) != 0, (c.flags & abi.F_FRAG) != 0),
    "more_fragments": lambda c: ((c.flags & abi.F_MF) != 0, (c.flags & abi.F_FRAG) != 0),
    "truncated": lambda c: ((c.flags & abi.F_TRUNCATED) != 0, None),
    "parse_anomaly": lambda c: ((c.flags & abi.F_ANOMALY) != 0, None),
    "direction": lambda c: (c.records["direction"], None),
}
_SPECIAL: dict[str, Callable[[_Context], Parts]] = {
    "interface": _interfaces,
    "src_mac": lambda c: [_fixed(c.records["src_mac"])],
    "dst_mac": lambda c: [_fixed(c.records["dst_mac"])],
    "vlan_ids": lambda c: _vlans(c.records),
}
_IP = {"src_ip": "src_ip", "dst_ip": "dst_ip"}


def _branches(t: Any) -> tuple[bool, Any]:
    """(nullable, the non-null type) of a field type."""
    if isinstance(t, list):
        others = [x for x in t if x != "null"]
        if len(t) != 2 or len(others) != 1 or "null" not in t or t[0] != "null":
            raise SerializationError(f"union {t} is not [\"null\", T]")
        return True, others[0]
    return False, t


def _type_name(t: Any) -> str:
    return t if isinstance(t, str) else str(t.get("type"))


class _FieldWriter:
    def __init__(self, field: dict[str, Any]) -> None:
        self.name = field["name"]
        self.nullable, inner = _branches(field["type"])
        self.kind = _type_name(inner)
        if self.name in _IP:
            self.kind = "ip"
        elif self.name in _SPECIAL:
            self.kind = "special"
        elif self.name not in _NUMERIC:
            self.kind = "constant"  # the same in every record of a batch: host, capture, instance
        if self.kind not in ("long", "int", "boolean", "enum", "ip", "special", "constant", "string"):
            raise SerializationError(f"field {self.name}: type {self.kind} has no columnar writer")

    def write(self, c: _Context, constant_bytes: Mapping[str, bytes]) -> Parts:
        n = len(c.records)
        if self.kind == "constant" or self.name in constant_bytes:
            return [_constant(constant_bytes[self.name], n)]
        if self.kind == "ip":
            present = (c.flags & abi.F_IP) != 0
            return _union(present, _ip(c.records, self.name)) if self.nullable else _ip(c.records, self.name)
        if self.kind == "special":
            return _SPECIAL[self.name](c)
        values, present = _NUMERIC[self.name](c)
        value = [_byte(values) if self.kind == "boolean" else varint(values.astype(np.int64))]
        if not self.nullable:
            return value
        return _union(np.ones(n, dtype=bool) if present is None else present, value)


def _encode_value(schema_type: Any, value: Any) -> bytes:
    """One constant field's bytes (a string, a long or null, possibly in a ["null", T] union)."""
    nullable, inner = _branches(schema_type)
    if nullable:
        return b"\x00" if value is None else b"\x02" + _encode_value(inner, value)
    if _type_name(inner) == "string":
        return _string_bytes(str(value))
    m, ln = varint(np.array([int(value)]))
    return bytes(m[0, : ln[0]])


class ColumnarRecords:
    """Encodes a record array as the bodies of one record schema (HeaderRecord or PacketHeader)."""

    def __init__(self, record_schema: dict[str, Any]) -> None:
        self.fields = record_schema["fields"]
        self._writers = [_FieldWriter(f) for f in self.fields]
        self._types = {f["name"]: f["type"] for f in self.fields}

    def bodies(self, records: Records, names: InterfaceNames, wall_offset_ns: int,
               constants: Mapping[str, Any], per_record: Mapping[str, npt.NDArray[Any]] | None = None
               ) -> tuple[bytes, npt.NDArray[np.int64]]:
        """Every record's body back to back, and each body's length."""
        ctx = _Context(records, records["flags"].astype(np.uint32), wall_offset_ns, names, constants)
        const_bytes = {k: _encode_value(self._types[k], v) for k, v in constants.items() if k in self._types}
        parts: Parts = []
        for w in self._writers:
            if per_record and w.name in per_record:
                nullable, _ = _branches(self._types[w.name])
                value = [varint(per_record[w.name])]
                parts += _union(np.ones(len(records), dtype=bool), value) if nullable else value
            else:
                parts += w.write(ctx, const_bytes)
        matrix = np.concatenate([np.broadcast_to(m, (len(records), m.shape[1])) for m, _ in parts], axis=1)
        mask = np.concatenate([np.arange(m.shape[1]) < ln[:, None] for m, ln in parts], axis=1)
        lens = np.sum([ln for _, ln in parts], axis=0)
        return matrix[mask].tobytes(), lens


class ColumnarBatchEncoder:
    """``batch`` shape: a HeaderBatch per message, encoded columnar (same bytes as AvroBatchEncoder)."""

    def __init__(self, schema: AvroSchema, schema_id: int, topic: str, identity: Identity, names: InterfaceNames,
                 clock: MonotonicToWall, max_bytes: int) -> None:
        raw = schema.raw
        self._envelope = {f["name"]: f["type"] for f in raw["fields"] if f["name"] != "records"}
        item = next(f for f in raw["fields"] if f["name"] == "records")["type"]["items"]
        self._items = ColumnarRecords(item)
        self._header = frame_header(schema_id)
        self._topic = topic
        self._id = identity
        self._names = names
        self._clock = clock
        self._max = max_bytes

    def encode(self, batch: Batch) -> list[Encoded]:
        if not len(batch):
            return []
        offset = self._clock.offset_ns()
        body, lens = self._items.bodies(batch.records, self._names, offset, {})
        ends = np.concatenate([[0], np.cumsum(lens)])
        ts = batch.records["ts_ns"].astype(np.int64) + offset

        def message(lo: int, hi: int) -> bytes:
            head = {"host_id": self._id.host_id, "agent_instance": self._id.instance_id,
                    "sequence": self._id.sequence, "capture_id": batch.capture_id,
                    "first_timestamp_ns": int(ts[lo:hi].min()), "last_timestamp_ns": int(ts[lo:hi].max())}
            return (self._header + b"".join(_encode_value(self._envelope[k], v) for k, v in head.items())
                    + _encode_value("long", hi - lo) + body[int(ends[lo]):int(ends[hi])] + b"\x00")

        return batch_messages(batch, message, self._max, self._id, self._topic)


class ColumnarRecordEncoder:
    """``record`` shape: one HeaderRecord per message, all of a batch in one entry (same bytes as
    AvroRecordEncoder)."""

    def __init__(self, schema: AvroSchema, schema_id: int, topic: str, identity: Identity, names: InterfaceNames,
                 clock: MonotonicToWall) -> None:
        self._records = ColumnarRecords(schema.raw)
        self._header = np.frombuffer(frame_header(schema_id), dtype=np.uint8)
        self._topic = topic
        self._id = identity
        self._names = names
        self._clock = clock

    def encode(self, batch: Batch) -> list[Encoded]:
        n = len(batch)
        if not n:
            return []
        seqs = np.arange(self._id.sequence, self._id.sequence + n, dtype=np.int64)
        body, lens = self._records.bodies(
            batch.records, self._names, self._clock.offset_ns(),
            {"host_id": self._id.host_id, "capture_id": batch.capture_id, "agent_instance": self._id.instance_id},
            per_record={"sequence": seqs})
        self._id.sequence += n
        # each message: the 5-byte Confluent header, then its body
        framed = np.empty(int(lens.sum()) + 5 * n, dtype=np.uint8)
        starts = np.concatenate([[0], np.cumsum(lens + 5)[:-1]]).astype(np.int64)
        header_at = (starts[:, None] + np.arange(5)).ravel()
        framed[header_at] = np.tile(self._header, n)
        keep = np.ones(len(framed), dtype=bool)
        keep[header_at] = False
        framed[keep] = np.frombuffer(body, dtype=np.uint8)
        return [Encoded(self._topic, self._id.key, framed.tobytes(), tuple(starts.tolist()), n, batch.first_ts_ns,
                        batch.mark)]
