"""Hostile frames: a fuzz run of malformed frames through a veth, against the real agent, broker and registry.

Random and structured frames (random bytes behind every EtherType that
matters, scapy's ``fuzz()`` of IPv4/IPv6 with TCP, UDP and ICMP, IPv6
extension chains up to 12 deep, VLAN stacks up to 6 tags, IPv4 and IPv6
fragments, zero-length payloads, jumbo frames up to 9,014 bytes, and any of
those cut short) enter the host side of a veth pair (MTU 9,000) from its peer.
They are addressed to a MAC the host does not own, so the host answers none
of them and only they cross the pair.

The agent must stay up and stop cleanly; every frame is seen by the hook and
recorded or counted (``seen = emitted + filtered + sampled_out +
ringbuf_reserve_failed``, ``seen`` = frames sent, but for the VLAN frames the
kernel discards before tc: ``dropped_before_tc``); every record is in Kafka,
decodes through the registry, reconciles gaplessly with the kernel's count,
and is one of the frames sent (source MAC, and the multiset of lengths).

``make test`` sends FRAMES frames; the ``long`` run (``make test-long``)
LONG_FRAMES, whose figures are in BENCHMARKS.md ("Hostile frames").
"""

from __future__ import annotations

import random
import struct
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw, fuzz

from producer.render import render
from tests.conftest import expand, read_topic, reconcile, summary_of, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

FRAMES, LONG_FRAMES = 6_000, 200_000
MTU = 9_000
FUZZ_MAC, OTHER_MAC = "02:66:75:7a:7a:01", "02:00:5e:00:fe:01"  # ours; a destination the host is not
SRC4, DST4, SRC6, DST6 = "192.0.2.1", "198.51.100.2", "2001:db8::1", "2001:db8::2"
#: the sender, in the peer's namespace: frames from a file (2-byte length, then the frame), paced to
#: at most 50,000 a second so that a burst does not fill the ring buffer; prints how many it sent
SENDER = """
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
data = open(sys.argv[2], "rb").read()
at = sent = 0
while at < len(data):
    (n,) = struct.unpack_from("!H", data, at)
    s.send(data[at + 2:at + 2 + n])
    at += 2 + n
    sent += 1
    if sent % 100 == 0:
        time.sleep(0.002)
print(sent)
"""


def _eth(rnd: random.Random) -> Ether:
    return Ether(src=FUZZ_MAC, dst=OTHER_MAC)


def _random_bytes(rnd: random.Random) -> list[bytes]:
    etype = rnd.choice([0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x0806, 0x88CC, rnd.getrandbits(16)])
    size = rnd.choice([0, 1, 4, 19, 20, 21, 39, 40, 41, 60, rnd.randint(0, 1500)])
    return [bytes(_eth(rnd)) [:12] + struct.pack("!H", etype) + rnd.randbytes(size)]


def _fuzzed(rnd: random.Random) -> list[bytes]:
    layer = rnd.choice([
        lambda: IP(src=SRC4, dst=DST4) / TCP(), lambda: IP(src=SRC4, dst=DST4) / UDP(),
        lambda: IP(src=SRC4, dst=DST4) / ICMP(), lambda: IP(src=SRC4, dst=DST4),
        lambda: IPv6(src=SRC6, dst=DST6) / TCP(), lambda: IPv6(src=SRC6, dst=DST6) / UDP(),
        lambda: IPv6(src=SRC6, dst=DST6) / ICMPv6EchoRequest(),
        lambda: IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment() / UDP(),
        lambda: ARP(),
    ])()
    return [bytes(_eth(rnd) / fuzz(layer))]


def _ipv6_chain(rnd: random.Random) -> list[bytes]:
    pkt: Any = IPv6(src=SRC6, dst=DST6)
    for _ in range(rnd.randint(1, 12)):
        ext = rnd.choice([IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment])
        pkt = pkt / (ext(offset=rnd.randint(0, 8191), m=rnd.randint(0, 1), id=rnd.getrandbits(32))
                     if ext is IPv6ExtHdrFragment else ext())
    pkt = pkt / rnd.choice([TCP(sport=1, dport=2), UDP(sport=3, dport=4), Raw(rnd.randbytes(rnd.randint(0, 64)))])
    return [bytes(_eth(rnd) / pkt)]


def _vlans(rnd: random.Random) -> list[bytes]:
    pkt: Any = _eth(rnd)
    for _ in range(rnd.randint(1, 6)):
        pkt = pkt / rnd.choice([Dot1Q, Dot1AD])(vlan=rnd.randint(0, 4095), prio=rnd.randint(0, 7))
    inner = rnd.choice([IP(src=SRC4, dst=DST4) / UDP(sport=5, dport=6), IPv6(src=SRC6, dst=DST6) / TCP(),
                        Raw(rnd.randbytes(rnd.randint(0, 40)))])
    return [bytes(pkt / inner)]


