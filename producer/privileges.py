"""What the agent gives up: no_new_privs from the start, and its user and capabilities once attached.

Loading and attaching need CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN.  What comes
after does not: the ring buffers are mapped, and maps are read and updated
through descriptors the agent already holds, which needs no capability (the
kernel checks when a map or program is made, not when its descriptor is used).
Only CAP_NET_ADMIN is still needed, on the main thread, to attach links that
appear later (the watcher's thread is started from it after the drop) and to
detach at exit.

Capabilities and no_new_privs belong to each thread, and the agent has threads
(its stages, the HTTP server, librdkafka's) before it attaches.  So:

- ``no_new_privs`` is set at start, before any thread: every thread inherits
  it, and nothing the agent runs can gain a privilege by exec (an inheritable
  capability a thread keeps grants nothing: with no_new_privs, exec gives no
  more than the thread's permitted set, which is empty).
- ``drop_after_attach`` (with ``user``, started as root) becomes that user with
  glibc's setresuid, which changes every thread: a thread that leaves uid 0
  loses all its capabilities, except the main thread, which keeps them across
  the change (PR_SET_KEEPCAPS) and then narrows them to CAP_NET_ADMIN.  It
  checks every thread in /proc afterwards and refuses to go on if any holds more.

The user is ``user`` if set; by default (started as root) the dedicated system
user ``hdrlog`` (``scripts/setup.sh``, the unit and the image create it), or
65534 where it does not exist.  ``user = "root"`` keeps the user and the
capabilities it was started with: an explicit choice, warned about at start (a
process cannot take capabilities from its other threads without changing its
user).

The directories the agent writes later (state, pins) are handed to the user
first; the directories above them must let it through (checked at start).  Its
code need not be readable by the user: ``CodeDirs`` opens, before the drop,
every directory the agent imports from that the user could not reach, and
afterwards imports (and starts a parse worker again) through those descriptors
(``/proc/self/fd/N``: a descriptor's directory is reached without searching the
directories above it).  So a checkout in root's home (mode 0700) works.
"""

from __future__ import annotations

import ctypes
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from producer.errors import PrivilegeError

CAP_CHOWN, CAP_SETGID, CAP_SETUID, CAP_NET_ADMIN = 0, 6, 7, 12
#: the user the agent becomes by default, once attached; ``NOBODY`` where it does not exist
AGENT_USER, NOBODY = "hdrlog", 65534
#: ``user`` for staying as started (root, with what capabilities it was given)
ROOT = "root"
#: what the agent keeps after the drop, on its main thread only
KEPT = 1 << CAP_NET_ADMIN
#: what becoming the user takes (handing it the directories, then the ids)
_NEEDED = {CAP_CHOWN: "CAP_CHOWN", CAP_SETGID: "CAP_SETGID", CAP_SETUID: "CAP_SETUID"}
_PR_SET_KEEPCAPS, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 8, 38, 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        raise PrivilegeError(f"{what} failed: {os.strerror(ctypes.get_errno())}")


def capset(*, effective: int, permitted: int, inheritable: int = 0) -> None:
    """The calling thread's three capability sets (64-bit masks)."""
    data = (_Data * 2)()
    for i, shift in enumerate((0, 32)):
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc().capset(ctypes.byref(_Header(_LINUX_CAPABILITY_VERSION_3, 0)), data), "capset")


