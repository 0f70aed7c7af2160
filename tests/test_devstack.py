"""The local stack: status, loopback-only listeners, BACKWARD compatibility, and a restart that loses nothing.

The ``stack`` tests run against the real Kafka and Apicurio Registry (the
session fixture in conftest brings them up, or reuses running ones) through
confluent-kafka's own SchemaRegistryClient and Avro serdes, as the agent and
consumer use them.  The restart test comes last: it is the one slow step.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from producer.devstack import LocalStack, StackSettings
from producer.errors import ConfigError, StackError
from tests.conftest import wait_for

N = 23
SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Probe", "namespace": "io.hdrlog.test.devstack",
    "fields": [{"name": "n", "type": "int"}, {"name": "text", "type": "string"}],
}
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _avro(schema: dict[str, Any]) -> Schema:
    return Schema(json.dumps(schema), "AVRO")


def _with_field(field: dict[str, Any]) -> dict[str, Any]:
    return {**SCHEMA, "fields": [*SCHEMA["fields"], field]}


def _unique(kind: str) -> str:
    return f"hdrlog.test.devstack.{kind}.{uuid.uuid4().hex[:8]}"


# -- /proc/net/tcp: who listens where ---------------------------------------------


def _address(hex_addr: str) -> str:
    """A /proc/net/tcp{,6} address (host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(hex_addr)
    host_order = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, host_order)


def _tcp_listeners() -> list[tuple[str, int, str]]:
    """(address, port, socket inode) of every listening TCP socket in this network namespace."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                addr, port = fields[1].rsplit(":", 1)
                found.append((_address(addr), int(port, 16), fields[9]))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


# -- Kafka helpers -------------------------------------------------------------------


def _produce(stack: StackSettings, topic: str, values: list[bytes]) -> None:
    errors: list[KafkaError] = []
    acked: list[Message] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            acked.append(msg)

    p = Producer({"bootstrap.servers": stack.bootstrap_servers, "acks": "all", "enable.idempotence": True})
    for v in values:
        p.produce(topic, value=v, on_delivery=delivered)
    assert p.flush(30) == 0
    assert errors == [] and len(acked) == len(values)


def _consume_all(stack: StackSettings, topic: str, count: int) -> list[bytes]:
    """Every message of partition 0, checked against the partition's offsets for an exact count."""
    c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": _unique("group"),
                  "enable.auto.commit": False})
    try:
        tp = TopicPartition(topic, 0, 0)
        assert c.get_watermark_offsets(tp, timeout=30) == (0, count)
        c.assign([tp])
        got: list[bytes] = []

        def all_read() -> bool:
            for m in c.consume(num_messages=count, timeout=0.5):
                assert m.error() is None, m.error()
                value = m.value()
                assert value is not None
                got.append(value)
            return len(got) >= count

        wait_for(all_read, 60, f"{count} messages from {topic}", interval=0)
        return got
    finally:
        c.close()


# -- unit: settings and pre-flight (no stack needed) -----------------------------------


def test_settings_from_env() -> None:
    s = StackSettings.from_env({"HDRLOG_CACHE_DIR": "/tmp/x", "HDRLOG_STACK_KAFKA_PORT": "19092",
                                "HDRLOG_STACK_REGISTRY_PORT": "18081"})
    assert (s.cache_dir, s.kafka_port, s.controller_port) == (Path("/tmp/x"), 19092, 9093)
    assert s.bootstrap_servers == "127.0.0.1:19092"
    assert s.registry_url == "http://127.0.0.1:18081/apis/ccompat/v7"
    assert StackSettings.from_env({}).cache_dir == Path.home() / ".cache" / "hdrlog"
    with pytest.raises(ConfigError, match="HDRLOG_STACK_KAFKA_PORT"):
        StackSettings.from_env({"HDRLOG_STACK_KAFKA_PORT": "kafka"})
    with pytest.raises(ConfigError, match="must differ"):
        StackSettings.from_env({"HDRLOG_STACK_REGISTRY_PORT": "9092"})


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_taken_port_is_named_before_anything_is_fetched(tmp_path: Path, held_port: int) -> None:
    settings = StackSettings(cache_dir=tmp_path, kafka_port=held_port, controller_port=_free_port(),
                             registry_port=_free_port(), registry_management_port=_free_port())
    lines: list[str] = []
    with pytest.raises(StackError, match=rf"port {held_port} \(for Kafka\) is already taken by pid {os.getpid()}"):
        LocalStack(settings, progress=lines.append).up(timeout=5)
    assert lines == [] and not any(tmp_path.glob("stack/kafka-*-libs"))


def test_a_reused_pid_is_not_taken_for_ours(tmp_path: Path) -> None:
    stack = LocalStack(StackSettings(cache_dir=tmp_path))
    (tmp_path / "stack").mkdir()
    for name in ("kafka.pid", "registry.pid"):
        (tmp_path / "stack" / name).write_text(f"{os.getpid()}\n")  # alive, but this is pytest, not the service
    st = stack.status()
    assert not st.kafka.running and not st.registry.running and not st.running
    stack.down(timeout=1)  # nothing of ours to stop; it must not signal pytest
    assert not (tmp_path / "stack" / "kafka.pid").exists()


# -- against the real stack -------------------------------------------------------------


