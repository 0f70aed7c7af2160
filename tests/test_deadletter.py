"""A message the broker refuses for good goes to the dead-letter file with its reason, and is counted.

The topic is created with ``max.message.bytes = 3000``.  In batch shape, batches
of the quiet veth pair's datagrams are larger, so the broker refuses them
(MSG_SIZE_TOO_LARGE, not retriable).  In record shape each message is one small
record, but librdkafka sends a burst of 150 as one record batch, larger than the
limit, so the broker refuses the burst's messages together.  Either way they are not retried, they are written to
``<state_dir>/dead-letter.jsonl`` with the error and the message (still
Confluent-framed Avro, decodable), and the counters say so; the few records sent
afterwards fit and are delivered.  Nothing is lost unseen: delivered + dead-lettered =
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

#: the topic's max.message.bytes: 150 records are more (as one batch message, or as librdkafka's record
#: batch of 150 record-shape messages), 5 are less
LIMIT = 3000


class _Message:
    """A dead-letter line's value, read back as a Kafka message is (``expand`` takes either)."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return -1

    def offset(self) -> int:
        return -1


@pytest.mark.parametrize("shape", ["batch", "record"])
def test_refused_messages_are_dead_lettered(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path,
                                            shape: str) -> None:
    net = quiet_veth
    udp_sinks(6900)
    topic = f"hdrlog.test.dlq.{shape}.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, config={"max.message.bytes": str(LIMIT)})])[topic].result(30)
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    # uncompressed, so that the broker sees the batches' full size
    cfg.write_text('[batch]\nmax_records = 200\nlinger_ms = 300\n[kafka.properties]\n"compression.type" = "none"\n')
    agent = start_agent(net.host_if, "--config", str(cfg), "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url, "--topic", topic, "--state-dir", str(state),
                        "--shape", shape)
    agent.wait_attached()
    send_udp(net, net.host_ip, 6900, 150)  # ~13 KB as one batch, or as one request's record batch
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
    if shape == "batch":
        assert a["requeued"] == 0  # a permanent refusal is not retried
    else:  # an entry's messages first carry one report, on the last: its refusal is retried once, each message
        assert 0 < a["requeued"] <= 150  # with its own report, so that the refused ones are found (kafka.py)
    lines = [json.loads(x) for x in (state / "dead-letter.jsonl").read_text().splitlines()]
    assert sum(x["records"] for x in lines) == a["dropped_dead_letter"]
    assert {x["error"] for x in lines} == {"MSG_SIZE_TOO_LARGE"} and all(x["topic"] == topic for x in lines)
    # the messages as they were sent, Confluent-framed, decoded through the registry: every refused record
    dead = expand(stack.registry_url, [_Message(base64.b64decode(x["value_base64"])) for x in lines])
    records = expand(stack.registry_url, read_topic(stack.bootstrap_servers, topic))
    print(f"{shape}: {len(lines)} dead-letter lines, {len(dead)} records in them, {len(records)} in Kafka; "
          f"message sizes {min(len(base64.b64decode(x['value_base64'])) for x in lines)}.."
          f"{max(len(base64.b64decode(x['value_base64'])) for x in lines)}")
    if shape == "batch":
        assert all(len(base64.b64decode(x["value_base64"])) > LIMIT for x in lines)
    else:
        assert all(x["records"] == 1 for x in lines)
    assert len(records) == a["delivered"] and len(dead) == a["dropped_dead_letter"]
    ids = [(r["capture_cpu"], r["capture_seq"]) for r in records + dead]
    assert len(set(ids)) == len(ids) == 155 and {r["dst_port"] for r in records + dead} == {6900}
