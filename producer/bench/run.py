"""`hdrlog bench`: every contender on the same traffic, into the same broker, in one run.

    sender (C, sendmmsg) in netns ──veth──▶ host_if ──▶ contender ──▶ Kafka (a fresh topic per run)

For each offered rate (50k, 100k, 200k packets/s and flat out) and each contender,
a fresh topic; the contender starts and reports ready, the sender runs for the
run's seconds, the contender is stopped and flushes, and the topic is read back.

    offered      datagrams the sender got out (sendmmsg's count)
    delivered    records in Kafka (read back from the topic)
    counted      losses someone counted, by reason: the contender's own counters
                 (the agent's ringbuf_reserve_failed and dropped_*; tshark's
                 "dropped") and the veth pair's drops before any hook (`network`)
    unaccounted  offered - delivered - counted: silent loss (must be 0 for hdrlog)
    CPU          every process of the contender, ready to exit (cpuacct group)

Then, with the agent's defaults: the data-path overhead (packets/s the veth pair
carries with the agent attached / without, alternating, same sender), the delivery
latency at 20k records/s (capture timestamp in each record -> the broker's
LogAppendTime of its message) and the agent's peak RSS and BPF map memory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from producer.bench.agent import HdrlogContender
from producer.bench.common import Contender, Result, Target, stat_cpu, workdir
from producer.bench.contenders import (
    PerRecordBaseline,
    Pmacctd,
    TsharkKcat,
    create_topic,
    delete_topics,
    settle,
    topics_named,
)
from producer.bench.sender import build_sender, send
from producer.devstack import StackSettings
from producer.errors import HdrlogError
from producer.netns import VethNamespace

RATES: tuple[int, ...] = (50_000, 100_000, 200_000, 0)  # 0: as fast as the sender goes
LATENCY_RATE = 20_000
IDLE_S = 60.0  # the idle agent's measured window
IDLE_TARGET = 0.005  # of one CPU
#: the targets, judged at every offered rate on records per CPU-second of the whole run (start-up included)
RATIO_TARGETS = (("pmacctd", 10), ("tshark+kcat", 100), ("per-record python", 10))  # hdrlog batch / them
ABSOLUTE_TARGETS = (("hdrlog batch", 1_000_000), ("hdrlog record", 400_000))
PORT = 7000
MARK_BEGIN = "<!-- hdrlog bench: begin -->"
MARK_END = "<!-- hdrlog bench: end -->"


@dataclass
class Row:
    contender: str
    rate: int  # offered packets/s asked of the sender; 0 = flat out
    seconds: float
    offered: int
    delivered: int
    counted: dict[str, int]
    cpu_s: float  # from ready to exit
    peak_rss_bytes: int = 0
    note: str = ""
    extra: dict[str, int] = field(default_factory=dict)
    startup_cpu_s: float = 0.0  # from the start to ready

    @property
    def unaccounted(self) -> int:
        return self.offered - self.delivered - sum(self.counted.values())

    @property
    def per_cpu_s(self) -> float:
        """The headline: records per CPU-second of the whole run, start-up included."""
        cpu = self.cpu_s + self.startup_cpu_s
        return self.delivered / cpu if cpu > 0 else 0.0

    @property
    def running_per_cpu_s(self) -> float:
        """Records per CPU-second from ready to exit (start-up left out)."""
        return self.delivered / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def cpu_per_wall_s(self) -> float:
        """CPU seconds from ready to exit per second of the run's traffic."""
        return self.cpu_s / self.seconds if self.seconds else 0.0

    @property
    def kept(self) -> float:
        return self.delivered / self.offered if self.offered else 0.0


@dataclass
class Report:
    started: str
    machine: str
    seconds: float
    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    overhead: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    idle: dict[str, Any] = field(default_factory=dict)  # Bench.idle

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for row, out in zip(self.rows, d["rows"], strict=True):
            out.update(unaccounted=row.unaccounted, per_cpu_s=round(row.per_cpu_s),
                       running_per_cpu_s=round(row.running_per_cpu_s), cpu_per_wall_s=round(row.cpu_per_wall_s, 4))
        return d


def machine() -> str:
    import os
    import platform

    cpus = os.cpu_count() or 0
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // (1024 * 1024)
    return f"{cpus} vCPUs, {mem} GiB, kernel {platform.release()}, Python {platform.python_version()}"


