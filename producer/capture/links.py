"""Interfaces by name or pattern, including the ones that appear later.

An interface argument with a glob character (``*?[``) is a pattern: every
matching link is captured at start, and a netlink watcher attaches to links
that appear while the agent runs (containers' veths, hot-plugged NICs).  A
plain name must exist at start.
"""

from __future__ import annotations

import fnmatch
import logging
import select
from collections.abc import Callable, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

from producer.errors import InterfaceError

log = logging.getLogger(__name__)


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def resolve(specs: Iterable[str]) -> dict[str, int]:
    """name -> ifindex of every link named or matched now; a missing plain name is an error."""
    with IPRoute() as ipr:
        links = {str(link.get_attr("IFLA_IFNAME")): int(link["index"]) for link in ipr.get_links()}
    found: dict[str, int] = {}
    for spec in specs:
        if is_pattern(spec):
            found.update({n: i for n, i in links.items() if fnmatch.fnmatchcase(n, spec)})
        elif spec in links:
            found[spec] = links[spec]
        else:
            raise InterfaceError(f"no such network interface: {spec!r}")
    return found


class LinkWatcher:
    """Calls ``on_new(name, ifindex)`` for each link that appears and matches a pattern, from ``poll``:
    on the agent's main thread, the only one that keeps CAP_NET_ADMIN once the agent gave up root
    (``privileges``), so no other thread needs it."""

    def __init__(self, patterns: list[str], on_new: Callable[[str, int], None]) -> None:
        self._patterns = patterns
        self._on_new = on_new
        self._ipr = IPRoute()
        self._ipr.bind(groups=RTMGRP_LINK)  # subscribe before the caller lists links: no gap

    def stop(self) -> None:
        self._ipr.close()

    def poll(self) -> None:
        """Attach the links whose events arrived since the last call (never blocks)."""
        fd = self._ipr.fileno()
        while select.select([fd], [], [], 0)[0]:
            try:
                msgs = self._ipr.get()
            except Exception:  # noqa: BLE001 - keep watching; a bad message must not stop capture
                log.exception("reading link events")
                return
            for msg in msgs:
                if msg.get("event") != "RTM_NEWLINK":
                    continue
                name = msg.get_attr("IFLA_IFNAME")
                if name and any(fnmatch.fnmatchcase(name, p) for p in self._patterns):
                    try:
                        self._on_new(str(name), int(msg["index"]))
                    except Exception:  # noqa: BLE001 - one link failing must not stop the others
                        log.exception("attaching to new link %s", name)
