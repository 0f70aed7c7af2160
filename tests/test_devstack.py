"""The local stack: restart keeps schemas and topic data, loopback only, BACKWARD compatibility."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from producer.devstack import LocalStack
from producer.errors import RegistryError
from producer.serialize.registry import Registry
from tests.conftest import wait_for

pytestmark = pytest.mark.stack

SCHEMA = {"type": "record", "name": "Probe", "namespace": "io.hdrlog.test",
          "fields": [{"name": "n", "type": "int"}]}


def _read(stack, topic: str, count: int) -> list[bytes]:
    c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"t-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[bytes] = []

        def more() -> bool:
            got.extend(m.value() for m in c.consume(100, timeout=0.5) if m.error() is None)
            return len(got) >= count

        wait_for(more, 60, f"{count} messages", interval=0)
        return got
    finally:
        c.close()


def test_restart_keeps_schemas_and_topic_data(stack) -> None:
    subject = f"hdrlog-test-{uuid.uuid4().hex[:8]}-value"
    topic = f"hdrlog.test.restart.{uuid.uuid4().hex[:8]}"
    with Registry(stack.registry_url) as reg:
        schema_id = reg.register(subject, json.dumps(SCHEMA))
    p = Producer({"bootstrap.servers": stack.bootstrap_servers, "acks": "all"})
    for i in range(23):
        p.produce(topic, value=f"m{i}".encode())
    assert p.flush(30) == 0
    del p  # a live client would log every refused connection while the broker restarts

    status = LocalStack(stack).restart()
    assert status.running

    with Registry(stack.registry_url) as reg:
        assert json.loads(reg.schema_text(schema_id)) == SCHEMA
        assert reg.register(subject, json.dumps(SCHEMA)) == schema_id  # same schema, same id
    assert _read(stack, topic, 23) == [f"m{i}".encode() for i in range(23)]


def test_status_and_loopback_only(stack) -> None:
    st = LocalStack(stack).status()
    assert st.running
    assert (st.bootstrap_servers, st.registry_url) == (stack.bootstrap_servers, stack.registry_url)
    ports = {stack.kafka_port, stack.controller_port, stack.registry_port, stack.registry_management_port}
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout.splitlines()
    for line in listening:
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        if int(port) in ports:
            assert addr in ("127.0.0.1", "[::ffff:127.0.0.1]"), line


def test_incompatible_schema_is_refused(stack) -> None:
    subject = f"hdrlog-test-{uuid.uuid4().hex[:8]}-value"
    breaking = {**SCHEMA, "fields": [*SCHEMA["fields"], {"name": "m", "type": "string"}]}  # no default
    with Registry(stack.registry_url) as reg:
        reg.register(subject, json.dumps(SCHEMA))
        with pytest.raises(RegistryError, match="refused registering") as err:
            reg.register(subject, json.dumps(breaking))
        assert not err.value.retriable
        compatible = {**SCHEMA, "fields": [*SCHEMA["fields"],
                                           {"name": "m", "type": "string", "default": ""}]}
        reg.register(subject, json.dumps(compatible))
