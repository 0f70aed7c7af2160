"""A load run: wrk posts at a fixed rate while capture runs, and the broker is stopped mid-run.

With the disk buffer (small, so the outage fills it): every request is
answered 202 or pushed back (503 with Retry-After once the buffer is full, or
429), no accepted event is lost (the unique events in Kafka are exactly the
accepted ones: a refused event is never buffered), the agent's counters equal
what wrk saw, and its memory stays within a bound.  The wrk script is the
benchmark's (producer/bench/ingest.py); ``make test`` runs this bounded
version, ``make bench-ingest`` a longer one and the rates.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from producer.bench.ingest import RssSampler, start_wrk
from producer.devstack import LocalStack
from tests.conftest import wait_for
from tests.test_ingest import TOKEN, _status, log_events

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

def run_load(start_agent: Any, veth: Any, stack: Any, tmp_path: Path, *, seconds: int, connections: int,
             pace_ms: int, outage_s: float, udp_rate: int) -> dict[str, Any]:
    """The load run; returns what it measured."""
    from tests.test_ingest import _agent

    agent = _agent(start_agent, veth, stack, tmp_path, "disk", max_queue_bytes=8 << 20)
    topic = agent.logs_topic
    agent.stop()
    cfg = tmp_path / "agent.toml"
    small = '[buffer]\ntype = "disk"\nmax_bytes = 2097152\n'  # the outage fills it: pushback
    cfg.write_text(cfg.read_text().replace('[buffer]\ntype = "disk"\n', small)
                   + '[kafka]\nretry_backoff_s = 0.5\n[kafka.properties]\n"message.timeout.ms" = "3000"\n')
    agent = start_agent(veth.host_if, "--config", str(cfg), "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url, "--topic", f"hdrlog.test.load.{uuid.uuid4().hex[:8]}")
    agent.wait_attached()
    sender = veth.udp(veth.host_ip, 6800, seconds=seconds + 5, rate=udp_rate)  # capture keeps running
    wrk = start_wrk(agent.url, tmp_path / "load.lua", seconds=seconds, connections=connections, pace_ms=pace_ms,
                    token=TOKEN)
    rss = RssSampler(agent.proc.pid)
    local = LocalStack(stack)
    kafka = local.status().kafka.pid
    try:
        wait_for(lambda: _status(agent)["ingest"]["counters"]["delivered"] > 0, 30, "deliveries before the outage")
        os.kill(kafka, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            wait_for(lambda: _status(agent)["ingest"]["counters"]["refused_requests_unavailable"] > 0, 60,
                     "pushback (503) while the broker is stopped")
            time.sleep(max(0.0, outage_s - (time.monotonic() - stopped)))  # the outage's length: part of the run
        finally:
            os.kill(kafka, signal.SIGCONT)
        seen = wrk.result(timeout=seconds + 120)
    finally:
        if wrk.proc.poll() is None:
            wrk.proc.kill()
        sender.terminate()
        sender.communicate(timeout=30)
        rss_mib = rss.stop()
    wait_for(lambda: _status(agent)["buffer"]["records"] == 0, 120, "the buffer to empty")
    _out, agent_err = agent.stop()
    assert agent.proc.returncode == 0, agent_err
    from tests.conftest import summary_of

    summary = summary_of(agent_err)
    c = summary["ingest"]
    statuses = seen["statuses"]
    run = wrk.run
    answered_202 = statuses.get("202", 0)
    pushed_back = {k: v for k, v in statuses.items() if k.startswith(("429", "503"))}
    # what wrk saw is what the agent counted, but for the requests in flight when wrk stopped (answered
    # by the agent, never read by wrk): at most one a connection
    assert seen["errors"] == 0, seen
    assert set(statuses) <= {"202", "429+retry-after", "503+retry-after"}, statuses
    refused = c["refused_requests_unavailable"] + c["refused_requests_overloaded"]
    assert c["accepted_requests"] == c["accepted"] and c["requests"] == c["accepted"] + refused
    unread = (c["accepted"] - answered_202) + (refused - sum(pushed_back.values()))
    assert c["accepted"] >= answered_202 and refused >= sum(pushed_back.values()) > 0 and unread <= connections
    # no accepted event lost: the run's unique events in Kafka are exactly the accepted ones
    events = [e for _m, e in log_events(stack, topic) if e["message"].startswith(f"{run}-")]
    unique = {e["message"] for e in events}
    assert len(unique) == c["accepted"]
    assert c["buffered"] == c["accepted"] and c["left_in_buffer"] == 0
    assert sum(v for k, v in c.items() if k.startswith("dropped_")) == 0
    # capture went on, and its ledger still holds
    k, a = summary["kernel"], summary["agent"]
    assert k["seen"] == k["filtered"] + k["sampled_out"] + k["emitted"] + k["ringbuf_reserve_failed"]
    assert a["drained"] == k["emitted"] > 0 and a["left_in_buffer"] == 0
    assert a["delivered"] + sum(v for n, v in a.items() if n.startswith("dropped_")) == a["drained"]
    return {"accepted_requests": answered_202, "pushed_back": pushed_back, "unique_in_kafka": len(unique),
            "duplicates_in_kafka": len(events) - len(unique), "p99_ms": seen["p99_ms"],
            "rss_mib": rss_mib, "seconds": seconds,
            "header_records": a["delivered"], "kernel_lost": k["ringbuf_reserve_failed"]}


def test_a_fixed_rate_load_with_the_broker_stopped_loses_nothing(veth, stack, start_agent, tmp_path: Path) -> None:
    got = run_load(start_agent, veth, stack, tmp_path, seconds=30, connections=20, pace_ms=40, outage_s=12,
                   udp_rate=500)
    lo, hi = got["rss_mib"]
    assert hi - lo < 120, got  # bounded: the queue (8 MiB of bodies) and the buffer's index, not the outage
    print(json.dumps(got))
