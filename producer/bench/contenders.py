"""The agent's rivals in the benchmark: tshark piped into kcat, pmacctd's Kafka plugin, and the
obvious per-record Python pipeline (benchmarks/per_record_baseline.py).

Each runs in its own ``CpuGroup``; its CPU is the group's usage at exit minus
at ready, and its start-up's the usage at ready.  ``stop()`` first lets the contender work off what it still holds
(``settle``: its CPU use falls to near zero, bounded), then signals it the
way its documentation asks for a graceful end, waits for every process of the
group to exit and reads the topic back: what the broker acknowledged.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from producer.bench.cgroup import CpuGroup
from producer.bench.common import Result, Target
from producer.errors import BrokerError, HdrlogError

ROOT = Path(__file__).resolve().parent.parent.parent
BASELINE_SCRIPT = ROOT / "benchmarks" / "per_record_baseline.py"
READY_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 300.0  # tshark works off a flat-out run for minutes
EXIT_TIMEOUT_S = 60.0


# -- Kafka helpers -------------------------------------------------------------------------------

def create_topic(bootstrap: str, topic: str, config: dict[str, str] | None = None, partitions: int = 1) -> None:
    """Create ``topic`` with ``partitions`` (and topic ``config``) and wait until the broker has it."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # not its info lines at exit
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, config=config or {})])[topic].result(30)
    except KafkaException as exc:
        raise BrokerError(f"creating topic {topic}: {exc.args[0]}") from exc


def topics_named(bootstrap: str, prefix: str, say: Callable[[str], None]) -> set[str] | None:
    """The broker's topics whose names start with ``prefix``; None (and said why) if it cannot tell."""
    try:
        return {t for t in AdminClient({"bootstrap.servers": bootstrap, "log_level": 4}).list_topics(timeout=30).topics
                if t.startswith(prefix)}
    except KafkaException as exc:
        say(f"listing the topics failed: {exc.args[0]}")
        return None


def delete_topics(bootstrap: str, topics: set[str] | None, say: Callable[[str], None]) -> None:
    """Delete ``topics`` (the ones a test session or a bench made, once it has read them back): a broker
    that keeps every run's messages and thousands of partitions slows the runs after it, and recovers
    from a SIGKILL slowly enough to fail the fault tests' deadlines.  Best effort: a failure is said."""
    if not topics:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # held until the futures are done
    try:
        for fut in admin.delete_topics(sorted(topics), operation_timeout=60).values():
            fut.result(90)
    except KafkaException as exc:
        say(f"deleting {len(topics)} topics failed (they stay): {exc.args[0]}")


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "hdrlog-bench-readback",
                     "enable.auto.commit": False, "enable.partition.eof": False})


def _partitions(c: Consumer, topic: str) -> list[int]:
    meta = c.list_topics(topic, timeout=30).topics.get(topic)
    if meta is None or meta.error is not None:
        raise BrokerError(f"topic {topic} not found on the broker")
    return sorted(meta.partitions)


def count_messages(bootstrap: str, topic: str) -> int:
    """Messages in ``topic``: high minus low watermark, summed over its partitions."""
    c = _consumer(bootstrap)
    try:
        total = 0
        for p in _partitions(c, topic):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            total += high - low
        return total
    finally:
        c.close()


def read_values(bootstrap: str, topic: str, timeout_s: float = 120.0) -> Iterator[bytes]:
    """Every message value in ``topic`` up to the high watermarks taken at the start."""
    c = _consumer(bootstrap)
    try:
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in _partitions(c, topic):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, low))
        if not starts:
            return
        c.assign(starts)
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} back timed out")
            for msg in c.consume(10000, timeout=1.0):
                if msg.error() is not None:
                    raise BrokerError(f"reading {topic} back: {msg.error()}")
                part, offset = msg.partition(), msg.offset()
                if part is None or offset is None or part not in ends:
                    continue
                yield msg.value() or b""
                if offset + 1 >= ends[part]:
                    del ends[part]
    finally:
        c.close()


# -- process helpers -----------------------------------------------------------------------------

