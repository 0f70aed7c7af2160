"""Detached service processes: start one, recognise it later, stop it; and who holds a port.

A service is started by a throw-away ``sh`` in a new session that backgrounds it
and exits, so the service is re-parented to init: ``hdrlog stack up`` can return
while it keeps running, and a long-lived caller (the test session) never holds
an un-waited child that would turn into a zombie when stopped.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from producer.errors import StackError

POLL_S = 0.1
_KILL_GRACE_S = 10.0
_TCP_LISTEN = "0A"


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; only its parent has not reaped it)."""
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """The process's argv ([] if it is gone, or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


@dataclass(frozen=True, slots=True)
class Daemon:
    """One service process: where its pid and output go, and how to recognise it.

    ``markers`` are arguments that must all appear in the process's argv (its main
    class and one naming our state directory), so a pid reused by an unrelated
    process, or a service of another stack directory, is never taken for ours.
    ``retitled``: the process rewrites its argv into one title (nginx), so the
    markers are looked for among that title's words.
    """

    name: str
    pidfile: Path
    log: Path
    markers: tuple[str, ...]
    retitled: bool = False

    def pid(self) -> int | None:
        """The recorded pid if that process is alive and is ours, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        argv = cmdline(pid)
        if self.retitled:
            argv = " ".join(argv).split()
        return pid if alive(pid) and all(m in argv for m in self.markers) else None

    def start(self, argv: list[str], *, env: Mapping[str, str], cwd: Path) -> int:
        """Start ``argv`` detached with stdout/stderr appended to ``log``; returns its pid at once."""
        self.pidfile.unlink(missing_ok=True)
        script = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
        try:
            res = subprocess.run(["sh", "-c", script, "sh", str(self.log), *argv], env=dict(env), cwd=cwd,
                                 start_new_session=True, capture_output=True, text=True, timeout=30,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StackError(f"starting {self.name} failed: {exc}") from exc
        text = res.stdout.strip()
        if res.returncode != 0 or not text.isdigit():
            raise StackError(f"starting {self.name} failed: {res.stderr.strip()[-200:] or 'no pid reported'}")
        pid = int(text)
        self.pidfile.write_text(f"{pid}\n")
        return pid

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; no-op if not running."""
        pid = self.pid()
        if pid is not None:
            _signal(pid, signal.SIGTERM)
            # A stopped process (SIGSTOP, e.g. a test simulating a stalled broker) would hold SIGTERM pending.
            _signal(pid, signal.SIGCONT)
            if not wait_gone(pid, time.monotonic() + timeout):
                _signal(pid, signal.SIGKILL)
                if not wait_gone(pid, time.monotonic() + _KILL_GRACE_S):
                    raise StackError(f"{self.name} (pid {pid}) did not exit even after SIGKILL")
        self.pidfile.unlink(missing_ok=True)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise StackError(f"not allowed to signal pid {pid}: {exc}") from exc


def wait_gone(pid: int, deadline: float) -> bool:
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def _listen_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` on any address (IPv4 and IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _socket_owner(inodes: set[str]) -> int | None:
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(proc.name)
        except OSError:  # the process went away or is not ours to inspect
            continue
    return None


def port_holder(port: int) -> str | None:
    """None if 127.0.0.1:``port`` can be bound, else a description of who holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the JVM does: a port left in TIME_WAIT by our own previous run is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return None
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return f"unusable ({exc.strerror})"
    pid = _socket_owner(_listen_inodes(port))
    if pid is None:
        return "another process"
    line = " ".join(cmdline(pid))
    return f"pid {pid} ({line[:80]}{'...' if len(line) > 80 else ''})"
