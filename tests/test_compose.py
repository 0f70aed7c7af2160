"""docker-compose.yml, deploy/Dockerfile and .dockerignore keep their promises.

No Docker engine runs in CI: `docker-compose config` validates and normalises the file
(Debian's docker-compose 1.29), and the assertions read its output.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SERVICES = {"kafka", "registry", "agent", "consumer"}
AGENT_CAPS = {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SETUID", "SETGID", "CHOWN"}


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        why = "docker-compose is not installed (scripts/setup.sh installs the Debian package)"
        if os.environ.get("CI") == "true":
            pytest.fail(why + "; under CI=true this is a failure, not a skip")
        pytest.skip(why)
    return exe


def _run_config(*extra: str) -> subprocess.CompletedProcess[str]:
    # the documented defaults, whatever this shell exports
    env = {k: v for k, v in os.environ.items() if not k.startswith("HDRLOG_")}
    return subprocess.run(
        [_docker_compose(), "-f", str(COMPOSE_FILE), "config", *extra],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    res = _run_config()
    assert res.returncode == 0, res.stderr
    assert "variable is not set" not in res.stderr, res.stderr
    import yaml  # python3-yaml: a dependency of Debian's docker-compose

    data = yaml.safe_load(res.stdout)
    assert isinstance(data, dict)
    return data


def _env(svc: dict[str, Any]) -> dict[str, Any]:
    env = svc.get("environment") or {}
    assert isinstance(env, dict)  # `config` normalises lists to a mapping
    return env


def _published(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host_ip, host_port, container_port) of every published port."""
    out = []
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"])))
        else:
            spec = str(port).split("/")[0]
            parts = spec.rsplit(":", 2)
            host_ip = parts[0] if len(parts) == 3 else ""
            out.append((host_ip, parts[-2] if len(parts) >= 2 else "", parts[-1]))
    return out


def test_services_exist() -> None:
    res = _run_config("--services")
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.split()) == SERVICES


def test_config_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    assert compose["services"]["kafka"]["image"] == "apache/kafka:4.1.1"
    assert compose["services"]["registry"]["image"] == "apicurio/apicurio-registry:3.3.3"
    for name in ("agent", "consumer"):
        build = compose["services"][name]["build"]
        assert Path(build["context"]).resolve() == ROOT and build["dockerfile"] == "deploy/Dockerfile"


def test_agent_network_capabilities_and_mounts(compose: dict[str, Any]) -> None:
    agent = compose["services"]["agent"]
    assert agent["network_mode"] == "host"
    assert set(agent["cap_add"]) == AGENT_CAPS
    assert agent["cap_drop"] == ["ALL"]
    assert not agent.get("privileged")
    assert not agent.get("ports")  # host network: nothing to publish
    mounts = {}
    for vol in agent["volumes"]:
        if isinstance(vol, dict):
            mounts[vol["target"]] = (vol["source"], bool(vol.get("read_only")))
        else:
            src, dst, *mode = vol.split(":")
            mounts[dst] = (src, mode == ["ro"])
    assert mounts["/sys/fs/bpf"][0] == "/sys/fs/bpf"
    assert mounts["/lib/modules"] == ("/lib/modules", True)
    assert mounts["/usr/src"] == ("/usr/src", True)
    assert mounts["/var/lib/hdrlog"] == ("agent-state", False)  # the disk buffer outlives the container


