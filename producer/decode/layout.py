"""The Python mirror of bpf/record.h: the one kernel/user ABI.

``RECORD_DTYPE`` is a numpy structured dtype with the exact size and offsets
of ``struct hdrlog_record``; tests/test_layout.py checks it against the BTF of
the compiled program and checks every constant below against record.h.
"""

from __future__ import annotations

from typing import Final

import numpy as np

ABI_VERSION: Final = 1

DIR_INGRESS: Final = 0
DIR_EGRESS: Final = 1

F_IP: Final = 1 << 0
F_PORTS: Final = 1 << 1
F_TCP: Final = 1 << 2
F_ICMP: Final = 1 << 3
F_IP_ID: Final = 1 << 4
F_FRAG: Final = 1 << 5
F_DF: Final = 1 << 6
F_MF: Final = 1 << 7
F_TRUNCATED: Final = 1 << 8
F_ANOMALY: Final = 1 << 9

C_SEEN: Final = 0
C_FILTERED: Final = 1
C_SAMPLED_OUT: Final = 2
C_EMITTED: Final = 3
C_RB_FAIL: Final = 4
C_PARSE_ANOMALY: Final = 5
C_MAX: Final = 6

#: kernel counter names, by index; these names reach metrics and stats
KERNEL_COUNTERS: Final = (
    "seen",
    "filtered",
    "sampled_out",
    "emitted",
    "ringbuf_reserve_failed",
    "parse_anomalies",
)

CFG_SAMPLE_RATE: Final = 0
CFG_WAKEUP_RECORDS: Final = 1
CFG_FILTER: Final = 2
CFG_MAX: Final = 3

FILTER_INCLUDE: Final = 1 << 0
FILTER_PROTOS: Final = 1 << 1
FILTER_PORTS: Final = 1 << 2
FILTER_DROP_L2: Final = 1 << 3

CIDR_INCLUDE: Final = 1
CIDR_EXCLUDE: Final = 2

RECORD_DTYPE: Final = np.dtype(
    {
        "names": [
            "ts_ns", "ifindex", "pkt_len", "tcp_seq", "tcp_ack", "ip_id", "sample_rate",
            "src_ip", "dst_ip", "src_mac", "dst_mac", "vlan_ids", "ether_type",
            "ip_total_length", "fragment_offset", "src_port", "dst_port", "tcp_window",
            "tcp_flags", "gso_segments", "flags", "direction", "ip_version", "ip_proto",
            "ttl", "tos", "icmp_type", "icmp_code", "vlan_count",
        ],
        "formats": [
            "<u8", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4",
            ("u1", 16), ("u1", 16), ("u1", 6), ("u1", 6), ("<u2", 2), "<u2",
            "<u2", "<u2", "<u2", "<u2", "<u2",
            "<u2", "<u2", "<u2", "u1", "u1", "u1",
            "u1", "u1", "u1", "u1", "u1",
        ],
        "offsets": [
            0, 8, 12, 16, 20, 24, 28,
            32, 48, 64, 70, 76, 80,
            82, 84, 86, 88, 90,
            92, 94, 96, 98, 99, 100,
            101, 102, 103, 104, 105,
        ],
        "itemsize": 112,
    }
)
RECORD_SIZE: Final = 112
