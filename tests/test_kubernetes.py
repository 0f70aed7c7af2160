"""deploy/kubernetes/hdrlog-agent.yaml keeps its promises (no cluster here: the file is read as YAML).

The DaemonSet runs the agent with capabilities, not ``privileged``: every one
dropped but the three the systemd unit grants (deploy/hdrlog-agent.service),
no privilege escalation, a read-only root file system, the node's network
namespace, the mounts the agent needs, and the node's name as its host id.
"""

from __future__ import annotations

import re
from typing import Any

import yaml  # python3-yaml (scripts/setup.sh)

from tests.conftest import ROOT

MANIFEST = ROOT / "deploy" / "kubernetes" / "hdrlog-agent.yaml"
UNIT = ROOT / "deploy" / "hdrlog-agent.service"


def _docs() -> dict[str, Any]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8"))}


def _unit_caps() -> set[str]:
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("AmbientCapabilities="))
    return {c.removeprefix("CAP_") for c in line.split("=", 1)[1].split()}


def test_the_daemonset_has_capabilities_not_privilege() -> None:
    ds = _docs()["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    [agent] = pod["containers"]
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == _unit_caps() == {"BPF", "PERFMON", "NET_ADMIN", "SETUID", "SETGID",
                                                              "CHOWN"}
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["HDRLOG_USER"] == "65532:65532"  # once attached, the three it no longer needs are given up
    assert "privileged" not in pod.get("securityContext", {})
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostPID" not in pod and "hostIPC" not in pod
    assert agent["args"] == ["--log-format", "json", "agent"]


def test_the_daemonset_mounts_what_the_agent_needs_and_names_the_node() -> None:
    docs = _docs()
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    [agent] = pod["containers"]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {p: volumes[m["name"]].get("hostPath", {}).get("path") for p, m in mounts.items()} == {
        "/sys/fs/bpf": "/sys/fs/bpf", "/var/lib/hdrlog": "/var/lib/hdrlog", "/lib/modules": "/lib/modules",
        "/usr/src": "/usr/src", "/tmp": None}
    assert mounts["/lib/modules"]["readOnly"] and mounts["/usr/src"]["readOnly"]
    assert "readOnly" not in mounts["/var/lib/hdrlog"] and "readOnly" not in mounts["/sys/fs/bpf"]
    host_id = next(e for e in agent["env"] if e["name"] == "HDRLOG_HOST_ID")
    assert host_id["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    config = docs["ConfigMap"]["data"]
    assert config["HDRLOG_BUFFER_TYPE"] == "disk" and set(config) <= {
        "HDRLOG_IFACE", "HDRLOG_BOOTSTRAP_SERVERS", "HDRLOG_SCHEMA_REGISTRY", "HDRLOG_TOPIC", "HDRLOG_BUFFER_TYPE"}
    # the probe asks the agent itself: its server listens on 127.0.0.1 only
    assert agent["livenessProbe"]["exec"]["command"][:2] == ["hdrlog", "status"]
    assert docs["ServiceAccount"]["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]


def test_every_variable_the_manifest_sets_is_a_setting() -> None:
    from producer.config import settings  # the variables the agent reads

    names = {s.env for s in settings() if s.env}
    given = set(_docs()["ConfigMap"]["data"]) | {"HDRLOG_HOST_ID"}
    assert given <= names, given - names
    assert all(re.fullmatch(r"HDRLOG_[A-Z0-9_]+", n) for n in given)
