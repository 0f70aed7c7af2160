"""Least privilege: the agent captures holding only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN
(deploy/README.md), and that is all it holds while it runs.

setpriv (util-linux) starts it with those three as its ambient capabilities and nothing else in any set,
with no_new_privs, and with the "noroot" securebits, so that user id 0 confers nothing: root without
root's powers (no CAP_DAC_OVERRIDE, CAP_SYS_ADMIN, ...), and ``user = "root"`` (stay as started).
Every datagram sent across the veth must be a record; /proc/PID/status must show exactly the
documented set in every capability set.

By default, started as root, the agent becomes the system user ``hdrlog`` once attached, with nothing
but CAP_NET_ADMIN on its main thread, wherever its code is (a checkout in root's 0700 home included:
it imports through descriptors it opened before)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, send_udp, summary_of, wait_for

pytestmark = [pytest.mark.kernel]

#: the documented set (deploy/README.md "The agent's privileges"), by capability number
CAPS = {"net_admin": 12, "perfmon": 38, "bpf": 39}
MASK = sum(1 << n for n in CAPS.values())
#: what the agent starts with when it is to become its user once attached (deploy/README.md): the unit's
DROP_CAPS = {**CAPS, "setgid": 6, "setuid": 7, "chown": 0}
NET_ADMIN = 1 << CAPS["net_admin"]


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
    agent = start_agent(quiet_veth.host_if, "--stdout", "--listen", "off", "--user", "root", prefix=_setpriv())
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
    documented = {f"CAP_{c.upper()}" for c in DROP_CAPS}
    assert set(settings["AmbientCapabilities"].split()) == documented
    assert set(settings["CapabilityBoundingSet"].split()) == documented
    assert settings["ExecStart"].endswith(" --user hdrlog") and "User" not in settings
    assert (settings["NoNewPrivileges"], settings["ProtectSystem"]) == ("yes", "strict")
    # systemd's own check, with the paths of this machine (it requires the commands to exist)
    local = unit.replace("/opt/hdrlog/.venv/bin/hdrlog", str(Path(sys.executable).parent / "hdrlog"))
    local = local.replace("/usr/bin/install", shutil.which("install") or "/usr/bin/install")
    path = tmp_path / "hdrlog-agent.service"
    path.write_text(local)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr



def _setpriv_root(caps: dict[str, int]) -> list[str]:
    """uid 0 without root's powers (noroot), holding ``caps``; leaving uid 0 clears capabilities as usual
    (no no_setuid_fixup): that is what takes them from every thread but the main one."""
    names = ",".join(f"+{c}" for c in caps)
    return ["setpriv", "--no-new-privs", "--securebits=+noroot,+noroot_locked", f"--inh-caps=-all,{names}",
            f"--ambient-caps={names}", f"--bounding-set=-all,{names}"]


@pytest.fixture
def open_dir() -> Any:
    """A directory ``nobody`` can reach (pytest's temporary directories are root's alone), removed after."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="hdrlog-priv-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize(("user", "hook"), [("default", "tc"), ("default", "xdp"), ("4242:4242", "tc")])
