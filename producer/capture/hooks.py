"""Hook lifecycle: attach the capture program on the configured links, and on links that appear later.

``attach_all`` resolves names and patterns, replaces hooks of ours that a
killed agent left (ours only: other tools' tc filters and XDP programs are
never touched), attaches, and starts the netlink watcher for patterns.
``detach_all`` removes every hook it attached (and the clsact qdisc when
nothing else uses it); it never raises, it logs.

With captures taken over from a killed agent (capture/pins.py), ``attach_all``
then removes their hooks wherever else they still run (found by program id),
waits until no run of their programs that began before can still be writing,
and sets each one's ``closed``: from then on their ring buffers only empty.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
from collections.abc import Sequence

from producer.capture import links, xdp
from producer.capture.pins import StaleCapture, prog_id
from producer.capture.program import CaptureProgram
from producer.capture.tc import TcHooks
from producer.config import CaptureConfig
from producer.decode.convert import InterfaceNames
from producer.errors import HdrlogError

log = logging.getLogger(__name__)

#: membarrier(2)'s number, by machine; MEMBARRIER_CMD_GLOBAL
_SYS_MEMBARRIER = {"x86_64": 324, "aarch64": 283}
_MEMBARRIER_CMD_GLOBAL = 1


def wait_for_running_programs() -> bool:
    """Return once every BPF program run that began before now has ended; False if the kernel could not
    say (then the final drain's bounded wait is all there is).  tc and XDP programs run inside RCU
    read-side sections, and membarrier(MEMBARRIER_CMD_GLOBAL) returns after an RCU grace period."""
    nr = _SYS_MEMBARRIER.get(platform.machine())
    if nr is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(nr, _MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        log.debug("membarrier: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


class Hooks:
    def __init__(self, cfg: CaptureConfig, program: CaptureProgram, names: InterfaceNames,
                 ifindexes: dict[str, int], stale: Sequence[StaleCapture] = ()) -> None:
        self._cfg = cfg
        self._program = program
        self._names = names
        self._initial = dict(ifindexes)
        self._attached: dict[str, int] = {}
        self._lock = threading.Lock()
        self._patterns = [s for s in cfg.interfaces if links.is_pattern(s)]
        self._watcher: links.LinkWatcher | None = None
        self._stale = list(stale)

    @property
    def attached(self) -> list[str]:
        with self._lock:
            return list(self._attached)

    @property
    def hook(self) -> str:
        return self._cfg.hook

    def attach_all(self) -> list[str]:
        """Hook every named and matching link; from now on, links that appear and match are hooked too."""
        if self._patterns:
            # subscribe first, then list: a link that appears meanwhile is seen twice, not never
            self._watcher = links.LinkWatcher(self._patterns, self._attach_new)
            self._initial.update(links.resolve(self._patterns))
        with TcHooks() as tc:
            for name, idx in self._initial.items():
                with self._lock:
                    self._attach(tc, name, idx)
                    self._attached[name] = idx
        self._retire_stale()
        names = self.attached
        log.info("capturing on %s", ", ".join(names) or f"(none yet: waiting for {', '.join(self._patterns)})")
        return names

    def watch(self) -> None:
        """Attach the links that appeared since the last call (subscribed since ``attach_all``: none is
        missed); the agent calls it on its main thread every tick."""
        if self._watcher is not None:
            self._watcher.poll()

    def _retire_stale(self) -> None:
        """Remove the hooks of taken-over captures that are still attached anywhere in this namespace."""
        ids = {i for s in self._stale for i in s.prog_ids}
        if ids:
            removed = 0
            with TcHooks() as tc:
                for idx in tc.links():
                    gone = tc.remove_ours(idx, ids)
                    if gone:
                        removed += gone
                        tc.drop_empty_clsact(idx)
            for name in xdp.links_running(ids):
                removed += xdp.detach_ours(name, ids)
            if removed:
                log.info("removed %d hook(s) of a killed agent's capture elsewhere", removed)
        if self._stale:
            wait_for_running_programs()  # a run of an old program that began before the swap has written
        for s in self._stale:
            s.closed.set()

    def _attach_new(self, name: str, idx: int) -> None:
        """On the watcher's thread, with its own netlink socket."""
        with self._lock:
            if self._attached.get(name) == idx:
                return
            with TcHooks() as tc:
                self._attach(tc, name, idx)
            self._attached[name] = idx
            self._names.forget(idx)
        log.info("capturing on %s (appeared later)", name)

    def _attach(self, tc: TcHooks, name: str, idx: int) -> None:
        """Hook one link, taking the place of what a killed agent of ours left there without a gap: its
        filter or XDP program is swapped for ours in one request; what cannot be swapped in place (a
        hook of the other kind) is removed only once ours runs (make before break)."""
        cfg = self._cfg
        stale = tc.ours(idx)
        replaced = 0
        if cfg.hook == "xdp":
            mode, swapped = xdp.attach(name, self._program.xdp(), cfg.xdp_mode)
            replaced += swapped + sum(tc.remove(f) for f in stale)
            log.info("XDP (%s mode) on %s", mode, name)
        else:
            for hook, prog in (("ingress", self._program.ingress), ("egress", self._program.egress)):
                old = [f for f in stale if f.hook == hook]
                tc.attach(idx, hook, prog.fd, f"hdrlog_{hook}", cfg.tc_priority, replace=old[0] if old else None)
                replaced += len(old[:1]) + sum(tc.remove(f) for f in old[1:])
        if replaced:
            log.warning("replaced %d stale hdrlog hook(s) on %s", replaced, name)

    def detach_all(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        with self._lock, TcHooks() as tc:
            for name, idx in self._attached.items():
                try:
                    if self._cfg.hook == "xdp":
                        xdp.detach_ours(name, {prog_id(self._program.xdp().fd)})
                    else:
                        tc.remove_ours(idx)
                        tc.drop_empty_clsact(idx)
                except HdrlogError as exc:
                    log.error("detaching from %s: %s", name, exc)
