"""Schema lifecycle against the real registry (Apicurio, BACKWARD): check, register, evolve, refuse.

HeaderRecord version 2 (identity, instance, sequence) is a BACKWARD-compatible
evolution of version 1: the registry accepts it under a subject that holds
version 1.  A change of shape on a topic (HeaderBatch where HeaderRecord was)
is refused, with the registry's reason.  An agent with
``registry.auto_register = false`` only looks its schemas up, and refuses to
start, in one line, when they are absent.
"""

from __future__ import annotations

import uuid

import pytest

from producer.serialize.registry import Registry
from producer.serialize.schemas import AvroSchema, Subject
from tests.conftest import ROOT, run_hdrlog

pytestmark = pytest.mark.stack


def _schemas(stack, *args: str):
    return run_hdrlog("schemas", *args, "--schema-registry", stack.registry_url)


def test_check_then_register_a_new_topic(stack) -> None:
    topic = f"hdrlog.test.sch.{uuid.uuid4().hex[:8]}"
    env = {"HDRLOG_STATS_TOPIC": f"{topic}.stats"}
    import os
    res = run_hdrlog("schemas", "check", "--topic", topic, "--schema-registry", stack.registry_url,
                     env={**os.environ, **env})
    assert res.returncode == 0, res.stderr
    assert f"{topic}-value: HeaderBatch not registered yet; it would be version 1" in res.stdout
    assert f"{topic}.stats-value: AgentStats not registered yet" in res.stdout
    res = run_hdrlog("schemas", "register", "--topic", topic, "--schema-registry", stack.registry_url,
                     env={**os.environ, **env})
    assert res.returncode == 0, res.stderr
    assert f"{topic}-value: HeaderBatch registered, id" in res.stdout
    res = run_hdrlog("schemas", "check", "--topic", topic, "--schema-registry", stack.registry_url,
                     env={**os.environ, **env})
    assert res.returncode == 0 and f"{topic}-value: HeaderBatch already registered" in res.stdout


def test_header_record_v2_is_a_backward_compatible_evolution_of_v1(stack) -> None:
    topic = f"hdrlog.test.sch.{uuid.uuid4().hex[:8]}"
    v1 = AvroSchema.load("HeaderRecord.v1", ROOT / "schemas" / "history")
    with Registry(stack.registry_url) as registry:
        id1 = registry.register(f"{topic}-value", v1.text)
    res = _schemas(stack, "check", "--topic", topic, "--shape", "record")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{topic}-value: HeaderRecord is compatible; it would be a new version" in res.stdout
    res = _schemas(stack, "register", "--topic", topic, "--shape", "record")
    assert res.returncode == 0, res.stdout + res.stderr
    with Registry(stack.registry_url) as registry:
        versions = registry.client.get_versions(f"{topic}-value")
        id2 = registry.lookup(Subject(topic, AvroSchema.load("HeaderRecord")))
    assert len(versions) == 2 and id2 != id1


def test_a_change_of_shape_is_refused_with_the_registrys_reason(stack) -> None:
    topic = f"hdrlog.test.sch.{uuid.uuid4().hex[:8]}"
    with Registry(stack.registry_url) as registry:
        registry.register(f"{topic}-value", AvroSchema.load("HeaderRecord").text)
    res = _schemas(stack, "check", "--topic", topic, "--shape", "batch")
    assert res.returncode == 1
    line = next(x for x in res.stdout.splitlines() if x.startswith(f"{topic}-value"))
    assert "HeaderBatch refused: not BACKWARD-compatible with the latest version" in line
    assert "expected: io.hdrlog.v1.HeaderRecord at /name" in line  # Apicurio's own words
    assert res.stderr.strip().splitlines()[-1] == \
        "hdrlog: error: 1 schema(s) refused by the registry's compatibility rules"


@pytest.mark.kernel
def test_auto_register_off_needs_the_schemas_registered(veth, stack, tmp_path) -> None:
    topic = f"hdrlog.test.sch.{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[registry]\nauto_register = false\n[telemetry]\nstats_topic = "{topic}.stats"\n')
    args = ("agent", "--config", str(cfg), "--iface", veth.host_if, "--topic", topic, "--duration", "1",
            "--schema-registry", stack.registry_url, "--bootstrap-servers", stack.bootstrap_servers,
            "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0")
    res = run_hdrlog(*args)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [x for x in res.stderr.splitlines() if x.startswith("hdrlog: error:")]
    assert errors == [
        f"hdrlog: error: schema HeaderBatch is not registered under {topic}-value (registry.auto_register is "
        f"false): the registry says \"Subject '{topic}-value' not found.\"; register it with "
        "`hdrlog schemas register`"]
    reg = run_hdrlog("schemas", "register", "--config", str(cfg), "--topic", topic, "--schema-registry",
                     stack.registry_url)
    assert reg.returncode == 0, reg.stderr
    res = run_hdrlog(*args)
    assert res.returncode == 0, res.stderr
