"""What every output format shares: event ids, counts, protocol names, the Formatter seam.

A ``Formatter`` turns the header records of one Kafka message into JSON-ready
events (``ecs.py``, ``ocsf.py``, ``raw`` below).  It never drops a record: a
record it cannot map raises ``MappingError`` and the runner dead-letters the
message.

**Event ids survive replay.**  An id is a hash of the record's identity, the
same in both message shapes and across any replay of the topic or of the
agent's disk buffer: the host, the capture (``capture_id``), the CPU that
recorded the packet and that CPU's per-capture sequence number.  A HeaderRecord
of schema version 1 has no identity fields; its id is taken from where it sits
in Kafka (topic, partition, offset), which a replay of the topic also repeats.
Sinks that upsert by id (``_bulk`` with ``_id``, a lake's merge key) therefore
hold one document per record however often it is read.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from producer.consumer.community_id import community_id
from producer.errors import HdrlogError
from producer.render import render

#: the ECS and OCSF releases the events follow (their field lists are vendored in tests/data/ecs and
#: tests/data/ocsf); here, where ecs.py, ocsf.py and logs.py all read them
ECS_VERSION = "9.4.0"
OCSF_VERSION = "1.8.0"

#: IANA protocol keywords (https://www.iana.org/assignments/protocol-numbers), lowercase, as ECS's
#: network.transport and OCSF's protocol_name want them (ICMPv6 is "ipv6-icmp")
IANA_KEYWORDS = {1: "icmp", 2: "igmp", 4: "ipv4", 6: "tcp", 17: "udp", 41: "ipv6", 47: "gre", 50: "esp",
                 51: "ah", 58: "ipv6-icmp", 89: "ospf", 103: "pim", 112: "vrrp", 132: "sctp", 136: "udplite"}

ETHER_TYPES = {0x0806: "arp", 0x8035: "rarp", 0x88CC: "lldp", 0x8847: "mpls", 0x8848: "mpls", 0x8863: "pppoed",
               0x8864: "pppoes"}


class MappingError(HdrlogError):
    """A record could not be turned into an event (the message goes to the dead-letter topic)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message sits in Kafka."""

    topic: str
    partition: int
    offset: int


def event_id(record: dict[str, Any], origin: Origin, index: int) -> str:
    """A 32-hex-digit id from the record's identity: the first 16 bytes of its SHA-256 (module docstring)."""
    if record.get("capture_id") is not None:
        key = f"{record['host_id']}\x00{record['capture_id']}\x00{record['capture_cpu']}\x00{record['capture_seq']}"
    else:
        key = f"kafka\x00{origin.topic}\x00{origin.partition}\x00{origin.offset}\x00{index}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def wire_counts(record: dict[str, Any]) -> tuple[int, int]:
    """(bytes, packets) on the wire this record stands for.

    packets = gso_segments x sample_rate; bytes = packet_length x sample_rate (a GSO/GRO
    aggregate's length already spans its segments; their repeated headers are not counted).
    """
    rate = max(1, int(record["sample_rate"]))
    return int(record["packet_length"]) * rate, max(1, int(record["gso_segments"])) * rate


def flow_hash(record: dict[str, Any]) -> str | None:
    """The record's Community ID v1, or None for a record without IP addresses."""
    src, dst, proto = record.get("src_ip"), record.get("dst_ip"), record.get("ip_proto")
    if src is None or dst is None or proto is None or len(src) != len(dst):
        return None
    if record.get("icmp_type") is not None:
        return community_id(proto, src, dst, record["icmp_type"], record.get("icmp_code"))
    return community_id(proto, src, dst, record.get("src_port"), record.get("dst_port"))


def ip_text(raw: bytes | None) -> str | None:
    """An address as text; bytes of another length than 4 or 16 are not an address (a MappingError)."""
    if raw is None:
        return None
    if len(raw) not in (4, 16):
        raise ValueError(f"an IP address of {len(raw)} bytes")
    return str(ipaddress.ip_address(raw))


