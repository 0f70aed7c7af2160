"""The agent as a contender: `hdrlog agent` with its default sizing, in one message shape.

CPU is the cpuacct group's (the agent's process and every thread of it, librdkafka's
included) from "capturing on" to exit.  What it delivered is read back from the
topic (batch shape: each message's record count, from its envelope), and checked
against the agent's own acknowledged count; what it lost is what it counted: the
kernel's ``ringbuf_reserve_failed`` and every ``dropped_*`` counter of its exit summary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from producer.bench.cgroup import CpuGroup
from producer.bench.common import Result, Target
from producer.bench.contenders import count_messages, read_values
from producer.errors import HdrlogError

READY_TIMEOUT_S = 90.0


def bpf_map_bytes(pid: int) -> int:
    """The memory locked by the BPF maps a process holds open (``memlock`` of each map's fdinfo)."""
    total = 0
    seen: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        map_id = info.get("map_id", "").strip()
        if map_id and map_id not in seen:
            seen.add(map_id)
            total += int(info.get("memlock", "0").strip() or 0)
    return total


def _zigzag(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (value >> 1) ^ -(value & 1), pos


def batch_records(value: bytes) -> int:
    """Records in one Confluent-framed HeaderBatch: the envelope's fields, then the array's blocks."""
    pos = 5
    for kind in ("string", "string", "long", "string", "long", "long"):  # schemas/HeaderBatch.avsc, in order
        n, pos = _zigzag(value, pos)
        if kind == "string":
            pos += n
    count, pos = _zigzag(value, pos)
    return abs(count)  # the agent writes one block; its count is what the message holds


def records_in_topic(bootstrap: str, topic: str, shape: str) -> tuple[int, int]:
    """(records, messages) in the topic."""
    if shape == "record":
        n = count_messages(bootstrap, topic)
        return n, n
    records = messages = 0
    for value in read_values(bootstrap, topic):
        records += batch_records(value)
        messages += 1
    return records, messages


def read_until_capturing(proc: subprocess.Popen[str], lines: list[str], ready: threading.Event) -> None:
    """Collect an agent's stderr into ``lines``; set ``ready`` when it says it captures, or when it exits
    (its starter then sees the exit)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if '"capturing on' in line:
            ready.set()
    ready.set()


class HdrlogContender:
    """`hdrlog agent --shape SHAPE` with the defaults a user gets."""

    def __init__(self, shape: str, extra: tuple[str, ...] = (), listen: str = "off") -> None:
        """``listen``: the HTTP server's address (off in the throughput runs; the idle run has the default's
        server, its ingest and parse worker)."""
        self.shape = shape
        self.name = f"hdrlog {shape}"
        self._extra = extra
        self.listen = listen

    def available(self) -> str | None:
        return None

    def start(self, target: Target) -> RunningAgent:
        return RunningAgent(self, target)


class RunningAgent:
    def __init__(self, contender: HdrlogContender, target: Target) -> None:
        self.c = contender
        self.t = target
        self.cpu = CpuGroup("hdrlog")
        self._err: list[str] = []
        argv = [sys.executable, "-m", "producer", "--log-format", "json", "agent", "--iface", target.iface,
                "--bootstrap-servers", target.bootstrap_servers, "--schema-registry", target.registry_url,
                "--topic", target.topic, "--shape", contender.shape, "--state-dir", target.workdir,
                "--listen", contender.listen, *contender._extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=self.cpu.preexec_fn())
        self._ready = threading.Event()
        self._reader = threading.Thread(target=read_until_capturing, args=(self.proc, self._err, self._ready),
                                        daemon=True)
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT_S) or self.proc.poll() is not None:
            self.proc.kill()
            self.proc.wait()
            self.cpu.close()
            raise HdrlogError(f"{contender.name} did not start: {self._last_error()}")
        self.cpu_at_ready = self.cpu.usage_s()
        self.bpf_bytes = bpf_map_bytes(self.proc.pid)

    def _last_error(self) -> str:
        for line in reversed(self._err):
            if line.startswith("hdrlog: error") or '"level":"error"' in line:
                return line.strip()[:300]
        return "no error logged"

    def stop(self) -> Result:
        self.proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._reader.join(30)
        cpu = self.cpu.usage_s() - self.cpu_at_ready
        self.cpu.close()
        summary: dict[str, Any] | None = None
        for line in reversed(self._err):
            if line.startswith('{"summary"'):
                summary = json.loads(line)["summary"]
                break
        if summary is None or self.proc.returncode != 0:
            raise HdrlogError(f"{self.c.name} exited with {self.proc.returncode}: {self._last_error()}")
        kernel, agent = summary["kernel"], summary["agent"]
        counted = {k: v for k, v in agent.items() if k.startswith("dropped_") and v}
        if kernel.get("ringbuf_reserve_failed"):
            counted["ringbuf_reserve_failed"] = kernel["ringbuf_reserve_failed"]
        in_topic, messages = records_in_topic(self.t.bootstrap_servers, self.t.topic, self.c.shape)
        acked = int(agent["delivered"])
        note = f"{messages} messages"
        if in_topic != acked:
            note += f"; acknowledged {acked} but the topic holds {in_topic}"
        return Result(self.c.name, in_topic, cpu, self.cpu_at_ready, counted,
                      peak_rss_bytes=usage.ru_maxrss * 1024,
                      note=note, extra={"bpf_map_bytes": self.bpf_bytes, "seen": int(kernel["seen"]),
                                        "acknowledged": acked})
