"""End to end on the real kernel, broker and registry, in both message shapes.

Known 5-tuples cross a veth pair between two namespaces while the agent
captures the host side; the records arrive in Kafka as Avro in the Confluent
wire format (a HeaderBatch per message, or a HeaderRecord per message), keyed
by the host id, decodable with the schema fetched from the registry by the id
in each message's 5-byte header.  Every record carries its identity (capture,
cpu, per-cpu sequence) and every message the instance's increasing sequence.
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import threading
import uuid
from collections import Counter
from typing import Any

import fastavro
import pytest

from producer.serialize.avro import parse_frame
from producer.serialize.registry import Registry
from tests.conftest import read_topic, run_hdrlog, summary_of

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

N_UDP = 23
N_UDP6 = 5
N_PING = 3
UDP_PORT, UDP_SPORT, UDP6_SPORT, TCP_PORT = 41235, 41234, 41233, 41236

# runs inside the peer namespace: UDP (v4 and v6) with replies, a TCP exchange, pings
CLIENT = f"""
import socket, sys
host, host6 = sys.argv[1], sys.argv[2]
flows = ((socket.AF_INET, host, {UDP_SPORT}, {N_UDP}), (socket.AF_INET6, host6, {UDP6_SPORT}, {N_UDP6}))
for fam, addr, sport, n in flows:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind(("", sport))
    s.settimeout(10)
    for i in range(n):
        s.sendto(b"hdrlog-%d" % i, (addr, {UDP_PORT}))
    for i in range(n):
        s.recvfrom(100)
    s.close()
