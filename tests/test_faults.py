"""Fault reconciliation: steady traffic through broker and registry faults, every record accounted for.

While datagrams cross a veth pair at a steady rate the broker is SIGKILLed and
restarted, then SIGSTOPped for longer than the (test-shortened)
``message.timeout.ms`` and resumed, and the registry is killed, in either
message shape (a batch per message, or a record per message, re-sent one by
one).  With a disk buffer every datagram the sender sent is in Kafka, unique by
identity, and nothing is dropped.  With a small memory buffer that drops the newest when full,
what is missing from Kafka equals the drop counters exactly.  /api/v1/status
reports each outage while it happens.

`make test` runs a bounded version (HDRLOG_FAULT_RATE datagrams/s, default 1000);
`make test-long` runs it longer and faster (tests marked ``long``).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from producer.devstack import LocalStack
from tests.conftest import expand, read_topic, reconcile, summary_of, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

TIMEOUT_MS = 3000  # message.timeout.ms, shortened so that a SIGSTOP outlasts it


def _states(agent: Any, seen: set[str]) -> str:
    state = str(agent.status()["delivery"]["state"])
    seen.add(state)
    return state


def _run(net: Any, stack: Any, start_agent: Any, tmp_path: Path, buffer: str, shape: str, rate: int,
         calm_s: float) -> None:
    topic = f"hdrlog.test.faults.{buffer}.{shape}.{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "agent.toml"
    extra = "" if buffer == "disk" else 'when_full = "drop_newest"\nmax_bytes = 262144\n'
    cfg.write_text(f'[buffer]\ntype = "{buffer}"\n{extra}[kafka]\nretry_backoff_s = 0.5\nflush_timeout_s = 30\n'
                   f'[kafka.properties]\n"message.timeout.ms" = "{TIMEOUT_MS}"\n')
    agent = start_agent(net.host_if, "--config", str(cfg), "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url, "--topic", topic, "--shape", shape)
    agent.wait_attached()
    local = LocalStack(stack)
    seen: set[str] = set()
    total_s = 3 * calm_s + 60
    sender = net.udp(net.host_ip, 6700, seconds=total_s, rate=rate)
    try:
        wait_for(lambda: agent.status()["agent"]["delivered"] > rate, 20, "deliveries before the faults")
        # 1. the broker is killed, and comes back
        os.kill(local.status().kafka.pid, signal.SIGKILL)
        wait_for(lambda: _states(agent, seen) == "outage", 30, "the status to report the outage")
        time.sleep(calm_s)  # traffic goes on into the buffer: part of the fault, not a synchronisation
        local.up()
        wait_for(lambda: _states(agent, seen) == "ok", 60, "delivery to resume")
        # 2. the broker stops answering for longer than message.timeout.ms, then resumes
        kafka = local.status().kafka.pid
        os.kill(kafka, signal.SIGSTOP)
        try:
            wait_for(lambda: _states(agent, seen) != "ok", 30, "the stalled broker to show in the status")
            time.sleep(TIMEOUT_MS / 1000 + calm_s)  # the stall outlasts the message timeout: part of the fault
        finally:
            os.kill(kafka, signal.SIGCONT)
        wait_for(lambda: _states(agent, seen) == "ok", 60, "delivery to resume after the stall")
        # 3. the registry is killed: the agent has its schema ids and goes on
        os.kill(local.status().registry.pid, signal.SIGKILL)
        before = agent.status()["agent"]["delivered"]
        wait_for(lambda: agent.status()["agent"]["delivered"] > before + rate, 30, "deliveries without a registry")
    finally:
        sender.terminate()  # it stops sending and prints its exact count
        out, _ = sender.communicate(timeout=30)
    sent = int(out)
    wait_for(lambda: agent.status()["buffer"]["records"] == 0, 90, "the buffer to empty")
    _out, err = agent.stop()
    local.up()  # the registry, for what follows
    assert agent.proc.returncode == 0, err
    assert {"outage", "ok"} <= seen, seen
    s = summary_of(err)
    k, a = s["kernel"], s["agent"]
    assert k["seen"] == k["filtered"] + k["sampled_out"] + k["emitted"] + k["ringbuf_reserve_failed"]
    assert a["drained"] == k["emitted"] and a["left_in_buffer"] == 0
    assert a["delivery_retries"] >= 1 and a["requeued"] > 0  # the stall made deliveries fail and come back
    dropped = sum(v for name, v in a.items() if name.startswith("dropped_"))
    assert a["delivered"] + dropped == a["drained"]
    if buffer == "disk":
        assert dropped == 0, a
    else:
        assert a["dropped_buffer_full"] == dropped > 0, a  # the small memory buffer overflowed
    records = expand(stack.registry_url, read_topic(stack.bootstrap_servers, topic))
    counts = reconcile(records, {s["capture_id"]: k["emitted"]}, dropped=dropped)
    flow = {(r["capture_cpu"], r["capture_seq"]) for r in records if r["dst_port"] == 6700}
    print(f"{buffer}/{shape}: sent {sent}, emitted {k['emitted']}, unique in Kafka {counts['unique']} ({len(flow)} "
          f"of the flow), dropped {dropped}, duplicates {counts['duplicates']}, retries {a['delivery_retries']}, "
          f"requeued {a['requeued']}")
    if buffer == "disk":
        assert len(flow) == sent  # the oracle is the sender: every datagram it sent is in Kafka
    else:
        assert sent - dropped <= len(flow) <= sent


@pytest.mark.parametrize(("buffer", "shape"), [("disk", "batch"), ("disk", "record"), ("memory", "batch"),
                                               ("memory", "record")])
def test_broker_and_registry_faults_reconcile(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path,
                                              buffer: str, shape: str) -> None:
    udp_sinks(6700)
    _run(quiet_veth, stack, start_agent, tmp_path, buffer, shape, int(os.environ.get("HDRLOG_FAULT_RATE", "1000")),
         calm_s=2.0)


@pytest.mark.long
@pytest.mark.parametrize("shape", ["batch", "record"])
@pytest.mark.parametrize("buffer", ["disk", "memory"])
def test_broker_and_registry_faults_reconcile_long(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path,
                                                   buffer: str, shape: str) -> None:
    udp_sinks(6700)
    _run(quiet_veth, stack, start_agent, tmp_path, buffer, shape, 5000, calm_s=15.0)
