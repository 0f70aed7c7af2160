"""Header records -> Splunk CIM Network Traffic events (``--format cim``, the HEC sink's format).

Flat events with the Common Information Model's field names (the All_Traffic
dataset): ``src_ip``/``dest_ip``, ``src_port``/``dest_port``,
``src_mac``/``dest_mac``, ``transport`` (the IANA keyword), ``protocol``
(``ip``, or the EtherType's name), ``protocol_version``, ``direction``
(inbound / outbound: the packet at the interface), ``src_interface`` (ingress)
or ``dest_interface`` (egress), ``dvc`` (the capturing host), ``vlan``,
``tcp_flag`` (the flags by name), ``ttl``, ``icmp_type``/``icmp_code``,
``bytes``/``packets`` (what the record stands for on the wire), ``flow_id``
(the Community ID), ``vendor_product``, and ``event_id``.  ``action`` is not
set: a packet seen at a hook was neither allowed nor blocked by us.  ``_time``
(epoch seconds) becomes the HEC envelope's ``time``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from producer.consumer.logs import cim_web, map_logs
from producer.consumer.mapping import (
    ETHER_TYPES,
    IANA_KEYWORDS,
    Origin,
    Texts,
    map_each,
    prune,
    utc_date,
    wire_counts,
)
from producer.render import tcp_flag_names


def cim_event(r: dict[str, Any], eid: str, t: Texts) -> dict[str, Any]:
    nbytes, npackets = wire_counts(r)
    proto, version, flags = r["ip_proto"], r["ip_version"], r["tcp_flags"]
    ingress = r["direction"] == "INGRESS"
    return prune({
        "_time": r["timestamp_ns"] / 1e9,
        "event_id": eid,
        "vendor_product": "hdrlog",
        "dvc": r["host_id"],
        "src_interface" if ingress else "dest_interface": r["interface"],
        "direction": "inbound" if ingress else "outbound",
        "src_ip": t.ip(r["src_ip"]), "dest_ip": t.ip(r["dst_ip"]),
        "src_port": r["src_port"], "dest_port": r["dst_port"],
        "src_mac": t.mac(r["src_mac"], ":"), "dest_mac": t.mac(r["dst_mac"], ":"),
        "transport": IANA_KEYWORDS.get(proto) if proto is not None else None,
        "protocol": "ip" if version in (4, 6) else ETHER_TYPES.get(r["ether_type"]),
        "protocol_version": str(version) if version in (4, 6) else None,
        "vlan": r["vlan_ids"][0] if r["vlan_ids"] else None,
        "tcp_flag": tcp_flag_names(flags) if flags is not None else None,
        "ttl": r["ttl"],
        "icmp_type": r["icmp_type"], "icmp_code": r["icmp_code"],
        "bytes": nbytes, "packets": npackets,
        "flow_id": t.flow(r),
    })


class CimFormatter:
    name = "cim"

    def __init__(self) -> None:
        self._texts = Texts()

    def events(self, records: Sequence[dict[str, Any]], origin: Origin) -> list[dict[str, Any]]:
        return map_each(records, origin, partial(cim_event, t=self._texts))

    def log_events(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return map_logs(records, partial(cim_web, t=self._texts))

    def partition(self, event: dict[str, Any]) -> tuple[str, str]:
        return utc_date(int(event["_time"] * 1e9)), str(event["dvc"])

    def event_id(self, event: dict[str, Any]) -> str:
        return str(event["event_id"])