CACHE_MAX = 1 << 16


class Texts:
    """The text forms that repeat from record to record, cached per formatter: addresses, MACs,
    the seconds of timestamps, Community IDs.  Each cache starts again at CACHE_MAX entries, so
    memory stays bounded on traffic with endless distinct values."""

    def __init__(self) -> None:
        self._ip: dict[bytes, str] = {}
        self._mac: dict[tuple[bytes, str, bool], str] = {}
        self._sec: dict[int, str] = {}
        self._flow: dict[tuple[Any, ...], str] = {}

    def ip(self, raw: bytes | None) -> str | None:
        if raw is None:
            return None
        text = self._ip.get(raw)
        if text is None:
            text = str(ip_text(raw))
            if len(self._ip) >= CACHE_MAX:
                self._ip.clear()
            self._ip[raw] = text
        return text

    def mac(self, raw: bytes, sep: str, upper: bool = False) -> str:
        key = (raw, sep, upper)
        text = self._mac.get(key)
        if text is None:
            text = raw.hex(sep).upper() if upper else raw.hex(sep)
            if len(self._mac) >= CACHE_MAX:
                self._mac.clear()
            self._mac[key] = text
        return text

    def time(self, ns: int) -> str:
        """RFC 3339 UTC with nanoseconds (ES `date` keeps ms, `date_nanos` all of it)."""
        seconds, frac = divmod(int(ns), 1_000_000_000)
        head = self._sec.get(seconds)
        if head is None:
            head = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            if len(self._sec) >= CACHE_MAX:
                self._sec.clear()
            self._sec[seconds] = head
        return f"{head}.{frac:09d}Z"

    def flow(self, r: dict[str, Any]) -> str | None:
        """``flow_hash``, cached by the flow's key."""
        src, dst, proto = r.get("src_ip"), r.get("dst_ip"), r.get("ip_proto")
        if src is None or dst is None or proto is None or len(src) != len(dst):
            return None
        icmp = r.get("icmp_type")
        key = (proto, src, dst, icmp, r.get("icmp_code")) if icmp is not None else \
            (proto, src, dst, r.get("src_port"), r.get("dst_port"), None)
        text = self._flow.get(key)
        if text is None:
            text = flow_hash(r)
            assert text is not None
            if len(self._flow) >= CACHE_MAX:
                self._flow.clear()
            self._flow[key] = text
        return text


def present(**fields: Any) -> dict[str, Any] | None:
    """The fields that are not None, or None if none is left (so an empty object is left out too)."""
    out = {k: v for k, v in fields.items() if v is not None}
    return out or None