def _wait_for(what: str, found: Callable[[], bool], procs: Sequence[subprocess.Popen[str]],
              timeout_s: float = READY_TIMEOUT_S, log: Path | None = None) -> None:
    """Poll ``found`` until it holds; fail at once if one of ``procs`` exits, or at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not found():
        dead = next((p for p in procs if p.poll() is not None), None)
        if dead is not None or time.monotonic() > deadline:
            tail = _last_line(log) if log is not None else ""
            why = f"exited with {dead.returncode}" if dead is not None else f"not ready within {timeout_s:g}s"
            raise HdrlogError(f"{what} {why}" + (f": {tail}" if tail else ""))
        time.sleep(0.02)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _contains(path: Path, needle: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return needle in path.read_text(errors="replace")
        except OSError:
            return False
    return check


def settle(group: CpuGroup, timeout_s: float = SETTLE_TIMEOUT_S, window_s: float = 0.1,
           idle_cpu: float = 0.05, windows: int = 3) -> bool:
    """Wait until the group used less than ``idle_cpu`` of a CPU in ``windows`` windows in a row.

    What a contender still holds (a backlog in a pipe, a pcap ring, a cache) is
    worked off before it is told to stop; False if it was still busy at the deadline.
    """
    deadline = time.monotonic() + timeout_s
    quiet = 0
    last = group.usage_s()
    while time.monotonic() < deadline:
        time.sleep(window_s)
        now = group.usage_s()
        quiet = quiet + 1 if now - last < idle_cpu * window_s else 0
        last = now
        if quiet >= windows:
            return True
    return False


def _wait_group_empty(group: CpuGroup, procs: Sequence[subprocess.Popen[str]], timeout_s: float) -> bool:
    """Reap our direct children, then wait until no process is left in the group (forked writers)."""
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    while group.pids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _kill_all(group: CpuGroup, procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for pid in group.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for p in procs:
        p.wait()


class _Run(abc.ABC):
    """What every running contender shares: its group, processes, CPU baseline and the stop sequence."""

    name: str

    def __init__(self, name: str, target: Target, group: CpuGroup) -> None:
        self.name = name
        self.target = target
        self.group = group
        self.procs: list[subprocess.Popen[str]] = []
        self.cpu_at_ready = 0.0

    def ready(self) -> None:
        self.cpu_at_ready = self.group.usage_s()

    def abort(self) -> None:
        """Kill whatever still runs and remove the group (after a failed start, and at the end of stop)."""
        _kill_all(self.group, self.procs)
        self.group.close()

    def _before_signal(self) -> None:
        """After ``settle``: wait for whatever else the contender needs to have taken in all the traffic."""
        return None  # most need nothing more

    @abc.abstractmethod
    def _signal(self) -> None:
        """Ask the contender to end gracefully."""

    @abc.abstractmethod
    def _result(self, cpu_s: float, notes: list[str]) -> Result:
        """Read back what it delivered, once all its processes are gone."""

    def stop(self) -> Result:
        notes: list[str] = []
        try:
            if not settle(self.group):
                notes.append(f"still busy {SETTLE_TIMEOUT_S:g}s after the traffic")
            self._before_signal()
            self._signal()
            if not _wait_group_empty(self.group, self.procs, EXIT_TIMEOUT_S):
                notes.append(f"killed: not exited {EXIT_TIMEOUT_S:g}s after the stop signal")
                _kill_all(self.group, self.procs)
            cpu_s = self.group.usage_s() - self.cpu_at_ready
        finally:
            self.abort()
        result = self._result(cpu_s, notes)
        result.startup_cpu_s = self.cpu_at_ready
        return result


# -- a. tshark -T ek | kcat -P ---------------------------------------------------------------------

_TSHARK_DROPS = re.compile(r"(\d+) packets? dropped")


class TsharkKcat:
    """``tshark -l -i IF -T ek | kcat -P``: one JSON document per packet, one Kafka message per line.

    ``-T ek`` writes a bulk-index line before every packet document, so the topic
    holds two messages per packet; ``delivered`` counts the packet documents only.
    """

    name = "tshark+kcat"

    def available(self) -> str | None:
        missing = [t for t in ("tshark", "kcat") if shutil.which(t) is None]
        return f"{' and '.join(missing)} not installed" if missing else None

    def start(self, target: Target) -> _TsharkRun:
        return _TsharkRun(target)


class _TsharkRun(_Run):
    def __init__(self, target: Target) -> None:
        super().__init__(TsharkKcat.name, target, CpuGroup("tshark"))
        work = Path(target.workdir)
        self.tshark_log = work / "tshark.stderr"
        self.kcat_log = work / "kcat.stderr"
        try:
            with open(self.tshark_log, "w") as terr, open(self.kcat_log, "w") as kerr:
                tshark = subprocess.Popen(
                    ["tshark", "-l", "-i", target.iface, "-T", "ek", "--temp-dir", str(work)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terr, text=True,
                    preexec_fn=self.group.preexec_fn())
                self.procs.append(tshark)
                out: IO[str] | None = tshark.stdout
                self.procs.append(subprocess.Popen(
                    ["kcat", "-P", "-b", target.bootstrap_servers, "-t", target.topic],
                    stdin=out, stdout=subprocess.DEVNULL, stderr=kerr, text=True,
                    preexec_fn=self.group.preexec_fn()))
                if out is not None:
                    out.close()  # kcat alone holds the pipe: tshark's exit is its EOF
            # "Capturing on" comes before dumpcap even starts; "Capture started." once dumpcap has
            # opened the interface and reported its file (tshark's capture_input_new_file)
            _wait_for("tshark", _contains(self.tshark_log, "Capture started."), self.procs, log=self.tshark_log)
        except BaseException:
            self.abort()
            raise
        self.ready()

    def _signal(self) -> None:
        self.procs[0].send_signal(signal.SIGINT)  # tshark stops dumpcap; kcat flushes at EOF

    def _result(self, cpu_s: float, notes: list[str]) -> Result:
        err = self.tshark_log.read_text(errors="replace")
        dropped = sum(int(n) for n in _TSHARK_DROPS.findall(err))
        docs = index = 0
        for value in read_values(self.target.bootstrap_servers, self.target.topic):
            if value.startswith(b'{"index"'):
                index += 1
            else:
                docs += 1
        notes.append(f"{docs + index:,} messages: {docs:,} packet documents + {index:,} index lines")
        if self.procs[1].returncode:
            notes.append(f"kcat exited {self.procs[1].returncode}: {_last_line(self.kcat_log)}")
        return Result(self.name, delivered=docs, cpu_s=cpu_s,
                      counted={"tshark_dropped": dropped} if dropped else {}, note="; ".join(notes),
                      extra={"messages": docs + index, "index_lines": index})


# -- b. pmacctd, Kafka plugin ----------------------------------------------------------------------

_PM_DROPS = re.compile(r"dropped_packets=(\d+)")
_PM_RECEIVED = re.compile(r"received_packets=(\d+)")


class Pmacctd:
    """pmacctd with its Kafka plugin, JSON, aggregated per packet (``timestamp_arrival`` in the key).

    ``delivered`` is the sum of the records' ``packets`` (a record may stand for
    more than one packet when two share the 5-tuple and the arrival microsecond).
    """

    name = "pmacctd"

    def available(self) -> str | None:
        if shutil.which("pmacctd") is None:
            return "pmacctd not installed"
        res = subprocess.run(["pmacctd", "-V"], capture_output=True, text=True, check=False)
        if "--enable-kafka" not in res.stdout + res.stderr:
            return "pmacctd was built without the Kafka plugin (--enable-kafka)"
        return None

    def start(self, target: Target) -> _PmacctRun:
        return _PmacctRun(target)


def pmacct_config(target: Target, log: Path) -> str:
    host, _, port = target.bootstrap_servers.split(",")[0].rpartition(":")
    return "\n".join([
        "daemonize: false",
        f"logfile: {log}",
        f"pcap_interface: {target.iface}",
        "plugins: kafka[k]",
        "aggregate[k]: src_host, dst_host, src_port, dst_port, proto, timestamp_arrival",
        "kafka_output[k]: json",
        "kafka_refresh_time[k]: 1",
        f"kafka_topic[k]: {target.topic}",
        f"kafka_broker_host[k]: {host.strip('[]')}",
        f"kafka_broker_port[k]: {port}",
        "",
    ])


class _PmacctRun(_Run):
    def __init__(self, target: Target) -> None:
        super().__init__(Pmacctd.name, target, CpuGroup("pmacctd"))
        work = Path(target.workdir)
        self.log = work / "pmacctd.log"
        conf = work / "pmacctd.conf"
        conf.write_text(pmacct_config(target, self.log))
        try:
            self.procs.append(subprocess.Popen(
                ["pmacctd", "-f", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, text=True, preexec_fn=self.group.preexec_fn()))
            # the core logs the link type once pcap is open; the plugin logs its JSON set-up once
            # its cache exists (the core queues packets for it in the plugin pipe meanwhile)
            _wait_for("pmacctd", _contains(self.log, "link type is"), self.procs, log=self.log)
            _wait_for("pmacctd's Kafka plugin", _contains(self.log, "JSON: setting object handlers"),
                      self.procs, log=self.log)
        except BaseException:
            self.abort()
            raise
        self.ready()

    def _before_signal(self) -> None:
        # The plugin takes what the core queued for it only when its poll on the pipe wakes (every
        # second when idle), and on SIGINT it purges its cache without reading the queue first: the
        # last packets would be lost.  Two more purges (one per kafka_refresh_time) than when the
        # traffic ended mean a full turn of its loop has passed.
        purges = self._purges()
        with contextlib.suppress(HdrlogError):
            _wait_for("pmacctd's Kafka plugin", lambda: self._purges() >= purges + 2, self.procs,
                      timeout_s=10.0, log=self.log)

    def _purges(self) -> int:
        try:
            return self.log.read_text(errors="replace").count("Purging cache - START")
        except OSError:
            return 0

    def _signal(self) -> None:
        # docs/SIGNALS: SIGUSR1 makes the core log its pcap counters (received, dropped) ...
        core = self.procs[0]
        core.send_signal(signal.SIGUSR1)
        with contextlib.suppress(HdrlogError):  # without them the run still counts
            _wait_for("pmacctd's SIGUSR1 statistics", _contains(self.log, "received_packets="), [core],
                      timeout_s=10.0, log=self.log)
        # ... and SIGINT ends it gracefully: the core passes it on to the plugins, which purge their
        # caches (through a last writer) before they exit
        core.send_signal(signal.SIGINT)

    def _result(self, cpu_s: float, notes: list[str]) -> Result:
        messages = packets = bad = 0
        for value in read_values(self.target.bootstrap_servers, self.target.topic):
            messages += 1
            try:
                packets += int(json.loads(value)["packets"])
            except (ValueError, KeyError, TypeError):
                bad += 1
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        dropped = sum(int(n) for n in _PM_DROPS.findall(log))
        received = sum(int(n) for n in _PM_RECEIVED.findall(log))
        notes.append(f"{messages:,} messages; pcap received {received:,}")
        if bad:
            notes.append(f"{bad} messages without a packets count")
        overflows = log.count("Missing data detected")
        if overflows:
            notes.append(f"plugin pipe overflowed: {overflows} 'Missing data detected' warnings (no packet count)")
        counted = {"pcap_dropped": dropped} if dropped else {}
        return Result(self.name, delivered=packets, cpu_s=cpu_s, counted=counted, note="; ".join(notes),
                      extra={"messages": messages, "pcap_received": received, "pipe_overflow_warnings": overflows})


# -- c. the per-record Python pipeline -------------------------------------------------------------

class PerRecordBaseline:
    """benchmarks/per_record_baseline.py: bcc callback -> dict -> fastavro -> produce, per record."""

    name = "per-record python"

    def available(self) -> str | None:
        try:
            import bcc  # noqa: F401
        except ImportError:
            return "bcc is not importable (install python3-bpfcc)"
        return None

    def start(self, target: Target) -> _BaselineRun:
        return _BaselineRun(target)


class _BaselineRun(_Run):
    def __init__(self, target: Target) -> None:
        super().__init__(PerRecordBaseline.name, target, CpuGroup("baseline"))
        self.log = Path(target.workdir) / "baseline.stderr"
        try:
            with open(self.log, "w") as err:
                proc = subprocess.Popen(
                    [sys.executable, str(BASELINE_SCRIPT), "--iface", target.iface, "--bootstrap-servers",
                     target.bootstrap_servers, "--topic", target.topic, "--registry", target.registry_url],
                    cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                    preexec_fn=self.group.preexec_fn())
            self.procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until "ready" or its exit (EOF)
            if line.strip() != "ready":
                proc.wait(10)
                raise HdrlogError(f"per_record_baseline.py exited with {proc.returncode}: {_last_line(self.log)}")
        except BaseException:
            self.abort()
            raise
        self.ready()

    def _signal(self) -> None:
        self.procs[0].send_signal(signal.SIGTERM)

    def _result(self, cpu_s: float, notes: list[str]) -> Result:
        proc = self.procs[0]
        out = proc.stdout.read() if proc.stdout is not None else ""
        summary = next((json.loads(ln) for ln in out.splitlines() if ln.startswith("{")), None)
        counted: dict[str, int] = {}
        extra: dict[str, int] = {}
        if summary is None:
            notes.append(f"no summary (exit {proc.returncode}): {_last_line(self.log)}")
        else:
            kernel = summary.get("kernel", {})
            for key, value in (("ringbuf_reserve_failed", kernel.get("ringbuf_reserve_failed", 0)),
                               ("delivery_failed", summary.get("failed", 0)),
                               ("unflushed", summary.get("unflushed", 0))):
                if value:
                    counted[key] = int(value)
            extra = {"decoded": int(summary.get("decoded", 0)), "delivered_callbacks": int(summary.get("delivered", 0)),
                     "kernel_seen": int(kernel.get("seen", 0))}
        delivered = count_messages(self.target.bootstrap_servers, self.target.topic)
        return Result(self.name, delivered=delivered, cpu_s=cpu_s, counted=counted, note="; ".join(notes),
                      extra=extra)


CONTENDERS = (TsharkKcat, Pmacctd, PerRecordBaseline)
