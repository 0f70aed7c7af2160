"""Every record says exactly what crossed the wire: either hook (tc, XDP), stdout or Kafka (both shapes).

A known mix -- real TCP, UDP, ICMP echo and errors, ICMPv6 and neighbour
discovery, plus frames crafted with scapy: IPv6 extension headers and
fragments, IPv4 fragments and options, 802.1Q, QinQ and deeper VLAN stacks,
ARP, ECN/AE bits, and malformed frames -- enters the host side of a veth pair
while tcpdump captures the same interface.  Each ingress record is compared
field by field, in order, with what scapy parses from the pcap; the counts
reconcile exactly.

The expectations below take values from scapy and apply the record's
documented rules (README "The record"): which fields are null when headers
end early (truncated) or lie (parse_anomaly).
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from producer.render import render
from tests.conftest import expand, read_topic, summary_of, wait_for

pytestmark = pytest.mark.kernel

START_PORT, MARKER_PORT = 7776, 7777  # frames that open and close the compared window
SEND_FRAMES = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for line in sys.stdin:
    s.send(bytes.fromhex(line.strip()))
"""


def crafted(net: Any, host_mac: str, peer_mac: str) -> list[bytes]:
    h, p, h6, p6 = net.host_ip, net.peer_ip, net.host_ip6, net.peer_ip6
    eth = Ether(src=peer_mac, dst=host_mac)
    ip = IP(src=p, dst=h)
    ip6 = IPv6(src=p6, dst=h6)
    frames = [
        # IPv6 extension header chain, then UDP
        eth / ip6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / UDP(sport=1111, dport=2222),
        # IPv6 with an IPsec AH (its length counts 4-byte units) before UDP
        # (built by hand: importing scapy's ipsec layer warns about cryptography)
        eth / IPv6(src=p6, dst=h6, nh=51) / Raw(bytes([17, 4, 0, 0]) + (0x1234).to_bytes(4, "big")
                                                 + (1).to_bytes(4, "big") + b"\x00" * 12)
        / UDP(sport=1124, dport=2235),
        # IPv6 fragments: first (ports) and a later one (no ports)
        eth / ip6 / IPv6ExtHdrFragment(id=0xDEADBEEF, m=1, offset=0) / UDP(sport=1112, dport=2223) / Raw(b"a" * 32),
        eth / ip6 / IPv6ExtHdrFragment(nh=17, id=0xDEADBEEF, m=0, offset=5) / Raw(b"b" * 24),
        # a chain deeper than the parser follows: truncated, ip_proto = the next header seen
        eth / IPv6(src=p6, dst=h6, nh=60) / b"".join(bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"
                                                      for _ in range(7)) / UDP(sport=1, dport=2),
        # 802.1Q, QinQ (802.1ad outer), three and four tags
        eth / Dot1Q(vlan=100, prio=5) / ip / UDP(sport=1113, dport=2224),
        eth / Dot1AD(vlan=10) / Dot1Q(vlan=20) / ip / UDP(sport=1114, dport=2225),
        eth / Dot1AD(vlan=11) / Dot1Q(vlan=21) / Dot1Q(vlan=31) / ip / UDP(sport=1115, dport=2226),
        eth / Dot1AD(vlan=12) / Dot1Q(vlan=22) / Dot1Q(vlan=32) / Dot1Q(vlan=42) / ip / UDP(sport=1, dport=2),
        # ARP
        Ether(src=peer_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=peer_mac, psrc=p, pdst=h),
        # IPv4 options (IHL 6), ECN + DSCP, TCP with AE (NS) flag
        eth / IP(src=p, dst=h, options=b"\x01\x01\x01\x00") / UDP(sport=1116, dport=2227),
        eth / IP(src=p, dst=h, tos=0xB9) / TCP(sport=1117, dport=2228, flags="SEN", seq=7, ack=9, window=77),
        # malformed: IHL 4 (anomaly, no ports)
        eth / IP(src=p, dst=h, ihl=4) / UDP(sport=1118, dport=2229),
        # total length beyond the frame (anomaly; the ports inside the frame are still read)
        eth / IP(src=p, dst=h, len=1000) / UDP(sport=1119, dport=2230),
        # truncated transport headers: 8 bytes of TCP, 4 bytes of UDP
        eth / IP(src=p, dst=h, proto=6) / Raw(bytes(TCP(sport=1120, dport=2231))[:8]),
        eth / IP(src=p, dst=h, proto=17) / Raw(bytes(UDP(sport=1121, dport=2232))[:4]),
        # the IP headers themselves cut short
        Ether(src=peer_mac, dst=host_mac, type=0x0800) / Raw(bytes(IP(src=p, dst=h))[:10]),
        Ether(src=peer_mac, dst=host_mac, type=0x86DD) / Raw(bytes(ip6)[:30]),
        # TCP data offset below 5
        eth / ip / TCP(sport=1122, dport=2233, dataofs=2),
    ]
    frames += fragment(eth / ip / UDP(sport=1123, dport=2234) / Raw(b"f" * 2000), fragsize=800)
    return [bytes(f) for f in frames]


