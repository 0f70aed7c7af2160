"""Attach and detach the capture programs on tc clsact hooks (netlink).

Our filters are recognised by their BPF program name (``hdrlog_*``), so a
filter left behind by a killed agent is found and replaced at the next start,
and a detach removes exactly ours and nothing else.  A replacement keeps the
old filter's priority and handle and swaps its program in one netlink request
(``RTM_NEWTFILTER`` with ``NLM_F_REPLACE``: cls_bpf exchanges the program under
RCU), so every packet meets one program, the old or the new, never none.  The clsact qdisc is
created when missing and removed on detach only when no filter at all is left
on it (another tool's filters keep it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from producer.errors import CaptureError, InterfaceError, PrivilegeError

PROGRAM_PREFIX = "hdrlog_"
PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
_PARENT_TEXT = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
_EEXIST = 17
_ENOENT = 2
_EPERM = 1
_EINVAL = 22
_ENODEV = 19


@dataclass(frozen=True, slots=True)
class TcFilter:
    """One tc filter found on a hook."""

    ifindex: int
    hook: str
    prio: int
    handle: int
    kind: str | None
    name: str | None
    prog_id: int | None = None


def _netlink_error(exc: NetlinkError, what: str) -> Exception:
    if exc.code == _EPERM:
        return PrivilegeError(f"{what}: operation not permitted (needs CAP_NET_ADMIN)")
    return CaptureError(f"{what}: {exc.args[-1] if exc.args else exc}")


class TcHooks:
    """tc clsact attachment of the ingress/egress programs on one namespace's links."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> TcHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ifindex(self, name: str) -> int:
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            raise InterfaceError(f"no such network interface: {name!r}")
        return int(found[0])

    def filters(self, ifindex: int) -> Iterator[TcFilter]:
        """Every filter with a handle on both clsact hooks of ``ifindex``."""
        for hook, parent in PARENTS.items():
            try:
                msgs: list[Any] = list(self._ipr.get_filters(index=ifindex, parent=parent))
            except NetlinkError as exc:
                if exc.code in (_EINVAL, _ENOENT, _ENODEV):
                    continue  # no clsact qdisc here, or the link is gone
                raise _netlink_error(exc, f"listing tc filters on ifindex {ifindex}") from exc
            for msg in msgs:
                if not msg["handle"]:
                    continue  # the per-priority chain header, not a filter
                kind = msg.get_attr("TCA_KIND")
                opts = msg.get_attr("TCA_OPTIONS") if kind == "bpf" else None
                name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
                prog_id = opts.get_attr("TCA_BPF_ID") if opts is not None else None
                yield TcFilter(ifindex, hook, msg["info"] >> 16, msg["handle"], kind, name, prog_id)

    def ours(self, ifindex: int) -> list[TcFilter]:
        return [f for f in self.filters(ifindex)
                if f.kind == "bpf" and (f.name or "").startswith(PROGRAM_PREFIX)]

    def links(self) -> list[int]:
        return [int(link["index"]) for link in self._ipr.get_links()]

    def remove_ours(self, ifindex: int, prog_ids: set[int] | None = None) -> int:
        """Delete every hdrlog filter on the link (only those running ``prog_ids``, if given);
        returns how many were removed."""
        return sum(self.remove(f) for f in self.ours(ifindex) if prog_ids is None or f.prog_id in prog_ids)

    def remove(self, f: TcFilter) -> bool:
        """Delete one filter; False if it was gone already."""
        try:
            self._ipr.tc("del-filter", "bpf", f.ifindex, f.handle, parent=_PARENT_TEXT[f.hook], prio=f.prio)
        except NetlinkError as exc:
            if exc.code != _ENOENT:
                raise _netlink_error(exc, f"removing tc filter on ifindex {f.ifindex}") from exc
            return False
        return True

    def attach(self, ifindex: int, hook: str, prog_fd: int, prog_name: str, prio: int,
               replace: TcFilter | None = None) -> None:
        """Our program on ``hook``: a new filter at ``prio``, or in place of ``replace`` (same priority
        and handle, one atomic swap)."""
        if replace is not None:
            try:
                self._ipr.tc("replace-filter", "bpf", ifindex, replace.handle, fd=prog_fd, name=prog_name,
                             parent=_PARENT_TEXT[hook], classid=1, direct_action=True, prio=replace.prio)
                return
            except NetlinkError as exc:
                if exc.code != _ENOENT:  # (gone meanwhile: added below)
                    raise _netlink_error(exc, f"replacing {replace.name} on ifindex {ifindex}") from exc
        try:
            self._ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code != _EEXIST:
                raise _netlink_error(exc, f"adding clsact qdisc on ifindex {ifindex}") from exc
        try:
            self._ipr.tc(
                "add-filter", "bpf", ifindex, ":1",
                fd=prog_fd, name=prog_name, parent=_PARENT_TEXT[hook],
                classid=1, direct_action=True, prio=prio,
            )
        except NetlinkError as exc:
            raise _netlink_error(exc, f"attaching {prog_name} on ifindex {ifindex}") from exc

    def drop_empty_clsact(self, ifindex: int) -> None:
        """Remove the clsact qdisc when no filter of anyone is left on it."""
        if any(True for _ in self.filters(ifindex)):
            return
        try:
            self._ipr.tc("del", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code not in (_EINVAL, _ENOENT, _ENODEV):
                raise _netlink_error(exc, f"removing clsact qdisc on ifindex {ifindex}") from exc
