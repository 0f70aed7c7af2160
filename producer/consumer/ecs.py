"""Header records -> Elastic Common Schema 9.x events (the README's "ECS" table, field by field).

One event per record: ``event.kind: event``, ``event.category: [network]``,
``event.type: [connection]``, ``event.dataset: hdrlog.headers``.  The packet's
direction is the observing host's (``network.direction`` ingress / egress, ECS's
host-based values), and the interface sits under ``observer.ingress`` or
``observer.egress`` accordingly.  MACs are in ECS's format (upper case, hyphens);
``network.iana_number`` and the VLAN ids are keywords, as ECS types them.
``network.bytes`` and ``network.packets`` are what the record stands for on the
wire: scaled by ``sample_rate``, and by ``gso_segments`` for packets
(mapping.wire_counts).  Header elements ECS has no field for are under
``hdrlog.*``.  Absent values are left out, never null.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from producer.consumer.logs import ecs_log, map_logs
from producer.consumer.mapping import (
    ECS_VERSION,
    ETHER_TYPES,
    IANA_KEYWORDS,
    Origin,
    ParquetHints,
    Texts,
    map_each,
    present,
    wire_counts,
)
from producer.consumer.reader import Columns
from producer.consumer.render import (
    Block,
    Bool,
    CommunityId,
    Computed,
    Const,
    Ctx,
    EventId,
    Int,
    IntText,
    Ip,
    Lookup,
    Mac,
    Str,
    Template,
    Time,
    When,
    bool_array,
    int_array,
    obj,
)
from producer.render import TCP_FLAG_NAMES, tcp_flag_names

DATASET = "hdrlog.headers"


def ecs_mac(raw: bytes) -> str:
    """ECS's MAC format: upper-case hex pairs joined by hyphens."""
    return raw.hex("-").upper()


def ecs_event(r: dict[str, Any], eid: str, t: Texts) -> dict[str, Any]:
    nbytes, npackets = wire_counts(r)
    src, dst = t.ip(r["src_ip"]), t.ip(r["dst_ip"])
    proto = r["ip_proto"]
    vlans = r["vlan_ids"]
    version = r["ip_version"]
    side = "ingress" if r["direction"] == "INGRESS" else "egress"
    flags = r["tcp_flags"]
    host = r["host_id"]
    doc: dict[str, Any] = {
        "@timestamp": t.time(r["timestamp_ns"]),
        "ecs": {"version": ECS_VERSION},
        "event": {"kind": "event", "category": ["network"], "type": ["connection"], "dataset": DATASET,
                  "module": "hdrlog", "id": eid},
        "host": {"name": host},
        "observer": {"hostname": host, "type": "sensor", "product": "hdrlog",
                     side: {"interface": {"name": r["interface"], "id": str(r["ifindex"])}}},
        "source": present(ip=src, port=r["src_port"], mac=t.mac(r["src_mac"], "-", upper=True)),
        "destination": present(ip=dst, port=r["dst_port"], mac=t.mac(r["dst_mac"], "-", upper=True)),
        "network": present(
            transport=IANA_KEYWORDS.get(proto) if proto is not None else None,
            type=f"ipv{version}" if version in (4, 6) else ETHER_TYPES.get(r["ether_type"]),
            iana_number=str(proto) if proto is not None else None,
            direction=side,
            community_id=t.flow(r),
            vlan={"id": str(vlans[0])} if vlans else None,
            inner={"vlan": {"id": str(vlans[1])}} if len(vlans) > 1 else None,
            bytes=nbytes,
            packets=npackets,
        ),
        "hdrlog": present(
            timestamp_ns=r["timestamp_ns"], ether_type=r["ether_type"], packet_length=r["packet_length"],
            gso_segments=r["gso_segments"], sample_rate=r["sample_rate"], truncated=r["truncated"],
            parse_anomaly=r["parse_anomaly"],
            ip=present(version=version, ttl=r["ttl"], dscp=r["dscp"], ecn=r["ecn"], id=r["ip_id"],
                       total_length=r["ip_total_length"], dont_fragment=r["dont_fragment"],
                       more_fragments=r["more_fragments"], fragment_offset=r["fragment_offset"]),
            tcp=present(flags=flags, flag_names=tcp_flag_names(flags) if flags is not None else None,
                        seq=r["tcp_seq"], ack=r["tcp_ack"], window=r["tcp_window"]),
            icmp=present(type=r["icmp_type"], code=r["icmp_code"]),
            capture=present(id=r.get("capture_id"), cpu=r.get("capture_cpu"), seq=r.get("capture_seq")),
            agent_instance=r.get("agent_instance"), sequence=r.get("sequence"),
        ),
    }
    if src is not None or dst is not None:
        doc["related"] = {"ip": [src] if src == dst or dst is None else [dst] if src is None else [src, dst]}
    for key in ("source", "destination"):
        if doc[key] is None:
            del doc[key]
    return doc


def _wire(ctx: Ctx) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    rate = np.maximum(1, ctx.field("sample_rate")[0])
    return ctx.field("packet_length")[0] * rate, np.maximum(1, ctx.field("gso_segments")[0]) * rate


def _network_type(ctx: Ctx) -> pa.Array:
    return pc.coalesce(Lookup("ip_version", {4: "ipv4", 6: "ipv6"}).arrow(ctx),
                       Lookup("ether_type", ETHER_TYPES).arrow(ctx))


