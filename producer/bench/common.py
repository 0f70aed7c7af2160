"""What every contender of the benchmark shares: how it is measured and what it reports.

A contender is started against one interface and one fresh Kafka topic, reports
ready, sees the traffic, is stopped, and then reports what it delivered (read
back from the topic: acknowledged by the broker) and the CPU of all of its
processes (``CpuGroup``: a cpuacct cgroup), from its start to ready and from
ready to exit.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


def stat_cpu(stat: Path) -> tuple[str, float]:
    """(name, CPU seconds so far: user + system) from a ``/proc/PID/stat`` or ``/proc/PID/task/TID/stat``."""
    text = stat.read_text()
    fields = text[text.rindex(")") + 2:].split()
    return text[text.index("(") + 1:text.rindex(")")], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def workdir(prefix: str, parent: Path | None = None) -> Path:
    """A fresh directory for a run, that others may pass through (0711): an agent started as root becomes
    the user ``hdrlog`` once attached (its default), which must reach its state directory in it."""
    made = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    made.chmod(0o711)
    return made


@dataclass(frozen=True, slots=True)
class Target:
    """Where a contender captures and publishes."""

    iface: str  # the interface to capture on (host side of the veth pair)
    bootstrap_servers: str
    registry_url: str
    topic: str  # a fresh topic, one partition, used by this run only
    workdir: str  # a fresh directory the contender may write to


@dataclass(slots=True)
class Result:
    """One contender's run."""

    name: str
    delivered: int  # records acknowledged by the broker (read back from the topic)
    cpu_s: float  # CPU of all its processes (user + system) from ready to exit
    startup_cpu_s: float = 0.0  # ... and from its start to ready (set by the bench)
    counted: dict[str, int] = field(default_factory=dict)  # losses the contender itself counted, by reason
    peak_rss_bytes: int = 0  # 0: not measured
    note: str = ""  # one line, e.g. why it delivered nothing
    extra: dict[str, int] = field(default_factory=dict)  # contender-specific figures (e.g. BPF map bytes)

    @property
    def per_cpu_s(self) -> float:
        return self.delivered / self.cpu_s if self.cpu_s > 0 else 0.0


class Running(Protocol):
    def stop(self) -> Result:
        """Stop the contender (gracefully, so that it flushes), wait for its exit, read back the topic."""


class Contender(Protocol):
    name: str

    def available(self) -> str | None:
        """None if it can run here, else a one-line reason (e.g. ``tshark not installed``)."""

    def start(self, target: Target) -> Running:
        """Start it and return once it is ready to capture (its start-up's CPU counted apart)."""