def no_new_privs() -> None:
    """This thread and every thread and process it starts from now on can gain no privilege by exec."""
    _check(_libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


@dataclass(frozen=True, slots=True)
class ThreadCreds:
    """One thread's ids and capability sets, from /proc."""

    tid: int
    uids: tuple[int, ...]
    gids: tuple[int, ...]
    groups: tuple[int, ...]
    effective: int
    permitted: int
    inheritable: int
    ambient: int
    no_new_privs: bool

    @classmethod
    def read(cls, status: Path) -> ThreadCreds:
        status = status.resolve()  # (/proc/thread-self: its task directory, named by the thread id)
        f = {k: v.strip() for k, _, v in (line.partition(":") for line in status.read_text().splitlines())}
        return cls(int(status.parent.name), tuple(int(x) for x in f["Uid"].split()),
                   tuple(int(x) for x in f["Gid"].split()), tuple(int(x) for x in f["Groups"].split()),
                   int(f["CapEff"], 16), int(f["CapPrm"], 16),
                   int(f["CapInh"], 16), int(f["CapAmb"], 16), f.get("NoNewPrivs") == "1")


def threads(pid: int | str = "self") -> list[ThreadCreds]:
    """Every thread of ``pid`` (one that exits meanwhile is skipped)."""
    found = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        try:
            found.append(ThreadCreds.read(task / "status"))
        except (OSError, KeyError, ValueError):
            continue
    return found


def resolve_user(user: str) -> tuple[int, int]:
    """(uid, gid) of a user name, a uid (its group: the user's, else the same number) or ``uid:gid``."""
    name, _, group = user.partition(":")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not name.isdigit():
            raise PrivilegeError(f"no such user: {name!r} (user)") from None
        uid = gid = int(name)
    if group:
        if not group.isdigit():
            raise PrivilegeError(f"user {user!r}: the group after ':' must be a number")
        gid = int(group)
    if uid == 0:
        raise PrivilegeError(f"user {user!r} is root: nothing would be given up")
    return uid, gid


def target_user(user: str) -> str | None:
    """The user to become once attached, or None to stay as started: ``user`` as configured; by default
    (empty) ``AGENT_USER``, or ``NOBODY`` where that user does not exist, when started as root (not root,
    there is nothing to give up); ``ROOT``: stay root."""
    if user == ROOT:
        return None
    if user:
        return user
    if os.getuid() != 0:
        return None
    try:
        pwd.getpwnam(AGENT_USER)
        return AGENT_USER
    except KeyError:
        return str(NOBODY)


class CodeDirs:
    """The directories the agent imports from that ``uid``/``gid`` could not reach, held open (O_PATH)
    from before the drop: afterwards ``reroute`` points the import system at ``/proc/self/fd/N`` (the
    module docstring) and ``command`` starts a new interpreter with the same path."""

    def __init__(self, uid: int, gid: int) -> None:
        import sys

        roots = [Path(p) for p in sys.path if p and Path(p).is_absolute() and Path(p).is_dir()]
        # a package found by a finder of its own (an editable install) lives outside sys.path
        roots += [Path(f).parent.parent for m in list(sys.modules.values())
                  if (f := getattr(m, "__file__", None)) and "." not in m.__name__ and f.endswith("__init__.py")]
        self.held: dict[str, int] = {}
        self.rerouted = False
        for root in dict.fromkeys(r.resolve() for r in roots):
            if str(root) not in self.held and _unreadable(root, uid, gid) is not None:
                self.held[str(root)] = os.open(root, os.O_PATH | os.O_DIRECTORY)

    def _mapped(self, path: str) -> str:
        """``path`` through the held descriptor of the directory it is in, if any."""
        for root, fd in self.held.items():
            if path == root or path.startswith(root + "/"):
                return f"/proc/self/fd/{fd}{path[len(root):]}"
        return path

    def reroute(self) -> None:
        """After the drop: the import path and every loaded package's ``__path__`` through the descriptors."""
        import importlib
        import sys

        if not self.held:
            return
        sys.path[:] = [self._mapped(str(Path(p).resolve())) if p and Path(p).is_absolute() else p
                       for p in sys.path]
        for m in list(sys.modules.values()):
            search = getattr(m, "__path__", None)
            if isinstance(search, list):
                search[:] = [self._mapped(str(Path(p).resolve())) for p in search]
        sys.path_importer_cache.clear()
        importlib.invalidate_caches()
        self.rerouted = True

    def command(self, module: str) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
        """How to start ``python -m module`` now: (argv, environment to add, descriptors to pass). After
        ``reroute``, when the agent's interpreter or code cannot be reached, the base interpreter with the
        import path through the descriptors (passed to it)."""
        import sys

        if not self.rerouted or not self.held:
            return [sys.executable, "-P", "-m", module], {}, ()
        entries = [self._mapped(str(Path(p).resolve())) for p in sys.path if p and Path(p).is_absolute()]
        entries += [f"/proc/self/fd/{fd}" for fd in self.held.values()]  # (a package outside sys.path)
        base = getattr(sys, "_base_executable", sys.executable)
        return [base, "-P", "-m", module], {"PYTHONPATH": ":".join(dict.fromkeys(entries))}, \
            tuple(self.held.values())

    def close(self) -> None:
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()


def reclaim(owned: Iterable[Path]) -> None:
    """At start, as root: take back what an earlier run handed to its user (root without its powers, as
    systemd's unit runs it, could not write there otherwise); ``drop_after_attach`` hands it over again."""
    if os.getuid() != 0:
        return
    try:
        for path in owned:
            _chown_tree(path, 0, 0)
    except OSError as exc:
        raise PrivilegeError(f"taking back {exc.filename} from the agent's user: {exc.strerror}") from exc


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    """``path`` and what is under it, through directory descriptors and never following a link (the user
    it was handed to may swap a directory for one meanwhile); a missing path is fine."""
    if not path.exists():
        return
    os.chown(path, uid, gid, follow_symlinks=False)
    for _root, dirs, files, root_fd in os.fwalk(path, follow_symlinks=False):
        for name in (*dirs, *files):
            os.chown(name, uid, gid, dir_fd=root_fd, follow_symlinks=False)


def _unreadable(path: Path, uid: int, gid: int, last: int = 0o5) -> str | None:
    """Why ``uid``/``gid`` cannot search every directory above ``path`` and have ``last`` (read and search)
    on ``path`` itself, or None."""
    here = Path("/")
    for part in (*path.resolve().parts[1:], None):
        st = here.stat()
        shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
        need = last if part is None else 0o1
        if (st.st_mode >> shift) & need != need:
            return f"{here} is mode {st.st_mode & 0o7777:04o}, owner {st.st_uid}:{st.st_gid}"
        if part is None:
            return None
        here = here / part
    return None  # pragma: no cover


def check_user(user: str, reachable: Iterable[Path] = (), fix: str = "set user") -> tuple[int, int]:
    """(uid, gid) the agent can become once attached, or a PrivilegeError saying why not: it must run as
    root holding CAP_CHOWN, CAP_SETGID and CAP_SETUID; ``user`` must reach the directories of
    ``reachable`` (its state; its code need not be reachable: ``CodeDirs``).  At start, before anything
    is loaded, and again at the drop; ``fix``: the other way out the errors name."""
    if os.getuid() != 0:
        raise PrivilegeError(f"user is {user!r}, but the agent does not run as root (uid {os.getuid()}): "
                             "start it as root with the capabilities it needs, or leave user empty")
    uid, gid = resolve_user(user)
    effective = ThreadCreds.read(Path("/proc/thread-self/status")).effective
    missing = [name for cap, name in _NEEDED.items() if not effective >> cap & 1]
    if missing:
        raise PrivilegeError(f"becoming user {user} once attached needs {', '.join(missing)} as well ({fix})")
    for path in reachable:  # (handed over at the drop, but the directories above stay as they are)
        why = _unreadable(path.parent, uid, gid, last=0o1)
        if why is not None:
            raise PrivilegeError(f"user {user} could not reach {path} ({why}): choose a directory that user "
                                 f"can reach ({fix})")
    return uid, gid


def drop_after_attach(user: str, owned: Iterable[Path], reachable: Iterable[Path] = (),
                      code: CodeDirs | None = None, fix: str = "set user") -> str:
    """On the main thread, once attached: become ``user`` keeping only CAP_NET_ADMIN there and nothing on
    the other threads (the module docstring); ``owned``: the directories the agent writes later, handed to
    the user (``reachable``, ``fix``: ``check_user``); ``code``: imports through its descriptors from then
    on.  Returns what the agent holds now, for the log; a PrivilegeError if any step or the check of
    every thread fails."""
    uid, gid = check_user(user, reachable, fix)
    try:
        for path in owned:
            _chown_tree(path, uid, gid)
    except OSError as exc:
        raise PrivilegeError(f"handing {exc.filename} to user {user}: {exc.strerror}") from exc
    libc = _libc()
    _check(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # every thread (glibc); the others, without KEEPCAPS, lose every capability
    except OSError as exc:
        raise PrivilegeError(f"becoming user {user}: {exc.strerror}") from exc
    _check(libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS, 0)")
    _check(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    main = ThreadCreds.read(Path("/proc/thread-self/status"))
    kept = KEPT & main.permitted
    capset(effective=kept, permitted=kept)
    me = ThreadCreds.read(Path("/proc/thread-self/status"))
    wrong = [t for t in threads() if set(t.uids) != {uid} or set(t.gids) != {gid} or t.groups or not t.no_new_privs
             or ((t.effective | t.permitted | t.inheritable | t.ambient) & ~KEPT if t.tid == me.tid
                 else t.effective | t.permitted | t.ambient)]
    if wrong:
        raise PrivilegeError(f"after becoming user {user}, thread {wrong[0].tid} still holds more: {wrong[0]}")
    if code is not None:
        code.reroute()
    through = f"; code through descriptors from {', '.join(code.held)}" if code is not None and code.held else ""
    return (f"user {user}: uid {uid}, gid {gid}; capabilities: CAP_NET_ADMIN on the main thread, none on the "
            f"other threads{through}")
