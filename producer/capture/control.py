"""Run-time control of the loaded program: sampling and filters, no reload.

Writes the config array and the filter maps (bpf/maps.h) from a CaptureConfig.
New entries are written before stale ones are removed and the active-filter
bits are set last, so a change never passes through an "everything filtered"
state.
"""

from __future__ import annotations

import ctypes
import ipaddress
from typing import Any

from producer import abi
from producer.config import CaptureConfig, port_range, protocol_number


class CaptureControl:
    """Applies the filter and sampling part of a config to the kernel maps."""

    def __init__(self, bpf: Any) -> None:
        self._bpf = bpf

    def _set_config(self, index: int, value: int) -> None:
        self._bpf[b"config"][ctypes.c_int(index)] = ctypes.c_uint32(value)

    def apply(self, cfg: CaptureConfig) -> None:
        self._set_config(abi.CFG_SAMPLE_RATE, cfg.sample_rate)
        self._set_config(abi.CFG_WAKEUP_RECORDS, cfg.wakeup_records)
        nets: dict[int, dict[tuple[int, bytes], int]] = {4: {}, 6: {}}
        for texts, verdict in ((cfg.include_cidrs, abi.CIDR_INCLUDE),
                               (cfg.exclude_cidrs, abi.CIDR_EXCLUDE)):
            for text in texts:
                net = ipaddress.ip_network(text, strict=False)
                nets[net.version][(net.prefixlen, net.network_address.packed)] = verdict
        self._sync_trie(b"cidr4", nets[4], 4)
        self._sync_trie(b"cidr6", nets[6], 16)
        protos = {n for t in cfg.protocols if (n := protocol_number(t)) is not None}
        self._sync_array(b"protos", protos, 256)
        ports: set[int] = set()
        for t in cfg.ports:
            rng = port_range(t)
            if rng is not None:
                ports.update(range(rng[0], rng[1] + 1))
        self._sync_array(b"ports", ports, 65536)
        active = 0
        if cfg.include_cidrs:
            active |= abi.FILTER_INCLUDE
        if protos:
            active |= abi.FILTER_PROTOS
        if ports:
            active |= abi.FILTER_PORTS
        if cfg.drop_non_ip:
            active |= abi.FILTER_DROP_L2
        self._set_config(abi.CFG_FILTER, active)

    def _sync_trie(self, name: bytes, want: dict[tuple[int, bytes], int], size: int) -> None:
        table = self._bpf[name]
        for (plen, addr), verdict in want.items():
            key = table.Key()
            key.prefixlen = plen
            ctypes.memmove(key.addr, addr, size)
            table[key] = ctypes.c_uint8(verdict)
        for key in list(table.keys()):
            if (key.prefixlen, bytes(key.addr)) not in want:
                del table[key]

    def _sync_array(self, name: bytes, want: set[int], size: int) -> None:
        table = self._bpf[name]
        # only the entries that change are written: a 64k port array is rewritten rarely
        current = {i for i, v in enumerate(table.values()) if v.value}
        for i in want - current:
            table[ctypes.c_int(i)] = ctypes.c_uint8(1)
        for i in current - want:
            table[ctypes.c_int(i)] = ctypes.c_uint8(0)
