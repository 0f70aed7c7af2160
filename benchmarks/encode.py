"""User-space stages after capture: CPU per record to decode and to Avro-encode.

Decodes N kernel records (one TCP/IPv4 shape, all header groups present) into
dicts of the schemas' fields, and encodes them with the agent's encoders in both
message shapes (HeaderBatch of 4096 records per message; one HeaderRecord per
message), and prints the CPU time per record of each.
Usage: .venv/bin/python benchmarks/encode.py [N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer import abi  # noqa: E402
from producer.decode.convert import InterfaceNames, MonotonicToWall, RecordDecoder  # noqa: E402
from producer.records import Batch  # noqa: E402
from producer.serialize.columnar import ColumnarBatchEncoder, ColumnarRecordEncoder  # noqa: E402
from producer.serialize.encoder import AvroBatchEncoder, AvroRecordEncoder, Identity  # noqa: E402
from producer.serialize.schemas import AvroSchema  # noqa: E402


def sample(n: int) -> np.ndarray:
    a = np.zeros(n, dtype=abi.RECORD_DTYPE)
    a["ts_ns"] = np.arange(n)
    a["ifindex"], a["pkt_len"], a["ether_type"] = 2, 74, 0x0800
    a["src_ip"][:, :4] = [10, 0, 0, 1]
    a["dst_ip"][:, :4] = [10, 0, 0, 2]
    a["ip_version"], a["ip_proto"], a["ttl"], a["ip_total_length"] = 4, 6, 64, 60
    a["src_port"], a["dst_port"], a["tcp_flags"], a["tcp_seq"], a["tcp_window"] = 40000, 443, 0x18, 7, 501
    a["gso_segments"], a["sample_rate"] = 1, 1
    a["flags"] = abi.F_IP | abi.F_PORTS | abi.F_TCP | abi.F_IP_ID | abi.F_FRAG | abi.F_DF
    return a


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    arr = sample(n)
    decoder = RecordDecoder(InterfaceNames(lambda i: f"eth{i}"), MonotonicToWall())
    t0 = time.process_time()
    decoder.decode(arr, host_id="bench-host")
    t1 = time.process_time()
    print(f"records {n}: decode to dicts {(t1 - t0) / n * 1e6:.2f} us/record")
    ident = Identity("bench-host", "bench")
    names, clock = InterfaceNames(lambda i: f"eth{i}"), MonotonicToWall()
    batch_s, record_s = AvroSchema.load("HeaderBatch"), AvroSchema.load("HeaderRecord")
    encoders = {
        "batch (fastavro, dicts)": AvroBatchEncoder(batch_s, 1, "t", ident, decoder, 1_000_000),
        "record (fastavro, dicts)": AvroRecordEncoder(record_s, 1, "t", ident, decoder),
        "batch (fast path)": ColumnarBatchEncoder(batch_s, 1, "t", ident, names, clock, 1_000_000),
        "record (fast path)": ColumnarRecordEncoder(record_s, 1, "t", ident, names, clock),
    }
    for shape, enc in encoders.items():
        t0 = time.process_time()
        size = 0
        for i in range(0, n, 4096):
            size += sum(len(e) for e in enc.encode(Batch("c", arr[i:i + 4096], None)))
        cpu = time.process_time() - t0
        print(f"  {shape:<25} {cpu / n * 1e6:5.2f} us/record ({size / n:.0f} bytes/record), "
              f"{n / cpu:,.0f} records per CPU-second")


if __name__ == "__main__":
    main()