c = socket.create_connection((host, {TCP_PORT}), timeout=10)
c.sendall(b"hello")
assert c.recv(5) == b"hello"
c.close()
"""


def _servers(veth) -> tuple[list[socket.socket], threading.Thread]:
    """UDP echo on v4 and v6 and a TCP echo, in this (the host) namespace."""
    u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u4.bind((veth.host_ip, UDP_PORT))
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u6.bind((veth.host_ip6, UDP_PORT))
    t = socket.socket()
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((veth.host_ip, TCP_PORT))
    t.listen()
    socks = [u4, u6, t]
    for s in socks:
        s.settimeout(20)

    def serve() -> None:
        for sock, n in ((u4, N_UDP), (u6, N_UDP6)):
            for _ in range(n):
                data, peer = sock.recvfrom(100)
                sock.sendto(data, peer)
        conn, _ = t.accept()
        with conn:
            conn.sendall(conn.recv(5))
            conn.recv(1)  # until the client closes

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return socks, th


@pytest.mark.parametrize("shape", ["batch", "record"])
def test_known_flows_arrive_in_kafka(veth, stack, start_agent, shape: str) -> None:
    topic = f"hdrlog.test.e2e.{shape}.{uuid.uuid4().hex[:8]}"
    host_id = f"test-host-{uuid.uuid4().hex[:6]}"
    socks, server = _servers(veth)
    agent = start_agent(veth.host_if, "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url, "--topic", topic,
                        "--host-id", host_id, "--partitions", "3", "--shape", shape)
    try:
        agent.wait_attached()
        veth.exec(["/usr/bin/python3", "-c", CLIENT, veth.host_ip, veth.host_ip6])
        veth.exec(["ping", "-c", str(N_PING), "-i", "0.05", veth.host_ip])
        server.join(20)
    finally:
        for s in socks:
            s.close()
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    summary = summary_of(err)
    k, a = summary["kernel"], summary["agent"]
    # every record is accounted for: kernel and agent reconcile exactly
    assert k["seen"] == k["filtered"] + k["sampled_out"] + k["emitted"] + k["ringbuf_reserve_failed"]
    assert k["ringbuf_reserve_failed"] == 0
    assert a["drained"] == k["emitted"] == a["encoded"] == a["buffered"] == a["produced"] == a["delivered"]
    assert sum(v for name, v in a.items() if name.startswith("dropped_")) == 0

    schemas: dict[int, Any] = {}
    with Registry(stack.registry_url) as registry:
        def decode(m: Any) -> dict[str, Any]:
            schema_id, body = parse_frame(m.value())
            if schema_id not in schemas:
                schemas[schema_id] = fastavro.parse_schema(json.loads(registry.schema_text(schema_id)))
            return fastavro.schemaless_reader(io.BytesIO(body), schemas[schema_id])

        msgs = read_topic(stack.bootstrap_servers, topic)
        data = [decode(m) for m in msgs]
    # exactly what the agent delivered: no more, no less
    assert sum(len(d["records"]) if shape == "batch" else 1 for d in data) == a["delivered"]
    assert all(m.key() == host_id.encode() for m in msgs)
    # one host -> one partition, and this instance's sequence numbers increase strictly in it
    assert len({m.partition() for m in msgs}) == 1
    assert len({d["agent_instance"] for d in data}) == 1
    assert [d["sequence"] for d in data] == list(range(len(data)))
    if shape == "batch":
        assert len(msgs) == a["messages_delivered"] < a["delivered"]
        records = [{**item, "host_id": d["host_id"], "capture_id": d["capture_id"]} for d in data
                   for item in d["records"]]
        for d in data:
            ts = [r["timestamp_ns"] for r in d["records"]]
            assert (d["first_timestamp_ns"], d["last_timestamp_ns"]) == (min(ts), max(ts))
    else:
        assert len(msgs) == a["messages_delivered"] == a["delivered"]
        records = data
    # identity: one capture; per CPU, the kernel's sequence runs 0, 1, 2, ... without a gap or repeat
    assert {r["capture_id"] for r in records} == {summary["capture_id"]}
    per_cpu: dict[int, list[int]] = {}
    for r in records:
        per_cpu.setdefault(r["capture_cpu"], []).append(r["capture_seq"])
    assert all(sorted(seqs) == list(range(len(seqs))) for seqs in per_cpu.values()), per_cpu

    def ip(r: dict, key: str) -> str | None:
        return str(ipaddress.ip_address(r[key])) if r[key] is not None else None

    flows = Counter(
        (r["direction"], r["ip_version"], r["ip_proto"], ip(r, "src_ip"), r["src_port"],
         ip(r, "dst_ip"), r["dst_port"]) for r in records)
    h, p, h6, p6 = veth.host_ip, veth.peer_ip, veth.host_ip6, veth.peer_ip6
    assert flows[("INGRESS", 4, 17, p, UDP_SPORT, h, UDP_PORT)] == N_UDP
    assert flows[("EGRESS", 4, 17, h, UDP_PORT, p, UDP_SPORT)] == N_UDP
    assert flows[("INGRESS", 6, 17, p6, UDP6_SPORT, h6, UDP_PORT)] == N_UDP6
    assert flows[("EGRESS", 6, 17, h6, UDP_PORT, p6, UDP6_SPORT)] == N_UDP6
    pings = Counter((r["direction"], r["icmp_type"]) for r in records
                    if r["ip_proto"] == 1 and ip(r, "dst_ip") in (h, p))
    assert pings == {("INGRESS", 8): N_PING, ("EGRESS", 0): N_PING}

    tcp = [r for r in records if r["ip_proto"] == 6 and TCP_PORT in (r["src_port"], r["dst_port"])]
    syn = [r for r in tcp if r["tcp_flags"] == 0x02]
    synack = [r for r in tcp if r["tcp_flags"] == 0x12]
    assert len(syn) == 1 and syn[0]["direction"] == "INGRESS"
    assert len(synack) == 1 and synack[0]["direction"] == "EGRESS"
    assert synack[0]["tcp_ack"] == (syn[0]["tcp_seq"] + 1) % 2**32

    for r in records:
        assert r["host_id"] == host_id and r["interface"] == veth.host_if
        assert r["sample_rate"] == 1 and not r["truncated"] and not r["parse_anomaly"]
    udp_in = next(r for r in records if r["src_port"] == UDP_SPORT and r["ip_version"] == 4)
    assert udp_in["packet_length"] == 14 + 20 + 8 + len(b"hdrlog-0")
    assert udp_in["ip_total_length"] == 20 + 8 + len(b"hdrlog-0")
    assert udp_in["ttl"] == 64 and udp_in["ether_type"] == 0x0800

    # the sample consumer reads the same topic and prints one JSON object per record
    res = run_hdrlog("consume", "--topic", topic, "--bootstrap-servers", stack.bootstrap_servers,
                     "--schema-registry", stack.registry_url, "--from-beginning", "--format", "raw",
                     "--max-records", str(len(records)), "--idle-timeout", "20")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == len(records)
    shown = Counter((x["direction"], x["src_ip"], x["src_port"]) for x in lines)
    assert shown[("INGRESS", p, UDP_SPORT)] == N_UDP
    assert shown[("EGRESS", h6, UDP_PORT)] == N_UDP6