def test_agent_environment(compose: dict[str, Any]) -> None:
    agent = compose["services"]["agent"]
    env = _env(agent)
    assert env["HDRLOG_IFACE"] == "eth0"
    assert env["HDRLOG_TOPIC"] == "hdrlog.headers"
    assert env["HDRLOG_BUFFER_TYPE"] == "disk"
    assert env["HDRLOG_USER"] == "65532:65532"  # once attached (SETUID, SETGID, CHOWN serve only for that)
    # host network: the agent reaches what kafka and registry publish on 127.0.0.1
    kafka_host = _published(compose["services"]["kafka"])
    registry_host = _published(compose["services"]["registry"])
    assert env["HDRLOG_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{kafka_host[0][1]}"
    assert env["HDRLOG_SCHEMA_REGISTRY"] == f"http://127.0.0.1:{registry_host[0][1]}/apis/ccompat/v7"
    # unset: the agent falls back to the hostname (the host's under network_mode host);
    # an empty value would be a configuration error
    assert "HDRLOG_HOST_ID" in env and env["HDRLOG_HOST_ID"] is None
    assert agent["command"][-1] == "agent"


def test_consumer_uses_internal_addresses(compose: dict[str, Any]) -> None:
    consumer = compose["services"]["consumer"]
    args = consumer["command"]
    args = shlex.split(args) if isinstance(args, str) else list(args)
    assert "consume" in args
    opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert opt["--topic"] == "hdrlog.headers" and opt["--group"] == "hdrlog-sample"
    kafka_env = _env(compose["services"]["kafka"])
    advertised = {u.split("://", 1)[1] for u in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert opt["--bootstrap-servers"] in advertised
    assert _env(compose["services"]["registry"])["APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"] in advertised
    registry_port = _published(compose["services"]["registry"])[0][2]
    assert opt["--schema-registry"] == f"http://registry:{registry_port}/apis/ccompat/v7"
    assert registry_port == "8080"  # Apicurio Registry 3.x listens on 8080
    assert consumer["cap_drop"] == ["ALL"] and not consumer.get("cap_add")


def test_kafka_single_node_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://127.0.0.1:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    for key, val in env.items():
        if key.endswith("REPLICATION_FACTOR") or key.endswith("MIN_ISR"):
            assert str(val) == "1", key
    assert "healthcheck" in kafka and "healthcheck" in compose["services"]["registry"]
    registry = compose["services"]["registry"]
    assert _env(registry)["APICURIO_STORAGE_KIND"] == "kafkasql"
    assert registry["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    published = [(name, ip) for name, svc in compose["services"].items() for ip, _, _ in _published(svc)]
    assert {name for name, _ in published} == {"kafka", "registry"}
    assert all(ip == "127.0.0.1" for _, ip in published), published


def _run_lines(dockerfile: str) -> list[str]:
    """Every RUN instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = [ln.strip() for ln in joined.splitlines() if not ln.lstrip().startswith("#")]
    return [ln[4:] for ln in lines if ln.upper().startswith("RUN ")]


def test_image_never_installs_pypi_bcc() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM debian:bookworm", text, re.M)
    runs = _run_lines(text)
    assert runs
    pip_installs = 0
    for run in runs:
        for cmd in re.split(r"&&|\|\||;", run):
            words = cmd.split()
            names = [Path(w).name for w in words]
            if "install" not in names or not any(re.fullmatch(r"pip3?(\.\d+)?", n) for n in names):
                continue
            pip_installs += 1
            args = words[names.index("install") + 1:]
            assert not any(re.fullmatch(r"bcc([<>=!~\[;@ ].*)?", a.strip("'\""), re.I) for a in args), cmd
    assert pip_installs, "the Dockerfile installs the package with pip"
    assert not re.search(r"pip3?\s+install[^\n]*\bbcc\b", text)
    assert "python3-bpfcc" in text and "--system-site-packages" in text
    assert "--no-install-recommends" in text and "rm -rf /var/lib/apt/lists/*" in text
    assert re.search(r'^ENTRYPOINT \["hdrlog"\]', text, re.M)
    assert not re.search(r'^\s*"bcc[<>=~ \["]', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".venv", ".git", "tests", "**/__pycache__", ".pytest_cache", ".mypy_cache"} <= ignored
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    sources = {s.rstrip("/") for line in copied for s in line.split()}
    assert {"pyproject.toml", "README.md", "producer", "bpf", "schemas"} <= sources
    assert not sources & ignored, sources & ignored