def _fragments(rnd: random.Random) -> list[bytes]:
    size = rnd.randint(1, 3000)
    if rnd.random() < 0.5:
        whole = IP(src=SRC4, dst=DST4, id=rnd.getrandbits(16)) / UDP(sport=7, dport=8) / Raw(b"f" * size)
        parts = fragment(whole, fragsize=rnd.choice([8, 16, 64, 512, 1400]))
    else:
        whole = IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(id=rnd.getrandbits(32)) / UDP(sport=9, dport=10) \
            / Raw(b"g" * size)
        parts = fragment6(whole, rnd.choice([1280, 1500]))
    return [bytes(_eth(rnd) / p) for p in parts[:8]]


def _jumbo(rnd: random.Random) -> list[bytes]:
    size = rnd.randint(1_500, MTU - 28)
    inner = rnd.choice([IP(src=SRC4, dst=DST4) / UDP(sport=11, dport=12), IPv6(src=SRC6, dst=DST6)])
    return [bytes(_eth(rnd) / inner / Raw(rnd.randbytes(size - len(inner))))]


STRUCTURED = (_fuzzed, _ipv6_chain, _vlans, _fragments, _jumbo)


def _cut(rnd: random.Random) -> list[bytes]:
    frame = rnd.choice(STRUCTURED)(rnd)[0]
    return [frame[:rnd.randint(14, len(frame))]]


def frames(seed: int, n: int) -> list[bytes]:
    """``n`` frames, the same for the same seed (scapy's fuzz draws from ``random``, seeded too)."""
    rnd = random.Random(seed)
    random.seed(seed)
    out: list[bytes] = []
    makers = (_random_bytes, _cut, *STRUCTURED)
    while len(out) < n:
        out += [f[:MTU + 14] for f in rnd.choice(makers)(rnd)]
    return out[:n]


def dropped_before_tc(frame: bytes) -> bool:
    """The kernel discards a VLAN-tagged frame too short for its tag and the EtherType after it (20
    bytes) before any tc hook runs (net/core/skbuff.c, skb_vlan_untag), and counts it nowhere; the XDP
    hook, which runs before, would see it."""
    return struct.unpack_from("!H", frame, 12)[0] in (0x8100, 0x88A8) and len(frame) < 20


def _run(veth: Any, stack: Any, start_agent: Any, tmp_path: Path, n: int) -> dict[str, Any]:
    net = veth
    for where in ([], ["-n", net.ns]):
        net._ip(*where, "link", "set", net.peer_if if where else net.host_if, "mtu", str(MTU))
    sent_frames = frames(20261130, n)
    assert min(map(len, sent_frames)) == 14 and max(map(len, sent_frames)) > 8_000
    data = tmp_path / "frames.bin"
    data.write_bytes(b"".join(struct.pack("!H", len(f)) + f for f in sent_frames))
    topic = f"hdrlog.test.fuzz.{uuid.uuid4().hex[:8]}"
    agent = start_agent(net.host_if, "--bootstrap-servers", stack.bootstrap_servers, "--schema-registry",
                        stack.registry_url, "--topic", topic)
    agent.wait_attached()
    started = time.monotonic()
    out = net.exec(["/usr/bin/python3", "-c", SENDER, net.peer_if, str(data)], timeout=600)
    assert int(out.stdout) == n, out.stderr
    reach = [f for f in sent_frames if not dropped_before_tc(f)]
    wait_for(lambda: agent.status()["kernel"]["seen"] >= len(reach), 60, "the hook to see every frame")
    wait_for(lambda: (s := agent.status())["agent"]["delivered"] == s["kernel"]["emitted"], 120,
             "every emitted record in Kafka")
    seconds = time.monotonic() - started
    assert agent.proc.poll() is None, agent.stderr
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    assert "Traceback" not in err, err
    k = summary_of(err)["kernel"]
    assert k["seen"] == len(reach), k  # only our frames crossed the pair
    assert k["emitted"] + k["filtered"] + k["sampled_out"] + k["ringbuf_reserve_failed"] == k["seen"], k
    records = [render(r) for r in expand(stack.registry_url, read_topic(stack.bootstrap_servers, topic))]
    counts = reconcile(records, {records[0]["capture_id"]: k["emitted"]} if records else {})
    assert len(records) == k["emitted"] == len(reach) - k["ringbuf_reserve_failed"], counts
    assert {r["src_mac"] for r in records} == {FUZZ_MAC} and {r["direction"] for r in records} == {"INGRESS"}
    if k["ringbuf_reserve_failed"] == 0:  # every frame recorded: the records are the frames
        assert Counter(r["packet_length"] for r in records) == Counter(map(len, reach))
    return {"frames": n, "dropped_before_tc": n - len(reach), "seconds": seconds, "kernel": k,
            "anomalies": sum(bool(r["parse_anomaly"]) for r in records),
            "truncated": sum(bool(r["truncated"]) for r in records)}


def test_fuzzed_frames_are_each_recorded_or_counted(quiet_veth, stack, start_agent, tmp_path: Path) -> None:
    _run(quiet_veth, stack, start_agent, tmp_path, FRAMES)


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_fuzzed_frames_are_each_recorded_or_counted_long(quiet_veth, stack, start_agent, tmp_path: Path) -> None:
    result = _run(quiet_veth, stack, start_agent, tmp_path, LONG_FRAMES)
    print(f"\nfuzz: {result}")
