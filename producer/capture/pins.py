"""Restart without a gap: pin each capture's ring buffer in bpffs, take over a killed agent's.

Every capture (one loaded program, named by its ``capture_id``) pins its ring
buffer, its counters and its programs under

    <capture.pin_dir>/<scope>/<capture_id>/{events,counters,ingress,egress,xdp}

where ``scope`` is derived from the agent's state directory: one agent, one
state directory, one scope, so agents never take over each other's captures.
While an agent runs it holds an exclusive lock on
``<state_dir>/captures/<capture_id>.lock``.

At start, a capture directory in our scope whose lock nobody holds belongs to
an agent that was killed.  Its hooks are still attached and its programs still
write into its ring buffer.  We take it over: our hooks replace its hooks on our
links, its hooks anywhere else are removed (found by program id), and then its
ring buffer is drained to the end from the position its agent had released
(with a disk buffer, only what was stored), with its own capture id, so every
record keeps its identity.  Then its pins are removed and the kernel frees it.
Its kernel counters are reported in the summary (``taken_over``), so the
records of both runs reconcile.

A clean exit unpins its own capture (it has drained everything).  Without a
BPF file system at ``pin_dir`` (and no right to mount one) the agent warns and
runs without this.  Pins are removed through a descriptor of the scope directory
opened at start: an agent that became its ``user`` may no longer pass through
``pin_dir``'s parents (systemd mounts /sys/fs/bpf with mode 0700).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from producer import abi
from producer.errors import CaptureError

log = logging.getLogger(__name__)

BPF_FS_MAGIC = 0xCAFE4A11
_PINNED = ("events", "counters", "ingress", "egress", "xdp")


def _lib() -> Any:
    from bcc import libbcc  # the OS package python3-bpfcc

    return libbcc.lib


def _remove_capture(scope_fd: int, name: str) -> None:
    """Unpin one capture directory under the scope descriptor (its entries, then itself); what is gone
    already, or cannot be removed, is left (the kernel frees nothing while a pin remains)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=scope_fd)
    except OSError:
        return
    try:
        for entry in os.listdir(fd):
            with contextlib.suppress(OSError):
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=scope_fd)


def _fdinfo(fd: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def prog_id(fd: int) -> int:
    return int(_fdinfo(fd)["prog_id"])


def _is_bpffs(path: Path) -> bool:
    """The file system type of ``path`` (coreutils' ``stat -f``; Python's statvfs has no f_type)."""
    out = subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True, text=True, check=False)
    return out.returncode == 0 and int(out.stdout.strip() or "0", 16) == BPF_FS_MAGIC


def ensure_bpffs(pin_dir: Path) -> bool:
    """True if ``pin_dir`` can hold pins (mounting /sys/fs/bpf if that is where it is and nothing is)."""
    mount = Path("/sys/fs/bpf")
    if not _is_bpffs(mount) and (pin_dir == mount or mount in pin_dir.parents):
        res = subprocess.run(["mount", "-t", "bpf", "bpf", str(mount)], capture_output=True, text=True,
                             check=False)
        if res.returncode != 0:
            log.warning("no BPF file system at %s and it cannot be mounted (%s): a restarted agent will not "
                        "recover what a killed one left in its ring buffer", mount, res.stderr.strip())
            return False
        log.info("mounted the BPF file system at %s", mount)
    try:
        pin_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cannot use %s for pins (%s): no takeover after a restart", pin_dir, exc.strerror)
        return False
    if not _is_bpffs(pin_dir):
        log.warning("%s is not on a BPF file system: no takeover after a restart", pin_dir)
        return False
    return True


def _pin(fd: int, path: Path) -> None:
    if _lib().bpf_obj_pin(fd, str(path).encode()) != 0:
        raise CaptureError(f"cannot pin {path} in the BPF file system")


def _get(path: Path) -> int:
    fd = int(_lib().bpf_obj_get(str(path).encode()))
    if fd < 0:
        raise CaptureError(f"cannot open pinned {path}")
    return fd


def read_percpu_counters(fd: int) -> dict[str, int]:
    """The ``counters`` map of a capture (pinned), summed over CPUs, by abi.KERNEL_COUNTERS name."""
    from bcc.utils import get_possible_cpus

    ncpu = max(get_possible_cpus()) + 1
    out: dict[str, int] = {}
    values = (ctypes.c_uint64 * ncpu)()
    for i, name in enumerate(abi.KERNEL_COUNTERS):
        key = ctypes.c_uint32(i)
        if _lib().bpf_lookup_elem(fd, ctypes.byref(key), ctypes.byref(values)) != 0:
            raise CaptureError("cannot read a pinned counters map")
        out[name] = int(sum(values))
    return out


