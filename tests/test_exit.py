"""Exit is bounded even when the broker stalls, and everything not delivered is counted."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from producer.devstack import LocalStack
from tests.conftest import send_udp, summary_of

pytestmark = [pytest.mark.kernel, pytest.mark.stack]


def test_sigterm_with_a_stalled_broker_exits_by_the_deadline(quiet_veth, stack, start_agent, udp_sinks,
                                                             tmp_path: Path) -> None:
    net = quiet_veth
    udp_sinks(6400)
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[kafka]\nflush_timeout_s = 3\n[kafka.properties]\n"queue.buffering.max.messages" = "10"\n')
    agent = start_agent(net.host_if, "--config", str(cfg), "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url, "--topic", f"hdrlog.test.exit.{uuid.uuid4().hex[:8]}")
    agent.wait_attached()
    kafka = LocalStack(stack).status().kafka.pid
    assert kafka is not None
    os.kill(kafka, signal.SIGSTOP)  # the broker stops answering; librdkafka's queue (10) fills
    try:
        send_udp(net, net.host_ip, 6400, 200)
        t0 = time.monotonic()
        _out, err = agent.stop(timeout=60)
        took = time.monotonic() - t0
    finally:
        os.kill(kafka, signal.SIGCONT)
    assert agent.proc.returncode == 0, err
    assert took < 3 + 5, took  # the flush deadline, not librdkafka's 120 s message timeout
    s = summary_of(err)
    k, a = s["kernel"], s["agent"]
    assert k["seen"] == k["emitted"] == a["drained"] == 200
    lost = a["dropped_unflushed_at_exit"]
    assert lost > 0 and a["delivered"] + lost == 200
    assert sum(v for name, v in a.items() if name.startswith("dropped_")) == lost