def _related_ip(ctx: Ctx) -> pa.Array:
    """[src] if src == dst or there is no dst, [dst] if there is no src, else [src, dst]."""
    src, dst = Ip("src_ip").arrow(ctx), Ip("dst_ip").arrow(ctx)
    has_src, has_dst = src.is_valid().to_numpy(zero_copy_only=False), dst.is_valid().to_numpy(zero_copy_only=False)
    same = pc.fill_null(pc.equal(src, dst), False).to_numpy(zero_copy_only=False)
    keep = np.stack([has_src, has_dst & ~(has_src & same)], axis=1)
    counts = keep.sum(axis=1)
    offsets = np.zeros(ctx.n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    n = np.arange(ctx.n, dtype=np.int64)
    index = np.stack([n, n + ctx.n], axis=1)[keep]
    values = pa.concat_arrays([src, dst]).take(pa.array(index))
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=bool_array(counts == 0))


def _endpoint(side: str) -> Any:
    return obj(("ip", Ip(f"{side}_ip")), ("port", Int(f"{side}_port")), ("mac", Mac(f"{side}_mac", "-", upper=True)))


def _interface(when: When) -> Any:
    return obj(("interface", obj(("name", Str("interface")), ("id", IntText("ifindex")))), when=when)


#: ecs_event as a field table (render.py): the same events, from columns
ECS_TEMPLATE = Template(obj(
    ("@timestamp", Time("timestamp_ns")),
    ("ecs", obj(("version", Const(ECS_VERSION)))),
    ("event", obj(("kind", Const("event")), ("category", Const(["network"])), ("type", Const(["connection"])),
                  ("dataset", Const(DATASET)), ("module", Const("hdrlog")), ("id", EventId()))),
    ("host", obj(("name", Str("host_id")))),
    ("observer", obj(("hostname", Str("host_id")), ("type", Const("sensor")), ("product", Const("hdrlog")),
                     ("ingress", _interface(When("direction", "INGRESS"))),
                     ("egress", _interface(When("direction", "INGRESS", negate=True))))),
    ("source", _endpoint("src")),
    ("destination", _endpoint("dst")),
    ("network", obj(
        ("transport", Lookup("ip_proto", IANA_KEYWORDS)),
        ("type", Computed(_network_type)),
        ("iana_number", IntText("ip_proto")),
        ("direction", Lookup("direction", {"INGRESS": "ingress", "EGRESS": "egress"})),
        ("community_id", CommunityId()),
        ("vlan", obj(("id", IntText("vlan_ids", 0)))),
        ("inner", obj(("vlan", obj(("id", IntText("vlan_ids", 1)))))),
        ("bytes", Computed(lambda ctx: int_array(_wire(ctx)[0], np.ones(ctx.n, dtype=bool)))),
        ("packets", Computed(lambda ctx: int_array(_wire(ctx)[1], np.ones(ctx.n, dtype=bool)))),
    )),
    ("hdrlog", obj(
        ("timestamp_ns", Int("timestamp_ns")), ("ether_type", Int("ether_type")),
        ("packet_length", Int("packet_length")), ("gso_segments", Int("gso_segments")),
        ("sample_rate", Int("sample_rate")), ("truncated", Bool("truncated")),
        ("parse_anomaly", Bool("parse_anomaly")),
        ("ip", obj(("version", Int("ip_version")), ("ttl", Int("ttl")), ("dscp", Int("dscp")), ("ecn", Int("ecn")),
                   ("id", Int("ip_id")), ("total_length", Int("ip_total_length")),
                   ("dont_fragment", Bool("dont_fragment")), ("more_fragments", Bool("more_fragments")),
                   ("fragment_offset", Int("fragment_offset")))),
        ("tcp", obj(("flags", Int("tcp_flags")),
                    ("flag_names", Lookup("tcp_flags", {v: tcp_flag_names(v) for v in range(1 << len(TCP_FLAG_NAMES))},
                                          mask=(1 << len(TCP_FLAG_NAMES)) - 1)),
                    ("seq", Int("tcp_seq")), ("ack", Int("tcp_ack")), ("window", Int("tcp_window")))),
        ("icmp", obj(("type", Int("icmp_type")), ("code", Int("icmp_code")))),
        ("capture", obj(("id", Str("capture_id")), ("cpu", Int("capture_cpu")), ("seq", Int("capture_seq")))),
        ("agent_instance", Str("agent_instance")), ("sequence", Int("sequence")),
    )),
    ("related", obj(("ip", Computed(_related_ip)))),
), id_path=("event", "id"), time_path=("@timestamp",), host_path=("host", "name"))


class EcsFormatter:
    name = "ecs"
    parquet = ParquetHints(unique=("@timestamp", "event.id", "hdrlog.timestamp_ns", "hdrlog.capture.seq",
                                   "hdrlog.ip.id", "hdrlog.tcp.seq", "hdrlog.tcp.ack"), string_stats=("@timestamp",))

    def __init__(self) -> None:
        self._texts = Texts()

    def block(self, cols: Columns) -> Block:
        """The events of many messages at once (render.py); ValueError where only the dict path decides."""
        return ECS_TEMPLATE.block(cols)

    def partition(self, event: dict[str, Any]) -> tuple[str, str]:
        return str(event["@timestamp"][:10]), str(event["host"]["name"])

    def event_id(self, event: dict[str, Any]) -> str:
        return str(event["event"]["id"])

    def events(self, records: Sequence[dict[str, Any]], origin: Origin) -> list[dict[str, Any]]:
        return map_each(records, origin, partial(ecs_event, t=self._texts))

    def log_events(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return map_logs(records, partial(ecs_log, t=self._texts))
