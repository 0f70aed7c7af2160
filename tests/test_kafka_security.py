"""Kafka over TLS with SASL and the registry over HTTPS with basic auth, against the local stack's secure
listener and registry proxy (``hdrlog stack up --secure``).

The agent and the consumer reach Kafka's SASL_SSL listener with SCRAM-SHA-512
and a client certificate (mTLS), or with PLAIN, the password read from a file,
and the registry over HTTPS as its basic-auth user, that password read from a
file too; the records arrive.  A wrong registry password, a CA that did not
sign the registry's certificate and plain HTTP to its HTTPS port each stop the
agent at start with a one-line error that says which; the consumer stops the
same way for each of those and for a refused registry password.  OAUTHBEARER is passed
through to librdkafka (an unsigned token, which the stack's broker accepts).

A broker that refuses, with ACLs: a topic the user may not write to is
dead-lettered and counted, not retried; a topic it may not create stops the
agent at start; a topic deleted under a running agent is waited for, nothing
dropped.  A wrong password, a CA that did not sign the broker's
certificate, and a plaintext client on the TLS port each stop the agent at
start with a one-line error that says which, before any capture: the topic is
never created, and the password appears nowhere in what the agent writes.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from producer.devstack import LocalStack
from producer.devstack.secure import PLAIN_USER, REGISTRY_USER, SCRAM_USER, make_ca
from tests.conftest import run_hdrlog, send_udp, summary_of, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.stack]


def _files(stack: Any) -> Any:
    files = LocalStack(stack).secure_files
    assert files.exists(), "the session's stack is up with --secure (tests/conftest.py)"
    return files


def _config(tmp_path: Path, stack: Any, topic: str, *, user: str | None, mechanism: str | None,
            password: str | None,
            protocol: str = "SASL_SSL", ca: Path | None = None, client_cert: bool = False,
            registry_password: str | None = None, registry_ca: Path | None = None,
            registry_url: str | None = None, kafka_extra: dict[str, str] | None = None) -> Path:
    """The agent's config for the SASL_SSL listener (``mechanism``), or the mTLS listener with
    ``mechanism=None`` (the client certificate only if ``client_cert``), and for the registry over HTTPS
    as its basic-auth user (its own password unless ``registry_password`` is given)."""
    files = _files(stack)
    secret = tmp_path / "kafka-password"
    if password is not None:
        secret.write_text(password + "\n")
        secret.chmod(0o600)
    registry_secret = tmp_path / "registry-password"
    registry_secret.write_text((files.registry_password() if registry_password is None else registry_password) + "\n")
    registry_secret.chmod(0o600)
    props = {"security.protocol": protocol, "sasl.mechanism": mechanism, "sasl.username": user,
             "ssl.ca.location": str(ca or files.ca)}
    if mechanism == "OAUTHBEARER":  # an unsigned token naming the user, which the stack's broker believes
        props = {"security.protocol": protocol, "sasl.mechanism": mechanism, "ssl.ca.location": str(ca or files.ca),
                 "enable.sasl.oauthbearer.unsecure.jwt": "true", "sasl.oauthbearer.config": f"principal={user}"}
    if mechanism is None:  # the client certificate is the authentication
        props = {"security.protocol": "SSL", "ssl.ca.location": str(ca or files.ca)}
    if protocol == "PLAINTEXT":
        props = {"security.protocol": protocol}
    if client_cert:
        props |= {"ssl.certificate.location": str(files.client_cert), "ssl.key.location": str(files.client_key)}
    props |= kafka_extra or {}
    cfg = tmp_path / "secure.toml"
    servers = stack.mtls_bootstrap_servers if mechanism is None else stack.secure_bootstrap_servers
    cfg.write_text(f'[kafka]\nbootstrap_servers = "{servers}"\ntopic = "{topic}"\n'
                   + (f'sasl_password_file = "{secret}"\n' if password is not None else "")
                   + 'connect_timeout_s = 120\n[kafka.properties]\n'
                   + "".join(f'"{k}" = "{v}"\n' for k, v in props.items())
                   + f'[registry]\nurl = "{registry_url or stack.secure_registry_url}"\nusername = "{REGISTRY_USER}"\n'
                   f'password_file = "{registry_secret}"\n[registry.properties]\n'
                   f'"ssl.ca.location" = "{registry_ca or files.ca}"\n')
    cfg.chmod(0o600)
    return cfg


def _topics(stack: Any) -> set[str]:
    return set(AdminClient({"bootstrap.servers": stack.bootstrap_servers}).list_topics(timeout=10).topics)


@pytest.mark.parametrize(("user", "mechanism", "client_cert"), [(SCRAM_USER, "SCRAM-SHA-512", False),
                                                                 (PLAIN_USER, "PLAIN", False),
                                                                 (SCRAM_USER, "OAUTHBEARER", False),
                                                                 (None, None, True)],
                         ids=["scram", "plain", "oauthbearer", "mtls"])
def test_the_agent_and_the_consumer_deliver_over_sasl_ssl(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path,
                                                          user: str | None, mechanism: str | None,
                                                          client_cert: bool) -> None:
    """SASL over TLS, or mTLS: the listener that requires a client certificate, and this one presented."""
    udp_sinks(6800)
    password = _files(stack).passwords()[user] if mechanism not in ("OAUTHBEARER", None) else None
    topic = f"hdrlog.test.secure.{uuid.uuid4().hex[:8]}"
    cfg = _config(tmp_path, stack, topic, user=user, mechanism=mechanism, password=password,
                  client_cert=client_cert)
    agent = start_agent(quiet_veth.host_if, "--config", str(cfg))
    agent.wait_attached()
    send_udp(quiet_veth, quiet_veth.host_ip, 6800, 300)
    wait_for(lambda: (s := agent.status())["agent"]["delivered"] == s["kernel"]["emitted"] >= 300, 60,
             "the records in Kafka")
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    secrets = tuple(x for x in (password, _files(stack).registry_password()) if x)
    assert not any(s in err for s in secrets)
    emitted = summary_of(err)["kernel"]["emitted"]
    # the consumer, over the same listener and registry with the same settings, reads every record back
    done = run_hdrlog("consume", "--config", str(cfg), "--format", "raw",
                      "--from-beginning", "--max-records", str(emitted), "--idle-timeout", "30", timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == emitted and {r["dst_port"] for r in lines} >= {6800}
    assert not any(s in done.stderr for s in secrets)


def _refused(start_agent: Any, quiet_veth: Any, stack: Any, cfg: Path, topic: str) -> str:
    started = time.monotonic()
    agent = start_agent(quiet_veth.host_if, "--config", str(cfg), "--schema-registry", stack.registry_url)
    _out, err = agent.wait_exit(60)
    assert agent.proc.returncode == 1, err
    assert time.monotonic() - started < 60, "it stops at once, without retrying until connect_timeout_s (120 s)"
    assert topic not in _topics(stack)  # nothing was sent: not even the topic was created
    assert "capturing" not in err  # nor was capture started
    line = [x for x in err.splitlines() if x.startswith("hdrlog: error:")][-1]
    print(f"\n{line}")
    return line


def test_a_wrong_password_stops_the_agent_with_a_clear_error(quiet_veth, stack, start_agent, tmp_path: Path) -> None:
    topic = f"hdrlog.test.secure.{uuid.uuid4().hex[:8]}"
    wrong = "not-" + _files(stack).passwords()[SCRAM_USER]
    cfg = _config(tmp_path, stack, topic, user=SCRAM_USER, mechanism="SCRAM-SHA-512", password=wrong)
    line = _refused(start_agent, quiet_veth, stack, cfg, topic)
    assert f"Kafka at {stack.secure_bootstrap_servers} refused the credentials" in line, line
    assert wrong not in line


def test_no_client_certificate_for_the_mtls_listener_stops_the_agent_with_a_clear_error(quiet_veth, stack,
                                                                                         start_agent,
                                                                                         tmp_path: Path) -> None:
    """The listener requires a client certificate (``ssl.client.auth=required``) and the agent has none."""
    topic = f"hdrlog.test.secure.{uuid.uuid4().hex[:8]}"
    cfg = _config(tmp_path, stack, topic, user=None, mechanism=None, password=None, client_cert=False)
    line = _refused(start_agent, quiet_veth, stack, cfg, topic)
    assert f"the TLS handshake with Kafka at {stack.mtls_bootstrap_servers} failed" in line, line
    assert "requires a client certificate" in line and "ssl.certificate.location" in line, line


def test_an_untrusted_certificate_stops_the_agent_with_a_clear_error(quiet_veth, stack, start_agent,
                                                                     tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    _key, other = make_ca("a CA the broker's certificate is not from")
    ca = tmp_path / "other-ca.pem"
    ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    topic = f"hdrlog.test.secure.{uuid.uuid4().hex[:8]}"
    cfg = _config(tmp_path, stack, topic, user=SCRAM_USER, mechanism="SCRAM-SHA-512",
                  password=_files(stack).passwords()[SCRAM_USER], ca=ca)
    line = _refused(start_agent, quiet_veth, stack, cfg, topic)
    assert f"the TLS handshake with Kafka at {stack.secure_bootstrap_servers} failed" in line, line
    assert "certificate verify failed" in line, line


def test_plaintext_to_the_tls_port_stops_the_agent_with_a_clear_error(quiet_veth, stack, start_agent,
                                                                      tmp_path: Path) -> None:
    topic = f"hdrlog.test.secure.{uuid.uuid4().hex[:8]}"
    cfg = _config(tmp_path, stack, topic, user=SCRAM_USER, mechanism="SCRAM-SHA-512", password="unused",
                  protocol="PLAINTEXT")
    line = _refused(start_agent, quiet_veth, stack, cfg, topic)
    assert f"Kafka at {stack.secure_bootstrap_servers} is a TLS listener, and security.protocol is PLAINTEXT" \
        in line, line


@pytest.mark.parametrize("fault", ["wrong password", "untrusted certificate", "plaintext", "registry password"])
def test_the_consumer_refused_says_why(stack, tmp_path: Path, fault: str) -> None:
    """``hdrlog consume`` refused by the broker or the registry: one line saying which, exit 1, no secret."""
    from cryptography.hazmat.primitives import serialization

    files = _files(stack)
    password = files.passwords()[SCRAM_USER]
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_ca("a CA that signed nothing here")[1].public_bytes(serialization.Encoding.PEM))
    wrong = "not-" + password
    cfg = _config(tmp_path, stack, "hdrlog.headers", user=SCRAM_USER, mechanism="SCRAM-SHA-512",
                  password=wrong if fault == "wrong password" else password,
                  ca=other if fault == "untrusted certificate" else None,
                  protocol="PLAINTEXT" if fault == "plaintext" else "SASL_SSL",
                  registry_password=wrong if fault == "registry password" else None)
    done = run_hdrlog("--log-format", "json", "consume", "--config", str(cfg), "--format", "raw",
                      "--idle-timeout", "5", timeout=120)
    assert done.returncode == 1, done.stderr
    last = done.stderr.splitlines()[-1]
    expected = {
        "wrong password": f"hdrlog: error: Kafka at {stack.secure_bootstrap_servers} refused the credentials",
        "untrusted certificate": f"hdrlog: error: the TLS handshake with Kafka at {stack.secure_bootstrap_servers} "
                                 "failed",
        "plaintext": f"hdrlog: error: Kafka at {stack.secure_bootstrap_servers} is a TLS listener, and "
                     "security.protocol is PLAINTEXT",
        "registry password": f"hdrlog: error: schema registry at {stack.secure_registry_url} refused ",
    }[fault]
    assert last.startswith(expected), done.stderr[-500:]
    assert wrong not in done.stderr and password not in done.stderr and done.stdout == ""
    assert all(line.startswith(("{", "hdrlog: error:")) for line in done.stderr.splitlines())  # librdkafka's too


@pytest.mark.parametrize("fault", ["wrong password", "untrusted certificate", "plain http"])
def test_a_registry_refusal_stops_the_agent_with_a_clear_error(quiet_veth, stack, start_agent, tmp_path: Path,
                                                               fault: str) -> None:
    """The registry over HTTPS with basic auth refuses: one line naming the cause, at once (not retried until
    connect_timeout_s), the password nowhere."""
    from cryptography.hazmat.primitives import serialization

    topic = f"hdrlog.test.secure.{uuid.uuid4().hex[:8]}"
    files = _files(stack)
    wrong = "not-" + files.registry_password()
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_ca("a CA the registry's certificate is not from")[1].public_bytes(
        serialization.Encoding.PEM))
    cfg = _config(tmp_path, stack, topic, user=SCRAM_USER, mechanism="SCRAM-SHA-512",
                  password=files.passwords()[SCRAM_USER],
                  registry_password=wrong if fault == "wrong password" else None,
                  registry_ca=other if fault == "untrusted certificate" else None,
                  registry_url=stack.secure_registry_url.replace("https:", "http:") if fault == "plain http" else None)
    started = time.monotonic()
    agent = start_agent(quiet_veth.host_if, "--config", str(cfg))
    _out, err = agent.wait_exit(60)
    assert agent.proc.returncode == 1, err
    assert time.monotonic() - started < 60, "it stops at once, without retrying until connect_timeout_s (120 s)"
    assert "capturing" not in err
    line = [x for x in err.splitlines() if x.startswith("hdrlog: error:")][-1]
    print(f"\n{line}")
    expected = {
        "wrong password": f"schema registry at {stack.secure_registry_url} refused registering",
        "untrusted certificate": f"the TLS handshake with the schema registry at {stack.secure_registry_url} failed",
        "plain http": "The plain HTTP request was sent to HTTPS port (HTTP 400)",
    }[fault]
    assert expected in line, line
    if fault == "wrong password":
        assert "401 Authorization Required (HTTP 401); check registry.username and registry.password_file" in line
        assert wrong not in err
    if fault == "untrusted certificate":
        assert "certificate verify failed" in line, line


# -- a broker that refuses: ACLs on the secure listener (the stack enforces them; tests deny) ---------------


@pytest.fixture
def deny(stack: Any) -> Any:
    """``deny(topic, operation)``: an ACL denying the SCRAM user that operation on that topic (CREATE: on the
    cluster too), made over the plaintext listener, whose user is a super user, and removed after the test."""
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    made: list[Any] = []

    def add(topic: str, operation: str) -> None:
        # (CREATE is asked of the cluster first, and allowed for every topic there if it is allowed: both)
        resources = [(ResourceType.TOPIC, topic)] + ([(ResourceType.BROKER, "kafka-cluster")]
                                                      if operation == "CREATE" else [])
        for kind, name in resources:
            acl = AclBinding(kind, name, ResourcePatternType.LITERAL, f"User:{SCRAM_USER}", "*",
                             AclOperation[operation], AclPermissionType.DENY)
            for fut in admin.create_acls([acl]).values():
                fut.result(30)
            made.append(AclBindingFilter(kind, name, ResourcePatternType.LITERAL, f"User:{SCRAM_USER}", "*",
                                         AclOperation[operation], AclPermissionType.DENY))

    yield add
    if made:
        for fut in admin.delete_acls(made).values():
            fut.result(30)


def test_a_topic_the_user_may_not_write_to_is_dead_lettered_and_counted(quiet_veth, stack, start_agent, udp_sinks,
                                                                        deny, tmp_path: Path) -> None:
    """TOPIC_AUTHORIZATION_FAILED is a permanent refusal: each batch goes to the dead-letter file with the
    broker's reason, counted, and is not retried; the agent keeps running, and the topic stays empty."""
    from confluent_kafka.admin import NewTopic

    udp_sinks(6810)
    topic = f"hdrlog.test.denied.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)
    deny(topic, "WRITE")
    cfg = _config(tmp_path, stack, topic, user=SCRAM_USER, mechanism="SCRAM-SHA-512",
                  password=_files(stack).passwords()[SCRAM_USER])
    state = tmp_path / "state"
    agent = start_agent(quiet_veth.host_if, "--config", str(cfg), "--state-dir", str(state))
    agent.wait_attached()
    send_udp(quiet_veth, quiet_veth.host_ip, 6810, 200)
    wait_for(lambda: (s := agent.status())["agent"]["dropped_dead_letter"] == s["kernel"]["emitted"] >= 200, 60,
             "every record dead-lettered")
    status = agent.status()
    assert status["delivery"]["last_error"]["retriable"] is False
    assert "authorization failed" in status["delivery"]["last_error"]["text"].lower()
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    a = summary_of(err)["agent"]
    assert a["delivered"] == 0 and a["requeued"] == 0 and a["delivery_retries"] == 0
    assert a["dropped_dead_letter"] == a["drained"] == summary_of(err)["kernel"]["emitted"]
    lines = [json.loads(x) for x in (state / "dead-letter.jsonl").read_text().splitlines()]
    assert {x["error"] for x in lines} == {"TOPIC_AUTHORIZATION_FAILED"}
    assert sum(x["records"] for x in lines) == a["dropped_dead_letter"]
    assert "TOPIC_AUTHORIZATION_FAILED" in err or "authorization failed" in err.lower()  # logged
    from tests.conftest import read_topic
    assert read_topic(stack.bootstrap_servers, topic, settle_s=1.0) == []


