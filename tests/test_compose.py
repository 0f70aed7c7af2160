"""docker-compose.yml is valid and keeps its promises (no Docker engine runs in CI)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (scripts/setup.sh installs it)")
    env = {**os.environ, "HDRLOG_IFACE": "eth0"}
    res = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, env=env, check=False, timeout=60)
    assert res.returncode == 0, res.stderr
    return dict(yaml.safe_load(res.stdout))


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"kafka", "registry", "agent", "consumer"}


def test_agent_privileges_and_mounts(compose: dict[str, Any]) -> None:
    agent = compose["services"]["agent"]
    assert agent["network_mode"] == "host"
    assert set(agent["cap_add"]) == {"BPF", "PERFMON", "NET_ADMIN"}
    assert agent["cap_drop"] == ["ALL"] and not agent.get("privileged")
    targets = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in agent["volumes"]}
    assert {"/sys/fs/bpf", "/lib/modules", "/usr/src"} <= targets
    assert agent["environment"]["HDRLOG_IFACE"] == "eth0"


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    published = []
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.rsplit(":", 2)[0]
            published.append((name, host_ip))
    assert published and all(ip == "127.0.0.1" for _, ip in published), published


def test_image_never_installs_pypi_bcc() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "python3-bpfcc" in text and "--system-site-packages" in text
    assert not re.search(r"pip install[^\n]*\bbcc\b", text)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r'^\s*"bcc[<>=~ "]', pyproject, re.M)