def _link_counters(net: VethNamespace) -> dict[str, int]:
    """The veth pair's packet and drop counters (host side here, peer side in the namespace)."""
    def read(prefix: Sequence[str], iface: str) -> dict[str, Any]:
        out = net._ip(*prefix, "-s", "-j", "link", "show", iface).stdout
        return dict(json.loads(out)[0]["stats64"])

    host = read((), net.host_if)
    peer = read(("-n", net.ns), net.peer_if)
    return {"rx_packets": int(host["rx"]["packets"]),
            "dropped": int(host["rx"]["dropped"]) + int(peer["tx"]["dropped"])}


class Bench:
    def __init__(self, out: Callable[[str], None], seconds: float, workdir: Path) -> None:
        self.say = out
        self.seconds = seconds
        self.stack = StackSettings.from_env()
        self.workdir = workdir
        self.sender = build_sender(Path.home() / ".cache" / "hdrlog" / "bench")
        self.net = VethNamespace(ns="hdrlog-bench", host_if="hlbench0", peer_if="hlbench1",
                                 host_ip="10.208.0.1", peer_ip="10.208.0.2")

    def __enter__(self) -> Bench:
        self.net.create(quiet=True)
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the datagrams' receiver; never read
        self.sink.bind((self.net.host_ip, PORT))
        return self

    def __exit__(self, *exc: object) -> None:
        self.sink.close()
        self.net.destroy()
        bootstrap = self.stack.bootstrap_servers
        delete_topics(bootstrap, topics_named(bootstrap, "hdrlog.bench.", self.say), self.say)

    def target(self, name: str, topic_config: dict[str, str] | None = None) -> Target:
        topic = f"hdrlog.bench.{name.replace(' ', '-').replace('+', '-')}.{uuid.uuid4().hex[:8]}"
        create_topic(self.stack.bootstrap_servers, topic, topic_config)
        work = workdir("run-", self.workdir)
        return Target(self.net.host_if, self.stack.bootstrap_servers, self.stack.registry_url, topic, str(work))

    def traffic(self, rate: int, seconds: float) -> tuple[int, dict[str, int]]:
        """Send for ``seconds``; (datagrams sent, the veth pair's counters' deltas)."""
        before = _link_counters(self.net)
        sent = int(send(self.net, self.sender, self.net.host_ip, PORT, rate, seconds).communicate()[0])
        after = _link_counters(self.net)
        return sent, {k: after[k] - before[k] for k in after}

    def run(self, contender: Contender, rate: int, seconds: float,
            topic_config: dict[str, str] | None = None) -> tuple[Row, Target]:
        target = self.target(contender.name, topic_config)
        running = contender.start(target)
        try:
            offered, link = self.traffic(rate, seconds)
        finally:
            result: Result = running.stop()
        counted = dict(result.counted)
        if link["dropped"]:
            counted["network"] = link["dropped"]
        row = Row(contender.name, rate, seconds, offered, result.delivered, counted, result.cpu_s,
                  result.peak_rss_bytes, result.note, dict(result.extra), startup_cpu_s=result.startup_cpu_s)
        self.say(f"  {row.contender:<16} {_rate(rate):>7}: offered {offered:>9,}  delivered {row.delivered:>9,}  "
                 f"counted {sum(counted.values()):>9,}  unaccounted {row.unaccounted:>7,}  cpu {row.cpu_s:6.2f} s "
                 f"(start-up {row.startup_cpu_s:.2f} s)  {row.per_cpu_s:>11,.0f} rec/cpu-s")
        return row, target

    def overhead(self, contender: Contender, rounds: int, seconds: float) -> dict[str, float]:
        """Packets/s the veth pair carries flat out, without and with the agent attached, alternating."""
        without: list[float] = []
        with_agent: list[float] = []
        for _ in range(rounds):
            _sent, link = self.traffic(0, seconds)
            without.append(link["rx_packets"] / seconds)
            running = contender.start(self.target("overhead"))
            try:
                _sent, link = self.traffic(0, seconds)
                with_agent.append(link["rx_packets"] / seconds)
            finally:
                running.stop()
        w, a = sum(without) / rounds, sum(with_agent) / rounds
        self.say(f"  overhead: {w:,.0f} packets/s without the agent, {a:,.0f} with it: {a / w:.3f}")
        return {"without_pps": round(w), "with_pps": round(a), "ratio": round(a / w, 4)}

    def latency(self, shape: str, seconds: float) -> dict[str, float]:
        """Capture -> broker append, per record, at LATENCY_RATE records/s with the default linger."""
        row, target = self.run(HdrlogContender(shape), LATENCY_RATE, seconds,
                               {"message.timestamp.type": "LogAppendTime"})
        lat = sorted(record_latencies_ms(target, shape))
        if not lat:
            raise HdrlogError(f"latency run ({shape}): no records in {target.topic}")
        q = {"p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max": lat[-1],
             "records": float(len(lat))}
        self.say(f"  latency {shape}: p50 {q['p50']:.0f} ms, p99 {q['p99']:.0f} ms, max {q['max']:.0f} ms "
                 f"over {len(lat):,} records")
        return q


    def idle(self, seconds: float) -> dict[str, Any]:
        """An agent with the defaults (its HTTP server, ingest and parse worker too) capturing the bench's
        link with no traffic on it, Kafka connected: the CPU of all its processes over ``seconds`` after it
        is ready and has settled, and where it goes, per thread (``/proc/PID/task``: the stages name
        theirs, librdkafka's are rdk:*)."""
        running = HdrlogContender("batch", listen="127.0.0.1:0").start(self.target("idle"))
        try:
            settle(running.cpu)  # the start's last work (the first metadata, the stats reporter) out of the window
            pid = running.proc.pid
            before, cpu0, switches0 = _thread_cpu(pid), running.cpu.usage_s(), _switches(pid)
            time.sleep(seconds)  # the window measured: nothing happens in it, by design
            after, cpu1, switches1 = _thread_cpu(pid), running.cpu.usage_s(), _switches(pid)
        finally:
            running.stop()
        per: dict[str, float] = {}
        for tid, (name, cpu) in after.items():
            per[name] = per.get(name, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
        main = sum(per.values())
        per["its other processes (the parse worker), exited threads"] = max(0.0, (cpu1 - cpu0) - main)
        threads = sorted(((n, round(c, 4)) for n, c in per.items()), key=lambda x: -x[1])
        out: dict[str, Any] = {"seconds": seconds, "cpu_s": round(cpu1 - cpu0, 4),
                               "cpu_fraction": round((cpu1 - cpu0) / seconds, 5),
                               "wakeups": switches1 - switches0, "threads": threads}
        self.say(f"  idle: {100 * out['cpu_fraction']:.2f}% of one CPU; "
                 + ", ".join(f"{n} {100 * c / seconds:.2f}%" for n, c in threads[:6]))
        return out


def _thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (its name, its CPU seconds so far) for every thread of ``pid``."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = stat_cpu(task / "stat")
        except OSError:
            continue
    return out


def _switches(pid: int) -> int:
    """Context switches (voluntary and not) of every thread of ``pid`` so far: its wake-ups."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def record_latencies_ms(target: Target, shape: str) -> list[float]:
    """For every record in the topic: the broker's append time minus the record's capture time, in ms."""
    import io

    from confluent_kafka import Consumer, TopicPartition
    from fastavro import schemaless_reader

    from producer.serialize.schemas import AvroSchema

    schema = AvroSchema.load("HeaderBatch" if shape == "batch" else "HeaderRecord").parsed
    c = Consumer({"bootstrap.servers": target.bootstrap_servers, "group.id": "hdrlog-bench-latency",
                  "enable.auto.commit": False})
    out: list[float] = []
    try:
        low, high = c.get_watermark_offsets(TopicPartition(target.topic, 0), timeout=30)
        c.assign([TopicPartition(target.topic, 0, low)])
        got = 0
        end = time.monotonic() + 120
        while got < high - low and time.monotonic() < end:
            for m in c.consume(1000, 1.0):
                if m.error() is not None:
                    continue
                got += 1
                appended_ms = m.timestamp()[1]
                value: Any = schemaless_reader(io.BytesIO((m.value() or b"")[5:]), schema)
                for r in value["records"] if shape == "batch" else [value]:
                    out.append(appended_ms - r["timestamp_ns"] / 1e6)
    finally:
        c.close()
    return out


def _rate(rate: int) -> str:
    return "max" if rate == 0 else f"{rate // 1000}k"


def contenders(names: Sequence[str] | None) -> list[Contender]:

    every: list[Contender] = [HdrlogContender("batch"), HdrlogContender("record"), Pmacctd(), TsharkKcat(),
                              PerRecordBaseline()]
    if not names:
        return every
    known = {c.name: c for c in every}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HdrlogError(f"unknown contender {unknown[0]!r} (choose from {', '.join(known)})")
    return [known[n] for n in names]


def run_bench(*, seconds: float, rates: Sequence[int], names: Sequence[str] | None, overhead_rounds: int,
              latency_s: float, out_dir: Path, say: Callable[[str], None], update: Path | None,
              idle_s: float = IDLE_S) -> Report:
    report = Report(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), machine(), seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = workdir("hdrlog-bench-")
    try:
        with Bench(say, seconds, work) as bench:
            chosen = contenders(names)
            for c in chosen:
                why = c.available()
                if why:
                    report.skipped[c.name] = why
                    say(f"  {c.name}: not run: {why}")
            runnable = [c for c in chosen if c.name not in report.skipped]
            for rate in rates:
                say(f"offered {_rate(rate)} packets/s for {seconds:g} s:")
                for c in runnable:
                    report.rows.append(bench.run(c, rate, seconds)[0])
            if overhead_rounds:
                say("data-path overhead:")
                report.overhead = bench.overhead(HdrlogContender("batch"), overhead_rounds, seconds)
            if latency_s:
                say(f"latency at {LATENCY_RATE // 1000}k records/s:")
                for shape in ("batch", "record"):
                    report.latency_ms[shape] = bench.latency(shape, latency_s)
            if idle_s:
                say(f"an idle agent for {idle_s:g} s:")
                report.idle = bench.idle(idle_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(report)
    (out_dir / "bench.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
    (out_dir / "bench.md").write_text(table)
    chart(report, out_dir / "bench.png")
    say("")
    say(table)
    if update is not None:
        update_section(update, table, out_dir / "bench.png")
        say(f"updated {update}")
    return report


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _best(report: Report, name: str, rate: int = 0) -> Row | None:
    return next((r for r in report.rows if r.contender == name and r.rate == rate), None)


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def markdown(report: Report) -> str:
    """The table, the ratios and the targets at every rate, as BENCHMARKS.md shows them."""
    lines = [f"Run {report.started} on {report.machine}; {report.seconds:g} s per run. Records per CPU-second "
             "count the contender's whole run, start-up included (the headline; every target is judged on it); "
             "beside it the same from ready to exit, and that CPU per second of traffic.", "",
             "| contender | offered | offered pkts | delivered | kept | counted loss | unaccounted | start-up CPU s "
             "| CPU s (ready to exit) | CPU per wall-s | records / CPU-s | records / CPU-s from ready | peak RSS |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.rows:
        counted = ", ".join(f"{k} {v:,}" for k, v in sorted(r.counted.items())) or "0"
        lines.append(f"| {r.contender} | {_rate(r.rate)} | {r.offered:,} | {r.delivered:,} | {r.kept:.1%} "
                     f"| {counted} | {r.unaccounted:,} | {r.startup_cpu_s:.2f} | {r.cpu_s:.2f} "
                     f"| {r.cpu_per_wall_s:.3f} | {r.per_cpu_s:,.0f} | {r.running_per_cpu_s:,.0f} "
                     f"| {_mib(r.peak_rss_bytes) if r.peak_rss_bytes else '-'} |")
    for name, why in report.skipped.items():
        lines.append(f"| {name} | not run: {why} | | | | | | | | | | | |")
    lines.append("")
    checks: list[str] = []
    rates = sorted({r.rate for r in report.rows}, key=lambda x: (x == 0, x))
    for rate in rates:
        batch = _best(report, "hdrlog batch", rate)
        parts = []
        if batch:
            for peer, want in RATIO_TARGETS:
                other = _best(report, peer, rate)
                if other and other.per_cpu_s:
                    ratio = batch.per_cpu_s / other.per_cpu_s
                    parts.append(f"hdrlog batch / {peer} **{ratio:,.1f}x** (target {want}x: {_verdict(ratio >= want)}"
                                 f"; from ready {batch.running_per_cpu_s / max(other.running_per_cpu_s, 1e-9):,.1f}x)")
        for name, want in ABSOLUTE_TARGETS:
            row = _best(report, name, rate)
            if row:
                parts.append(f"{name} {row.per_cpu_s:,.0f} records per CPU-second (target {want:,}: "
                             f"{_verdict(row.per_cpu_s >= want)})")
        if parts:
            checks.append(f"- at {_rate(rate)}: " + "; ".join(parts))
    ours = [r for r in report.rows if r.contender.startswith("hdrlog")]
    if ours:
        bad = [r for r in ours if r.unaccounted]
        gaps = ", ".join(f"{r.contender} {_rate(r.rate)}: {r.unaccounted:,}" for r in bad)
        checks.append(f"- unaccounted loss, hdrlog, every rate: {gaps or '0 (met)'}")
        at100 = [r for r in ours if r.rate == 100_000]
        if at100:
            lossy = [r for r in at100 if r.delivered != r.offered]
            checks.append("- loss of any kind at 100k packets/s: " + (
                "none (met)" if not lossy else ", ".join(f"{r.contender} {r.offered - r.delivered:,}" for r in lossy)))
        peak = max(r.peak_rss_bytes for r in ours)
        checks.append(f"- peak agent RSS: {_mib(peak)} (target < 300 MiB: {_verdict(peak < 300 << 20)})"
                      f"; BPF maps {_mib(max(r.extra.get('bpf_map_bytes', 0) for r in ours))}")
    if report.overhead:
        o = report.overhead
        checks.append(f"- data-path overhead: {o['with_pps']:,.0f} / {o['without_pps']:,.0f} packets/s = "
                      f"**{o['ratio']:.3f}** (target 0.90: {_verdict(o['ratio'] >= 0.9)})")
    for shape, q in report.latency_ms.items():
        checks.append(f"- latency capture -> broker, {shape}, {LATENCY_RATE // 1000}k records/s: "
                      f"p50 {q['p50']:.0f} ms, p99 {q['p99']:.0f} ms, max {q['max']:.0f} ms (target p99 < 250 ms: "
                      f"{_verdict(q['p99'] < 250)})")
    if report.idle:
        i = report.idle
        threads = ", ".join(f"{name} {100 * cpu / i['seconds']:.2f}%" for name, cpu in i["threads"][:8])
        checks.append(f"- idle agent (capturing a link without traffic, Kafka connected, its HTTP server and parse "
                      f"worker running) over {i['seconds']:g} s: **{100 * i['cpu_fraction']:.2f}%** of one CPU "
                      f"(target <= {100 * IDLE_TARGET:g}%: {_verdict(i['cpu_fraction'] <= IDLE_TARGET)}); "
                      f"{i['wakeups']:,} context switches; by thread: {threads}")
    return "\n".join(lines + checks) + "\n"


def chart(report: Report, path: Path) -> None:
    """Records per CPU-second and loss against offered rate, one line per contender."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # not its font-cache notice in our log
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(r.contender for r in report.rows))
    rates = sorted({r.rate for r in report.rows}, key=lambda x: (x == 0, x))
    xs = list(range(len(rates)))
    for name in names:
        rows = {r.rate: r for r in report.rows if r.contender == name}
        left.plot(xs, [rows[x].per_cpu_s if x in rows else float("nan") for x in rates], marker="o", label=name)
        right.plot(xs, [100 * (1 - rows[x].kept) if x in rows else float("nan") for x in rates], marker="o",
                   label=name)
    for ax in (left, right):
        ax.set_xticks(xs, [_rate(r) for r in rates])
        ax.set_xlabel("offered packets/s")
        ax.grid(True, alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("records delivered per CPU-second")
    right.set_ylabel("records not delivered (%)")
    left.legend(fontsize=8)
    fig.suptitle(f"hdrlog bench, {report.started}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_section(path: Path, table: str, png: Path) -> None:
    """Replace the part of BENCHMARKS.md between the bench markers with this run, linking its chart."""
    link = os.path.relpath(png.resolve(), path.resolve().parent)
    replace_between(path, f"\n![records per CPU-second and loss against offered rate]({link})\n\n{table}",
                    MARK_BEGIN, MARK_END)


def replace_between(path: Path, body: str, begin: str, end: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` in ``path`` with ``body``."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise HdrlogError(f"{path} has no '{begin}' ... '{end}' section to update")
    head, rest = text.split(begin, 1)
    _old, tail = rest.split(end, 1)
    path.write_text(head + begin + body + end + tail)