def _opt(value: Any, present: bool) -> Any:
    return value if present else None


def _align(records: list[dict[str, Any]], packets: list[bytes], reach: int = 3) -> list[dict[str, Any]]:
    """Records in the pcap's order.  Packets that arrive together on two CPUs may enter the ring
    buffer in the other order than tcpdump saw them: each packet takes the first unused record
    within ``reach`` places that equals what it should be; if none does, the record in its own
    place is kept, and the field-by-field comparison reports it."""
    left = list(records)
    out: list[dict[str, Any]] = []
    for frame in packets:
        exp = expected(frame)
        j = next((j for j in range(min(reach, len(left))) if {k: left[j][k] for k in exp} == exp), 0)
        out.append(left.pop(j))
    return out


def expected(frame: bytes) -> dict[str, Any]:
    """The record a correct agent writes for this frame, from scapy's parse of it."""
    e = Ether(frame)
    exp: dict[str, Any] = {k: None for k in (
        "ip_version", "src_ip", "dst_ip", "ip_proto", "ttl", "dscp", "ecn", "ip_total_length",
        "ip_id", "dont_fragment", "more_fragments", "fragment_offset", "src_port", "dst_port",
        "tcp_flags", "tcp_seq", "tcp_ack", "tcp_window", "icmp_type", "icmp_code")}
    exp.update(src_mac=e.src, dst_mac=e.dst, packet_length=len(frame), truncated=False,
               parse_anomaly=False, direction="INGRESS")
    etype, off, tags, vlans = e.type, 14, 0, []
    while etype in (0x8100, 0x88A8) and tags < 3:
        tci, etype = struct.unpack_from(">HH", frame, off)
        vlans.append(tci & 0xFFF)
        off += 4
        tags += 1
    exp.update(vlan_ids=vlans[:2], ether_type=etype)
    if etype in (0x8100, 0x88A8):
        exp["truncated"] = True
        return exp
    if etype == 0x0800:
        _ipv4(exp, frame, off)
    elif etype == 0x86DD:
        _ipv6(exp, frame, off)
    return exp


def _ipv4(exp: dict[str, Any], frame: bytes, off: int) -> None:
    if len(frame) - off < 20:
        exp["truncated"] = True
        return
    ip = IP(frame[off:])
    exp.update(ip_version=ip.version, src_ip=ip.src, dst_ip=ip.dst, ip_proto=ip.proto, ttl=ip.ttl,
               dscp=ip.tos >> 2, ecn=ip.tos & 3, ip_total_length=ip.len, ip_id=ip.id,
               dont_fragment=bool(ip.flags.DF), more_fragments=bool(ip.flags.MF), fragment_offset=ip.frag)
    ihl = ip.ihl * 4
    if ip.version != 4 or ihl < 20 or ip.len < ihl:
        exp["parse_anomaly"] = True
        return
    end = off + ip.len
    if end > len(frame):
        exp["parse_anomaly"] = True
        end = len(frame)
    if off + ihl > end:
        exp["truncated"] = True
        return
    if ip.frag == 0:
        _l4(exp, frame[off + ihl:end], ip.proto)


