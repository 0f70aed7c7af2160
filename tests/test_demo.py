"""`make run`'s main job: the demo shows the demo traffic as the consumer decodes it."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import run_hdrlog

pytestmark = [pytest.mark.kernel, pytest.mark.stack]


@pytest.mark.parametrize("shape", ["batch", "record"])
def test_demo_shows_decoded_records_and_counters(root_required, stack, shape: str) -> None:
    topic = f"hdrlog.test.demo.{uuid.uuid4().hex[:8]}"
    res = run_hdrlog("--log-format", "json", "demo", "--duration", "4", "--topic", topic, "--json",
                     "--shape", shape, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"==> [{shape}] consumer:" in res.stderr and f"from topic {topic}.{shape}" in res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    http = [r for r in records if r["ip_proto"] == 6 and 8080 in (r["src_port"], r["dst_port"])]
    assert any(r["tcp_flags"] == 0x02 and r["direction"] == "EGRESS" for r in http)  # curl's SYN
    assert {(r["icmp_type"], r["direction"]) for r in records if r["ip_proto"] == 1} >= {
        (8, "EGRESS"), (0, "INGRESS")}
    assert any(r["ip_proto"] == 58 and r["icmp_type"] == 128 for r in records)  # ping6
    assert any(r["ip_proto"] == 17 and r["dst_port"] == 53 for r in records)  # the DNS query
    head = f"==> [{shape}] agent counters"
    counters = json.loads(res.stderr[res.stderr.index(head) + len(head):])
    assert counters["agent"]["delivered"] == len(records) == counters["kernel"]["emitted"]


def test_text_lines_are_readable() -> None:
    from producer.render import summary_line

    rec = {"interface": "eth0", "direction": "EGRESS", "src_mac": b"\x02" * 6, "dst_mac": b"\x04" * 6,
           "vlan_ids": [7], "ether_type": 0x86DD, "ip_version": 6, "src_ip": b"\xfd" + b"\x00" * 14 + b"\x01",
           "dst_ip": b"\xfd" + b"\x00" * 14 + b"\x02", "ip_proto": 6, "src_port": 443, "dst_port": 5000,
           "tcp_flags": 0x12, "icmp_type": None, "icmp_code": None, "ttl": 64, "packet_length": 74,
           "truncated": False, "parse_anomaly": True}
    assert summary_line(rec) == "eth0 out tcp   [fd00::1]:443 > [fd00::2]:5000 [SA] ttl=64 len=74 vlan=7 ANOMALY"
