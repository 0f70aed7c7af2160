"""CPU of a group of processes: a cgroup v1 cpuacct group per contender.

A child is put into the group before it execs (``preexec_fn``), so every
process it starts is in the group too, and ``cpuacct.usage`` counts all of
them (user + system, threads included), also those that already exited.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from producer.errors import HdrlogError

CPUACCT_ROOT = Path("/sys/fs/cgroup/cpuacct")
BENCH_DIR = "hdrlog-bench"


class CpuGroup:
    """``<root>/hdrlog-bench/<name>-<uuid>``: created on construction, removed by ``close()``."""

    def __init__(self, name: str, root: Path = CPUACCT_ROOT) -> None:
        if not (root / "cpuacct.usage").is_file():
            raise HdrlogError(f"no cgroup v1 cpuacct hierarchy at {root} (the benchmark measures CPU with it)")
        self._root = root
        self.path = root / BENCH_DIR / f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            self.path.mkdir(parents=True)
        except OSError as exc:
            raise HdrlogError(f"cannot create cgroup {self.path}: {exc.strerror}") from exc

    def preexec_fn(self) -> Callable[[], None]:
        """For ``subprocess.Popen(preexec_fn=...)``: the child joins the group before it execs."""
        procs = str(self.path / "cgroup.procs")

        def join() -> None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0": the writing process itself
            finally:
                os.close(fd)

        return join

    def add(self, pid: int) -> None:
        """Move a running process (all its threads) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]

    def usage_s(self) -> float:
        """CPU time of everything that ran in the group since it was created, in seconds."""
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        """Move what still runs in the group back to the root group and remove the group."""
        if not self.path.exists():
            return
        for pid in self.pids():
            try:
                (self._root / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
        for _ in range(50):  # a task that just exited leaves the group a moment later
            try:
                self.path.rmdir()
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                time.sleep(0.01)
        with contextlib.suppress(OSError):  # the last group of the benchmark takes the parent along
            (self._root / BENCH_DIR).rmdir()

    def __enter__(self) -> CpuGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
