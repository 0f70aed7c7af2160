"""A single OpenSearch node for the consumer's ``_bulk`` sink: ``hdrlog stack up --opensearch``.

The distribution is OpenSearch's integ-test zip from Maven Central (plain
HTTP, no security plugin), bound to 127.0.0.1, ``discovery.type=single-node``
(so the production bootstrap checks do not apply) and a 512 MiB heap.
OpenSearch refuses to run as root: when the stack runs as root, the node runs
as ``nobody`` (uid 65534) through ``setpriv``, and since root's home is not
traversable by other users, its files (distribution, data, logs) live in
``/var/tmp/hdrlog-opensearch-<version>`` owned by that uid; otherwise they
live in the stack directory and the node runs as the caller.  It needs Java
21+ (``OPENSEARCH_JAVA_HOME``).
"""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

from producer.errors import StackError

MAIN_CLASS = "org.opensearch.bootstrap.OpenSearch"
SERVICE_UID = 65534


def home_root(stack_root: Path, version: str) -> Path:
    """Where the node's files live (see the module docstring)."""
    if os.geteuid() == 0:
        return Path(f"/var/tmp/hdrlog-opensearch-{version}")
    return stack_root / f"opensearch-{version}"


def check_home(path: Path) -> None:
    """Refuse a home another user could have prepared: under root it sits in world-writable
    /var/tmp, so it must be a real directory (no symlink) owned by root or the service uid and
    writable by no one else, and so must its data and logs directories."""
    for p in (path, path / "data", path / "logs"):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise StackError(f"{p} is not a plain directory; remove it and run `hdrlog stack up --opensearch` again")
        if st.st_uid not in (0, SERVICE_UID, os.geteuid()) or st.st_mode & 0o022:
            raise StackError(f"{p} is owned by uid {st.st_uid} or writable by others; remove it and run "
                             "`hdrlog stack up --opensearch` again")


def chown_tree(root: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):  # (os.walk does not follow symlinks)
        os.lchown(dirpath, uid, uid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


def argv(home: Path, data: Path, logs: Path, port: int, tag: str) -> list[str]:
    """The node's command line; ``tag`` (a -E setting naming our stack) is how ``status`` recognises it."""
    run = [str(home / "bin" / "opensearch"), "-Ediscovery.type=single-node", "-Enetwork.host=127.0.0.1",
           f"-Ehttp.port={port}", "-Etransport.port=0", f"-Epath.data={data}", f"-Epath.logs={logs}",
           f"-Enode.attr.hdrlog_stack={tag}"]
    if os.geteuid() == 0:
        return ["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_UID}", "--clear-groups", "--", *run]
    return run


def environment(java_home: Path, home: Path) -> dict[str, str]:
    return {"OPENSEARCH_JAVA_HOME": str(java_home), "OPENSEARCH_JAVA_OPTS": "-Xms512m -Xmx512m",
            "OPENSEARCH_PATH_CONF": str(home / "config"), "HOME": str(home)}


class OpenSearchProbe:
    """Answers "does the node serve HTTP with a version yet?"."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as r:  # noqa: S310 - our own loopback URL
                return bool(json.loads(r.read()).get("version"))
        except (OSError, urllib.error.URLError, ValueError):
            return False
