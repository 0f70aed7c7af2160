"""Attach and detach the XDP program (ingress only, the high-rate option).

Native (driver) mode is tried first and generic (skb) mode is the fallback,
unless the config names one.  An XDP program that is not ours is never
replaced: the attach fails with a one-line error naming it.  Ours (named
``hdrlog_xdp``) left by a killed agent is replaced in one netlink request
(``XDP_FLAGS_REPLACE`` with the old program as the expected one, in the mode it
runs in), so every packet meets the old program or the new one, never none; if
someone else swapped the program meanwhile the request fails instead.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

from producer.errors import CaptureError, PrivilegeError

PROGRAM_NAME = "hdrlog_xdp"
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# iproute2's "mode" numbers (XDP_ATTACHED_*)
_ATTACHED = {1: "native", 2: "generic", 3: "offload"}

log = logging.getLogger(__name__)


class _AttachOpts(ctypes.Structure):
    """libbpf's ``struct bpf_xdp_attach_opts`` (its size first, for libbpf's compatibility check)."""

    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int)]


@dataclass(frozen=True, slots=True)
class XdpAttached:
    name: str | None
    mode: str
    prog_id: int | None = None


def attached(ifname: str) -> XdpAttached | None:
    """The XDP program on ``ifname``, if any (from iproute2's JSON)."""
    res = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", ifname], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        raise CaptureError(f"cannot inspect {ifname}: {res.stderr.strip()}")
    return _from_link(json.loads(res.stdout)[0])


def _from_link(info: dict[str, Any]) -> XdpAttached | None:
    xdp = info.get("xdp")
    if not xdp:
        return None
    prog = xdp.get("prog") or {}
    return XdpAttached(prog.get("name"), _ATTACHED.get(int(xdp.get("mode", 0)), "unknown"), prog.get("id"))


def links_running(prog_ids: set[int]) -> list[str]:
    """The links whose XDP program is one of ``prog_ids``."""
    res = subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise CaptureError(f"cannot list links: {res.stderr.strip()}")
    found = []
    for info in json.loads(res.stdout):
        x = _from_link(info)
        if x is not None and x.prog_id in prog_ids:
            found.append(str(info["ifname"]))
    return found


def _bcc() -> Any:
    from bcc import BPF

    return BPF


def detach_ours(ifname: str, prog_ids: set[int] | None = None) -> bool:
    """Remove our program from ``ifname``; True when one was there.  Ours: one of ``prog_ids`` when given
    (iproute2 shows a program's name only to a process with CAP_SYS_ADMIN, which an agent that became its
    user has not; the id it always shows), else any named ``hdrlog_xdp`` (a killed agent's)."""
    found = attached(ifname)
    if found is None or not (found.prog_id in prog_ids if prog_ids else found.name == PROGRAM_NAME):
        return False
    try:
        _bcc().remove_xdp(ifname, _MODE_FLAGS.get(found.mode, 0))
    except Exception as exc:  # bcc raises bare Exception
        raise CaptureError(f"removing XDP from {ifname}: {exc}") from exc
    return True


def _libbpf() -> ctypes.CDLL:
    return ctypes.CDLL("libbpf.so.1", use_errno=True)  # bcc's own dependency (python3-bpfcc)


def _replace(ifname: str, prog_fd: int, old: XdpAttached) -> None:
    """Swap ``old`` (ours, by id) for ``prog_fd`` on ``ifname`` atomically, in ``old``'s mode."""
    lib = _libbpf()
    old_fd = int(lib.bpf_prog_get_fd_by_id(ctypes.c_uint32(old.prog_id or 0)))
    if old_fd < 0:
        raise CaptureError(f"opening the XDP program on {ifname} (id {old.prog_id}): {os.strerror(-old_fd)}")
    try:
        opts = _AttachOpts(ctypes.sizeof(_AttachOpts), old_fd)
        rc = int(lib.bpf_xdp_attach(socket.if_nametoindex(ifname), prog_fd,
                                    XDP_FLAGS_REPLACE | _MODE_FLAGS[old.mode], ctypes.byref(opts)))
    finally:
        os.close(old_fd)
    if rc < 0:
        raise CaptureError(f"replacing the XDP program on {ifname}: {os.strerror(-rc)}")


def attach(ifname: str, fn: Any, mode: str) -> tuple[str, bool]:
    """Attach ``fn`` on ``ifname`` in ``mode`` (auto, native or generic); returns the mode used, and
    whether it replaced a killed agent's program (atomically, in the mode that one ran in)."""
    found = attached(ifname)
    if found is not None and found.name != PROGRAM_NAME:
        raise CaptureError(f"{ifname} already has an XDP program ({found.name or 'unnamed'}); "
                           "hdrlog does not replace it (use the tc hook)")
    if found is not None and found.mode in _MODE_FLAGS and mode in ("auto", found.mode):
        _replace(ifname, fn.fd, found)
        return found.mode, True
    if found is not None:
        log.warning("the stale hdrlog XDP program on %s runs in %s mode, the config asks %s: it is removed "
                    "before ours is attached, and packets in between are seen by neither", ifname,
                    found.mode, mode)
        detach_ours(ifname)
    tries = ["native", "generic"] if mode == "auto" else [mode]
    last: Exception | None = None
    for m in tries:
        try:
            _bcc().attach_xdp(ifname, fn, XDP_FLAGS_UPDATE_IF_NOEXIST | _MODE_FLAGS[m])
            return m, False
        except Exception as exc:  # bcc raises bare Exception
            last = exc
    text = str(last)
    if "Operation not permitted" in text:
        raise PrivilegeError(f"attaching XDP on {ifname}: needs CAP_NET_ADMIN")
    raise CaptureError(f"attaching XDP ({'/'.join(tries)}) on {ifname} failed: {text}")
