"""Attach and detach the XDP program (ingress only, the high-rate option).

Native (driver) mode is tried first and generic (skb) mode is the fallback,
unless the config names one.  An XDP program that is not ours is never
replaced: the attach fails with a one-line error naming it.  Ours (named
``hdrlog_xdp``) left by a killed agent is replaced.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from producer.errors import CaptureError, PrivilegeError

PROGRAM_NAME = "hdrlog_xdp"
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# iproute2's "mode" numbers (XDP_ATTACHED_*)
_ATTACHED = {1: "native", 2: "generic", 3: "offload"}


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


def attach(ifname: str, fn: Any, mode: str) -> str:
    """Attach ``fn`` on ``ifname`` in ``mode`` (auto, native or generic); returns the mode used."""
    found = attached(ifname)
    if found is not None and found.name != PROGRAM_NAME:
        raise CaptureError(f"{ifname} already has an XDP program ({found.name or 'unnamed'}); "
                           "hdrlog does not replace it (use the tc hook)")
    detach_ours(ifname)
    tries = ["native", "generic"] if mode == "auto" else [mode]
    last: Exception | None = None
    for m in tries:
        try:
            _bcc().attach_xdp(ifname, fn, XDP_FLAGS_UPDATE_IF_NOEXIST | _MODE_FLAGS[m])
            return m
        except Exception as exc:  # bcc raises bare Exception
            last = exc
    text = str(last)
    if "Operation not permitted" in text:
        raise PrivilegeError(f"attaching XDP on {ifname}: needs CAP_NET_ADMIN")
    raise CaptureError(f"attaching XDP ({'/'.join(tries)}) on {ifname} failed: {text}")
