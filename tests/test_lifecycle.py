"""Attach/detach: whatever way the agent ends, none of its tc filters stay behind."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.conftest import summary_of

pytestmark = pytest.mark.kernel


def _tc_show(iface: str) -> str:
    out = ""
    for hook in ("ingress", "egress"):
        out += subprocess.run(["tc", "filter", "show", "dev", iface, hook],
                              capture_output=True, text=True, check=False).stdout
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exit_detaches(veth, start_agent, sig: int) -> None:
    agent = start_agent(veth.host_if, "--stdout")
    agent.wait_attached()
    assert "hdrlog_ingress" in _tc_show(veth.host_if)
    _out, err = agent.stop(sig)
    assert agent.proc.returncode == 0, err
    assert "hdrlog" not in _tc_show(veth.host_if)
    assert summary_of(err)["interfaces"] == [veth.host_if]


def test_duration_exit_detaches(veth, start_agent) -> None:
    agent = start_agent(veth.host_if, "--stdout", "--duration", "1")
    _out, err = agent.wait_exit()
    assert agent.proc.returncode == 0, err
    assert "hdrlog" not in _tc_show(veth.host_if)


def test_sigkill_then_restart_replaces_stale_filters(veth, start_agent) -> None:
    first = start_agent(veth.host_if, "--stdout")
    first.wait_attached()
    first.stop(signal.SIGKILL)
    stale = first.our_filters()
    assert len(stale) == 2, "a SIGKILLed agent cannot detach: its filters stay until the next start"

    second = start_agent(veth.host_if, "--stdout")
    second.wait_attached()
    show = _tc_show(veth.host_if)
    assert show.count("name hdrlog_ingress") == 1 and show.count("name hdrlog_egress") == 1
    _out, err = second.stop()
    assert second.proc.returncode == 0, err
    assert "replaced 2 stale hdrlog hook(s)" in err
    assert "hdrlog" not in _tc_show(veth.host_if)


def test_other_filters_are_left_alone(veth, start_agent) -> None:
    """A filter that is not ours survives our attach and detach, and keeps the qdisc."""
    subprocess.run(["tc", "qdisc", "add", "dev", veth.host_if, "clsact"], check=True)
    subprocess.run(["tc", "filter", "add", "dev", veth.host_if, "ingress", "pref", "1",
                    "protocol", "all", "u32", "match", "u32", "0", "0", "classid", "1:1"],
                   check=True)
    agent = start_agent(veth.host_if, "--stdout")
    agent.wait_attached()
    agent.stop()
    show = _tc_show(veth.host_if)
    assert "hdrlog" not in show and "u32" in show


def test_stdout_reader_going_away_stops_and_counts(quiet_veth, udp_sinks) -> None:
    """`hdrlog agent --stdout | head -1`: exit 0, and what was not printed is counted."""
    from tests.conftest import HDRLOG, ROOT, send_udp, wait_for

    net = quiet_veth
    udp_sinks(6300)
    proc = subprocess.Popen([*HDRLOG, "--log-format", "json", "agent", "--iface", net.host_if, "--stdout"],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        wait_for(lambda: '"capturing on' in proc.stderr.readline(), 60, "the agent to attach")
        send_udp(net, net.host_ip, 6300, 1)
        assert json.loads(proc.stdout.readline())["dst_port"] == 6300
        proc.stdout.close()  # the reader goes away
        send_udp(net, net.host_ip, 6300, 3000)
        err = proc.stderr.read()
        assert proc.wait(60) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    s = summary_of(err)
    a, k = s["agent"], s["kernel"]
    assert a["dropped_stdout_closed"] > 0 and "Traceback" not in err
    assert a["printed"] + a["dropped_stdout_closed"] == a["drained"] == k["emitted"]
