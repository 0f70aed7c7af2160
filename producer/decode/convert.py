"""Kernel records (numpy, bpf/record.h layout) -> dicts of the schemas' fields.

``columns()`` gives every per-packet field of schemas/HeaderBatch.avsc's
PacketHeader (a field whose presence bit is clear is None), computed per
column with numpy; ``rows()`` zips them into one dict per record, with any
constant fields added (``host_id`` and the identity for a HeaderRecord).
This is the reference path (fastavro takes dicts) and the one --stdout and the
console use; the per-record dict is what the fast encoder avoids.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from producer import abi

HeaderRecord = dict[str, Any]
"""One record as the Avro schema defines it (field name -> value)."""

_DIRECTIONS = ("INGRESS", "EGRESS")


class InterfaceNames:
    """ifindex -> name in this network namespace, cached; refreshed on a miss."""

    def __init__(self, lookup: Callable[[int], str] = socket.if_indextoname) -> None:
        self._lookup = lookup
        self._names: dict[int, str] = {}

    def forget(self, ifindex: int) -> None:
        """A link appeared with this index: it may be a new link reusing an old index."""
        self._names.pop(ifindex, None)

    def name(self, ifindex: int) -> str:
        found = self._names.get(ifindex)
        if found is None:
            try:
                found = self._lookup(ifindex)
            except OSError:
                return f"if{ifindex}"  # gone already: keep the index visible
            self._names[ifindex] = found
        return found


class MonotonicToWall:
    """Offset from the kernel's CLOCK_MONOTONIC (bpf_ktime_get_ns) to Unix time."""

    def __init__(
        self,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._wall_ns = wall_ns
        self._mono_ns = mono_ns

    def offset_ns(self) -> int:
        # read monotonic on both sides of the wall clock and take the midpoint
        a = self._mono_ns()
        w = self._wall_ns()
        b = self._mono_ns()
        return w - (a + b) // 2


class RecordDecoder:
    """Turns arrays of kernel records into the schemas' per-packet fields."""

    def __init__(self, names: InterfaceNames, clock: MonotonicToWall) -> None:
        self._names = names
        self._clock = clock

    def decode(self, arr: npt.NDArray[Any], **constants: Any) -> list[HeaderRecord]:
        """One dict per record: the packet fields plus ``constants`` (the same in every dict)."""
        return rows(self.columns(arr), constants)

    def columns(self, arr: npt.NDArray[Any]) -> dict[str, list[Any]]:
        """Every PacketHeader field, as one list per field."""
        n = len(arr)
        flags = arr["flags"].astype(np.uint32)

        def opt(col: str, bit: int) -> list[Any]:
            vals: list[Any] = arr[col].tolist()
            present = (flags & bit) != 0
            if present.all():
                return vals
            for i in np.flatnonzero(~present).tolist():
                vals[i] = None
            return vals

        def boolean(bit: int, group: int) -> list[bool | None]:
            has = ((flags & group) != 0).tolist()
            val = ((flags & bit) != 0).tolist()
            return [v if h else None for v, h in zip(val, has, strict=True)]

        ts = (arr["ts_ns"].astype(np.int64) + self._clock.offset_ns()).tolist()
        ifindex = arr["ifindex"].tolist()
        ifnames = [self._names.name(i) for i in ifindex]
        ipver = arr["ip_version"]
        has_ip = (flags & abi.F_IP) != 0
        alen = np.where(ipver == 6, 16, 4)
        src_raw = arr["src_ip"]
        dst_raw = arr["dst_ip"]
        src_ip: list[bytes | None] = [None] * n
        dst_ip: list[bytes | None] = [None] * n
        for i in np.flatnonzero(has_ip).tolist():
            k = int(alen[i])
            src_ip[i] = src_raw[i, :k].tobytes()
            dst_ip[i] = dst_raw[i, :k].tobytes()
        tos = arr["tos"]
        vlan_n = arr["vlan_count"].tolist()
        vlans = arr["vlan_ids"].tolist()
        columns: dict[str, list[Any]] = {
            "timestamp_ns": ts,
            "interface": ifnames,
            "ifindex": ifindex,
            "direction": [_DIRECTIONS[d] for d in arr["direction"].tolist()],
            "src_mac": [bytes(m) for m in arr["src_mac"].tolist()],
            "dst_mac": [bytes(m) for m in arr["dst_mac"].tolist()],
            "vlan_ids": [v[:c] for v, c in zip(vlans, vlan_n, strict=True)],
            "ether_type": arr["ether_type"].tolist(),
            "ip_version": opt("ip_version", abi.F_IP),
            "src_ip": src_ip,
            "dst_ip": dst_ip,
            "ip_proto": opt("ip_proto", abi.F_IP),
            "ttl": opt("ttl", abi.F_IP),
            "dscp": [None if not h else int(t) >> 2 for t, h in zip(tos.tolist(), has_ip.tolist(), strict=True)],
            "ecn": [None if not h else int(t) & 3 for t, h in zip(tos.tolist(), has_ip.tolist(), strict=True)],
            "ip_total_length": opt("ip_total_length", abi.F_IP),
            "ip_id": opt("ip_id", abi.F_IP_ID),
            "dont_fragment": boolean(abi.F_DF, abi.F_FRAG),
            "more_fragments": boolean(abi.F_MF, abi.F_FRAG),
            "fragment_offset": opt("fragment_offset", abi.F_FRAG),
            "src_port": opt("src_port", abi.F_PORTS),
            "dst_port": opt("dst_port", abi.F_PORTS),
            "tcp_flags": opt("tcp_flags", abi.F_TCP),
            "tcp_seq": opt("tcp_seq", abi.F_TCP),
            "tcp_ack": opt("tcp_ack", abi.F_TCP),
            "tcp_window": opt("tcp_window", abi.F_TCP),
            "icmp_type": opt("icmp_type", abi.F_ICMP),
            "icmp_code": opt("icmp_code", abi.F_ICMP),
            "packet_length": arr["pkt_len"].tolist(),
            "gso_segments": arr["gso_segments"].tolist(),
            "truncated": ((flags & abi.F_TRUNCATED) != 0).tolist(),
            "parse_anomaly": ((flags & abi.F_ANOMALY) != 0).tolist(),
            "sample_rate": arr["sample_rate"].tolist(),
            "capture_cpu": arr["cpu"].tolist(),
            "capture_seq": arr["seq"].tolist(),
        }
        return columns


def rows(columns: dict[str, list[Any]], constants: dict[str, Any] | None = None) -> list[HeaderRecord]:
    """Zip per-field lists into one dict per record, each with ``constants`` added."""
    names = [*(constants or {}), *columns]
    if not columns:
        return []
    n = len(next(iter(columns.values())))
    fixed = [[v] * n for v in (constants or {}).values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*fixed, *columns.values(), strict=True)]
