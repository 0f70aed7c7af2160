"""``hdrlog bench --ingest``: the HTTP ingest's rates and latency with the disk buffer, while capture runs.

One agent (disk buffer, the defaults otherwise) captures the bench's veth pair,
across which the C sender keeps ``CAPTURE_RATE`` datagrams a second flowing for
the whole run, and takes log events from wrk on 127.0.0.1:

* ``single``: one event a request, wrk flat out (``SINGLE_CONNECTIONS``);
* ``array``: arrays of 100 events, flat out (``ARRAY_CONNECTIONS``);
* ``outage``: a paced load (``OUTAGE_CONNECTIONS`` connections, at most
  ``OUTAGE_RATE`` requests/s, one event each) for ``OUTAGE_SECONDS``, the
  broker SIGSTOPped from ``OUTAGE_FROM_S`` for ``OUTAGE_FOR_S``: the answers
  (202, or 503 once the buffer, capped at ``BUFFER_BYTES``, is full), the
  agent's RSS, and the events read back from Kafka against the accepted ones.

Rates are accepted events (the agent's counter) per wall second; latencies are
wrk's, arrival to 202 as the client sees it.  Writes ingest.json and ingest.md
and, with ``--update``, BENCHMARKS.md's ingest section.  tests/test_ingest_load.py
runs the outage run briefly with the same wrk script.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from producer.bench.agent import read_until_capturing
from producer.bench.common import workdir as fresh_workdir
from producer.errors import HdrlogError

MARK_BEGIN = "<!-- hdrlog bench ingest: begin -->"
MARK_END = "<!-- hdrlog bench ingest: end -->"
CAPTURE_RATE = 10_000
SINGLE_CONNECTIONS = 128
ARRAY_CONNECTIONS = 32
RUN_SECONDS = 20
OUTAGE_RATE, OUTAGE_SECONDS, OUTAGE_FROM_S, OUTAGE_FOR_S = 2_000, 40, 10.0, 15.0
TARGETS = {"single": 5_000, "array": 100_000}  # requests/s; events/s
#: the outage run's disk buffer cap (its own agent): small enough that the outage fills it, so the
#: run shows the pushback (503) a full buffer gives; the flat-out runs have the default 1 GiB
BUFFER_BYTES = 8 << 20
OUTAGE_CONNECTIONS = 50
P99_TARGET_MS = 100.0

#: wrk's script: unique messages "<run>-<thread>-<n>" (EVENTS a request: one object, or an array),
#: PACE_MS between a connection's requests (0: flat out), and the status codes counted per thread,
#: printed as one JSON line at the end with the errors and latency percentiles
WRK_SCRIPT = r"""
local counter, next_id, threads = 0, 0, {}
local pace_ms = tonumber(os.getenv("PACE_MS") or "0")
local events = tonumber(os.getenv("EVENTS") or "1")
local run = os.getenv("RUN") or "run"
local token = os.getenv("TOKEN")
function setup(thread)
  thread:set("tid", next_id)  -- a global of the thread's own Lua state
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  statuses = {}
end
if pace_ms > 0 then
  function delay()
    return pace_ms
  end
end
local function event()
  counter = counter + 1
  return '{"message":"' .. run .. '-' .. tid .. '-' .. counter .. '","level":"info","details":{'
    .. '"src_ip":"10.0.0.1","dst_ip":"10.0.0.2","src_port":40000,"port":80,"protocol":"tcp"}}'
end
function request()
  local body
  if events == 1 then
    body = event()
  else
    local parts = {}
    for i = 1, events do parts[i] = event() end
    body = "[" .. table.concat(parts, ",") .. "]"
  end
  local headers = {["Content-Type"] = "application/json"}
  if token then headers["Authorization"] = "Bearer " .. token end
  return wrk.format("POST", "/api/v1/logging", headers, body)
