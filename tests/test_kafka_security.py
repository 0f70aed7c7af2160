"""Kafka over TLS with SASL and the registry over HTTPS with basic auth, against the local stack's secure
listener and registry proxy (``hdrlog stack up --secure``).

The agent and the consumer reach Kafka's SASL_SSL listener with SCRAM-SHA-512
and a client certificate (mTLS), or with PLAIN, the password read from a file,
and the registry over HTTPS as its basic-auth user, that password read from a
file too; the records arrive.  A wrong registry password, a CA that did not
sign the registry's certificate and plain HTTP to its HTTPS port each stop the
agent at start with a one-line error that says which.  A wrong password, a CA that did not sign the broker's
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


def _config(tmp_path: Path, stack: Any, topic: str, *, user: str, mechanism: str, password: str,
            protocol: str = "SASL_SSL", ca: Path | None = None, client_cert: bool = False,
            registry_password: str | None = None, registry_ca: Path | None = None,
            registry_url: str | None = None) -> Path:
    """The agent's config for the secure listener, and for the registry over HTTPS as its basic-auth user
    (its own password unless ``registry_password`` is given)."""
    files = _files(stack)
    secret = tmp_path / "kafka-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    registry_secret = tmp_path / "registry-password"
    registry_secret.write_text((files.registry_password() if registry_password is None else registry_password) + "\n")
    registry_secret.chmod(0o600)
    props = {"security.protocol": protocol, "sasl.mechanism": mechanism, "sasl.username": user,
             "ssl.ca.location": str(ca or files.ca)}
    if protocol == "PLAINTEXT":
        props = {"security.protocol": protocol}
    if client_cert:
        props |= {"ssl.certificate.location": str(files.client_cert), "ssl.key.location": str(files.client_key)}
    cfg = tmp_path / "secure.toml"
    cfg.write_text(f'[kafka]\nbootstrap_servers = "{stack.secure_bootstrap_servers}"\ntopic = "{topic}"\n'
                   f'sasl_password_file = "{secret}"\nconnect_timeout_s = 120\n[kafka.properties]\n'
                   + "".join(f'"{k}" = "{v}"\n' for k, v in props.items())
                   + f'[registry]\nurl = "{registry_url or stack.secure_registry_url}"\nusername = "{REGISTRY_USER}"\n'
                   f'password_file = "{registry_secret}"\n[registry.properties]\n'
                   f'"ssl.ca.location" = "{registry_ca or files.ca}"\n')
    cfg.chmod(0o600)
    return cfg


def _topics(stack: Any) -> set[str]:
    return set(AdminClient({"bootstrap.servers": stack.bootstrap_servers}).list_topics(timeout=10).topics)


@pytest.mark.parametrize(("user", "mechanism", "client_cert"), [(SCRAM_USER, "SCRAM-SHA-512", True),
                                                                 (PLAIN_USER, "PLAIN", False)])
def test_the_agent_and_the_consumer_deliver_over_sasl_ssl(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path,
                                                          user: str, mechanism: str, client_cert: bool) -> None:
    udp_sinks(6800)
    password = _files(stack).passwords()[user]
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
    secrets = (password, _files(stack).registry_password())
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


def test_the_consumer_refused_says_why(stack, tmp_path: Path) -> None:
    """``hdrlog consume`` with a wrong password: one line, exit 1, the password nowhere."""
    wrong = "not-" + _files(stack).passwords()[SCRAM_USER]
    cfg = _config(tmp_path, stack, "hdrlog.headers", user=SCRAM_USER, mechanism="SCRAM-SHA-512", password=wrong)
    done = run_hdrlog("--log-format", "json", "consume", "--config", str(cfg), "--schema-registry",
                      stack.registry_url, "--format", "raw", "--idle-timeout", "5", timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        f"hdrlog: error: Kafka at {stack.secure_bootstrap_servers} refused the credentials"), done.stderr[-500:]
    assert wrong not in done.stderr and done.stdout == ""
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
