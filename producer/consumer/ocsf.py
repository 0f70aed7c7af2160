"""Header records -> OCSF 1.8 Network Activity events (class 4001, activity 6 Traffic, type_uid 400106).

Every required attribute is set (``category_uid``, ``class_uid``,
``activity_id``, ``type_uid``, ``severity_id`` 1 Informational, ``time`` in ms,
``metadata.version`` and ``metadata.product``); ``device`` (the capturing host,
``type_id`` 0 Unknown, its interface) comes with the ``host`` profile, which
``metadata.profiles`` declares.  ``connection_info.direction_id`` is the packet's
direction at the interface: 1 Inbound (ingress), 2 Outbound (egress).  An
endpoint without an IP address (ARP and other non-IP frames) is named by its MAC
(``uid``).  ``traffic`` carries what the record stands for on the wire
(mapping.wire_counts).  Header elements OCSF has no attribute for are under
``unmapped``, as in the ECS mapping's ``hdrlog.*``.  Absent values are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from producer import __version__
from producer.consumer.logs import map_logs, ocsf_http
from producer.consumer.mapping import (
    IANA_KEYWORDS,
    OCSF_VERSION,
    Origin,
    Texts,
    map_each,
    prune,
    utc_date,
    wire_counts,
)
from producer.render import tcp_flag_names

CLASS_UID, CATEGORY_UID, ACTIVITY_TRAFFIC = 4001, 4, 6
TYPE_UID = CLASS_UID * 100 + ACTIVITY_TRAFFIC
DIRECTION = {"INGRESS": (1, "Inbound"), "EGRESS": (2, "Outbound")}
IP_VERSION = {4: (4, "IPv4"), 6: (6, "IPv6")}


def _endpoint(ip: str | None, port: int | None, mac_text: str, vlans: list[int]) -> dict[str, Any]:
    return {"ip": ip, "port": port, "mac": mac_text, "uid": None if ip is not None else mac_text,
            "vlan_uid": str(vlans[0]) if vlans else None}


def ocsf_event(r: dict[str, Any], eid: str, t: Texts) -> dict[str, Any]:
    nbytes, npackets = wire_counts(r)
    vlans = r["vlan_ids"]
    proto = r["ip_proto"]
    flags = r["tcp_flags"]
    direction_id, direction = DIRECTION[r["direction"]]
    ver_id, ver = IP_VERSION.get(r["ip_version"], (0, "Unknown"))
    doc: dict[str, Any] = {
        "class_uid": CLASS_UID, "class_name": "Network Activity",
        "category_uid": CATEGORY_UID, "category_name": "Network Activity",
        "activity_id": ACTIVITY_TRAFFIC, "activity_name": "Traffic",
        "type_uid": TYPE_UID, "type_name": "Network Activity: Traffic",
        "severity_id": 1, "severity": "Informational",
        "time": r["timestamp_ns"] // 1_000_000,
        "metadata": {"version": OCSF_VERSION, "uid": eid, "profiles": ["host"], "log_name": "hdrlog.headers",
                     "product": {"name": "hdrlog", "vendor_name": "hdrlog", "version": __version__}},
        "device": {"hostname": r["host_id"], "type_id": 0, "type": "Unknown",
                   "interface_name": r["interface"], "interface_uid": str(r["ifindex"])},
        "src_endpoint": _endpoint(t.ip(r["src_ip"]), r["src_port"], t.mac(r["src_mac"], ":"), vlans),
        "dst_endpoint": _endpoint(t.ip(r["dst_ip"]), r["dst_port"], t.mac(r["dst_mac"], ":"), vlans),
        "connection_info": {
            "direction_id": direction_id, "direction": direction,
            "protocol_num": proto, "protocol_name": IANA_KEYWORDS.get(proto) if proto is not None else None,
            "protocol_ver_id": ver_id, "protocol_ver": ver,
            "tcp_flags": flags, "community_uid": t.flow(r),
        },
        "traffic": {"bytes": nbytes, "packets": npackets},
        "unmapped": {
            "timestamp_ns": r["timestamp_ns"], "ether_type": r["ether_type"], "vlan_ids": vlans or None,
            "packet_length": r["packet_length"], "gso_segments": r["gso_segments"], "sample_rate": r["sample_rate"],
            "truncated": r["truncated"], "parse_anomaly": r["parse_anomaly"],
            "ip": {"ttl": r["ttl"], "dscp": r["dscp"], "ecn": r["ecn"], "id": r["ip_id"],
                   "total_length": r["ip_total_length"], "dont_fragment": r["dont_fragment"],
                   "more_fragments": r["more_fragments"], "fragment_offset": r["fragment_offset"]},
            "tcp": {"flag_names": tcp_flag_names(flags) if flags is not None else None,
                    "seq": r["tcp_seq"], "ack": r["tcp_ack"], "window": r["tcp_window"]},
            "icmp": {"type": r["icmp_type"], "code": r["icmp_code"]},
            "capture": {"id": r.get("capture_id"), "cpu": r.get("capture_cpu"), "seq": r.get("capture_seq")},
            "agent_instance": r.get("agent_instance"), "sequence": r.get("sequence"),
        },
    }
    return prune(doc)


class OcsfFormatter:
    name = "ocsf"

    def __init__(self) -> None:
        self._texts = Texts()

    def partition(self, event: dict[str, Any]) -> tuple[str, str]:
        return utc_date(event["time"] * 1_000_000), str(event["device"]["hostname"])

    def event_id(self, event: dict[str, Any]) -> str:
        return str(event["metadata"]["uid"])

    def events(self, records: Sequence[dict[str, Any]], origin: Origin) -> list[dict[str, Any]]:
        return map_each(records, origin, partial(ocsf_event, t=self._texts))

    def log_events(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return map_logs(records, partial(ocsf_http, t=self._texts))
