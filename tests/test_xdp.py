"""The XDP hook: ingress records on a veth, attach/detach and stale replacement."""

from __future__ import annotations

import signal

import pytest

from producer.capture import xdp
from tests.conftest import send_udp, summary_of

pytestmark = pytest.mark.kernel


def test_xdp_ingress_records_and_detach(quiet_veth, start_agent, udp_sinks) -> None:
    net = quiet_veth
    udp_sinks(6100)
    agent = start_agent(net.host_if, "--stdout", "--hook", "xdp")
    agent.wait_attached()
    found = xdp.attached(net.host_if)
    assert found is not None and found.name == "hdrlog_xdp"
    send_udp(net, net.host_ip, 6100, 23)
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    recs = [r for r in agent.records() if r["dst_port"] == 6100]
    assert len(recs) == 23 and {r["direction"] for r in recs} == {"INGRESS"}
    assert all(r["src_ip"] == net.peer_ip and r["packet_length"] == 14 + 20 + 8 + 18 for r in recs)
    k = summary_of(err)["kernel"]
    assert k["seen"] == k["emitted"] == 23  # ingress only: no egress hook
    assert xdp.attached(net.host_if) is None


def test_xdp_sigkill_then_restart_replaces_stale(quiet_veth, start_agent) -> None:
    net = quiet_veth
    first = start_agent(net.host_if, "--stdout", "--hook", "xdp")
    first.wait_attached()
    first.stop(signal.SIGKILL)
    assert xdp.attached(net.host_if) is not None
    second = start_agent(net.host_if, "--stdout", "--hook", "xdp")
    second.wait_attached()
    _out, err = second.stop()
    assert second.proc.returncode == 0, err
    assert "replaced 1 stale hdrlog hook(s)" in err
    assert xdp.attached(net.host_if) is None
