"""Rendering of HeaderRecord dicts for people and JSON sinks (not the Kafka path).

The agent's ``--stdout`` mode and the console consumer print the same shape:
MAC and IP addresses as text, everything else as the schema has it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from producer.config import PROTOCOL_NAMES


def mac_text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.hex(":")


def ip_text(raw: bytes | str | None) -> str | None:
    if raw is None or isinstance(raw, str):  # None, or rendered already
        return raw
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    return raw.hex()


def render(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of one HeaderRecord."""
    out = dict(record)
    out["src_mac"] = mac_text(record["src_mac"])
    out["dst_mac"] = mac_text(record["dst_mac"])
    out["src_ip"] = ip_text(record.get("src_ip"))
    out["dst_ip"] = ip_text(record.get("dst_ip"))
    return out


_PROTO = {number: name for name, number in PROTOCOL_NAMES.items()}  # one table: the config's
_TCP_FLAGS = "FSRPAUEC"


TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "AE")


def tcp_flag_names(flags: int) -> list[str]:
    """The set bits of the 9-bit TCP flags field by name, lowest bit first."""
    return [name for i, name in enumerate(TCP_FLAG_NAMES) if flags & (1 << i)]


def tcp_flags_text(flags: int) -> str:
    text = "".join(c for i, c in enumerate(_TCP_FLAGS) if flags & (1 << i))
    return text + ("N" if flags & 0x100 else "")


def summary_line(record: dict[str, Any]) -> str:
    """One human line per record: direction, protocol, endpoints, the salient header bits."""
    r = render(record)
    direction = "in " if r["direction"] == "INGRESS" else "out"
    vlan = f" vlan={','.join(map(str, r['vlan_ids']))}" if r["vlan_ids"] else ""
    if r["ip_version"] is None:
        what = f"ether 0x{r['ether_type']:04x} {r['src_mac']} > {r['dst_mac']}"
    else:
        proto = _PROTO.get(r["ip_proto"], f"ip{r['ip_proto']}")

        def end(ip: str, port: int | None) -> str:
            host = f"[{ip}]" if ":" in ip else ip
            return f"{host}:{port}" if port is not None else host

        what = f"{proto:<5} {end(r['src_ip'], r['src_port'])} > {end(r['dst_ip'], r['dst_port'])}"
        if r["tcp_flags"] is not None:
            what += f" [{tcp_flags_text(r['tcp_flags'])}]"
        if r["icmp_type"] is not None:
            what += f" type={r['icmp_type']} code={r['icmp_code']}"
        what += f" ttl={r['ttl']}"
    marks = "".join(f" {m}" for m, on in (("TRUNCATED", r["truncated"]), ("ANOMALY", r["parse_anomaly"])) if on)
    return f"{r['interface']} {direction} {what} len={r['packet_length']}{vlan}{marks}"
