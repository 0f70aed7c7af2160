"""Least privilege: the agent captures holding only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN
(deploy/README.md), and that is all it holds while it runs.

setpriv (util-linux) starts it with those three as its ambient capabilities and nothing else in any set,
with no_new_privs, and with the "noroot" securebits, so that user id 0 confers nothing: root without
root's powers (no CAP_DAC_OVERRIDE, CAP_SYS_ADMIN, ...).  The test runs it as user 0 so that it can
read the checkout wherever CI puts it (a ``nobody`` agent needs a checkout others can read; the README
shows that form).  Every datagram sent across the veth must be a record; /proc/PID/status must show
exactly the documented set in every capability set."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, send_udp, summary_of

pytestmark = [pytest.mark.kernel]

#: the documented set (deploy/README.md "The agent's privileges"), by capability number
CAPS = {"net_admin": 12, "perfmon": 38, "bpf": 39}
MASK = sum(1 << n for n in CAPS.values())


def _setpriv() -> list[str]:
    caps = ",".join(f"+{c}" for c in CAPS)
    return ["setpriv", "--no-new-privs", "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,"
            "+no_setuid_fixup_locked", f"--inh-caps=-all,{caps}", f"--ambient-caps={caps}",
            f"--bounding-set=-all,{caps}"]


def _caps(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in lines)
            if k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


def test_the_agent_captures_with_three_capabilities_and_no_more(quiet_veth: Any, start_agent: Any,
                                                                udp_sinks: Any) -> None:
    udp_sinks(6300)
    agent = start_agent(quiet_veth.host_if, "--stdout", "--listen", "off", prefix=_setpriv())
    agent.wait_attached()
    status = Path(f"/proc/{agent.proc.pid}/status").read_text()
    no_new_privs = next(line.split()[1] for line in status.splitlines() if line.startswith("NoNewPrivs:"))
    caps = _caps(agent.proc.pid)
    send_udp(quiet_veth, quiet_veth.host_ip, 6300, 25)
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    assert no_new_privs == "1"
    assert caps == {"CapInh": MASK, "CapPrm": MASK, "CapEff": MASK, "CapBnd": MASK, "CapAmb": MASK}, {
        k: hex(v) for k, v in caps.items()}
    assert sum(1 for r in agent.records() if r["dst_port"] == 6300) == 25
    k = summary_of(err)["kernel"]
    assert k["seen"] == k["emitted"] and k["ringbuf_reserve_failed"] == 0


def test_the_systemd_unit_verifies_and_grants_the_same_set(tmp_path: Path) -> None:
    unit = (ROOT / "deploy" / "hdrlog-agent.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    documented = {f"CAP_{c.upper()}" for c in CAPS}
    assert set(settings["AmbientCapabilities"].split()) == documented
    assert set(settings["CapabilityBoundingSet"].split()) == documented
    assert (settings["NoNewPrivileges"], settings["ProtectSystem"]) == ("yes", "strict")
    # systemd's own check, with the paths of this machine (it requires the commands to exist)
    local = unit.replace("/opt/hdrlog/.venv/bin/hdrlog", str(Path(sys.executable).parent / "hdrlog"))
    local = local.replace("/usr/bin/install", shutil.which("install") or "/usr/bin/install")
    path = tmp_path / "hdrlog-agent.service"
    path.write_text(local)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
