"""A message the broker refuses for good goes to the dead-letter file with its reason, and is counted.

The topic is created with ``max.message.bytes = 3000``; batches of the quiet
veth pair's datagrams are larger, so the broker refuses them
(MSG_SIZE_TOO_LARGE, not retriable): they are not retried, they are written to
``<state_dir>/dead-letter.jsonl`` with the error and the message (still
Confluent-framed Avro, decodable), and the counters say so; the small batches
that fit are delivered.  Nothing is lost unseen: delivered + dead-lettered =
drained, and Kafka holds exactly the delivered records.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import expand, read_topic, send_udp, summary_of, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.stack]


def test_refused_messages_are_dead_lettered(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path) -> None:
    net = quiet_veth
    udp_sinks(6900)
    topic = f"hdrlog.test.dlq.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, config={"max.message.bytes": "3000"})])[topic].result(30)
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    # uncompressed, so that the broker sees the batches' full size
    cfg.write_text('[batch]\nmax_records = 200\nlinger_ms = 300\n[kafka.properties]\n"compression.type" = "none"\n')
    agent = start_agent(net.host_if, "--config", str(cfg), "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url, "--topic", topic, "--state-dir", str(state))
    agent.wait_attached()
    send_udp(net, net.host_ip, 6900, 150)  # batches of up to 150 records: ~13 KB, over the topic's limit
    wait_for(lambda: agent.status()["agent"]["dropped_dead_letter"] > 0, 30, "a dead letter")
    send_udp(net, net.host_ip, 6900, 5)  # a small batch that fits
    wait_for(lambda: agent.status()["agent"]["delivered"] > 0, 30, "a delivery")
    status = agent.status()
    assert status["delivery"]["last_error"]["retriable"] is False
    assert "too large" in status["delivery"]["last_error"]["text"].lower()
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    a = summary_of(err)["agent"]
    assert a["delivered"] + a["dropped_dead_letter"] == a["drained"] == 155
    assert a["requeued"] == 0  # a permanent refusal is not retried
    lines = [json.loads(x) for x in (state / "dead-letter.jsonl").read_text().splitlines()]
    assert sum(x["records"] for x in lines) == a["dropped_dead_letter"]
    assert {x["error"] for x in lines} == {"MSG_SIZE_TOO_LARGE"} and all(x["topic"] == topic for x in lines)
    value = base64.b64decode(lines[0]["value_base64"])
    assert value[0] == 0 and len(value) > 3000  # the message as it was sent: Confluent framing
    records = expand(stack.registry_url, read_topic(stack.bootstrap_servers, topic))
    assert len(records) == a["delivered"]
