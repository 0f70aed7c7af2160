"""`hdrlog bench --consumer`: the consumer into each sink, and a Kafka Connect worker, on the same topics.

    agent (record shape, batch shape) ──▶ Kafka ──▶ hdrlog consume --sink ...   (one run per sink)
                                                └─▶ Kafka Connect FileStreamSink (record shape, the same topic)

The topics are written once per run by the real agent from the benchmark's
UDP flood (producer/bench/run.py's Bench).  Each consumer run is a new group
reading a whole topic (``--from-beginning --idle-timeout``); its CPU is the
consumer's own count from its first message to its last commit (every
thread: ``busy_cpu_ms`` in its summary), so start-up and the idle wait at the
end are not charged, and the cgroup total is shown beside it.  Kafka Connect's
worker is already running; its CPU is the worker's (``/proc/PID/stat``) from
the connector's creation to the last line of its file.  The rows with a
target are the median of three runs.  The scaling runs read six-partition
copies of the record-shape topic, with one member, then with two members of
one group, each time assigned before the copy is written (both runs read as it
is written): each member's records per CPU-second against the single member's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from producer.bench.agent import HdrlogContender
from producer.bench.cgroup import CpuGroup
from producer.bench.common import stat_cpu
from producer.bench.common import workdir as fresh_workdir
from producer.bench.run import Bench, machine, replace_between
from producer.errors import HdrlogError

MARK_BEGIN = "<!-- hdrlog bench consumer: begin -->"
MARK_END = "<!-- hdrlog bench consumer: end -->"
TARGETS = {"ecs file": 50_000, "ecs parquet": 200_000}  # records per consumer CPU-second (issue 14)
HDRLOG = [sys.executable, "-m", "producer"]


@dataclass
class ConsumerRow:
    name: str
    topic_shape: str
    records: int
    cpu_s: float          # busy CPU (first message -> last commit); Connect: the worker's CPU over its run
    gross_cpu_s: float    # the whole process, start-up and idle end included (cgroup); Connect: same as cpu_s
    wall_s: float
    note: str = ""

    @property
    def per_cpu_s(self) -> float:
        """The headline: records per CPU-second of the whole process, start-up included."""
        return self.records / self.gross_cpu_s if self.gross_cpu_s > 0 else 0.0

    @property
    def busy_per_cpu_s(self) -> float:
        """Beside it: records per busy CPU-second (first message to last commit)."""
        return self.records / self.cpu_s if self.cpu_s > 0 else 0.0


@dataclass
class ConsumerReport:
    started: str
    machine: str
    records: dict[str, int] = field(default_factory=dict)  # per topic shape
    rows: list[ConsumerRow] = field(default_factory=list)
    scaling: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for row, out in zip(self.rows, d["rows"], strict=True):
            out["per_cpu_s"] = round(row.per_cpu_s)
            out["busy_per_cpu_s"] = round(row.busy_per_cpu_s)
        return d


def _consume(bootstrap: str, registry: str, topic: str, args: list[str], name: str) -> tuple[dict[str, int], float,
                                                                                            float]:
    """One ``hdrlog consume`` over a whole topic; (its summary, cgroup CPU seconds, wall seconds)."""
    with CpuGroup(f"consume-{name}") as group:
        t0 = time.monotonic()
        res = subprocess.run([*HDRLOG, "--log-format", "json", "consume", "--topic", topic, "--bootstrap-servers",
                              bootstrap, "--schema-registry", registry, "--from-beginning", "--idle-timeout", "3",
                              "--group", f"bench-{uuid.uuid4().hex[:8]}", "--progress", "off", *args],
                             capture_output=True, text=True, timeout=3600, preexec_fn=group.preexec_fn(),
                             check=False)
        wall = time.monotonic() - t0
        gross = group.usage_s()
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit status {res.returncode}"
        raise HdrlogError(f"consume {name} failed: {last}")
    summary = next(json.loads(line)["summary"] for line in reversed(res.stderr.splitlines())
                   if line.startswith('{"summary"'))
    return dict(summary), gross, wall


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def _proc_cpu_s(pid: int) -> float:
    return stat_cpu(Path(f"/proc/{pid}/stat"))[1]


class ConsumerBench:
    def __init__(self, say: Callable[[str], None], records: int, workdir: Path) -> None:
        self.say = say
        self.records = records
        self.workdir = workdir
        self.report = ConsumerReport(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), machine())

    def topics(self, bench: Bench) -> dict[str, str]:
        """The agent writes ~``records`` records in each shape (one UDP flood each)."""
        out: dict[str, str] = {}
        for shape in ("record", "batch"):
            rate = 100_000
            row, target = bench.run(HdrlogContender(shape), rate, self.records / rate)
            out[shape] = target.topic
            self.report.records[shape] = row.delivered
        return out

    def member(self, bench: Bench, name: str, topic: str, shape: str, args: list[str], *,
               repeat: int = 1) -> ConsumerRow:
        """``repeat`` runs of one member over the whole topic (each a new group); the row is the run
        with the median records per CPU-second (this machine's run-to-run spread is ~10%)."""
        s = bench.stack
        runs: list[ConsumerRow] = []
        for _ in range(repeat):
            summary, gross, wall = _consume(s.bootstrap_servers, s.registry_url, topic, args, name)
            n = summary["events_written"]
            if n != self.report.records[shape] or summary["messages_dead_lettered"]:
                raise HdrlogError(f"consume {name}: wrote {n} of {self.report.records[shape]} records "
                                  f"({summary['messages_dead_lettered']} messages dead-lettered)")
            run = ConsumerRow(name, shape, n, summary.get("busy_cpu_ms", 0) / 1000, gross, wall)
            runs.append(run)
            self.say(f"  {name:<28} {shape:<6} {n:>9,} records  process cpu {gross:6.2f} s (busy {run.cpu_s:6.2f} s)"
                     f"  {run.per_cpu_s:>9,.0f} rec/cpu-s")
        row = sorted(runs, key=lambda r: r.per_cpu_s)[len(runs) // 2]
        if repeat > 1:
            row.note = f"median of {repeat} runs ({', '.join(f'{r.per_cpu_s:,.0f}' for r in runs)})"
        self.report.rows.append(row)
        return row

    def connect(self, bench: Bench, topic: str) -> None:
        import httpx2

        from producer.devstack import LocalStack
        from producer.devstack.connect import connector_config

        s = bench.stack
        LocalStack(s).up(with_connect=True)
        pid = int((s.root / "connect.pid").read_text())
        out = self.workdir / "connect-sink.txt"
        cfg = connector_config(topic=topic, file=str(out), registry_url=s.registry_url,
                               name=f"hdrlog-bench-{uuid.uuid4().hex[:8]}")
        want = self.report.records["record"]
        cpu0, t0 = _proc_cpu_s(pid), time.monotonic()
        r = httpx2.post(f"{s.connect_url}/connectors", json=cfg, timeout=30)
        if r.status_code != 201:
            raise HdrlogError(f"Kafka Connect refused the connector: {r.text[:200]}")
        try:
            lines = 0
            deadline = time.monotonic() + 600
            while lines < want:
                if time.monotonic() > deadline:
                    raise HdrlogError(f"Kafka Connect wrote {lines} of {want} records in 600 s")
                time.sleep(0.05)
                lines = _count_lines(out)
            cpu, wall = _proc_cpu_s(pid) - cpu0, time.monotonic() - t0
        finally:
            httpx2.delete(f"{s.connect_url}/connectors/{cfg['name']}", timeout=30)
        row = ConsumerRow("Kafka Connect FileStreamSink", "record", lines, cpu, cpu, wall,
                          "Apicurio AvroConverter 2.6.13; Struct.toString() lines")
        self.report.rows.append(row)
        self.say(f"  {row.name:<28} record {lines:>9,} records  cpu {cpu:6.2f} s  {row.per_cpu_s:>9,.0f} rec/cpu-s")

    def scaling(self, bench: Bench, source: str) -> None:
        """One member, then two members of one group, each run the same way: the members join an
        empty six-partition topic (and are assigned its partitions) before a copy of the
        record-shape topic is written into it, so both runs read while the copy is written and
        neither member of two reads what the other should have."""
        one = self._live(bench, source, 1)
        two = self._live(bench, source, 2)
        if sum(n for n, _ in two) != sum(n for n, _ in one):
            raise HdrlogError(f"two members wrote {sum(n for n, _ in two)} records, one member {one[0][0]}")
        base = one[0][0] / one[0][1] if one[0][1] else 0.0
        per = [n / cpu if cpu else 0.0 for n, cpu in two]
        self.report.scaling = {"one_member_per_cpu_s": round(base),
                               "two_members_per_cpu_s": [round(x) for x in per],
                               "worst_ratio": round(min(per) / base, 3) if base else 0.0}
        self.say(f"  scaling: each of two members keeps {self.report.scaling['worst_ratio']:.0%} or more of one "
                 "member's records per CPU-second")

    def _live(self, bench: Bench, source: str, members: int) -> list[tuple[int, float]]:
        """(records, CPU seconds of the whole process) of each of ``members`` members of a new group
        reading a six-partition copy of ``source`` as it is written."""
        from producer.bench.contenders import create_topic

        s = bench.stack
        topic = f"hdrlog.bench.consume-6p.{uuid.uuid4().hex[:8]}"
        create_topic(s.bootstrap_servers, topic, None, partitions=6)
        group = f"bench-{members}m-{uuid.uuid4().hex[:8]}"
        procs = []
        for i in range(members):
            g = CpuGroup(f"consume-{members}m-{i}")
            procs.append((g, subprocess.Popen(
                [*HDRLOG, "--log-format", "json", "consume", "--topic", topic, "--bootstrap-servers",
                 s.bootstrap_servers, "--schema-registry", s.registry_url, "--from-beginning", "--idle-timeout", "5",
                 "--group", group, "--progress", "off", "--format", "ecs", "--sink",
                 f"file:{self.workdir / f'{members}m-{i}'}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True, preexec_fn=g.preexec_fn())))
        _wait_assigned(s.bootstrap_servers, group, members)
        self._copy6(bench, source, into=topic)
        out = []
        for i, (g, proc) in enumerate(procs):
            _out, err = proc.communicate(timeout=3600)
            gross = g.usage_s()
            g.close()
            if proc.returncode != 0:
                raise HdrlogError(f"member {i + 1} of {members} failed: {err.strip().splitlines()[-1:]}")
            summary = next(json.loads(line)["summary"] for line in reversed(err.splitlines())
                           if line.startswith('{"summary"'))
            n, busy = summary["events_written"], summary.get("busy_cpu_ms", 0) / 1000
            cpu = gross
            out.append((n, cpu))
            name = f"ecs file, {members} member{'s' if members > 1 else ''} (6 part.)"
            self.say(f"  {name:<28} record {n:>9,} records  cpu {cpu:6.2f} s  {n / cpu if cpu else 0:>9,.0f} "
                     f"rec/cpu-s{f' (member {i + 1})' if members > 1 else ''}")
            if members == 1:
                self.report.rows.append(ConsumerRow(name, "record", n, busy, gross, 0.0, "read as it was written"))
        return out

    def _copy6(self, bench: Bench, source: str, into: str) -> str:
        """The messages of ``source`` spread round-robin over the six partitions of ``into``."""
        from confluent_kafka import Producer

        from producer.bench.contenders import read_values

        s = bench.stack
        topic = into
        p = Producer({"bootstrap.servers": s.bootstrap_servers, "linger.ms": 20})
        for i, value in enumerate(read_values(s.bootstrap_servers, source)):
            while True:
                try:
                    p.produce(topic, value=value, partition=i % 6)
                    break
                except BufferError:
                    p.poll(0.1)
        if p.flush(60):
            raise HdrlogError(f"could not copy {source} to six partitions")
        return topic


def _wait_assigned(bootstrap: str, group: str, members: int, timeout_s: float = 120.0) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(10)
            if len(desc.members) == members and all(m.assignment.topic_partitions for m in desc.members):
                return
        except KafkaException:  # the group is not there until its first member joins
            pass
        time.sleep(0.2)
    raise HdrlogError(f"the {members} members of {group} were not all assigned partitions in {timeout_s:.0f} s")


def run_consumer_bench(*, records: int, out_dir: Path, say: Callable[[str], None], update: Path | None) -> None:
    workdir = fresh_workdir("hdrlog-bench-consumer-")
    cb = ConsumerBench(say, records, workdir)
    with Bench(say, 1.0, workdir) as bench:
        say(f"topics: the agent writes ~{records:,} records in each shape")
        topics = cb.topics(bench)
        say("consumer runs (CPU of the whole process, start-up included; busy: first message to last commit)")
        w = str(workdir)
        cases: list[tuple[str, str, list[str]]] = [
            ("ecs file", "batch", ["--format", "ecs", "--sink", f"file:{w}/ecs-batch"]),
            ("ecs file", "record", ["--format", "ecs", "--sink", f"file:{w}/ecs-record"]),
            ("ocsf file", "batch", ["--format", "ocsf", "--sink", f"file:{w}/ocsf"]),
            ("raw file", "batch", ["--format", "raw", "--sink", f"file:{w}/raw"]),
            ("ecs parquet", "batch", ["--format", "ecs", "--sink", f"parquet:{w}/lake", "--commit-interval", "5"]),
            ("ecs kafka json", "batch",
             ["--format", "ecs", "--sink", f"kafka:hdrlog.bench.json.{uuid.uuid4().hex[:8]}"]),
        ]
        for name, shape, args in cases:  # the rows with targets: the median of three runs
            cb.member(bench, name, topics[shape], shape, args, repeat=3 if name in TARGETS else 1)
        _http_members(cb, bench, topics["batch"], w)
        cb.connect(bench, topics["record"])
        cb.scaling(bench, topics["record"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "consumer.json").write_text(json.dumps(cb.report.to_json(), indent=2) + "\n")
    md = markdown(cb.report)
    (out_dir / "consumer.md").write_text(md)
    if update is not None:
        replace_between(update, "\n" + md, MARK_BEGIN, MARK_END)
    say(md)


def _http_members(cb: ConsumerBench, bench: Bench, topic: str, w: str) -> None:
    """_bulk into the real OpenSearch node, and HEC into a local server that answers Success."""
    from producer.devstack import LocalStack

    try:
        LocalStack(bench.stack).up(with_opensearch=True)
    except HdrlogError as exc:
        cb.report.skipped["ecs opensearch"] = str(exc)
    else:
        cb.member(bench, "ecs opensearch _bulk", topic, "batch",
                  ["--format", "ecs", "--sink", f"opensearch:{bench.stack.opensearch_url}",
                   "--index", f"hdrlog-bench-{uuid.uuid4().hex[:8]}"])
    from producer.bench.hecserver import serve_hec

    token = Path(w) / "hec-token"
    token.write_text("bench-token\n")
    with serve_hec() as url:
        cb.member(bench, "cim hec", topic, "batch",
                  ["--format", "cim", "--sink", f"hec:{url}", "--sink-token-file", str(token)])


def markdown(r: ConsumerReport) -> str:
    targets = TARGETS
    connect = next((row.per_cpu_s for row in r.rows if row.name.startswith("Kafka Connect")), 0.0)
    lines = [f"Run {r.started} on {r.machine}: `make bench-consumer` (`hdrlog bench --consumer "
             "--update BENCHMARKS.md`). The agent wrote "
             + ", ".join(f"{n:,} records in {shape} shape" for shape, n in r.records.items())
             + "; each run below read a whole topic as a new group.", "",
             "| consumer | topic | records | CPU s (process) | records / CPU-s (process) | CPU s (busy) | "
             "records / busy CPU-s | target (on the process's) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in r.rows:
        goal = targets.get(row.name)
        mark = ""
        if goal:
            mark = f"≥ {goal:,}: {'met' if row.per_cpu_s >= goal else 'NOT met'}"
        if row.name.startswith("ecs") and connect:
            vs = row.per_cpu_s / connect
            mark += ("; " if mark else "") + f"{vs:.2f}× Connect{'' if vs >= 1 else ': NOT met'}"
        lines.append(f"| {row.name} | {row.topic_shape} | {row.records:,} | {row.gross_cpu_s:.2f} | "
                     f"{row.per_cpu_s:,.0f} | {row.cpu_s:.2f} | {row.busy_per_cpu_s:,.0f} | {mark} |")
    notes = [f"- {row.name} ({row.topic_shape}): {row.note}" for row in r.rows if row.note]
    if notes:
        lines += ["", *notes]
    if r.scaling:
        lines += ["", f"Two members of one group on a six-partition topic: "
                  f"{', '.join(f'{x:,}' for x in r.scaling['two_members_per_cpu_s'])} records per CPU-second "
                  "(each process's) "
                  f"against {r.scaling['one_member_per_cpu_s']:,} for one member alone (each run reading the topic as "
                  "it was written): the worse keeps "
                  f"{r.scaling['worst_ratio']:.0%} (target ≥ 90%: "
                  f"{'met' if r.scaling['worst_ratio'] >= 0.9 else 'NOT met'})."]
    for name, why in r.skipped.items():
        lines.append(f"\nSkipped {name}: {why}")
    return "\n".join(lines) + "\n"