@pytest.mark.stack
def test_status_reports_both_running_and_listening_on_loopback_only(stack: StackSettings) -> None:
    st = LocalStack(stack).status()
    assert st.running and st.kafka.pid is not None and st.registry.pid is not None
    assert st.bootstrap_servers == stack.bootstrap_servers == f"127.0.0.1:{stack.kafka_port}"
    assert st.registry_url == stack.registry_url == f"http://127.0.0.1:{stack.registry_port}/apis/ccompat/v7"
    text = st.render()
    assert all(str(x) in text for x in (stack.bootstrap_servers, stack.registry_url, st.kafka.pid,
                                        st.registry.pid, st.kafka.log, st.registry.log))

    listeners = _tcp_listeners()
    owners = {stack.kafka_port: st.kafka.pid, stack.controller_port: st.kafka.pid,
              stack.secure_port: st.kafka.pid, stack.mtls_port: st.kafka.pid,  # up --secure (conftest)
              stack.registry_port: st.registry.pid, stack.registry_management_port: st.registry.pid,
              stack.secure_registry_port: st.registry_tls.pid if st.registry_tls is not None else None}
    assert st.secure is not None and stack.secure_bootstrap_servers in text and stack.secure_registry_url in text
    for port, pid in owners.items():
        on_port = [(addr, inode) for addr, p, inode in listeners if p == port]
        assert on_port, f"nothing listens on port {port}"
        assert {addr for addr, _ in on_port} <= LOOPBACK, f"port {port} is reachable from outside: {on_port}"
        assert {inode for _, inode in on_port} <= _socket_inodes(pid), f"port {port} is not held by pid {pid}"


@pytest.mark.stack
def test_global_compatibility_is_backward(stack: StackSettings) -> None:
    subject = f"{_unique('compat')}-value"
    with SchemaRegistryClient({"url": stack.registry_url}) as client:
        assert client.get_compatibility() == "BACKWARD"
        first = client.register_schema(subject, _avro(SCHEMA))

        breaking = _avro(_with_field({"name": "extra", "type": "string"}))  # no default: old data unreadable
        assert not client.test_compatibility(subject, breaking)
        with pytest.raises(SchemaRegistryError) as refused:
            client.register_schema(subject, breaking)
        assert refused.value.http_status_code == 409

        compatible = _avro(_with_field({"name": "extra", "type": "string", "default": ""}))
        second = client.register_schema(subject, compatible)
        assert second != first
        assert client.get_versions(subject) == [1, 2]


@pytest.mark.stack
def test_restart_keeps_schemas_and_topic_data(stack: StackSettings) -> None:
    topic = _unique("restart")
    subject = f"{topic}-value"  # TopicNameStrategy: the subject AvroSerializer looks the schema up under
    ctx = SerializationContext(topic, MessageField.VALUE)
    records = [{"n": i, "text": f"record {i}"} for i in range(N)]
    with SchemaRegistryClient({"url": stack.registry_url}) as client:
        schema_id = client.register_schema(subject, _avro(SCHEMA))
        serialize = AvroSerializer(client, json.dumps(SCHEMA), conf={"auto.register.schemas": False})
        values = [serialize(r, ctx) for r in records]
    assert all(v is not None and v[0] == 0 and int.from_bytes(v[1:5], "big") == schema_id for v in values)
    _produce(stack, topic, [v for v in values if v is not None])

    status = LocalStack(stack).restart()
    assert status.running

    with SchemaRegistryClient({"url": stack.registry_url}) as client:  # a fresh client: nothing cached
        assert json.loads(client.get_schema(schema_id).schema_str) == SCHEMA
        assert client.lookup_schema(subject, _avro(SCHEMA)).schema_id == schema_id
        deserialize = AvroDeserializer(client)
        got = [deserialize(v, ctx) for v in _consume_all(stack, topic, N)]
    assert got == records


def test_the_secure_material_is_made_whole_and_private(tmp_path: Path) -> None:
    """``stack up --secure``'s CA, certificates and passwords: private modes, a broker certificate the CA
    signed for 127.0.0.1, and a half-made directory (an interrupted run) made again, its mode kept."""
    import ipaddress
    import stat

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.hashes import SHA256

    from producer.devstack.secure import PLAIN_USER, REGISTRY_USER, SCRAM_USER, ensure

    files = ensure(tmp_path / "secure")
    assert stat.S_IMODE(files.root.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files.root.iterdir()} == {
        n: 0o600 for n in ("ca.pem", "broker.pem", "client.pem", "client.key", "credentials.json", "registry.htpasswd")}
    assert set(files.passwords()) == {SCRAM_USER, PLAIN_USER} and all(len(p) >= 20 for p in files.passwords().values())
    user, _, hashed = files.htpasswd.read_text().strip().partition(":")
    assert user == REGISTRY_USER and hashed.startswith("$6$") and len(files.registry_password()) >= 20
    assert files.registry_password() not in files.htpasswd.read_text()
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    broker = x509.load_pem_x509_certificates(files.broker.read_bytes())[0]
    ca.public_key().verify(broker.signature, broker.tbs_certificate_bytes, ec.ECDSA(SHA256()))  # type: ignore[union-attr,call-arg]
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    before = files.ca.read_bytes()
    assert ensure(files.root).ca.read_bytes() == before  # made once, kept
    files.htpasswd.unlink()  # (material made before the registry's proxy: the user is added, the CA kept)
    assert ensure(files.root).ca.read_bytes() == before and files.has_registry_user()
    files.credentials.unlink()
    (files.root / "enabled").touch()
    again = ensure(files.root)
    assert again.exists() and again.ca.read_bytes() != before and (files.root / "enabled").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["secure"]  # no temporary directory left
