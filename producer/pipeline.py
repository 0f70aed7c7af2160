"""The only place that builds stages from the config and wires them.

    kernel hooks --ring buffer--> KernelSource --[chunks]--> BatchStage --[batches]--> EncodeStage
        --> Buffer (memory | disk) --> Publisher (Kafka | stdout | file)
    POST /api/v1/logging (TelemetryServer) --[waiting events]--> IngestStage --> the same Buffer

Every ``[...]`` is a bounded Channel; the buffer's ``when_full`` policy is the
last place anything may be dropped on purpose, and only under a named reason.
Start order: interfaces -> privileges -> registry (schema ids) and broker
(retried up to the connect timeout) -> BPF load -> filters and sampling ->
Agent.run attaches.  Anything built before a failure is undone (ExitStack).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from producer import abi
from producer.agent import Agent, AgentParts, Periodic, Stage
from producer.batch.batcher import Batcher, BatchStage
from producer.buffer.base import Buffer
from producer.buffer.disk import DiskStore
from producer.buffer.memory import MemoryStore
from producer.capture import links
from producer.capture.control import CaptureControl
from producer.capture.hooks import Hooks
from producer.capture.pins import Pins, StaleCapture
from producer.capture.program import CaptureProgram, ProgramOptions, check_privileges
from producer.capture.ringbuf import RingBufferReader
from producer.capture.source import KernelSource, Ring
from producer.channel import Cancel, Channel
from producer.config import AgentConfig, live_settings, reloadable
from producer.decode.convert import InterfaceNames, MonotonicToWall, RecordDecoder
from producer.errors import ConfigError, HdrlogError, PrivilegeError
from producer.ingest.stage import IdempotencyKeys, IngestLimits, IngestStage, Pending
from producer.ingest.workers import InlineParser, Parser, ParseWorkers, Setup
from producer.privileges import ROOT, CodeDirs, check_user, drop_after_attach, reclaim, target_user
from producer.publish.deadletter import DeadLetters
from producer.publish.kafka import WINDOW_BYTES, KafkaPublisher
from producer.publish.sinks import Publisher, StreamPublisher
from producer.records import Batch, Chunk
from producer.retry import with_retry
from producer.serialize.columnar import ColumnarBatchEncoder, ColumnarRecordEncoder
from producer.serialize.encoder import Encoder, EncodeStage, Identity, JsonLinesEncoder
from producer.serialize.registry import Registry, resolve
from producer.serialize.rows import RowEncoder
from producer.serialize.schemas import AvroSchema, Subject, agent_subjects
from producer.telemetry.events import IngestStat, Stat, Telemetry
from producer.telemetry.metrics import Metrics
from producer.telemetry.server import Ingest, TelemetryServer, security_of
from producer.telemetry.stats import Send, StatsReporter
from producer.telemetry.status import Status, StatusSources

log = logging.getLogger(__name__)

#: batches queued between the batcher and the encoder
BATCH_QUEUE = 4


def _retrying(exc: BaseException, sleep_s: float) -> None:
    log.warning("%s; retrying in %.1fs", exc, sleep_s)


def _buffer(cfg: AgentConfig, telemetry: Telemetry) -> Buffer:
    b = cfg.buffer
    if b.type == "disk" and not cfg.json_lines:
        store: Any = DiskStore(cfg.state_path / "buffer.sqlite", cfg.ingest.idempotency_ttl_s)
    else:
        store = MemoryStore()
    kind = "disk" if isinstance(store, DiskStore) else "memory"
    return Buffer(store, b.cap_bytes, b.when_full, telemetry, kind)


def _kafka(cfg: AgentConfig, buffer: Buffer, telemetry: Telemetry, identity: Identity, names: InterfaceNames,
           clock: MonotonicToWall) -> tuple[KafkaPublisher, Encoder, dict[str, int], list[Subject]]:
    """Schema ids from the registry and a reachable broker, each retried until the connect timeout."""
    k, r = cfg.kafka, cfg.registry
    subjects = agent_subjects(k.topic, k.shape, cfg.telemetry.stats_topic, _ingest_topic(cfg))
    ids: dict[str, int] = {}
    with Registry(r.url, r.client_properties()) as registry:
        for s in subjects:
            ids[s.name] = with_retry(lambda s=s: resolve(registry, s, r.auto_register),  # type: ignore[misc]
                                     deadline_s=k.connect_timeout_s, on_retry=_retrying)
    # at most a quarter of the buffer outstanding in librdkafka: the rest stays evictable and, on disk, durable
    publisher = KafkaPublisher(k.bootstrap_servers, k.client_properties(), buffer, telemetry,
                               DeadLetters(cfg.state_path / "dead-letter.jsonl"), retry_backoff_s=k.retry_backoff_s,
                               window_bytes=min(WINDOW_BYTES, cfg.buffer.cap_bytes // 4),
                               per_entry_reports=k.shape == "record" or bool(_ingest_topic(cfg)))
    with_retry(lambda: publisher.check_reachable(min(5.0, max(k.connect_timeout_s, 0.5))),
               deadline_s=k.connect_timeout_s, on_retry=_retrying)
    for s in subjects:
        publisher.ensure_topic(s.topic, k.partitions)
    head = subjects[0]
    encoder: Encoder
    if k.shape == "batch":
        encoder = ColumnarBatchEncoder(head.schema, ids[head.name], k.topic, identity, names, clock,
                                       cfg.batch.max_bytes)
    else:
        encoder = ColumnarRecordEncoder(head.schema, ids[head.name], k.topic, identity, names, clock)
    log.info("publishing %s messages to %s (schema %s id %d)", k.shape, k.topic, head.schema.name, ids[head.name])
    return publisher, encoder, ids, subjects


def _fix(cfg: AgentConfig) -> str:
    """What the privilege errors offer besides their own remedy."""
    return ('the default user once attached; user = "root" stays root' if not cfg.user else
            'or user = "root" to stay root')


def _give_up(cfg: AgentConfig, user: str, owned: tuple[Path, ...], code: CodeDirs, program: CaptureProgram,
             control: CaptureControl) -> str:
    """Become ``user`` once attached, then check that the maps still read and update through their
    descriptors (on kernels before 5.19 an unprivileged process may not use bpf() at all)."""
    held = drop_after_attach(user, owned, (cfg.state_path,), code, _fix(cfg))
    try:
        program.counters()
        control.apply(cfg.capture)  # (the same settings again: nothing changes, but it writes)
    except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception
        raise PrivilegeError(f"as user {user} the agent cannot use its BPF maps ({exc}): this kernel "
                             "allows bpf() only with CAP_BPF (Linux before 5.19, kernel.unprivileged_bpf_"
                             f"disabled) ({_fix(cfg)})") from exc
    return held


def _ingest_topic(cfg: AgentConfig) -> str:
    """The LogEvent topic if the HTTP ingest runs: Kafka output and a server to take the requests."""
    return cfg.ingest.topic if not cfg.json_lines and cfg.telemetry.address is not None else ""


def _ingest(cfg: AgentConfig, buffer: Buffer, telemetry: Telemetry, identity: Identity, schema_id: int,
            kafka: KafkaPublisher, detached: threading.Event, cancel: Cancel,
            reply: Callable[[list[Pending]], None], code: CodeDirs | None) -> tuple[IngestStage, Parser]:
    """The ingest's stage, and what parses its bodies (started: the workers' processes run)."""
    i = cfg.ingest
    schema = AvroSchema.load("LogEvent")
    consts = {"host_id": identity.host_id, "agent_instance": identity.instance_id}
    encoder = RowEncoder(schema, schema_id, consts)
    keys = IdempotencyKeys(i.idempotency_ttl_s, i.idempotency_max_keys)
    if isinstance(buffer.store, DiskStore):
        keys.restore(buffer.store.recent_keys())
    limits = IngestLimits(i.max_queue_events, i.max_queue_bytes, i.max_group_events, i.linger_ms / 1000.0,
                          i.ack_timeout_s)
    log.info("taking log events on /api/v1/logging into %s (202 once %s)", i.topic,
             "in the disk buffer" if buffer.kind == "disk" else "Kafka has acknowledged them")
    stage = IngestStage(encoder, i.topic, identity.key, buffer, telemetry, keys, limits,
                        wait_for_kafka=buffer.kind != "disk",
                        kafka_down=lambda: telemetry.outage_since is not None or kafka.holding,
                        detached=detached, cancel=cancel, reply=reply)
    parser: Parser = InlineParser(encoder)
    if i.parse_workers:  # last: nothing after it may fail, or its processes would outlive the agent's start
        parser = ParseWorkers(i.parse_workers, Setup(schema.raw, schema_id, consts),
                              lambda: telemetry.ingest(IngestStat.PARSE_WORKER_RESTARTS), i.max_queue_bytes,
                              *(() if code is None else (code.command,)))
        parser.start()
    return stage, parser


def build(cfg: AgentConfig, *, out: BinaryIO | None = None, status_line: Callable[[str], None] | None = None,
          reload_config: Callable[[], AgentConfig] | None = None,
          on_stdout_closed: Callable[[], None] | None = None) -> Agent:
    """Construct every stage of an agent from ``cfg``; the returned Agent owns them."""
    c = cfg.capture
    if not c.interfaces:
        raise ConfigError("no interface given (--iface or HDRLOG_IFACE)")
    resources = contextlib.ExitStack()
    with resources:
        ifindexes = links.resolve(c.interfaces)
        check_privileges()
        owned = (cfg.state_path, Pins.scope_of(c.pin_dir, cfg.state_path)) if c.pin_dir else (cfg.state_path,)
        user = target_user(cfg.user)
        code: CodeDirs | None = None
        if cfg.user == ROOT and os.getuid() == 0:
            log.warning('user = "root": the agent keeps the user and the capabilities it was started with while '
                        "it runs (by default it gives them up once attached)")
            try:
                reclaim(owned)  # what an earlier run gave its user, so that root without its powers may write it
            except PrivilegeError as exc:
                log.warning("%s: the state an earlier run handed to its user stays that user's", exc)
        if user is not None:  # checked now, before anything is loaded; done once attached
            cfg.state_path.mkdir(parents=True, exist_ok=True)
            uid, gid = check_user(user, (cfg.state_path,), _fix(cfg))
            reclaim(owned)  # (what an earlier run handed to the user: handed to it again once attached)
            code = CodeDirs(uid, gid)
            resources.callback(code.close)
        telemetry = Telemetry()
        cancel = Cancel()
        identity = Identity(cfg.host_id, str(uuid.uuid4()))
        names = InterfaceNames()
        clock = MonotonicToWall()
        buffer = _buffer(cfg, telemetry)
        resources.callback(buffer.close)
        publisher: Publisher
        kafka: KafkaPublisher | None = None
        schema_ids: dict[str, int] = {}
        stats_target: tuple[str, AvroSchema, int, Send] | None = None
        if cfg.json_lines:
            if cfg.output:
                try:
                    stream: BinaryIO = resources.enter_context(open(cfg.output, "ab"))  # noqa: SIM115
                except OSError as exc:
                    raise ConfigError(f"invalid value for output: cannot open {cfg.output}: {exc.strerror}") from exc
            else:
                stream = out or sys.stdout.buffer
            publisher = StreamPublisher(stream, buffer, telemetry, on_stdout_closed or (lambda: None), time.monotonic)
            encoder: Encoder = JsonLinesEncoder(identity, RecordDecoder(names, clock))
        else:
            kafka, encoder, schema_ids, subjects = _kafka(cfg, buffer, telemetry, identity, names, clock)
            resources.callback(kafka.close)
            publisher = kafka
            stats_subject = next((s for s in subjects if s.topic == cfg.telemetry.stats_topic), None)
            if stats_subject is not None:
                stats_target = (stats_subject.topic, stats_subject.schema, schema_ids[stats_subject.name],
                                kafka.publish_side)
        program = CaptureProgram(ProgramOptions(ringbuf_pages=c.ringbuf_pages))
        resources.callback(program.close)
        control = CaptureControl(program.bpf)
        control.apply(c)
        capture_id = uuid.uuid4().hex
        release_on_drain = buffer.kind != "disk"
        pins = Pins(c.pin_dir, cfg.state_path)
        fds = {"events": program.ringbuf_fd, "counters": program.counters_fd}
        fds |= {"xdp": program.xdp().fd} if c.hook == "xdp" else {"ingress": program.ingress.fd,
                                                                   "egress": program.egress.fd}
        pins.pin_own(capture_id, fds)
        resources.callback(pins.unpin_own)
        takeover = Takeover(pins.stale(capture_id), release_on_drain)
        resources.callback(takeover.close)
        reader = RingBufferReader(program.ringbuf_fd, program.ringbuf_size, abi.RECORD_DTYPE,
                                  release_on_drain=release_on_drain)
        resources.callback(reader.close)
        chunks: Channel[Chunk] = Channel("capture", c.queue_chunks,
                                         on_full_wait=lambda: telemetry.add(Stat.CAPTURE_QUEUE_FULL_WAITS))
        batches: Channel[Batch] = Channel("batch", BATCH_QUEUE)
        detached = threading.Event()
        own = Ring(capture_id, reader, lambda: program.counters()["emitted"])
        source = KernelSource([*takeover.rings, own], chunks, telemetry, cancel, detached,
                              c.poll_interval_ms / 1000.0)
        batcher = BatchStage(Batcher(cfg.batch.max_records, cfg.batch.linger_ms / 1000.0), chunks, batches,
                             telemetry, cancel)
        encode = EncodeStage(encoder, batches, buffer, telemetry, cancel, source.release)
        hooks = Hooks(c, program, names, ifindexes, takeover.stale)
        server: TelemetryServer | None = None
        ingest: IngestStage | None = None
        parser: Parser | None = None
        logs_topic = _ingest_topic(cfg)
        if logs_topic and kafka is not None:
            ingest, parser = _ingest(cfg, buffer, telemetry, identity, schema_ids[f"{logs_topic}-value"], kafka,
                                     detached, cancel,
                                     lambda answered: server.reply(answered) if server is not None else None,
                                     code)
            resources.callback(parser.close)  # after the server has stopped (the stack unwinds backwards)
        running = {"cfg": cfg}

        def reload() -> None:
            if reload_config is None:
                return
            try:
                new = reload_config()
            except HdrlogError as exc:
                log.error("reload refused, keeping the running settings: %s", exc)
                return
            merged, ignored = reloadable(new, running["cfg"])
            control.apply(merged.capture)
            running["cfg"] = merged
            log.info("applied filters and sampling: %s", json.dumps(live_settings(merged)))
            if ignored:
                log.warning("changed settings that need a restart were not applied: %s", ", ".join(ignored))

        stats = StatsReporter(identity, c.hook, lambda: hooks.attached, program.counters, telemetry, buffer,
                              stats_target)
        channels: list[Channel[Any]] = [chunks, batches]
        _gauges(telemetry, buffer, channels)
        output: dict[str, Any] = ({"file": cfg.output or "stdout"} if cfg.json_lines else
                                  {"topic": cfg.kafka.topic, "shape": cfg.kafka.shape, "schema_ids": schema_ids}
                                  | ({"logs_topic": logs_topic} if ingest is not None else {}))
        status = Status(StatusSources(
            cfg.host_id, identity.instance_id, capture_id, c.hook, lambda: hooks.attached, program.counters,
            telemetry, buffer, channels, output,
            holding=lambda: bool(getattr(publisher, "holding", False)),
            in_flight=lambda: int(getattr(publisher, "in_flight", 0)),
            ingest=None if ingest is None else ingest.state))
        address = cfg.telemetry.address
        if address is not None:
            metrics = Metrics(telemetry, program.counters)
            server = TelemetryServer(address[0], address[1], status, metrics.render,
                                     security=security_of(cfg.telemetry),
                                     ingest=None if ingest is None or parser is None else
                                     Ingest(ingest, telemetry, cfg.ingest.max_body_bytes,
                                            cfg.ingest.body_timeout_s, parser))
            server.start()
            resources.callback(server.stop)
        periodic: list[Periodic] = [Periodic(1.0, status.sample)]
        if cfg.telemetry.stats_interval_s > 0:
            periodic.append(Periodic(cfg.telemetry.stats_interval_s, stats))
        if status_line is not None:
            periodic.append(Periodic(1.0, lambda: status_line(_status_text(program.counters(), telemetry))))
        stages: list[Stage] = [batcher, encode]
        if ingest is not None:
            stages.append(ingest)
        parts = AgentParts(
            hooks=hooks, source=source, stages=stages,
            publisher=publisher, buffer=buffer,
            telemetry=telemetry, cancel=cancel, detached=detached, channels=channels,
            kernel_counters=program.counters, reload=reload, periodic=periodic, resources=resources.pop_all(),
            after_attach=(functools.partial(_give_up, cfg, user, owned, code, program, control)
                          if user is not None and code is not None else None))
        agent = Agent(parts, duration_s=cfg.duration_s, flush_timeout_s=cfg.kafka.flush_timeout_s)
        agent.report_extra = lambda: {"instance": identity.instance_id, "capture_id": capture_id,
                                      "schema_ids": schema_ids, "buffer": buffer.kind,
                                      "taken_over": takeover.report()} | (
            {"ingest": telemetry.ingest_snapshot()} if ingest is not None else {})
        return agent
    raise AssertionError("unreachable")  # pragma: no cover - the with block returns or raises


class Takeover:
    """The rings of captures a killed agent left (capture/pins.py), drained before ours."""

    def __init__(self, stale: list[StaleCapture], release_on_drain: bool) -> None:
        self.stale = stale
        self.rings: list[Ring] = []
        self._done: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        try:
            for s in stale:
                reader = RingBufferReader(s.ring_fd, s.ring_size, abi.RECORD_DTYPE,
                                          release_on_drain=release_on_drain)
                log.warning("taking over capture %s of a killed agent: %d records wait in its ring buffer",
                            s.capture_id, reader.unread_bytes() // reader.stride)
                self.rings.append(Ring(s.capture_id, reader,
                                       lambda s=s: s.counters()["emitted"],  # type: ignore[misc]
                                       taken_over=True, closed=s.closed, on_done=self._finish))
        except BaseException:
            self.close()
            raise

    def _finish(self, ring: Ring) -> None:
        """Drained and released to its end: record its final counters, unpin it, let the kernel free it."""
        s = next(x for x in self.stale if x.capture_id == ring.capture_id)
        with self._lock:
            self._done[s.capture_id] = {"capture_id": s.capture_id, "kernel": s.counters(), "drained": ring.drained}
        log.info("took over capture %s: %d records", s.capture_id, ring.drained)
        ring.reader.close()
        s.release()

    def report(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._done.values())

    def close(self) -> None:
        """At exit: what was not finished stays pinned for the next start; only our handles go."""
        done = {r.capture_id for r in self.rings if r.done}
        for ring in self.rings:
            if not ring.done:
                ring.reader.close()
        for s in self.stale:
            if s.capture_id not in done:
                for fd in (s.ring_fd, s.counters_fd):
                    os.close(fd)
                s.lock.close()


def _gauges(telemetry: Telemetry, buffer: Buffer, channels: list[Channel[Any]]) -> None:
    telemetry.gauge("buffer_bytes", lambda: buffer.state().bytes)
    telemetry.gauge("buffer_records", lambda: buffer.state().records)
    telemetry.gauge("buffer_entries", lambda: buffer.state().entries)
    telemetry.gauge("buffer_in_flight_entries", lambda: buffer.state().in_flight)
    telemetry.gauge("buffer_cap_bytes", lambda: buffer.state().cap_bytes)
    for ch in channels:
        telemetry.gauge(f"channel_{ch.name}", lambda ch=ch: len(ch))  # type: ignore[misc]


def _status_text(k: dict[str, int], telemetry: Telemetry) -> str:
    u = telemetry.snapshot()
    return (f"seen {k['seen']}  emitted {k['emitted']}  lost(ringbuf) {k['ringbuf_reserve_failed']}  "
            f"delivered {u['delivered']}  printed {u['printed']}")

