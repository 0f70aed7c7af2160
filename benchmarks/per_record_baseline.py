"""The obvious per-record Python pipeline: bcc ring-buffer callback -> dict -> fastavro -> one Kafka message.

The benchmark's baseline contender (producer/bench/contenders.py).  It loads
the agent's own kernel program (bpf/capture.bpf.c through
``producer.capture.program.CaptureProgram``, tc clsact ingress and egress as the
agent attaches it, the agent's default ring buffer size and wake-ups), then per
record, in bcc's ``open_ring_buffer`` callback: unpack the record (a
``struct`` layout derived from ``producer.abi.RECORD_FIELDS``), build the
HeaderRecord dict, ``fastavro.schemaless_writer`` it behind the Confluent
5-byte header, and ``producer.produce(topic, value, key=host)`` with a Python
``on_delivery`` callback per message.

The schema is registered once at start when ``--registry`` is given;
without it the writer schema id is fixed at 1 (enough for a throughput
baseline, not for a consumer that resolves ids).

Prints ``ready`` once capturing; on SIGTERM (or SIGINT) stops polling, drains
what is left in the ring buffer, flushes the producer (30 s), removes its tc
filters and prints one JSON line:
``{"decoded": n, "delivered": n_ok, "failed": n_err, "unflushed": n, "kernel": {...}}``
(``kernel``: the program's counters, ``ringbuf_reserve_failed`` among them).
Needs root.  Usage:
    .venv/bin/python benchmarks/per_record_baseline.py --iface IF --bootstrap-servers HOST:PORT --topic T
        [--registry URL]
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import signal
import socket
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import KafkaError, Message, Producer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer import abi  # noqa: E402
from producer.capture.program import CaptureProgram, ProgramOptions  # noqa: E402
from producer.capture.tc import TcHooks  # noqa: E402
from producer.config import CaptureConfig  # noqa: E402
from producer.decode.convert import InterfaceNames, MonotonicToWall  # noqa: E402

SCHEMA_FILE = ROOT / "schemas" / "HeaderRecord.avsc"
_DIRECTIONS = ("INGRESS", "EGRESS")
_SCALARS = {"<u8": "Q", "<u4": "I", "<u2": "H", "u1": "B"}


def record_struct() -> tuple[struct.Struct, list[str]]:
    """A ``struct`` layout of ``struct hdrlog_record`` and the field name of each value it unpacks."""
    fields = abi.RECORD_DTYPE.fields
    assert fields is not None
    fmt, names, pos = "<", [], 0
    for name, kind, offset in abi.RECORD_FIELDS:
        if offset > pos:
            fmt += f"{offset - pos}x"
        if isinstance(kind, tuple):
            base, count = kind
            if base == "u1":
                fmt += f"{count}s"
                names.append(name)
            else:
                fmt += f"{count}{_SCALARS[base]}"
                names += [f"{name}{i}" for i in range(count)]
        else:
            fmt += _SCALARS[kind]
            names.append(name)
        pos = offset + fields[name][0].itemsize
    fmt += f"{abi.RECORD_SIZE - pos}x"
    return struct.Struct(fmt), names


class Pipeline:
    """Decode, encode and produce, one record at a time."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.topic: str = args.topic
        self.host = socket.gethostname()
        self.key = self.host.encode()
        self.instance = str(uuid.uuid4())
        self.schema = fastavro.parse_schema(json.loads(SCHEMA_FILE.read_text()))
        schema_id = register(args.registry, f"{self.topic}-value") if args.registry else 1
        self.header = b"\x00" + schema_id.to_bytes(4, "big")
        self.layout, self.names = record_struct()
        self.ifnames = InterfaceNames()
        self.offset_ns = MonotonicToWall().offset_ns()
        self.producer = Producer({"bootstrap.servers": args.bootstrap_servers})
        self.decoded = self.delivered = self.failed = 0

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1

    def decode(self, raw: bytes) -> dict[str, Any]:
        r = dict(zip(self.names, self.layout.unpack(raw), strict=True))
        flags: int = r["flags"]
        has_ip = bool(flags & abi.F_IP)
        alen = 16 if r["ip_version"] == 6 else 4

        def opt(name: str, bit: int) -> Any:
            return r[name] if flags & bit else None

        def boolean(bit: int, group: int) -> bool | None:
            return bool(flags & bit) if flags & group else None

        return {
            "timestamp_ns": r["ts_ns"] + self.offset_ns,
            "host_id": self.host,
            "interface": self.ifnames.name(r["ifindex"]),
            "ifindex": r["ifindex"],
            "direction": _DIRECTIONS[r["direction"]],
            "src_mac": r["src_mac"],
            "dst_mac": r["dst_mac"],
            "vlan_ids": [r["vlan_ids0"], r["vlan_ids1"]][:r["vlan_count"]],
            "ether_type": r["ether_type"],
            "ip_version": opt("ip_version", abi.F_IP),
            "src_ip": r["src_ip"][:alen] if has_ip else None,
            "dst_ip": r["dst_ip"][:alen] if has_ip else None,
            "ip_proto": opt("ip_proto", abi.F_IP),
            "ttl": opt("ttl", abi.F_IP),
            "dscp": r["tos"] >> 2 if has_ip else None,
            "ecn": r["tos"] & 3 if has_ip else None,
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
            "packet_length": r["pkt_len"],
            "gso_segments": r["gso_segments"],
            "truncated": bool(flags & abi.F_TRUNCATED),
            "parse_anomaly": bool(flags & abi.F_ANOMALY),
            "sample_rate": r["sample_rate"],
            "capture_id": self.instance,
            "capture_cpu": r["cpu"],
            "capture_seq": r["seq"],
            "agent_instance": self.instance,
            "sequence": self.decoded,
        }

    def on_record(self, ctx: Any, data: Any, size: int) -> int:
        """bcc's ring-buffer callback: one record in, one Kafka message out."""
        record = self.decode(ctypes.string_at(data, size))
        self.decoded += 1
        buf = io.BytesIO()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self.schema, record)
        value = buf.getvalue()
        while True:
            try:
                self.producer.produce(self.topic, value, key=self.key, on_delivery=self.on_delivery)
                break
            except BufferError:  # librdkafka's queue is full: serve deliveries, then retry
                self.producer.poll(0.05)
        return 0