end
function response(status, headers, body)
  local key = tostring(status)
  if status == 503 or status == 429 then
    for name, _ in pairs(headers) do  -- header names are case-insensitive (granian sends them lower-case)
      if string.lower(name) == "retry-after" then key = key .. "+retry-after" break end
    end
  end
  statuses[key] = (statuses[key] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, '"' .. k .. '":' .. v) end
  io.write('{"statuses":{' .. table.concat(parts, ",") .. '},"errors":' .. (summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout) .. ',"requests":'
    .. summary.requests .. ',"seconds":' .. summary.duration / 1e6 .. ',"p50_ms":'
    .. latency:percentile(50) / 1000 .. ',"p99_ms":' .. latency:percentile(99) / 1000 .. '}\n')
end
"""


@dataclass
class Wrk:
    """A wrk run in the background; ``result()`` waits for it and returns its JSON line."""

    proc: subprocess.Popen[str]
    run: str

    def result(self, timeout: float) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0 or not out.strip():
            raise HdrlogError(f"wrk failed ({self.proc.returncode}): {err.strip()[:300]}")
        return dict(json.loads(out.strip().splitlines()[-1]))


def start_wrk(url: str, script: Path, *, seconds: float, connections: int, threads: int = 2, pace_ms: int = 0,
              events: int = 1, token: str | None = None) -> Wrk:
    """wrk against ``url`` with WRK_SCRIPT (written to ``script``)."""
    script.write_text(WRK_SCRIPT)
    run = uuid.uuid4().hex[:6]
    env = {**os.environ, "PACE_MS": str(pace_ms), "EVENTS": str(events), "RUN": run}
    if token:
        env["TOKEN"] = token
    proc = subprocess.Popen(["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "20s",
                             "-s", str(script), url], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    return Wrk(proc, run)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise HdrlogError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(agent_pid: int) -> list[int]:
    """The agent's parse workers (ingest/workers.py)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit()
                    and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == agent_pid
                    and b"producer.ingest.workers" in (entry / "cmdline").read_bytes()):
                out.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return out


def agent_rss_kib(agent_pid: int) -> int:
    """The RSS of the agent and its parse workers (OSError if the agent is gone)."""
    kib = rss_kib(agent_pid)
    for pid in worker_pids(agent_pid):
        with contextlib.suppress(OSError, HdrlogError):  # (a worker that just ended)
            kib += rss_kib(pid)
    return kib


def workers_cpu_s(agent_pid: int) -> float:
    """CPU seconds of the agent's parse workers so far."""
    total = 0.0
    for pid in worker_pids(agent_pid):
        with contextlib.suppress(OSError):
            total += cpu_s(pid)
    return total


class RssSampler:
    """The RSS of the agent and its parse workers, summed, every half second, on a thread, until ``stop``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kib: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.kib.append(agent_rss_kib(self.pid))
            except OSError:
                return

    def stop(self) -> tuple[float, float]:
        """(min, max) MiB after the first fifth (warm-up)."""
        self._stop.set()
        self._thread.join(5)
        warm = self.kib[len(self.kib) // 5:] or self.kib or [0]
        return min(warm) / 1024, max(warm) / 1024


def log_messages(bootstrap: str, registry_url: str, topic: str) -> list[str]:
    """The ``message`` of every LogEvent in ``topic``, decoded with the registry's schema."""
    import fastavro
    from confluent_kafka import Consumer, TopicPartition

    from producer.serialize.avro import parse_frame
    from producer.serialize.registry import Registry

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"hdrlog-bench-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    out: list[str] = []
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = meta.topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        left = {p for p, end in ends.items() if end > 0}
        schemas: dict[int, Any] = {}
        with Registry(registry_url) as registry:
            deadline = time.monotonic() + 120
            while left and time.monotonic() < deadline:
                for m in consumer.consume(10_000, timeout=1.0):
                    if m.error() is not None:
                        continue
                    schema_id, body = parse_frame(m.value() or b"")
                    if schema_id not in schemas:
                        schemas[schema_id] = fastavro.parse_schema(json.loads(registry.schema_text(schema_id)))
                    datum: Any = fastavro.schemaless_reader(io.BytesIO(body), schemas[schema_id])
                    out.append(str(datum["message"]))
                    if (m.offset() or 0) + 1 >= ends[m.partition() or 0]:
                        left.discard(m.partition() or 0)
    finally:
        consumer.close()
    return out


