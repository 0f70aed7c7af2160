"""Rendering of HeaderRecord dicts for people and JSON sinks.

The agent's ``--stdout`` mode and the console consumer print the same shape:
MAC and IP addresses as text, everything else as the schema has it.
"""

from __future__ import annotations

import ipaddress
from typing import Any


def mac_text(raw: bytes) -> str:
    return raw.hex(":")


def ip_text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
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