def prune(doc: dict[str, Any]) -> dict[str, Any]:
    """Drop None values and objects left empty, recursively (absent, not null, in every sink)."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            v = prune(v)
            if not v:
                continue
        elif v is None:
            continue
        out[k] = v
    return out


@dataclass(frozen=True, slots=True)
class ParquetHints:
    """What a format tells the Parquet writer about its fields (dotted paths).

    ``unique``: fields that differ in (nearly) every event -- times, ids, sequence numbers: no
    dictionary encoding (it only pays for the attempt), and integers delta-encoded.
    ``string_stats``: the string fields that get min/max statistics (None: every one); a time
    in RFC 3339 sorts as text, so its statistics let a reader skip row groups, while those of
    addresses or ids cost ~20% of the write and prune nothing."""

    unique: tuple[str, ...] = ()
    string_stats: tuple[str, ...] | None = None


class Formatter(Protocol):
    """Header records of one message -> events, in order, one per record."""

    name: str

    def events(self, records: Sequence[dict[str, Any]], origin: Origin) -> list[dict[str, Any]]: ...

    def log_events(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """LogEvents (the agent's HTTP ingest) -> events, one per record (consumer/logs.py)."""
        ...

    def partition(self, event: dict[str, Any]) -> tuple[str, str]:
        """(UTC date YYYY-MM-DD, host) of one of its events: the Parquet sink's partition."""
        ...

    def event_id(self, event: dict[str, Any]) -> str:
        """The event id of one of its events (the key that makes a replay an overwrite)."""
        ...


def utc_date(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%d")


def sample_records() -> list[dict[str, Any]]:
    """Synthetic records that between them set every field (both directions, IPv4 and IPv6, QinQ,
    TCP and ICMP elements at once): what the Parquet schema is inferred from."""
    base: dict[str, Any] = {
        "host_id": "h", "capture_id": "c", "capture_cpu": 0, "capture_seq": 0, "agent_instance": "a",
        "sequence": 0, "timestamp_ns": 1, "interface": "eth0", "ifindex": 1, "direction": "INGRESS",
        "src_mac": bytes(6), "dst_mac": bytes(6), "vlan_ids": [1, 2], "ether_type": 0x0800, "ip_version": 4,
        "src_ip": bytes(4), "dst_ip": bytes(4), "ip_proto": 6, "ttl": 1, "dscp": 0, "ecn": 0,
        "ip_total_length": 40, "ip_id": 0, "dont_fragment": True, "more_fragments": False, "fragment_offset": 0,
        "src_port": 1, "dst_port": 2, "tcp_flags": 2, "tcp_seq": 0, "tcp_ack": 0, "tcp_window": 0,
        "icmp_type": 8, "icmp_code": 0, "packet_length": 60, "gso_segments": 1, "truncated": False,
        "parse_anomaly": False, "sample_rate": 1}
    return [base, {**base, "direction": "EGRESS", "ip_version": 6, "src_ip": bytes(16), "dst_ip": bytes(16)}]


def sample_log_records() -> list[dict[str, Any]]:
    """Synthetic LogEvents that between them set every field: what a log dataset's Parquet schema is
    inferred from."""
    base: dict[str, Any] = {
        "timestamp_ns": 1, "received_ns": 1, "host_id": "h", "agent_instance": "a", "sequence": 0,
        "source": "KONG", "level": "info", "message": "m", "src_ip": bytes(4), "dst_ip": bytes(4), "src_port": 1,
        "dst_port": 2, "ip_proto": 6, "http_method": "GET", "http_url": "/", "http_status": 200,
        "http_user_agent": "u", "http_request_bytes": 1, "http_response_bytes": 1, "duration_ns": 1,
        "attributes": {"k": "v"}}
    return [base, {**base, "src_ip": bytes(16), "dst_ip": bytes(16)}]


def map_each(records: Sequence[dict[str, Any]], origin: Origin,
             one: Callable[[dict[str, Any], str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply ``one(record, event_id)`` to each record; any failure becomes a MappingError."""
    out = []
    for i, record in enumerate(records):
        try:
            out.append(one(record, event_id(record, origin, i)))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError, OSError, struct.error) as exc:
            raise MappingError(f"record {i} cannot be mapped: {type(exc).__name__}: {exc}") from exc
    return out


class RawFormatter:
    """The records as the schema has them (addresses as text), plus the event id and Community ID."""

    name = "raw"

    def partition(self, event: dict[str, Any]) -> tuple[str, str]:
        return utc_date(event["timestamp_ns"]), str(event["host_id"])

    def event_id(self, event: dict[str, Any]) -> str:
        return str(event["event_id"])

    def events(self, records: Sequence[dict[str, Any]], origin: Origin) -> list[dict[str, Any]]:
        def one(r: dict[str, Any], eid: str) -> dict[str, Any]:
            out = render(r)
            out["event_id"] = eid
            out["community_id"] = flow_hash(r)
            return out

        return map_each(records, origin, one)

    def __init__(self) -> None:
        self._texts = Texts()

    def log_events(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        from producer.consumer.logs import map_logs, raw_log  # logs.py imports this module

        return map_logs(records, lambda r, eid: raw_log(r, eid, self._texts))