@dataclass
class IngestRow:
    name: str
    events_per_request: int
    connections: int
    seconds: float
    requests: int
    accepted_events: int
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    agent_cpu_s: float
    workers_cpu_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.accepted_events / self.seconds if self.seconds else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.events_per_s / self.events_per_request

    def verdict(self) -> str:
        """Against ``TARGETS`` (requests/s for single events, events/s for arrays) and ``P99_TARGET_MS``;
        the outage run has no target ("-")."""
        if self.name not in TARGETS:
            return "-"
        rate, unit = (self.requests_per_s, "requests/s") if self.name == "single" else (self.events_per_s,
                                                                                         "events/s")
        misses = ([f"{rate:,.0f} < {TARGETS[self.name]:,} {unit}"] if rate < TARGETS[self.name] else []) + \
            ([f"p99 {self.p99_ms:.1f} >= {P99_TARGET_MS:g} ms"] if self.p99_ms >= P99_TARGET_MS else [])
        return "NOT met: " + "; ".join(misses) if misses else "met"


class IngestAgent:
    """``hdrlog agent`` with the disk buffer, capturing the bench's veth, its server on a free port."""

    def __init__(self, iface: str, bootstrap: str, registry: str, workdir: Path, buffer_bytes: int = 0) -> None:
        self.logs_topic = f"hdrlog.bench.logs.{uuid.uuid4().hex[:8]}"
        argv = [sys.executable, "-m", "producer", "--log-format", "json", "agent", "--iface", iface,
                "--bootstrap-servers", bootstrap, "--schema-registry", registry, "--buffer", "disk",
                "--topic", f"hdrlog.bench.headers.{uuid.uuid4().hex[:8]}", "--ingest-topic", self.logs_topic,
                "--state-dir", str(workdir), "--listen", "127.0.0.1:0"]
        self._err: list[str] = []
        env = {**os.environ, "HDRLOG_BUFFER_MAX_BYTES": str(buffer_bytes)}
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self._ready = threading.Event()
        threading.Thread(target=read_until_capturing, args=(self.proc, self._err, self._ready), daemon=True).start()
        if not self._ready.wait(120) or self.proc.poll() is not None:
            self.proc.kill()
            raise HdrlogError(f"the agent did not start: {''.join(self._err[-3:])[:400]}")
        self.url = next(json.loads(line)["msg"].rsplit(" ", 1)[1] for line in self._err
                        if line.startswith("{") and "serving /metrics" in line)

    def status(self) -> dict[str, Any]:
        import httpx2

        return dict(httpx2.get(self.url + "/api/v1/status", timeout=10).json())

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(180)
        for line in reversed(self._err):
            if line.startswith('{"summary"'):
                return dict(json.loads(line)["summary"])
        raise HdrlogError(f"the agent left no summary: {''.join(self._err[-3:])[:400]}")