def test_after_attaching_the_agent_becomes_its_user_with_only_net_admin(
        root_required, stack, start_agent, udp_sinks, tmp_path: Path, user: str, hook: str) -> None:
    """Started as root (``default``: with every capability and no ``user`` setting; ``4242:4242``: with
    the three capabilities and the three it needs to change its user, under setpriv, as the unit starts
    it), the agent attaches, then becomes ``hdrlog`` (the system user setup.sh made) or uid 4242 (no
    passwd entry: a uid is enough): every thread (its stages', librdkafka's, the server's) runs as that
    user with no capability, but the main thread, which keeps CAP_NET_ADMIN, and none can gain one
    (no_new_privs). Through its map descriptors it still drains, counts and takes a SIGHUP filter change;
    its main thread attaches a link that appears afterwards; it delivers every record to Kafka. Its
    parse worker became nobody before, so the agent may no longer signal it: it still exits cleanly, and
    its hooks (XDP ones found by program id) and pins are gone. Its code is read from wherever this
    checkout is (through descriptors where the user could not reach it)."""
    import pwd
    import uuid

    from producer.netns import VethNamespace
    from producer.privileges import threads
    from tests.conftest import expand, read_topic

    uid = gid = 4242
    if user == "default":
        entry = pwd.getpwnam("hdrlog")  # scripts/setup.sh made it
        uid, gid = entry.pw_uid, entry.pw_gid
    tag = f"hlu{os.getpid() % 1000}"
    first = VethNamespace(ns=f"{tag}-0", host_if=f"{tag}x0", peer_if=f"{tag}y0", host_ip="10.206.0.1",
                          peer_ip="10.206.0.2")
    later = VethNamespace(ns=f"{tag}-1", host_if=f"{tag}x1", peer_if=f"{tag}y1", host_ip="10.206.1.1",
                          peer_ip="10.206.1.2")
    udp_sinks(6310, 6311)
    topic = f"hdrlog.test.user.{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "agent.toml"  # (read again at SIGHUP, by the user: the test's directories let it through)
    cfg.write_text("[capture]\nsample_rate = 1\n")
    state = tmp_path / "state"
    first.create(quiet=True)
    try:
        how = (() if user == "default" else ("--user", user))
        agent = start_agent(f"{tag}x*", "--config", str(cfg), *how, "--state-dir", str(state),
                            "--bootstrap-servers", stack.bootstrap_servers, "--schema-registry",
                            stack.registry_url, "--topic", topic, "--buffer", "disk", "--hook", hook,
                            prefix=() if user == "default" else _setpriv_root(DROP_CAPS))
        agent.wait_attached()
        wait_for(lambda: any(x["msg"].startswith("gave up what capturing no longer needs") for x in agent.log_lines()),
                 30, "the privileges given up")
        pid = agent.proc.pid
        seen = threads(pid)
        assert len(seen) >= 5  # the stages', the server's, librdkafka's
        assert {t.uids for t in seen} == {(uid,) * 4} and {t.gids for t in seen} == {(gid,) * 4}
        assert {t.groups for t in seen} == {()}
        from producer.bench.ingest import worker_pids
        workers = worker_pids(pid)
        assert workers and all(threads(w)[0].uids == (65534,) * 4 for w in workers)  # nobody, before the drop
        assert all(t.no_new_privs for t in seen)
        main = next(t for t in seen if t.tid == pid)
        assert (main.effective, main.permitted, main.inheritable, main.ambient) == (NET_ADMIN, NET_ADMIN, 0, 0)
        # nothing (an inheritable set they keep is setpriv's and grants nothing: exec under no_new_privs gives
        # no more than the empty permitted set; producer/privileges.py); never CAP_SYS_ADMIN anywhere
        holding = [t for t in seen if t.tid != pid and (t.effective or t.permitted or t.ambient)]
        assert not holding, holding
        assert stat_owner(state) == (uid, gid)

        send_udp(first, first.host_ip, 6310, 20)
        # a filter change through the control maps, as the user
        cfg.write_text('[capture]\nsample_rate = 1\nports = ["6311"]\n')
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(x["msg"].startswith("applied filters") for x in agent.log_lines()), 10, "the reload")
        send_udp(first, first.host_ip, 6310, 20)  # filtered out now
        send_udp(first, first.host_ip, 6311, 30)
        # a link that appears now is attached by the main thread, which kept CAP_NET_ADMIN
        later.create(quiet=True)
        wait_for(lambda: f'"capturing on {later.host_if} (appeared later)"' in agent.stderr, 10, "the new link")
        send_udp(later, later.host_ip, 6311, 15)
        wait_for(lambda: (s := agent.status())["agent"]["delivered"] == s["kernel"]["emitted"] >= 65, 60,
                 "every record delivered")
        _out, err = agent.stop()
        assert agent.proc.returncode == 0, err
        for net in (first, later):
            hooks = subprocess.run(["tc", "filter", "show", "dev", net.host_if, "ingress"], capture_output=True,
                                   text=True, check=True).stdout
            link = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", net.host_if], capture_output=True,
                                  text=True, check=True).stdout
            assert "hdrlog" not in hooks and '"xdp"' not in link, (hooks, link)
    finally:
        first.destroy()
        later.destroy()
    s = summary_of(err)
    a = s["agent"]
    assert not any(v for k, v in a.items() if k.startswith("dropped_")), a
    assert a["delivered"] == a["drained"] == s["kernel"]["emitted"]
    assert s["kernel"]["filtered"] >= 20
    records = expand(stack.registry_url, read_topic(stack.bootstrap_servers, topic))
    ports = {(r["interface"], r["dst_port"]): 0 for r in records}
    for r in records:
        ports[(r["interface"], r["dst_port"])] += 1
    assert {k: v for k, v in ports.items() if k[1] in (6310, 6311)} == {
        (first.host_if, 6310): 20, (first.host_if, 6311): 30, (later.host_if, 6311): 15}
    pins = Path(os.environ.get("HDRLOG_PIN_DIR", "/sys/fs/bpf/hdrlog"))
    assert pins.is_dir() and not [p for p in pins.rglob(s["capture_id"])]  # its pins were removed at exit


