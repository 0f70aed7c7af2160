"""Hook lifecycle: attach the capture program on the configured links, and on links that appear later.

``attach_all`` resolves names and patterns, replaces hooks of ours that a
killed agent left (ours only: other tools' tc filters and XDP programs are
never touched), attaches, and starts the netlink watcher for patterns.
``detach_all`` removes every hook it attached (and the clsact qdisc when
nothing else uses it); it never raises, it logs.

With captures taken over from a killed agent (capture/pins.py), ``attach_all``
then removes their hooks wherever else they still run (found by program id)
and sets each one's ``closed``: from then on their ring buffers only empty.
"""

from __future__ import annotations

import logging
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
        """Start attaching the links that appear (subscribed since ``attach_all``: none is missed)."""
        if self._watcher is not None:
            self._watcher.start()

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
        """Hook one link, replacing what a killed agent of ours left there."""
        cfg = self._cfg
        stale = tc.remove_ours(idx)
        if cfg.hook == "xdp":
            stale += xdp.detach_ours(name)
        if stale:
            log.warning("replaced %d stale hdrlog hook(s) on %s", stale, name)
        if cfg.hook == "xdp":
            mode = xdp.attach(name, self._program.xdp(), cfg.xdp_mode)
            log.info("XDP (%s mode) on %s", mode, name)
        else:
            tc.attach(idx, "ingress", self._program.ingress.fd, "hdrlog_ingress", cfg.tc_priority)
            tc.attach(idx, "egress", self._program.egress.fd, "hdrlog_egress", cfg.tc_priority)

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