def register(url: str, subject: str) -> int:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient({"url": url})
    return int(client.register_schema(subject, Schema(SCHEMA_FILE.read_text(), "AVRO")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iface", required=True)
    ap.add_argument("--bootstrap-servers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--registry", default="")
    args = ap.parse_args()

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pipe = Pipeline(args)
    defaults = CaptureConfig()  # the agent's ring buffer and wake-ups
    program = CaptureProgram(ProgramOptions(ringbuf_pages=defaults.ringbuf_pages))
    program.bpf[b"config"][ctypes.c_int(abi.CFG_WAKEUP_RECORDS)] = ctypes.c_uint32(defaults.wakeup_records)
    program.bpf[b"events"].open_ring_buffer(pipe.on_record)
    with TcHooks() as tc:
        idx = tc.ifindex(args.iface)
        tc.remove_ours(idx)
        try:
            for hook in ("ingress", "egress"):
                fd = program.ingress.fd if hook == "ingress" else program.egress.fd
                tc.attach(idx, hook, fd, f"hdrlog_{hook}", 7)
            print("ready", flush=True)
            while not stopping:
                program.bpf.ring_buffer_poll(100)
                pipe.producer.poll(0)
        finally:
            tc.remove_ours(idx)
            tc.drop_empty_clsact(idx)
    program.bpf.ring_buffer_consume()  # what the kernel wrote before the hooks came off
    unflushed = pipe.producer.flush(30)
    kernel = program.counters()
    program.close()
    print(json.dumps({"decoded": pipe.decoded, "delivered": pipe.delivered, "failed": pipe.failed,
                      "unflushed": unflushed, "kernel": kernel}), flush=True)


if __name__ == "__main__":
    main()
