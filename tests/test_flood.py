"""A flood that overruns the ring buffer: every missing record is counted.

A one-page ring buffer (32 records of 128-byte slots) read every 2 s, and a burst of 3000
datagrams: the kernel cannot reserve most of them.  The quiet namespace pair
carries nothing else, so the counts are exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import send_udp, summary_of

pytestmark = pytest.mark.kernel


def test_ringbuf_overrun_is_counted_exactly(quiet_veth, start_agent, udp_sinks, tmp_path: Path) -> None:
    net = quiet_veth
    udp_sinks(6001)
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[capture]\nringbuf_pages = 1\npoll_interval_ms = 2000\nwakeup_records = 1000000\n")
    agent = start_agent(net.host_if, "--config", str(cfg), "--stdout")
    agent.wait_attached()
    n = 3000
    send_udp(net, net.host_ip, 6001, n)
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    k = summary_of(err)["kernel"]
    got = [r for r in agent.records() if r["dst_port"] == 6001]
    assert k["seen"] == n
    assert k["ringbuf_reserve_failed"] > 0
    assert k["emitted"] + k["ringbuf_reserve_failed"] == n
    assert len(got) == len(agent.records()) == k["emitted"]
    assert n - len(got) == k["ringbuf_reserve_failed"]
