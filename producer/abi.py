"""The kernel/user ABI: the one Python mirror of ``bpf/record.h``.

Every ``HDRLOG_*`` constant of record.h has a namesake here (without the
prefix), and ``RECORD_DTYPE`` is a numpy structured dtype with the size, the
offset and the width of every field of ``struct hdrlog_record``.
tests/test_abi.py parses record.h and reads the compiled program's BTF, and
fails on any constant, offset or width that differs, so the two sides cannot
drift silently.  Nothing else in the tree spells a kernel number.

A record's identity is (capture id, ``cpu``, ``seq``): the capture id names
one loaded program (``capture/pins.py``); ``seq`` counts the records one CPU
wrote into the ring buffer, from 0 and without gaps.
"""

from __future__ import annotations

from typing import Final

import numpy as np

ABI_VERSION: Final = 2

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
F_ARP: Final = 1 << 10

C_SEEN: Final = 0
C_FILTERED: Final = 1
C_SAMPLED_OUT: Final = 2
C_EMITTED: Final = 3
C_RB_FAIL: Final = 4
C_PARSE_ANOMALY: Final = 5
C_MAX: Final = 6

#: kernel counter names by index (``counters`` map); these names reach the
#: summary, the status API and /metrics (``hdrlog_kernel_packets_total``)
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

#: (name, numpy format, offset) of every field of struct hdrlog_record, in order
RECORD_FIELDS: Final = (
    ("ts_ns", "<u8", 0),
    ("ifindex", "<u4", 8),
    ("pkt_len", "<u4", 12),
    ("tcp_seq", "<u4", 16),
    ("tcp_ack", "<u4", 20),
    ("ip_id", "<u4", 24),
    ("sample_rate", "<u4", 28),
    ("src_ip", ("u1", 16), 32),
    ("dst_ip", ("u1", 16), 48),
    ("src_mac", ("u1", 6), 64),
    ("dst_mac", ("u1", 6), 70),
    ("vlan_ids", ("<u2", 2), 76),
    ("ether_type", "<u2", 80),
    ("ip_total_length", "<u2", 82),
    ("fragment_offset", "<u2", 84),
    ("src_port", "<u2", 86),
    ("dst_port", "<u2", 88),
    ("tcp_window", "<u2", 90),
    ("tcp_flags", "<u2", 92),
    ("gso_segments", "<u2", 94),
    ("flags", "<u2", 96),
    ("direction", "u1", 98),
    ("ip_version", "u1", 99),
    ("ip_proto", "u1", 100),
    ("ttl", "u1", 101),
    ("tos", "u1", 102),
    ("icmp_type", "u1", 103),
    ("icmp_code", "u1", 104),
    ("vlan_count", "u1", 105),
    # _pad[2] at 106
    ("cpu", "<u4", 108),
    ("seq", "<u8", 112),
)
RECORD_SIZE: Final = 120

RECORD_DTYPE: Final = np.dtype({
    "names": [f[0] for f in RECORD_FIELDS],
    "formats": [f[1] for f in RECORD_FIELDS],
    "offsets": [f[2] for f in RECORD_FIELDS],
    "itemsize": RECORD_SIZE,
})