def _ipv6(exp: dict[str, Any], frame: bytes, off: int) -> None:
    if len(frame) - off < 40:
        exp["truncated"] = True
        return
    ip6 = IPv6(frame[off:])
    exp.update(ip_version=ip6.version, src_ip=ip6.src, dst_ip=ip6.dst, ttl=ip6.hlim, dscp=ip6.tc >> 2,
               ecn=ip6.tc & 3, ip_total_length=40 + ip6.plen, ip_proto=ip6.nh)
    end = off + 40 + ip6.plen
    if end > len(frame):
        exp["parse_anomaly"] = True
        end = len(frame)
    layer, pos, nh = ip6.payload, off + 40, ip6.nh
    for _ in range(6):
        if isinstance(layer, IPv6ExtHdrFragment):
            exp.update(ip_id=layer.id, more_fragments=bool(layer.m), fragment_offset=layer.offset,
                       dont_fragment=False)
            nh, pos, layer = layer.nh, pos + 8, layer.payload
            exp["ip_proto"] = nh
            if exp["fragment_offset"]:
                return
        elif nh in (0, 43, 60):
            hdr_len = (frame[pos + 1] + 1) * 8
            nh, pos, layer = frame[pos], pos + hdr_len, layer.payload
            exp["ip_proto"] = nh
        elif nh == 51:  # AH: length in 4-byte units, minus 2
            nh, pos = frame[pos], pos + (frame[pos + 1] + 2) * 4
            exp["ip_proto"] = nh
        else:
            _l4(exp, frame[pos:end], nh)
            return
    exp["truncated"] = True


def _l4(exp: dict[str, Any], seg: bytes, proto: int) -> None:
    if proto == 6:
        if len(seg) >= 4:
            t = TCP(seg[:20] if len(seg) >= 20 else seg + b"\x00" * (20 - len(seg)))
            exp.update(src_port=t.sport, dst_port=t.dport)
        if len(seg) >= 20:
            exp.update(tcp_flags=int(t.flags), tcp_seq=t.seq, tcp_ack=t.ack, tcp_window=t.window)
            exp["parse_anomaly"] = exp["parse_anomaly"] or t.dataofs < 5
        else:
            exp["truncated"] = True
    elif proto == 17:
        if len(seg) >= 4:
            u = UDP(seg + b"\x00" * max(0, 8 - len(seg)))
            exp.update(src_port=u.sport, dst_port=u.dport)
        if len(seg) < 8:
            exp["truncated"] = True
    elif proto in (1, 58):
        if len(seg) >= 2:
            exp.update(icmp_type=seg[0], icmp_code=seg[1])
        else:
            exp["truncated"] = True