def _run(agent: IngestAgent, name: str, script: Path, *, events: int, connections: int, seconds: float,
         pace_ms: int = 0, during: Callable[[], dict[str, Any]] | None = None) -> IngestRow:
    before = agent.status()["ingest"]["counters"]["accepted"]
    cpu0, wcpu0 = cpu_s(agent.proc.pid), workers_cpu_s(agent.proc.pid)
    wrk = start_wrk(agent.url, script, seconds=seconds, connections=connections, pace_ms=pace_ms, events=events)
    extra = during() if during is not None else {}
    seen = wrk.result(timeout=seconds + 300)
    accepted = agent.status()["ingest"]["counters"]["accepted"] - before
    row = IngestRow(name, events, connections, float(seen["seconds"]), int(seen["requests"]), accepted,
                    dict(seen["statuses"]), float(seen["p50_ms"]), float(seen["p99_ms"]),
                    cpu_s(agent.proc.pid) - cpu0, workers_cpu_s(agent.proc.pid) - wcpu0,
                    {**extra, "run": wrk.run, "wrk_errors": seen["errors"]})
    return row


def run_ingest_bench(*, out_dir: Path, say: Callable[[str], None], update: Path | None) -> list[IngestRow]:
    from producer.bench.run import PORT, Bench, replace_between
    from producer.bench.sender import send
    from producer.devstack import LocalStack

    workdir = fresh_workdir("hdrlog-bench-ingest-")
    rows: list[IngestRow] = []
    with Bench(say, 1.0, workdir) as bench:
        stack = bench.stack
        LocalStack(stack).up()
        total_s = 2 * RUN_SECONDS + OUTAGE_SECONDS + 120
        traffic = send(bench.net, bench.sender, bench.net.host_ip, PORT, CAPTURE_RATE, total_s)
        script = workdir / "ingest.lua"
        say(f"capture: {CAPTURE_RATE:,} datagrams/s across the veth for the whole run; the disk buffer")
        agent = IngestAgent(bench.net.host_if, stack.bootstrap_servers, stack.registry_url, workdir / "agent")
        try:
            for name, events, conns in (("single", 1, SINGLE_CONNECTIONS), ("array", 100, ARRAY_CONNECTIONS)):
                row = _run(agent, name, script, events=events, connections=conns, seconds=RUN_SECONDS)
                rows.append(row)
                say(f"  {name:<7} {row.requests_per_s:>9,.0f} requests/s  {row.events_per_s:>9,.0f} events/s  "
                    f"p50 {row.p50_ms:.1f} ms  p99 {row.p99_ms:.1f} ms  agent CPU {row.agent_cpu_s / row.seconds:.2f}"
                    f" (+ parse workers {row.workers_cpu_s / row.seconds:.2f})")
        finally:
            first = agent.stop()
        messages = log_messages(stack.bootstrap_servers, stack.registry_url, agent.logs_topic)
        for row in rows:  # every accepted event is in Kafka
            row.extra["unique_in_kafka"] = len({m for m in messages if m.startswith(row.extra["run"] + "-")})
        rows[-1].extra["accepted_total"] = first["ingest"]["accepted"]
        agent = IngestAgent(bench.net.host_if, stack.bootstrap_servers, stack.registry_url, workdir / "outage",
                            buffer_bytes=BUFFER_BYTES)
        try:
            rss = RssSampler(agent.proc.pid)
            kafka = LocalStack(stack).status().kafka.pid

            def outage() -> dict[str, Any]:
                time.sleep(OUTAGE_FROM_S)  # the schedule of the run: the broker stops 10 s in
                assert kafka is not None
                os.kill(kafka, signal.SIGSTOP)
                time.sleep(OUTAGE_FOR_S)
                os.kill(kafka, signal.SIGCONT)
                return {}

            pace = max(1, round(1000 * OUTAGE_CONNECTIONS / OUTAGE_RATE))
            row = _run(agent, "outage", script, events=1, connections=OUTAGE_CONNECTIONS, seconds=OUTAGE_SECONDS,
                       pace_ms=pace, during=outage)
            deadline = time.monotonic() + 180
            while agent.status()["buffer"]["records"] and time.monotonic() < deadline:
                time.sleep(0.5)  # the buffer drains after the outage
            lo, hi = rss.stop()
            row.extra.update({"rss_mib": [round(lo, 1), round(hi, 1)]})
        finally:
            summary = agent.stop()
            traffic.terminate()
            traffic.communicate(timeout=30)
        messages = log_messages(stack.bootstrap_servers, stack.registry_url, agent.logs_topic)
        mine = [m for m in messages if m.startswith(row.extra["run"] + "-")]
        c = summary["ingest"]
        row.extra.update({"unique_in_kafka": len(set(mine)), "duplicates_in_kafka": len(mine) - len(set(mine)),
                          "accepted_total": c["accepted"],
                          "header_records_delivered": summary["agent"]["delivered"],
                          "kernel_ringbuf_lost": summary["kernel"]["ringbuf_reserve_failed"]})
        rows.append(row)
        say(f"  outage  {row.events_per_s:>9,.0f} accepted/s  answers {row.statuses}  p99 {row.p99_ms:.1f} ms  "
            f"RSS {lo:.0f}-{hi:.0f} MiB  unique in Kafka {len(set(mine)):,}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ingest.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    md = markdown(rows)
    (out_dir / "ingest.md").write_text(md)
    if update is not None:
        replace_between(update, "\n" + md, MARK_BEGIN, MARK_END)
    say(md)
    return rows


def markdown(rows: list[IngestRow]) -> str:
    lines = ["| run | events/request | connections | requests/s | events/s | p50 ms | p99 ms | agent CPU | parse "
             "workers' CPU | answers (wrk) | accepted events (agent) | the run's events in Kafka | target |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        answers = ", ".join(f"{k} {v:,}" for k, v in sorted(r.statuses.items()))
        lines.append(f"| {r.name} | {r.events_per_request} | {r.connections} | {r.requests_per_s:,.0f} | "
                     f"{r.events_per_s:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
                     f"{r.agent_cpu_s / r.seconds:.2f} | {r.workers_cpu_s / r.seconds:.2f} | {answers} | "
                     f"{r.accepted_events:,} | "
                     f"{r.extra.get('unique_in_kafka', 0):,} | {r.verdict()} |")
    lines += ["", f"Targets: single events >= {TARGETS['single']:,} requests/s, arrays >= "
              f"{TARGETS['array']:,} events/s, each with p99 < {P99_TARGET_MS:g} ms."]
    flat = [r for r in rows if r.name != "outage"]
    if flat:
        lines += ["", f"The flat-out runs' agent accepted {flat[-1].extra.get('accepted_total', 0):,} events in all "
                  f"(requests still in flight when wrk stopped included); Kafka holds "
                  f"{sum(r.extra.get('unique_in_kafka', 0) for r in flat):,} distinct events of those runs."]
    out = next((r for r in rows if r.name == "outage"), None)
    if out is not None:
        e = out.extra
        pace = max(1, round(1000 * OUTAGE_CONNECTIONS / OUTAGE_RATE))
        lines += ["", f"Outage run: {OUTAGE_CONNECTIONS} connections, each waiting {pace} ms after an answer "
                  f"before its next request (at most {OUTAGE_RATE:,} requests/s), for {OUTAGE_SECONDS} s; the "
                  f"broker SIGSTOPped from {OUTAGE_FROM_S:g} s for {OUTAGE_FOR_S:g} s; the disk buffer capped at "
                  f"{BUFFER_BYTES >> 20} MiB so that the outage fills it. Unique events of the run in Kafka "
                  f"afterwards: {e.get('unique_in_kafka', 0):,} (repeats {e.get('duplicates_in_kafka', 0):,}); the "
                  f"agent accepted {e.get('accepted_total', 0):,}. The RSS of the agent and its parse worker "
                  f"after warm-up: "
                  f"{e['rss_mib'][0]:.0f}-{e['rss_mib'][1]:.0f} MiB. Header records delivered meanwhile: "
                  f"{e.get('header_records_delivered', 0):,} (ring buffer losses {e.get('kernel_ringbuf_lost', 0):,})."]
    return "\n".join(lines) + "\n"
