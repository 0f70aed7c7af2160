"""The benchmark's traffic: sender.c (a sendmmsg UDP flood), compiled on demand and run in a namespace.

The binary is cached as ``sender-<sha256 of the source>`` so that an edited
source is rebuilt and an unchanged one is not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from producer.errors import HdrlogError
from producer.netns import VethNamespace

SOURCE = Path(__file__).resolve().with_name("sender.c")


def build_sender(cache_dir: Path) -> Path:
    """Compile sender.c into ``cache_dir`` unless a binary of this very source is there; return its path."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    binary = cache_dir / f"sender-{digest}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise HdrlogError("gcc not found: the benchmark compiles its UDP sender (install gcc)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sender-", dir=cache_dir)
    os.close(fd)
    try:
        res = subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-o", tmp, str(SOURCE)],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            first = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr.strip())
            raise HdrlogError(f"compiling {SOURCE.name} failed: {first}")
        os.replace(tmp, binary)  # atomic: a concurrent build never sees half a binary
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary


def send(net: VethNamespace, binary: Path, dst: str, port: int, rate: int,
         seconds: float) -> subprocess.Popen[str]:
    """Start the sender inside ``net``'s namespace: ``rate`` datagrams/s (0: flat out) for ``seconds``.

    Its stdout is one integer at exit, the datagrams sent: ``int(proc.communicate()[0])``.
    """
    return net.popen([str(binary), dst, str(port), str(rate), f"{seconds:g}"])
