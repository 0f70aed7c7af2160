"""Avro binary straight from the kernel's record array: the fast path, no Python object per record.

The encoding is driven by the schema.  ``compile_program`` binds each field of
HeaderRecord / PacketHeader, in schema order, to where its value lives in the
record (``abi.RECORD_FIELDS``) and to an instruction of the compiled encoder
(``_fastpath.c``, built by ``pip install``):

    long, int, enum   zig-zag varint of a column (shifted and masked: dscp, ecn;
                      plus the wall-clock offset: timestamp_ns)
    boolean           a flag bit            fixed    the raw bytes
    bytes             an IP address, 4 or 16 bytes by ip_version
    string            interface names from a per-call table; host, capture and
                      instance ids are constants encoded once
    ["null", T]       the branch (0 or 2) from the record's presence flags, then T
    array<int>        VLAN ids: count, items, 0

The compiled loop then writes every record of a block in one call (the GIL
released), each body optionally after a prefix (the 5-byte Confluent header in
record shape), and returns the bytes and where each body starts.  A HeaderBatch
is its envelope, one array block and the bodies; record shape cuts the framed
bodies at those offsets.  A field the compiler cannot bind is an error at
start, not a silent null.  fastavro stays the reference: tests/test_columnar.py
requires byte-identical output on thousands of random records (nulls, IPv6,
VLAN stacks, every flag combination, extreme values) and the Apache ``avro``
package to read the bytes back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from producer import abi
from producer.decode.convert import InterfaceNames, MonotonicToWall
from producer.errors import SerializationError
from producer.records import Batch, Encoded, Records
from producer.serialize import _fastpath  # type: ignore[attr-defined]
from producer.serialize.avro import frame_header
from producer.serialize.encoder import Identity, batch_messages
from producer.serialize.schemas import AvroSchema

OP_VARINT, OP_FLAG, OP_FIXED, OP_IP, OP_VLANS, OP_CONST, OP_IFACE, OP_SEQ = range(1, 9)
_OFFSET: Final = {name: off for name, _fmt, off in abi.RECORD_FIELDS}
_WIDTH: Final = {name: np.dtype(fmt).base.itemsize for name, fmt, _off in abi.RECORD_FIELDS}  # of one element
_COUNT: Final = {name: (np.dtype(fmt).shape or (1,))[0] for name, fmt, _off in abi.RECORD_FIELDS}  # elements
FLAGS_OFFSET: Final = _OFFSET["flags"]


def _column(name: str, present: int = 0, *, shift: int = 0, mask: int = 0, wall: bool = False) -> list[int]:
    return [OP_VARINT, _OFFSET[name], _WIDTH[name], present, shift, mask, 0, int(wall)]


def _flag(bit: int, present: int = 0) -> list[int]:
    return [OP_FLAG, 0, 0, present, 0, bit, 0, 0]


# Each schema field computed from the record: an instruction without its ``nullable`` slot
# (index 6), which comes from the schema.  ``present`` bits say when a ["null", T] field is T.
_FIELDS: Final[Mapping[str, list[int]]] = {
    "timestamp_ns": _column("ts_ns", wall=True),
    "interface": [OP_IFACE, _OFFSET["ifindex"], 4, 0, 0, 0, 0, 0],
    "ifindex": _column("ifindex"),
    "direction": _column("direction"),
    "src_mac": [OP_FIXED, _OFFSET["src_mac"], _COUNT["src_mac"], 0, 0, 0, 0, 0],
    "dst_mac": [OP_FIXED, _OFFSET["dst_mac"], _COUNT["dst_mac"], 0, 0, 0, 0, 0],
    "vlan_ids": [OP_VLANS, _OFFSET["vlan_count"], _COUNT["vlan_ids"], 0, 0, 0, 0, _OFFSET["vlan_ids"]],
    "ether_type": _column("ether_type"),
    "ip_version": _column("ip_version", abi.F_IP),
    "src_ip": [OP_IP, _OFFSET["src_ip"], 16, abi.F_IP, 0, 0, 0, _OFFSET["ip_version"]],
    "dst_ip": [OP_IP, _OFFSET["dst_ip"], 16, abi.F_IP, 0, 0, 0, _OFFSET["ip_version"]],
    "ip_proto": _column("ip_proto", abi.F_IP),
    "ttl": _column("ttl", abi.F_IP),
    "dscp": _column("tos", abi.F_IP, shift=2),
    "ecn": _column("tos", abi.F_IP, mask=3),
    "ip_total_length": _column("ip_total_length", abi.F_IP),
    "ip_id": _column("ip_id", abi.F_IP_ID),
    "dont_fragment": _flag(abi.F_DF, abi.F_FRAG),
    "more_fragments": _flag(abi.F_MF, abi.F_FRAG),
    "fragment_offset": _column("fragment_offset", abi.F_FRAG),
    "src_port": _column("src_port", abi.F_PORTS),
    "dst_port": _column("dst_port", abi.F_PORTS),
    "tcp_flags": _column("tcp_flags", abi.F_TCP),
    "tcp_seq": _column("tcp_seq", abi.F_TCP),
    "tcp_ack": _column("tcp_ack", abi.F_TCP),
    "tcp_window": _column("tcp_window", abi.F_TCP),
    "icmp_type": _column("icmp_type", abi.F_ICMP),
    "icmp_code": _column("icmp_code", abi.F_ICMP),
    "packet_length": _column("pkt_len"),
    "gso_segments": _column("gso_segments"),
    "truncated": _flag(abi.F_TRUNCATED),
    "parse_anomaly": _flag(abi.F_ANOMALY),
    "sample_rate": _column("sample_rate"),
    "capture_cpu": _column("cpu"),
    "capture_seq": _column("seq"),
}
#: the Avro types each kind of instruction writes
_KINDS: Final = {OP_VARINT: {"int", "long", "enum"}, OP_FLAG: {"boolean"}, OP_FIXED: {"fixed"}, OP_IP: {"bytes"},
                 OP_VLANS: {"array"}, OP_IFACE: {"string"}}


def _branches(t: Any) -> tuple[bool, Any]:
    """(nullable, the non-null type) of a field type."""
    if isinstance(t, list):
        others = [x for x in t if x != "null"]
        if len(t) != 2 or len(others) != 1 or t[0] != "null":
            raise SerializationError(f"union {t} is not [\"null\", T]")
        return True, others[0]
    return False, t


def _type_name(t: Any, named: Mapping[str, str]) -> str:
    if isinstance(t, dict):
        return str(t["type"])
    return named.get(t, t)


def _named_types(schema: Any, found: dict[str, str]) -> dict[str, str]:
    """Named types (enum, fixed, record) by name, so that a later reference knows its kind."""
    if isinstance(schema, dict):
        if schema.get("type") in ("enum", "fixed", "record") and "name" in schema:
            found[schema["name"]] = schema["type"]
        for v in schema.values():
            _named_types(v, found)
    elif isinstance(schema, list):
        for v in schema:
            _named_types(v, found)
    return found


_PARSED: dict[str, Any] = {}


def encode_value(schema_type: Any, value: Any) -> bytes:
    """One constant field's bytes (a string or a long, possibly in a ["null", T] union): fastavro's own writer."""
    from fastavro import parse_schema, schemaless_writer

    key = json.dumps(schema_type, sort_keys=True)
    if key not in _PARSED:
        _PARSED[key] = parse_schema({"type": "record", "name": "C", "fields": [{"name": "v", "type": schema_type}]})
    out = io.BytesIO()
    schemaless_writer(out, _PARSED[key], {"v": value})
    return out.getvalue()


class ColumnarRecords:
    """Encodes a record array as the bodies of one record schema (HeaderRecord or PacketHeader)."""

    def __init__(self, record_schema: dict[str, Any], constants: tuple[str, ...] = (),
                 per_record: str | None = None) -> None:
        """``constants``: fields the same in every record of a call (given to ``bodies``);
        ``per_record``: the field that counts up from ``seq_base`` (the instance's sequence)."""
        named = _named_types(record_schema, {})
        self._types = {f["name"]: f["type"] for f in record_schema["fields"]}
        self._constants = constants
        rows: list[list[int]] = []
        for f in record_schema["fields"]:
            name = f["name"]
            nullable, inner = _branches(f["type"])
            kind = _type_name(inner, named)
            if name in constants:
                row = [OP_CONST, 0, 0, 0, 0, 0, 0, constants.index(name)]
                nullable = False  # the constant's bytes carry their branch
            elif name == per_record:
                row = [OP_SEQ, 0, 0, 0, 0, 0, 0, 0]
            elif name in _FIELDS:
                row = list(_FIELDS[name])
                if kind not in _KINDS[row[0]]:
                    raise SerializationError(f"field {name}: type {kind} does not fit the kernel's value")
            else:
                raise SerializationError(f"field {name}: no value for it in the kernel record")
            row[6] = int(nullable)
            if not nullable:
                row[3] = 0  # presence only matters to a union
            rows.append(row)
        self.program = np.array(rows, dtype=np.int64)
        self._encoded: dict[tuple[str, Any], bytes] = {}  # constants and interface names, encoded once

    def _once(self, field: str, schema_type: Any, value: Any) -> bytes:
        key = (field, value)
        if key not in self._encoded:
            if len(self._encoded) > 4096:  # capture ids and renamed interfaces come and go
                self._encoded.clear()
            self._encoded[key] = encode_value(schema_type, value)
        return self._encoded[key]

    def bodies(self, records: Records, names: InterfaceNames, wall_offset_ns: int,
               constants: Mapping[str, Any], *, seq_base: int = 0, prefix: bytes = b""
               ) -> tuple[bytes, npt.NDArray[np.int64]]:
        """Every record's body (each after ``prefix``) back to back, and the n + 1 offsets where they start."""
        if records.dtype != abi.RECORD_DTYPE:  # e.g. np.concatenate packs the padding away
            records = records.astype(abi.RECORD_DTYPE)
        records = np.ascontiguousarray(records)
        consts = tuple(self._once(k, self._types[k], constants[k]) for k in self._constants)
        keys = np.unique(records["ifindex"]).astype(np.uint32)
        labels = tuple(self._once("", "string", names.name(int(i))) for i in keys)
        offsets = np.empty(len(records) + 1, dtype=np.int64)
        body: bytes = _fastpath.encode(records.view(np.uint8).reshape(-1), abi.RECORD_SIZE, FLAGS_OFFSET,
                                       self.program, consts, keys, labels, wall_offset_ns, seq_base, prefix,
                                       offsets)
        return body, offsets


class ColumnarBatchEncoder:
    """``batch`` shape: a HeaderBatch per message (same bytes as AvroBatchEncoder)."""

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
        body, ends = self._items.bodies(batch.records, self._names, offset, {})
        ts = batch.records["ts_ns"]

        def message(lo: int, hi: int) -> bytes:
            head = {"host_id": self._id.host_id, "agent_instance": self._id.instance_id,
                    "sequence": self._id.sequence, "capture_id": batch.capture_id,
                    "first_timestamp_ns": int(ts[lo:hi].min()) + offset,
                    "last_timestamp_ns": int(ts[lo:hi].max()) + offset}
            return (self._header + b"".join(encode_value(self._envelope[k], v) for k, v in head.items())
                    + encode_value("long", hi - lo) + body[int(ends[lo]):int(ends[hi])] + b"\x00")

        return batch_messages(batch, message, self._max, self._id, self._topic)


class ColumnarRecordEncoder:
    """``record`` shape: one HeaderRecord per message, all of a batch in one entry (same bytes as
    AvroRecordEncoder)."""

    def __init__(self, schema: AvroSchema, schema_id: int, topic: str, identity: Identity, names: InterfaceNames,
                 clock: MonotonicToWall) -> None:
        self._records = ColumnarRecords(schema.raw, ("host_id", "capture_id", "agent_instance"), "sequence")
        self._header = frame_header(schema_id)
        self._topic = topic
        self._id = identity
        self._names = names
        self._clock = clock

    def encode(self, batch: Batch) -> list[Encoded]:
        n = len(batch)
        if not n:
            return []
        framed, starts = self._records.bodies(
            batch.records, self._names, self._clock.offset_ns(),
            {"host_id": self._id.host_id, "capture_id": batch.capture_id, "agent_instance": self._id.instance_id},
            seq_base=self._id.sequence, prefix=self._header)
        self._id.sequence += n
        return [Encoded(self._topic, self._id.key, framed, tuple(starts[:-1].tolist()), n, batch.first_ts_ns,
                        batch.mark)]