def _real_traffic(net: Any) -> None:
    """Real sockets: a TCP exchange, UDP, ping, ping6, and ICMP errors coming back in."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((net.host_ip, 7001))
    srv.listen()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((net.host_ip, 7002))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while conn.recv(4096):
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    client = ("import socket\n"
              f"c = socket.create_connection(('{net.host_ip}', 7001)); c.sendall(b'd' * 3000); c.close()\n"
              "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"[u.sendto(b'u' * 40, ('{net.host_ip}', 7002)) for _ in range(5)]\n")
    net.exec(["/usr/bin/python3", "-c", client])
    th.join(10)
    net.exec(["ping", "-c", "3", "-i", "0.05", net.host_ip])
    net.exec(["ping", "-6", "-c", "2", "-i", "0.05", net.host_ip6])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:  # peer answers: port unreachable
        for _ in range(2):
            u.sendto(b"?", (net.peer_ip, 7999))
    srv.close()
    sink.close()


def _window(items: list[Any], port_of: Any) -> list[Any]:
    """The items from the start marker to the end marker, both included."""
    ports = [port_of(x) for x in items]
    first = ports.index(START_PORT)
    last = len(ports) - 1 - ports[::-1].index(MARKER_PORT)
    return items[first: last + 1]


@pytest.mark.parametrize(("hook", "route"), [("tc", "stdout"), ("xdp", "stdout"), ("tc", "batch"),
                                              ("tc", "record")])
def test_records_match_pcap_field_by_field(veth, start_agent, tmp_path: Path, hook: str, route: str,
                                           request: pytest.FixtureRequest) -> None:
    """``route``: the agent's JSON lines on stdout, or Kafka in either message shape, read back and
    decoded through the registry (so both shapes carry every field exactly)."""
    net = veth
    if route == "stdout":
        out_args: tuple[str, ...] = ("--stdout",)
    else:
        stack = request.getfixturevalue("stack")
        topic = f"hdrlog.test.fidelity.{route}.{uuid.uuid4().hex[:8]}"
        out_args = ("--bootstrap-servers", stack.bootstrap_servers, "--schema-registry", stack.registry_url,
                    "--topic", topic, "--shape", route)
    pcap = tmp_path / "in.pcap"
    tcpdump = subprocess.Popen(["tcpdump", "-i", net.host_if, "-Q", "in", "-n", "-U", "--immediate-mode",
                                "-w", str(pcap)], stderr=subprocess.PIPE, text=True)
    try:
        assert tcpdump.stderr is not None
        line = tcpdump.stderr.readline()
        assert "listening on" in line, line
        agent = start_agent(net.host_if, *out_args, "--hook", hook)
        agent.wait_attached()
        host_mac, peer_mac = net.mac(peer=False), net.mac(peer=True)

        def marker(port: int) -> bytes:
            return bytes(Ether(src=peer_mac, dst=host_mac) / IP(src=net.peer_ip, dst=net.host_ip)
                         / UDP(sport=port, dport=port))

        def send(frames: list[bytes]) -> None:
            net.exec(["/usr/bin/python3", "-c", SEND_FRAMES, net.peer_if],
                     input_text="".join(f.hex() + "\n" for f in frames))

        send([marker(START_PORT)])
        _real_traffic(net)
        frames = crafted(net, host_mac, peer_mac)
        send([*frames, marker(MARKER_PORT)])

        def seen_marker() -> bool:
            if route != "stdout":  # everything the kernel emitted is in Kafka
                s = agent.status()
                return bool(s["kernel"]["emitted"] == s["agent"]["delivered"] > len(frames))
            return any(r["dst_port"] == MARKER_PORT for r in agent.records())

        wait_for(seen_marker, 10, "the marker frame in the agent's output")

        def pcap_has_marker() -> bool:
            try:
                pkts = rdpcap(str(pcap))
            except Exception:  # a packet half written
                return False
            return any(UDP in p and p[UDP].dport == MARKER_PORT for p in pkts)

        wait_for(pcap_has_marker, 10, "the marker frame in the pcap")
        _out, err = agent.stop()
    finally:
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.communicate(timeout=30)
    assert agent.proc.returncode == 0, err
    if route == "stdout":
        output = agent.records()
    else:
        output = [render(r) for r in expand(stack.registry_url, read_topic(stack.bootstrap_servers, topic))]

    records = _window([r for r in output if r["direction"] == "INGRESS"],
                      lambda r: r["dst_port"])
    captured = _window(list(rdpcap(str(pcap))), lambda p: p[UDP].dport if UDP in p else None)
    packets = [bytes(p) for p in captured]
    assert len(records) == len(packets), (len(records), len(packets))
    # every crafted frame reached tc as sent, so each is compared below (the packets are all compared)
    missing = [Ether(frame).summary() for frame in frames if frame not in packets]
    assert not missing, f"crafted frames tcpdump did not see as sent: {missing}"

    records = _align(records, packets)
    mismatches = []
    for i, (rec, frame) in enumerate(zip(records, packets, strict=True)):
        exp = expected(frame)
        got = {k: rec[k] for k in exp}
        if got != exp:
            diff = {k: (got[k], exp[k]) for k in exp if got[k] != exp[k]}
            mismatches.append(f"packet {i} ({Ether(frame).summary()}): record vs pcap {diff}")
    assert not mismatches, "\n".join(mismatches)
    for rec, pkt in zip(records, captured, strict=True):
        assert (rec["interface"], rec["sample_rate"]) == (net.host_if, 1)
        # a GSO aggregate (beyond the 1500-byte MTU) stands for several wire packets
        assert (rec["gso_segments"] > 1) == (len(bytes(pkt)) > 1514 + 8), (rec["gso_segments"], len(bytes(pkt)))
        # the kernel's monotonic clock, converted, agrees with the capture's wall clock
        assert abs(rec["timestamp_ns"] - int(pkt.time * 1_000_000_000)) < 50_000_000

    k = summary_of(err)["kernel"]
    assert k["seen"] == k["filtered"] + k["sampled_out"] + k["emitted"] + k["ringbuf_reserve_failed"]
    assert k["ringbuf_reserve_failed"] == 0 and k["emitted"] == len(output)
    anomalies = sum(1 for r in output if r["parse_anomaly"])
    assert k["parse_anomalies"] == anomalies >= 3
    kinds = {(r["ether_type"], r["ip_proto"]) for r in records}
    assert {(0x0800, 6), (0x0800, 17), (0x0800, 1), (0x86DD, 58), (0x86DD, 17), (0x0806, None)} <= kinds