def test_a_topic_the_user_may_not_create_stops_the_agent_at_start(quiet_veth, stack, start_agent, deny,
                                                                  tmp_path: Path) -> None:
    """The agent's topic does not exist and the user may not create it: one line naming the topic and the
    broker's reason, at once."""
    topic = f"hdrlog.test.denied.{uuid.uuid4().hex[:8]}"
    deny(topic, "CREATE")
    cfg = _config(tmp_path, stack, topic, user=SCRAM_USER, mechanism="SCRAM-SHA-512",
                  password=_files(stack).passwords()[SCRAM_USER])
    line = _refused(start_agent, quiet_veth, stack, cfg, topic)
    assert f"cannot create topic {topic}: " in line and "authoriz" in line.lower(), line


def test_a_topic_deleted_while_the_agent_runs_is_waited_for_not_dropped(quiet_veth, stack, start_agent, udp_sinks,
                                                                        tmp_path: Path) -> None:
    """The agent's topic is deleted under it: the agent does not have it made again (the broker would give it
    its default partitions), and librdkafka's unknown topic is retriable, so the records wait in the buffer
    (the retries counted, the failure in the status), nothing is dropped; once the topic is back every record
    of the outage is delivered into it."""
    from confluent_kafka.admin import NewTopic

    from tests.conftest import expand, read_topic

    udp_sinks(6820, 6821)
    topic = f"hdrlog.test.deleted.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)
    # (the deletion noticed within seconds: librdkafka waits up to 30 s by default)
    cfg = _config(tmp_path, stack, topic, user=SCRAM_USER, mechanism="SCRAM-SHA-512",
                  password=_files(stack).passwords()[SCRAM_USER],
                  kafka_extra={"topic.metadata.refresh.interval.ms": "1000",
                               "topic.metadata.propagation.max.ms": "2000"})
    agent = start_agent(quiet_veth.host_if, "--config", str(cfg), "--state-dir", str(tmp_path / "state"))
    agent.wait_attached()
    send_udp(quiet_veth, quiet_veth.host_ip, 6820, 50)
    wait_for(lambda: (s := agent.status())["agent"]["delivered"] == s["kernel"]["emitted"] >= 50, 60, "delivery")
    before = agent.status()["agent"]["delivered"]
    for fut in admin.delete_topics([topic]).values():
        fut.result(30)
    wait_for(lambda: topic not in _topics(stack), 30, "the topic gone")
    send_udp(quiet_veth, quiet_veth.host_ip, 6821, 100)

    def unknown() -> dict[str, Any] | None:
        """Every failure reported is retriable; wanted: the one naming the unknown topic or partition (the
        first may be librdkafka's 'Broker handle destroyed for termination', as it drops the partition)."""
        err = agent.status()["delivery"]["last_error"]
        assert err is None or err["retriable"] is True, err
        return err if err is not None and "unknown" in err["text"].lower() else None

    wait_for(unknown, 60, "the unknown topic reported, retriable")
    wait_for(lambda: agent.status()["agent"]["delivery_retries"] >= 2, 60, "the records re-sent, again")
    assert agent.status()["agent"]["delivered"] == before  # (nothing delivered where there is no topic)
    assert topic not in _topics(stack)  # (nor was it made again)
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)
    wait_for(lambda: (s := agent.status())["agent"]["delivered"] == s["kernel"]["emitted"] >= 150, 120,
             "every record delivered once the topic is back")
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    a = summary_of(err)["agent"]
    assert not any(v for k, v in a.items() if k.startswith("dropped_")), a
    assert a["delivered"] == a["drained"] == summary_of(err)["kernel"]["emitted"]
    records = expand(stack.registry_url, read_topic(stack.bootstrap_servers, topic))
    # the new topic holds every datagram sent while it was gone (what came before went with the old one)
    assert sum(1 for r in records if r["dst_port"] == 6821) == 100
