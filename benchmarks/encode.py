"""User-space stages after capture: CPU per record to decode and to Avro-encode.

Decodes N kernel records (one TCP/IPv4 shape, all header groups present) into
HeaderRecord dicts, then encodes each in the Confluent wire format, and prints
the CPU time per record of each stage.
Usage: .venv/bin/python benchmarks/encode.py [N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer.decode import layout  # noqa: E402
from producer.decode.convert import InterfaceNames, MonotonicToWall, RecordDecoder  # noqa: E402
from producer.serialize.avro import ConfluentAvroSerializer  # noqa: E402
from producer.serialize.schemas import AvroSchema  # noqa: E402


def sample(n: int) -> np.ndarray:
    a = np.zeros(n, dtype=layout.RECORD_DTYPE)
    a["ts_ns"] = np.arange(n)
    a["ifindex"], a["pkt_len"], a["ether_type"] = 2, 74, 0x0800
    a["src_ip"][:, :4] = [10, 0, 0, 1]
    a["dst_ip"][:, :4] = [10, 0, 0, 2]
    a["ip_version"], a["ip_proto"], a["ttl"], a["ip_total_length"] = 4, 6, 64, 60
    a["src_port"], a["dst_port"], a["tcp_flags"], a["tcp_seq"], a["tcp_window"] = 40000, 443, 0x18, 7, 501
    a["gso_segments"], a["sample_rate"] = 1, 1
    a["flags"] = layout.F_IP | layout.F_PORTS | layout.F_TCP | layout.F_IP_ID | layout.F_FRAG | layout.F_DF
    return a


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    arr = sample(n)
    decoder = RecordDecoder("bench-host", InterfaceNames(lambda i: f"eth{i}"), MonotonicToWall())
    t0 = time.process_time()
    records = decoder.decode(arr)
    t1 = time.process_time()
    ser = ConfluentAvroSerializer(AvroSchema.load("HeaderRecord"), 1)
    size = sum(len(ser.serialize(r)) for r in records)
    t2 = time.process_time()
    print(f"records {n}: decode {(t1 - t0) / n * 1e6:.2f} us/record, "
          f"avro {(t2 - t1) / n * 1e6:.2f} us/record ({size / n:.0f} bytes/message), "
          f"together {n / (t2 - t0):,.0f} records per CPU-second")


if __name__ == "__main__":
    main()