def stat_owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


@pytest.mark.parametrize("user", ["nobody", "default"])
def test_a_user_that_cannot_reach_its_state_directory_is_refused_at_start(root_required, start_agent,
                                                                          quiet_veth, tmp_path: Path,
                                                                          user: str) -> None:
    """Under a directory that is root's alone (0700) the user could not write its state later, so the agent
    says so at start, before it loads anything, and stops; the line names the way out."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    how = ("--user", "nobody") if user == "nobody" else ()
    agent = start_agent(quiet_veth.host_if, "--stdout", *how, "--state-dir", str(closed / "s"))
    _out, err = agent.wait_exit(60)
    assert agent.proc.returncode == 1, err
    line = [x for x in err.splitlines() if x.startswith("hdrlog: error:")][-1]
    name = "nobody" if user == "nobody" else "hdrlog"
    assert line.startswith(f"hdrlog: error: user {name} could not reach {closed / 's'} ({closed} is mode 0700"), line
    assert line.endswith('or user = "root" to stay root)' if user == "nobody" else
                         'the default user once attached; user = "root" stays root)'), line
    assert "capturing" not in err


def test_becoming_a_user_without_the_capabilities_for_it_is_refused_at_start(root_required, start_agent,
                                                                             quiet_veth, open_dir: Path) -> None:
    """With only the three capabilities capture needs, ``--user`` cannot be done: one line at start."""
    agent = start_agent(quiet_veth.host_if, "--stdout", "--user", "nobody", "--state-dir", str(open_dir / "s"),
                        prefix=_setpriv())
    _out, err = agent.wait_exit(60)
    assert agent.proc.returncode == 1, err
    assert err.splitlines()[-1] == ("hdrlog: error: becoming user nobody once attached needs CAP_CHOWN, "
                                    'CAP_SETGID, CAP_SETUID as well (or user = "root" to stay root)'), err[-400:]
    assert "capturing" not in err


def test_the_user_is_a_name_a_uid_or_uid_and_gid_never_root(open_dir: Path) -> None:
    from producer.errors import PrivilegeError
    from producer.privileges import _unreadable, resolve_user

    assert resolve_user("nobody") == resolve_user("65534") == (65534, 65534)
    assert resolve_user("4242") == (4242, 4242) and resolve_user("4242:77") == (4242, 77)  # no passwd entry
    for bad, words in [("root", "is root"), ("0:5", "is root"), ("no-such-user", "no such user"),
                       ("4242:staff", "must be a number")]:
        with pytest.raises(PrivilegeError, match=words):
            resolve_user(bad)
    closed = open_dir / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o700)
    assert _unreadable(closed / "inner", 65534, 65534) == f"{closed} is mode 0700, owner 0:0"
    closed.chmod(0o711)  # searchable: what is under it can be reached, not listed
    assert _unreadable(closed / "inner", 65534, 65534) is None
    assert _unreadable(closed, 65534, 65534, last=0o5) == f"{closed} is mode 0711, owner 0:0"
