"""The agent's endpoints and its AgentStats records, against the real kernel, broker and registry.

/metrics parses with prometheus-client's own text parser and its counters equal
the exit summary; /api/v1/status shows the same counters, the buffer and the
delivery state; `hdrlog status` prints it; AgentStats arrive on the stats topic.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx2
import pytest
from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families

from producer.consumer.decoding import MessageDecoder
from producer.serialize.registry import Registry
from producer.telemetry.events import RECORD_STATS, Drop, Stat
from tests.conftest import run_hdrlog, send_udp, summary_of, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

N = 23


def _scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics by name (and reason label for drops)."""
    text = httpx2.get(url + "/metrics", timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + (f"{{{s.labels['reason']}}}" if "reason" in s.labels else "")
            out[key] = s.value
    return out


def test_metrics_and_status_equal_the_summary(quiet_veth, stack, start_agent, udp_sinks) -> None:
    net = quiet_veth
    udp_sinks(6500)
    topic = f"hdrlog.test.tel.{uuid.uuid4().hex[:8]}"
    stats_topic = f"{topic}.stats"
    agent = start_agent(net.host_if, "--bootstrap-servers", stack.bootstrap_servers, "--schema-registry",
                        stack.registry_url, "--topic", topic, "--host-id", "tel-host",
                        env={"HDRLOG_STATS_INTERVAL": "1", "HDRLOG_STATS_TOPIC": stats_topic})
    agent.wait_attached()
    send_udp(net, net.host_ip, 6500, N)
    wait_for(lambda: agent.status()["agent"]["delivered"] == N, 30, f"{N} records delivered")
    status = agent.status()
    assert status["interfaces"] == [net.host_if] and status["hook"] == "tc"
    assert status["delivery"]["state"] == "ok" and status["delivery"]["last_error"] is None
    assert status["buffer"] == {**status["buffer"], "type": "memory", "records": 0, "entries": 0}
    assert status["kernel"]["emitted"] == N and status["output"]["topic"] == topic
    assert set(status["channels"]) == {"capture", "batch"}
    shown = run_hdrlog("status", "--url", agent.url)
    assert shown.returncode == 0, shown.stderr
    assert f"tc on {net.host_if}" in shown.stdout and "delivery ok" in shown.stdout
    assert f"delivered {N}" in shown.stdout

    wait_for(lambda: agent.status()["agent"]["stats_published"] >= 1, 10, "an AgentStats record acknowledged")
    metrics = _scrape(agent.url)
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    summary = summary_of(err)
    # nothing moved between the last scrape and the exit but stats records: the counters are equal
    for name, value in summary["kernel"].items():
        assert metrics[f"hdrlog_kernel_{name}_total"] == value, name
    for stat in Stat:
        if stat in (Stat.STATS_PUBLISHED, Stat.STATS_FAILED):
            continue
        prefix = "hdrlog_records_" if stat in RECORD_STATS else "hdrlog_"
        assert metrics[f"{prefix}{stat.value}_total"] == summary["agent"][stat.value], stat
    for drop in Drop:
        assert metrics[f"hdrlog_records_dropped_total{{{drop.value.removeprefix('dropped_')}}}"] == \
            summary["agent"][drop.value] == 0
    assert metrics["hdrlog_kafka_up"] == 1 and metrics["hdrlog_buffer_records"] == 0
    assert metrics["hdrlog_delivery_latency_seconds_count"] == summary["agent"]["messages_delivered"]

    # the AgentStats records: one every second, decodable through the registry
    consumer = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"t-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([stats_topic])
    got: list[Any] = []
    wait_for(lambda: got.extend(consumer.consume(100, timeout=0.5)) or
             len(got) >= summary["agent"]["stats_published"], 30, "the AgentStats records")
    consumer.close()
    with Registry(stack.registry_url) as registry:
        decoded = [MessageDecoder(registry).decode(m.value()) for m in got]
    assert {name for name, _ in decoded} == {"AgentStats"}
    last = max((d for _, d in decoded), key=lambda d: d["timestamp_ms"])
    assert (last["host_id"], last["agent_instance"], last["interfaces"]) == (
        "tel-host", summary["instance"], [net.host_if])
    assert last["agent"]["delivered"] == N and last["kernel"]["emitted"] == N
    assert all(m.key() == b"tel-host" for m in got)

