"""The only place that wires the stages together.

    kernel hooks (tc or XDP) --(ring buffer)--> capture thread --(bounded queue)--> publish thread
                                                  drain chunks             decode -> sink (Kafka | stdout)

Backpressure: the queue between capture and publish is bounded; when it is
full the capture thread waits, the ring buffer fills, and the kernel counts
every record it cannot reserve (``ringbuf_reserve_failed``).  Nothing is
dropped in user space except under a named reason (telemetry/counters.py).

Start order: interfaces -> privileges -> registry and broker (retried up to
the connect timeout) -> BPF load -> filters and sampling into maps -> attach
(replacing stale hooks of ours), then the link watcher for patterns.
Stop order: detach -> final ring-buffer drain -> publish the rest -> flush
within the deadline -> count what is still unflushed -> unload.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy.typing as npt

from producer.capture import links, xdp
from producer.capture.control import CaptureControl
from producer.capture.program import CaptureProgram, ProgramOptions, check_privileges
from producer.capture.ringbuf import RingBufferReader
from producer.capture.tc import TcHooks
from producer.config import AgentConfig
from producer.decode import layout
from producer.decode.convert import InterfaceNames, MonotonicToWall, RecordDecoder
from producer.errors import ConfigError, HdrlogError
from producer.publish.kafka import KafkaPublisher
from producer.publish.sinks import KafkaSink, RecordSink, StdoutSink
from producer.retry import with_retry
from producer.serialize.avro import ConfluentAvroSerializer
from producer.serialize.registry import Registry
from producer.serialize.schemas import AvroSchema
from producer.telemetry.counters import Counters

log = logging.getLogger(__name__)

_END = None  # queue sentinel: capture has finished
# records per queued chunk: bounds the queue's memory at queue_chunks x 8192 x 112 bytes
# (56 MiB with the default 64 chunks), whatever the ring buffer's size
CHUNK_RECORDS = 8192
# pause after a partial drain: the latency this adds at high rates, in seconds
PACE_S = 0.01


@dataclass
class AgentReport:
    """What the agent did: kernel and user-space counters at exit."""

    kernel: dict[str, int] = field(default_factory=dict)
    user: dict[str, int] = field(default_factory=dict)
    interfaces: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"interfaces": self.interfaces, "kernel": self.kernel, "agent": self.user}


def connect_kafka(cfg: AgentConfig, counters: Counters,
                  on_retry: Callable[[BaseException, float], None]) -> KafkaSink:
    """Registry and broker, each retried until the connect timeout."""
    schema = AvroSchema.load("HeaderRecord")
    subject = f"{cfg.topic}-value"  # TopicNameStrategy
    with Registry(cfg.schema_registry, cfg.registry) as registry:
        schema_id = with_retry(lambda: registry.register(subject, schema.text),
                               deadline_s=cfg.connect_timeout_s, on_retry=on_retry)
    publisher = KafkaPublisher(cfg.bootstrap_servers, cfg.topic, counters, cfg.kafka)
    with_retry(lambda: publisher.check_reachable(min(5.0, max(cfg.connect_timeout_s, 0.5))),
               deadline_s=cfg.connect_timeout_s, on_retry=on_retry)
    publisher.ensure_topic(cfg.partitions)
    log.info("publishing to %s (schema id %d, subject %s)", cfg.topic, schema_id, subject)
    return KafkaSink(publisher, ConfluentAvroSerializer(schema, schema_id),
                     cfg.host_id.encode(), counters)


class Agent:
    """Capture on the configured interfaces and deliver until ``stop`` is set."""

    def __init__(self, cfg: AgentConfig, *, out: TextIO | None = None,
                 status: Callable[[str], None] | None = None,
                 reload_config: Callable[[], AgentConfig] | None = None) -> None:
        self.cfg = cfg
        self.counters = Counters()
        self._out = out or sys.stdout
        self._status = status
        self._queue: queue.Queue[npt.NDArray[Any] | None] = queue.Queue(maxsize=cfg.queue_chunks)
        self._failure: BaseException | None = None
        self._failed = threading.Event()
        self.ready = threading.Event()  # set once every hook is attached
        self.reload_requested = threading.Event()  # SIGHUP: re-read filters and sampling
        self._reload_config = reload_config

    # -- threads -------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._failed.set()

    def _drain(self, reader: RingBufferReader) -> int:
        """Drain until caught up: a chunk smaller than CHUNK_RECORDS means the reader has
        reached the producer (chasing it record by record would cost a drain per few)."""
        drained = 0
        while True:
            chunk = reader.drain(CHUNK_RECORDS)
            if len(chunk):
                drained += len(chunk)
                self.counters.add("drained", len(chunk))
                self._put(chunk)
            if len(chunk) < CHUNK_RECORDS:
                return drained

    def _capture_loop(self, reader: RingBufferReader, detached: threading.Event,
                      emitted: Callable[[], int]) -> None:
        timeout = self.cfg.poll_interval_ms / 1000.0
        try:
            while not detached.is_set() and not self._failed.is_set():
                reader.wait(timeout)
                if 0 < self._drain(reader) < CHUNK_RECORDS:
                    # Let a batch build up before the next drain: each drain has a fixed
                    # cost, and a reader that chases the producer pays it per few records.
                    # The ring buffer absorbs the pause (16 MiB holds ~140k records).
                    detached.wait(PACE_S)
            # Detached.  A program already running on another CPU when its filter was
            # removed may still write one record: drain until the kernel's emitted count
            # is all here (bounded, so a stuck count cannot hang the exit).
            end = time.monotonic() + 1.0
            while True:
                self._drain(reader)
                if self.counters.get("drained") >= emitted() or time.monotonic() > end:
                    return
                reader.wait(0.01)
        except BaseException as exc:  # noqa: BLE001 - top of a thread: record, stop the agent
            log.exception("capture stopped")
            self._fail(exc)
        finally:
            self._put(_END)

    def _put(self, item: npt.NDArray[Any] | None) -> None:
        while not self._failed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                self.counters.add("capture_queue_full_waits")
        if item is not None:  # the publisher died: what it will never take is counted
            self.counters.add("dropped_after_failure", len(item))

    def _count_abandoned(self) -> None:
        """After a failure, count what is left in the queue (it will never be published)."""
        while True:
            try:
                chunk = self._queue.get_nowait()
            except queue.Empty:
                return
            if chunk is not None:
                self.counters.add("dropped_after_failure", len(chunk))

    def _publish_loop(self, decoder: RecordDecoder, sink: RecordSink) -> None:
        try:
            while True:
                try:
                    chunk = self._queue.get(timeout=0.2)
                except queue.Empty:
                    sink.poll()
                    continue
                if chunk is None:
                    return
                records = decoder.decode(chunk)
                self.counters.add("decoded", len(records))
                sink.write(records)
        except BaseException as exc:  # noqa: BLE001 - top of a thread: record, stop the agent
            log.exception("publishing stopped")
            self._fail(exc)

    # -- lifecycle -----------------------------------------------------------

    def run(self, stop: threading.Event) -> AgentReport:
        cfg = self.cfg
        if not cfg.interfaces:
            raise ConfigError("no interface given (--iface or HDRLOG_IFACE)")
        with TcHooks() as tc:
            ifindexes = links.resolve(cfg.interfaces)
            check_privileges()
            sink: RecordSink
            if cfg.stdout:
                sink = StdoutSink(self._out, self.counters, on_closed=stop.set)
            else:
                sink = connect_kafka(cfg, self.counters, self._retrying)
            program = CaptureProgram(ProgramOptions(ringbuf_pages=cfg.ringbuf_pages))
            try:
                return self._run_attached(stop, tc, ifindexes, program, sink)
            finally:
                program.close()

    def _reload(self, control: CaptureControl) -> None:
        """Apply the filter and sampling settings of a re-read config; keep the rest."""
        if self._reload_config is None:
            return
        try:
            new = self._reload_config()
        except HdrlogError as exc:
            log.error("reload refused, keeping the running settings: %s", exc)
            return
        live = ("include_cidrs", "exclude_cidrs", "protocols", "ports", "drop_non_ip",
                "sample_rate", "wakeup_records")
        ignored = [f.name for f in dataclasses.fields(new)
                   if f.name not in live and getattr(new, f.name) != getattr(self.cfg, f.name)]
        merged = dataclasses.replace(self.cfg, **{k: getattr(new, k) for k in live})
        control.apply(merged)
        self.cfg = merged
        log.info("applied filters and sampling: %s", json.dumps({k: getattr(merged, k) for k in live}))
        if ignored:
            log.warning("changed settings that need a restart were not applied: %s", ", ".join(ignored))

    def _retrying(self, exc: BaseException, sleep_s: float) -> None:
        log.warning("%s; retrying in %.1fs", exc, sleep_s)

    def _run_attached(self, stop: threading.Event, tc: TcHooks, ifindexes: dict[str, int],
                      program: CaptureProgram, sink: RecordSink) -> AgentReport:
        cfg = self.cfg
        control = CaptureControl(program.bpf)
        control.apply(cfg)
        reader = RingBufferReader(program.ringbuf_fd, program.ringbuf_size, layout.RECORD_DTYPE)
        detached = threading.Event()
        names = InterfaceNames()
        decoder = RecordDecoder(cfg.host_id, names, MonotonicToWall())
        capture = threading.Thread(target=self._capture_loop,
                                   args=(reader, detached, lambda: program.counters()["emitted"]),
                                   name="hdrlog-capture", daemon=True)
        publish = threading.Thread(target=self._publish_loop, args=(decoder, sink),
                                   name="hdrlog-publish", daemon=True)
        attached: dict[str, int] = {}
        lock = threading.Lock()
        patterns = [s for s in cfg.interfaces if links.is_pattern(s)]

        def attach_new(name: str, idx: int) -> None:  # the watcher thread, its own netlink socket
            with lock:
                if attached.get(name) == idx:
                    return
                with TcHooks() as own:
                    self._attach(own, program, name, idx)
                attached[name] = idx
                names.forget(idx)
            log.info("capturing on %s (appeared later)", name)

        watcher = links.LinkWatcher(patterns, attach_new) if patterns else None
        try:
            if patterns:
                # names matched after subscribing: a link that appears meanwhile is seen twice, not never
                ifindexes.update(links.resolve(patterns))
            for name, idx in ifindexes.items():
                with lock:
                    self._attach(tc, program, name, idx)
                    attached[name] = idx
            log.info("capturing on %s", ", ".join(ifindexes) or f"(none yet: waiting for {', '.join(patterns)})")
            if watcher is not None:
                watcher.start()
            capture.start()
            publish.start()
            self.ready.set()
            self._wait(stop, program, control)
        finally:
            if watcher is not None:
                watcher.stop()
            with lock:
                for name, idx in attached.items():
                    self._detach(tc, name, idx)
            sink.begin_exit(time.monotonic() + cfg.flush_timeout_s)  # the whole exit is bounded
            detached.set()
        if capture.is_alive():
            capture.join()
        if publish.is_alive():
            publish.join()
        sink.close(cfg.flush_timeout_s)
        reader.close()
        if self._failure is not None:
            self._count_abandoned()
        report = AgentReport(program.counters(), self.counters.snapshot(), list(attached))
        if self._failure is not None:
            log.error("stopped by a failure; counters: %s", json.dumps(report.as_dict()))
            failure = self._failure
            if isinstance(failure, HdrlogError):
                raise failure
            raise HdrlogError(f"agent stopped: {failure}") from failure
        return report

    def _attach(self, tc: TcHooks, program: CaptureProgram, name: str, idx: int) -> None:
        """Hook one interface, replacing what a killed agent of ours left there."""
        cfg = self.cfg
        stale = tc.remove_ours(idx)
        if cfg.hook == "xdp":
            stale += xdp.detach_ours(name)
        if stale:
            log.warning("replaced %d stale hdrlog hook(s) on %s", stale, name)
        if cfg.hook == "xdp":
            mode = xdp.attach(name, program.xdp(), cfg.xdp_mode)
            log.info("XDP (%s mode) on %s", mode, name)
        else:
            tc.attach(idx, "ingress", program.ingress.fd, "hdrlog_ingress", cfg.tc_priority)
            tc.attach(idx, "egress", program.egress.fd, "hdrlog_egress", cfg.tc_priority)

    def _detach(self, tc: TcHooks, name: str, idx: int) -> None:
        try:
            if self.cfg.hook == "xdp":
                xdp.detach_ours(name)
            else:
                tc.remove_ours(idx)
                tc.drop_empty_clsact(idx)
        except HdrlogError as exc:
            log.error("detaching from %s: %s", name, exc)

    def _wait(self, stop: threading.Event, program: CaptureProgram, control: CaptureControl) -> None:
        """Until stopped, the duration ends or a stage fails; serves reloads and the status line."""
        deadline = None if self.cfg.duration_s is None else time.monotonic() + self.cfg.duration_s
        next_status = time.monotonic() + 1.0
        every = self.cfg.stats_interval_s
        next_stats = time.monotonic() + every if every > 0 else None
        while not stop.is_set() and not self._failed.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if self.reload_requested.wait(0.1 if deadline is None else min(0.1, deadline - now)):
                self.reload_requested.clear()
                self._reload(control)
            if next_stats is not None and time.monotonic() >= next_stats:
                next_stats += every
                log.info("stats %s", json.dumps({"kernel": program.counters(), "agent": self.counters.snapshot()}))
            if self._status is not None and time.monotonic() >= next_status:
                next_status += 1.0
                k = program.counters()
                u = self.counters.snapshot()
                self._status(
                    f"seen {k['seen']}  emitted {k['emitted']}  lost(ringbuf) "
                    f"{k['ringbuf_reserve_failed']}  delivered {u.get('delivered', 0)}  "
                    f"printed {u.get('printed', 0)}"
                )
