"""Filters and sampling change on a running agent (SIGHUP), without reloading the program.

The namespace pair is quiet (IPv4 only, static neighbours), so every packet
the kernel counts is one the test sent and the counts are exact.
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import send_udp, summary_of, wait_for

pytestmark = pytest.mark.kernel


def _per_port(records: list[dict]) -> Counter:
    return Counter((r["dst_ip"], r["dst_port"]) for r in records)


def _reload(agent, cfg: Path, text: str) -> float:
    """Rewrite the config, SIGHUP, and return how long until the agent said it applied it."""
    cfg.write_text(text)
    before = len([x for x in agent.log_lines() if x["msg"].startswith("applied filters")])
    t0 = time.monotonic()
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len([x for x in agent.log_lines() if x["msg"].startswith("applied filters")]) > before,
             5, "the reload to be applied")
    return time.monotonic() - t0


def test_filters_and_sampling_change_at_run_time(quiet_veth, start_agent, udp_sinks, tmp_path: Path) -> None:
    net = quiet_veth
    udp_sinks(5001, 5002, 5003, 5004)
    other = "10.204.0.3"
    subprocess.run(["ip", "addr", "add", f"{other}/24", "dev", net.host_if], check=True)
    net.exec(["ip", "neigh", "add", other, "lladdr", net.mac(peer=False), "dev", net.peer_if,
              "nud", "permanent"])
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[capture]\nsample_rate = 1\n")
    agent = start_agent(net.host_if, "--config", str(cfg), "--stdout")
    agent.wait_attached()

    # A: no filter: everything recorded
    send_udp(net, net.host_ip, 5001, 50)
    send_udp(net, net.host_ip, 5002, 50)
    wait_for(lambda: len(agent.records()) >= 100, 10, "100 records")
    assert _per_port(agent.records()) == {(net.host_ip, 5001): 50, (net.host_ip, 5002): 50}

    # B: a port filter
    assert _reload(agent, cfg, '[capture]\nports = ["5002"]\n') < 1.0
    send_udp(net, net.host_ip, 5001, 50)
    send_udp(net, net.host_ip, 5002, 50)
    wait_for(lambda: len(agent.records()) >= 150, 10, "150 records")

    # C: include a /32, exclude inside an included /24 (the longest prefix decides)
    cidrs = '[capture]\ninclude_cidrs = ["10.204.0.0/24"]\nexclude_cidrs = ["10.204.0.1/32"]\n'
    assert _reload(agent, cfg, cidrs) < 1.0
    send_udp(net, net.host_ip, 5003, 40)
    send_udp(net, other, 5003, 40)
    wait_for(lambda: len(agent.records()) >= 190, 10, "190 records")

    # D: 1-in-4 sampling, filters off
    assert _reload(agent, cfg, "[capture]\nsample_rate = 4\n") < 1.0
    n = 4000
    send_udp(net, other, 5004, n)
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    records = agent.records()
    counts = _per_port(records)
    assert counts[(net.host_ip, 5001)] == 50  # phase A only
    assert counts[(net.host_ip, 5002)] == 100
    assert counts[(net.host_ip, 5003)] == 0 and counts[(other, 5003)] == 40
    sampled = counts[(other, 5004)]
    sigma = math.sqrt(n * 0.25 * 0.75)
    assert abs(sampled - n / 4) < 6 * sigma, sampled
    assert all(r["sample_rate"] == 4 for r in records if r["dst_port"] == 5004)
    assert all(r["sample_rate"] == 1 for r in records if r["dst_port"] != 5004)

    k = summary_of(err)["kernel"]
    assert k["seen"] == 50 + 50 + 50 + 50 + 40 + 40 + n
    assert k["filtered"] == 50 + 40
    assert k["sampled_out"] == n - sampled
    assert k["emitted"] == len(records)
    assert k["seen"] == k["filtered"] + k["sampled_out"] + k["emitted"] + k["ringbuf_reserve_failed"]


def test_ipv6_cidr_exclude_and_protocol_filter(veth, start_agent) -> None:
    """IPv6 prefixes go through the cidr6 trie; a protocol set keeps only the IP protocols it
    lists (non-IP frames such as ARP are a separate switch, --drop-non-ip)."""
    net = veth
    agent = start_agent(net.host_if, "--stdout", "--exclude-cidr", "fd00:204::/64", "--protocol", "icmp",
                        "--protocol", "icmpv6", "--drop-non-ip")
    agent.wait_attached()
    net.exec(["ping", "-6", "-c", "3", "-i", "0.05", net.host_ip6])
    net.exec(["ping", "-c", "4", "-i", "0.05", net.host_ip])
    with __import__("socket").socket(2, 2) as u:  # UDP: not in the protocol set
        u.sendto(b"x", (net.peer_ip, 9))
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    recs = agent.records()
    assert not [r for r in recs if "fd00:204:" in (r["src_ip"] or "") + (r["dst_ip"] or "")]
    assert recs and all(r["ip_proto"] in (1, 58) for r in recs)
    pings = Counter((r["direction"], r["icmp_type"]) for r in recs if r["ip_proto"] == 1 and r["icmp_type"] in (0, 8))
    assert pings == {("INGRESS", 8): 4, ("EGRESS", 0): 4}
    k = summary_of(err)["kernel"]
    assert k["filtered"] >= 3 * 2 + 1  # the v6 pings both ways, the UDP datagram
    assert k["seen"] == k["filtered"] + k["emitted"]