@dataclass
class StaleCapture:
    """A killed agent's capture, opened from its pins."""

    capture_id: str
    directory: Path
    scope_fd: int  # its scope directory (our own descriptor of it: closed at release)
    ring_fd: int
    ring_size: int
    counters_fd: int
    prog_ids: set[int]
    lock: IO[str]
    closed: threading.Event = field(default_factory=threading.Event)  # its hooks are all gone

    def counters(self) -> dict[str, int]:
        return read_percpu_counters(self.counters_fd)

    def release(self) -> None:
        """Done with it: unpin (the kernel frees it once our fds close), close, unlock."""
        _remove_capture(self.scope_fd, self.capture_id)
        for fd in (self.scope_fd, self.ring_fd, self.counters_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.lock.close()


class Pins:
    def __init__(self, pin_dir: str, state_dir: Path) -> None:
        self.enabled = bool(pin_dir) and ensure_bpffs(Path(pin_dir))
        self.scope_dir = self.scope_of(pin_dir, state_dir)
        if self.enabled:
            try:  # (an agent without root may find the directory there but not its own in it)
                self.scope_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("cannot use %s for pins (%s): no takeover after a restart", self.scope_dir, exc.strerror)
                self.enabled = False
        self._locks_dir = state_dir / "captures"
        self._own: Path | None = None
        self._own_lock: IO[str] | None = None
        self._scope_fd: int | None = None
        if self.enabled:
            try:
                self._scope_fd = os.open(self.scope_dir, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                log.warning("cannot use %s for pins (%s): no takeover after a restart", self.scope_dir,
                            exc.strerror)
                self.enabled = False

    @staticmethod
    def scope_of(pin_dir: str, state_dir: Path) -> Path:
        """Where the captures of agents with this state directory are pinned."""
        return Path(pin_dir) / hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]

    def _lock(self, capture_id: str) -> IO[str] | None:
        """The capture's lock if we could take it (nobody alive holds it), else None."""
        self._locks_dir.mkdir(parents=True, exist_ok=True)
        f = open(self._locks_dir / f"{capture_id}.lock", "a")  # noqa: SIM115 - held while the capture lives
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        return f

    def pin_own(self, capture_id: str, fds: dict[str, int]) -> None:
        """Pin our capture's maps and programs (``fds``: name in _PINNED -> fd) and hold its lock."""
        if not self.enabled:
            return
        self._own_lock = self._lock(capture_id)
        directory = self.scope_dir / capture_id
        directory.mkdir(parents=True, exist_ok=True)
        for name, fd in fds.items():
            _pin(fd, directory / name)
        self._own = directory

    def stale(self, own_id: str) -> list[StaleCapture]:
        """The captures in our scope whose agents are gone, oldest first, each locked and opened."""
        if not self.enabled or self._scope_fd is None or not self.scope_dir.is_dir():
            return []
        found: list[tuple[float, StaleCapture]] = []
        for directory in self.scope_dir.iterdir():
            if directory.name == own_id or not directory.is_dir():
                continue
            lock = self._lock(directory.name)
            if lock is None:
                continue  # a live agent with our state directory owns it
            try:
                stale = self._open(directory, lock, self._scope_fd)
            except (CaptureError, OSError, KeyError, ValueError) as exc:
                # unusable (a half-written directory, a map gone): it can never be drained; remove it
                log.warning("removing an unusable stale capture %s: %s", directory.name, exc)
                shutil.rmtree(directory, ignore_errors=True)
                lock.close()
                continue
            found.append((directory.stat().st_mtime, stale))
        return [s for _, s in sorted(found, key=lambda x: x[0])]

    @staticmethod
    def _open(directory: Path, lock: IO[str], scope_fd: int) -> StaleCapture:
        """Open one stale capture's pins; on any failure nothing opened is left open."""
        fds: list[int] = []
        try:
            fds.append(_get(directory / "events"))
            fds.append(_get(directory / "counters"))
            ids = set()
            for name in ("ingress", "egress", "xdp"):
                if (directory / name).exists():
                    fd = _get(directory / name)
                    try:
                        ids.add(prog_id(fd))
                    finally:
                        os.close(fd)
            size = int(_fdinfo(fds[0])["max_entries"])
            fds.append(os.dup(scope_fd))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return StaleCapture(directory.name, directory, fds[2], fds[0], size, fds[1], ids, lock)

    def unpin_own(self) -> None:
        """A clean exit: our capture has been drained; nothing to take over."""
        if self._own is not None and self._scope_fd is not None:
            _remove_capture(self._scope_fd, self._own.name)
            self._own = None
            with contextlib.suppress(OSError):  # the scope too, when no other capture of it is left (and we may)
                self.scope_dir.rmdir()
        if self._scope_fd is not None:
            os.close(self._scope_fd)
            self._scope_fd = None
        if self._own_lock is not None:
            self._own_lock.close()
            self._own_lock = None
