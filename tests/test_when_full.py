"""A full buffer does what ``buffer.when_full`` says, and the counters equal what is missing.

The broker is stopped (SIGSTOP) while a known number of datagrams crosses a
quiet veth pair, into a disk buffer capped far below what they need; then it
resumes and everything left is delivered.  Exact counts:

    drop_newest  missing from Kafka == dropped_buffer_full, and the oldest records are the ones kept
    drop_oldest  missing from Kafka == dropped_buffer_evicted, and the newest records are the ones kept
    block        nothing is dropped in user space: the backpressure reaches the ring buffer, and what
                 the kernel could not keep is ringbuf_reserve_failed (seen = emitted + that)

and a full file system (a small tmpfs as the state directory, no cap) counts as full.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from producer.devstack import LocalStack
from tests.conftest import expand, read_topic, reconcile, send_udp, summary_of, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

BEFORE, BURST = 50, 3000


def _settled(status: dict) -> bool:
    """Every record has reached the buffer or been counted: the channels are empty, all is drained."""
    return all(c["depth"] == 0 for c in status["channels"].values()) and \
        status["agent"]["drained"] == status["kernel"]["emitted"]


def _blocked(status: dict) -> bool:
    """The encoder waits on the full buffer (and so, behind it, the ring buffer fills)."""
    return status["agent"]["buffer_full_waits"] > 0


def _fill(net: Any, stack: Any, start_agent: Any, state: Path, cfg_text: str, port: int,
          settled: Any = _settled) -> tuple[dict, list]:
    topic = f"hdrlog.test.full.{uuid.uuid4().hex[:8]}"
    cfg = state.parent / f"{state.name}.toml"
    cfg.write_text(cfg_text)
    agent = start_agent(net.host_if, "--config", str(cfg), "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url, "--topic", topic, "--state-dir", str(state),
                        "--buffer", "disk")
    agent.wait_attached()
    send_udp(net, net.host_ip, port, BEFORE)
    wait_for(lambda: agent.status()["agent"]["delivered"] == BEFORE, 30, "the first records delivered")
    kafka = LocalStack(stack).status().kafka.pid
    os.kill(kafka, signal.SIGSTOP)
    try:
        send_udp(net, net.host_ip, port, BURST)
        wait_for(lambda: agent.status()["kernel"]["seen"] == BEFORE + BURST, 30, "the burst to be seen")
        wait_for(lambda: settled(agent.status()), 30, "the pipeline to settle against the full buffer")
    finally:
        os.kill(kafka, signal.SIGCONT)
    wait_for(lambda: agent.status()["buffer"]["records"] == 0, 60, "the buffer to empty")
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    return summary_of(err), expand(stack.registry_url, read_topic(stack.bootstrap_servers, topic))


def _per_cpu(records: list[dict]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for r in records:
        out.setdefault(r["capture_cpu"], []).append(r["capture_seq"])
    return {cpu: sorted(set(seqs)) for cpu, seqs in out.items()}


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "block"])
def test_when_full_policies(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path, policy: str) -> None:
    udp_sinks(6800)
    # with a disk buffer the ring is released only once records are stored: a small one (1024
    # records) fills behind a blocked buffer
    ring = "[capture]\nringbuf_pages = 32\n" if policy == "block" else ""
    s, records = _fill(quiet_veth, stack, start_agent, tmp_path / "state", ring +
                       f'[buffer]\nwhen_full = "{policy}"\nmax_bytes = 40000\n'
                       "[batch]\nmax_records = 100\nlinger_ms = 20\n", 6800,
                       settled=_blocked if policy == "block" else _settled)
    k, a = s["kernel"], s["agent"]
    assert k["seen"] == BEFORE + BURST == k["emitted"] + k["ringbuf_reserve_failed"]
    assert a["drained"] == k["emitted"] and a["left_in_buffer"] == 0
    drops = {n: v for n, v in a.items() if n.startswith("dropped_") and v}
    counts = reconcile(records, {s["capture_id"]: k["emitted"]}, dropped=sum(drops.values()))
    kept = _per_cpu(records)
    if policy == "drop_newest":
        assert list(drops) == ["dropped_buffer_full"], drops
        # nothing was acknowledged while the broker stood still, so once full the buffer refused every
        # later record: on each CPU the records kept are the oldest, 0, 1, 2, ... without a gap
        assert all(seqs == list(range(len(seqs))) for seqs in kept.values()), kept
        assert counts["unique"] < k["emitted"]
    elif policy == "drop_oldest":
        assert list(drops) == ["dropped_buffer_evicted"], drops
        # older records were pushed out for newer ones: on some CPU a gap lies below the newest kept
        assert any(seqs != list(range(len(seqs))) for seqs in kept.values()), kept
        assert counts["unique"] < k["emitted"]
    else:
        assert not drops and a["buffer_full_waits"] > 0
        assert k["ringbuf_reserve_failed"] > 0  # the kernel counted what backpressure cost
        assert counts["unique"] == k["emitted"]


def test_a_full_file_system_counts_as_full(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path) -> None:
    udp_sinks(6801)
    state = tmp_path / "small"
    state.mkdir()
    # 2.5 MiB: the buffer's reserve (2 MiB) and little more, so the burst cannot fit
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2560k", "tmpfs", str(state)], check=True)
    try:
        s, records = _fill(quiet_veth, stack, start_agent, state,
                           '[buffer]\nwhen_full = "drop_newest"\n[batch]\nmax_records = 100\nlinger_ms = 20\n',
                           6801)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    k, a = s["kernel"], s["agent"]
    drops = {n: v for n, v in a.items() if n.startswith("dropped_") and v}
    assert list(drops) == ["dropped_buffer_full"], drops
    counts = reconcile(records, {s["capture_id"]: k["emitted"]}, dropped=drops["dropped_buffer_full"])
    assert counts["unique"] == k["emitted"] - drops["dropped_buffer_full"]
