"""Interfaces by pattern: links that appear after start are captured too."""

from __future__ import annotations

import os

import pytest

from producer.netns import VethNamespace
from tests.conftest import send_udp, summary_of, wait_for

pytestmark = pytest.mark.kernel


def test_pattern_attaches_links_that_appear_later(root_required, start_agent, udp_sinks) -> None:
    tag = f"hlp{os.getpid() % 1000}"
    nets = [VethNamespace(ns=f"{tag}-{i}", host_if=f"{tag}x{i}", peer_if=f"{tag}y{i}",
                          host_ip=f"10.205.{i}.1", peer_ip=f"10.205.{i}.2") for i in range(2)]
    udp_sinks(6200)
    agent = start_agent(f"{tag}x*", "--stdout")
    try:
        agent.wait_attached()  # nothing matches yet
        for net in nets:
            net.create(quiet=True)
            wait_for(lambda net=net: f'"capturing on {net.host_if} (appeared later)"' in agent.stderr,
                     10, f"the agent to attach to {net.host_if}")
            send_udp(net, net.host_ip, 6200, 11)
        _out, err = agent.stop()
    finally:
        for net in nets:
            net.destroy()
    assert agent.proc.returncode == 0, err
    per_if = {n.host_if: sum(1 for r in agent.records() if r["interface"] == n.host_if and r["dst_port"] == 6200)
              for n in nets}
    assert per_if == {nets[0].host_if: 11, nets[1].host_if: 11}
    assert sorted(summary_of(err)["interfaces"]) == sorted(n.host_if for n in nets)


def test_missing_plain_name_is_an_error_but_pattern_is_not(root_required) -> None:
    from producer.capture.links import resolve
    from producer.errors import InterfaceError

    assert resolve(["nosuchlink*"]) == {}
    with pytest.raises(InterfaceError, match="no such network interface: 'nosuchlink0'"):
        resolve(["nosuchlink0"])
