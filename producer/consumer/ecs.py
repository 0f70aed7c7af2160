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

from producer.consumer.mapping import (
    ETHER_TYPES,
    IANA_KEYWORDS,
    Origin,
    Texts,
    map_each,
    present,
    wire_counts,
)
from producer.render import tcp_flag_names

#: the ECS release the events follow (its field list is vendored in tests/data/ecs)
ECS_VERSION = "9.4.0"
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


class EcsFormatter:
    name = "ecs"

    def __init__(self) -> None:
        self._texts = Texts()

    def partition(self, event: dict[str, Any]) -> tuple[str, str]:
        return str(event["@timestamp"][:10]), str(event["host"]["name"])

    def event_id(self, event: dict[str, Any]) -> str:
        return str(event["event"]["id"])

    def events(self, records: Sequence[dict[str, Any]], origin: Origin) -> list[dict[str, Any]]:
        return map_each(records, origin, partial(ecs_event, t=self._texts))
