"""The consumer-group member: read, decode, map, write to the sink, and only then commit.

    Kafka ──consume(≤ batch)──▶ MessageDecoder ──▶ Formatter ──▶ Sink.write
       ▲                          │ poison             │ mapping error   │ refused items
       │                          └────────────┬───────┴─────────────────┘
       │                                       ▼
       │                               DeadLetters (<topic>.dlq)
       └── commit(offsets per partition, async) ◀── Sink.flush + DeadLetters.flush, every commit_interval_s

Auto-commit and auto offset store are off.  A message's offset joins the
pending commit only after its events were handed to the sink (or it was sent
to the dead-letter topic); the commit happens after the sink's ``flush``
acknowledged them and the dead letters are acknowledged.  On partition
revocation and at stop (SIGTERM, ``max_records``, ``idle_timeout_s``) the
sink is flushed and the commit is synchronous.  A crash therefore re-reads,
never skips; the event ids (mapping.py) turn the re-read into an overwrite
for sinks that upsert.

Transient failures (the registry or the sink down) are retried with
``retry.py``'s backoff for ``retry_deadline_s``; after that the member stops
with the error and without committing what was not acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from producer.consumer.deadletter import DeadLetters
from producer.consumer.decoding import LOG_SCHEMA, Frame, MessageDecoder
from producer.consumer.mapping import Formatter, MappingError, Origin
from producer.consumer.reader import Columns
from producer.consumer.render import Block
from producer.consumer.sinks.base import Events, LogPart, Sink
from producer.consumer.telemetry import ConsumerTelemetry, CStat, Poison, Progress
from producer.errors import BrokerError, HdrlogError, PoisonMessage, RegistryError, SinkError
from producer.publish.kafka import connect_failure
from producer.retry import with_retry
from producer.serialize.registry import Registry

log = logging.getLogger(__name__)

UNASSIGNED_GRACE_S = 120.0
T = TypeVar("T")
RUN_BYTES = 2 << 20    # a columnar run holds at most this many message bytes (~25k records: bounded memory)
WRITE_EVENTS = 65_536  # events handed to the sink in one write, at most (plus one message's)


@dataclass(frozen=True, slots=True)
class ConsumeOptions:
    bootstrap_servers: str
    schema_registry: str
    topic: str
    group: str
    from_beginning: bool = False
    max_records: int | None = None      # stop once at least this many events are written (a message boundary)
    idle_timeout_s: float | None = None  # stop when nothing arrived for this long while partitions were assigned
    kafka: Mapping[str, str] = field(default_factory=dict)
    registry: Mapping[str, str] = field(default_factory=dict)
    commit_interval_s: float = 1.0       # flush the sink and commit this often
    batch_messages: int = 10_000         # messages per consume() call (librdkafka's 64 MiB queue bounds the bytes)
    retry_deadline_s: float = 300.0      # how long transient registry/sink failures are retried
    client_id: str = "hdrlog-consumer"


@dataclass
class ConsumeReport:
    events: int = 0
    messages: int = 0
    dead_lettered: int = 0
    counters: dict[str, int] = field(default_factory=dict)


def small_pages() -> None:
    """No transparent huge pages for numpy's arrays in this process.  numpy asks for them for
    every array of 4 MiB or more; the columns of a run are large and short-lived, and the
    kernel zeroing whole 2 MiB pages on first touch cost the consumer more CPU than the fewer
    TLB misses saved (measured: the reader's first pass over a
    topic took ~3 us a record instead of ~0.8).  A numpy without the switch keeps its default."""
    setter = getattr(np.core.multiarray, "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)


def kafka_conf(opts: ConsumeOptions) -> dict[str, Any]:
    """librdkafka settings shared by the consumer, the dead-letter producer and the admin client."""
    conf: dict[str, Any] = {"bootstrap.servers": opts.bootstrap_servers, "client.id": opts.client_id}
    conf.update(opts.kafka)
    return conf


class Runner:
    def __init__(self, opts: ConsumeOptions, formatter: Formatter, sink: Sink, *,
                 telemetry: ConsumerTelemetry | None = None, progress: Progress | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.opts = opts
        self.formatter = formatter
        self.sink = sink
        self.telemetry = telemetry or ConsumerTelemetry()
        self.progress = progress
        self._clock = clock
        self._pending: dict[int, int] = {}   # partition -> next offset, written but not committed
        self._unacked_events = 0
        self._unacked_messages = 0
        self._idle_from: float | None = None  # when partitions were (last) assigned, for the idle timeout
        self._busy_from: float | None = None  # process CPU time when the first message arrived ...
        self._busy_to = 0.0                   # ... and when the last events were written and committed
        self._assigned: set[int] = set()      # the partitions this member owns now
        self._failed = False                  # the loop failed: a revocation must not flush or commit again
        # the format's columnar form (render.py), if it has one
        self._block: Callable[[Columns], Block] | None = getattr(formatter, "block", None)

    # -- commits -------------------------------------------------------------------------------

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The broker's answer to a commit (asynchronous or not): count it; on failure, put the
        offsets of partitions we still own back into the pending commit (unless newer ones are
        there), so that the next commit carries them."""
        if err is None:
            self.telemetry.add(CStat.COMMITS)
            return
        self.telemetry.add(CStat.COMMIT_FAILURES)
        log.warning("offset commit failed (the next commit carries the offsets again): %s", err.str())
        for tp in partitions:
            if tp.partition in self._assigned and tp.offset > self._pending.get(tp.partition, -1):
                self._pending[tp.partition] = tp.offset

    def _acknowledge(self, dlq: DeadLetters) -> None:
        """Flush the sink and the dead letters: what was written is now acknowledged."""
        with_retry(self.sink.flush, deadline_s=self.opts.retry_deadline_s, on_retry=self._retrying("sink flush"))
        dlq.flush()
        self.telemetry.add(CStat.EVENTS_WRITTEN, self._unacked_events)
        self.telemetry.add(CStat.MESSAGES_WRITTEN, self._unacked_messages)
        self._unacked_events = self._unacked_messages = 0

    def _commit(self, consumer: Consumer, dlq: DeadLetters, *, sync: bool) -> None:
        if not self._pending:
            if self._unacked_events or self._unacked_messages:  # written for partitions we lost
                self._acknowledge(dlq)
            return
        self._acknowledge(dlq)
        offsets = [TopicPartition(self.opts.topic, p, o) for p, o in sorted(self._pending.items())]
        self._pending.clear()
        try:
            if sync:
                consumer.commit(offsets=offsets, asynchronous=False)
            else:
                consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:  # counted by _on_commit, which librdkafka calls for this commit too
            log.warning("offset commit failed (those records will be read again): %s", exc.args[0].str())
            return
        self._busy_to = time.process_time()

    def _lookup(self, call: Callable[[], T]) -> T:
        """A decoder call, retried while the registry is down (only a schema not cached yet asks
        the registry: the retry machinery is set up only then, not once a message)."""
        try:
            return call()
        except RegistryError as exc:
            if not exc.retriable:
                raise
        return with_retry(call, deadline_s=self.opts.retry_deadline_s, on_retry=self._retrying("schema lookup"))

    def _retrying(self, what: str) -> Callable[[BaseException, float], None]:
        def note(exc: BaseException, sleep: float) -> None:
            self.telemetry.add(CStat.RETRIES)
            log.warning("%s failed, retrying in %.1f s: %s", what, sleep, exc)
        return note

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> ConsumeReport:
        opts = self.opts
        small_pages()
        conf = kafka_conf(opts)
        registry = Registry(opts.schema_registry, opts.registry)
        with_retry(registry.check_api, deadline_s=opts.retry_deadline_s, on_retry=self._retrying("registry"))
        decoder = MessageDecoder(registry)
        dlq = DeadLetters(conf, opts.topic, opts.group, opts.client_id)
        errors: deque[KafkaError] = deque(maxlen=8)  # the latest: why a connection failed, at start

        def on_error(err: KafkaError) -> None:
            errors.append(err)
            log.warning("kafka: %s", err.str())

        consumer_conf = {**conf, "group.id": opts.group, "enable.auto.commit": False,
                         "enable.auto.offset.store": False, "on_commit": self._on_commit,
                         "auto.offset.reset": "earliest" if opts.from_beginning else "latest",
                         "error_cb": on_error, "logger": log}
        try:
            consumer = Consumer(consumer_conf)
        except KafkaException as exc:
            raise BrokerError(f"invalid Kafka consumer settings: {exc}") from exc
        try:
            try:
                meta = consumer.list_topics(timeout=10)
            except KafkaException as exc:
                consumer.poll(0)  # serve the error callbacks: they say why
                raise connect_failure(opts.bootstrap_servers, str(conf.get("security.protocol", "plaintext")),
                                      list(errors), exc) from exc
            found = meta.topics.get(opts.topic)
            if dlq.topic not in meta.topics:  # (creating an existing topic needs a Create ACL it may lack)
                dlq.ensure_topic(conf, len(found.partitions) if found is not None and found.partitions else 1)

            def on_assign(_c: Consumer, partitions: list[TopicPartition]) -> None:
                self._assigned.update(tp.partition for tp in partitions)

            def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
                self.telemetry.add(CStat.REBALANCES)
                if not self._failed:  # after a failure, _commit_at_failure did what could be done
                    self._commit(c, dlq, sync=True)
                self._assigned.difference_update(tp.partition for tp in partitions)

            def on_lost(_c: Consumer, partitions: list[TopicPartition]) -> None:
                self.telemetry.add(CStat.REBALANCES)
                for tp in partitions:  # another member owns them now: it re-reads what we did not commit
                    self._pending.pop(tp.partition, None)
                    self._assigned.discard(tp.partition)

            consumer.subscribe([opts.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
            try:
                self._loop(consumer, decoder, dlq, stop)
            except BaseException:
                self._commit_at_failure(consumer, dlq)  # what the sink acknowledged is not re-read
                raise
            self._commit(consumer, dlq, sync=True)
        finally:
            self._close(consumer, dlq, registry)
        snap = self.telemetry.snapshot()
        if self._busy_from is not None:  # CPU (every thread) from the first message to the last commit
            snap["busy_cpu_ms"] = round((self._busy_to - self._busy_from) * 1000)
        return ConsumeReport(events=snap[CStat.EVENTS_WRITTEN], messages=snap[CStat.MESSAGES_READ],
                             dead_lettered=snap[CStat.MESSAGES_DEAD_LETTERED], counters=snap)

    def _commit_at_failure(self, consumer: Consumer, dlq: DeadLetters) -> None:
        try:
            self._commit(consumer, dlq, sync=True)
        except (HdrlogError, KafkaException) as exc:
            log.warning("at the failure, the last commit failed too (those records will be read again): %s", exc)
        self._failed = True

    def _close(self, consumer: Consumer, dlq: DeadLetters, registry: Registry) -> None:
        """Close everything, each whatever the others did; a failure here is logged, never raised
        over the error that got us here."""
        for what, close in (("the consumer", consumer.close), ("the sink", self.sink.close),
                            ("the dead-letter producer", dlq.close), ("the registry client", registry.close)):
            try:
                close()
            except (HdrlogError, KafkaException, OSError, ValueError) as exc:
                log.warning("closing %s: %s", what, exc)
        if self.progress is not None:
            self.progress.tick(final=True)

    def _loop(self, consumer: Consumer, decoder: MessageDecoder, dlq: DeadLetters, stop: threading.Event) -> None:
        opts = self.opts
        last_message = last_commit = last_lag = started = self._clock()
        written = 0
        while not stop.is_set() and (opts.max_records is None or written < opts.max_records):
            msgs = consumer.consume(num_messages=opts.batch_messages, timeout=0.5)
            now = self._clock()
            if now - last_lag >= 1.0:
                self._update_lag(consumer)
                last_lag = now
            if self.progress is not None:
                self.progress.tick()
            data = [m for m in msgs if not self._is_error(m)]
            if data:
                last_message = now
                limit = None if opts.max_records is None else opts.max_records - written
                if self._busy_from is None:
                    self._busy_from = time.process_time()
                written += self._process(data, decoder, dlq, limit)
            elif opts.idle_timeout_s is not None and self._idle(consumer, now, last_message, started):
                break
            if now - last_commit >= opts.commit_interval_s:
                self._commit(consumer, dlq, sync=False)
                last_commit = now

    def _idle(self, consumer: Consumer, now: float, last_message: float, started: float) -> bool:
        """Idle for ``idle_timeout_s`` with partitions assigned.  A rebalance (a restarted member
        waiting for its dead predecessor's session to expire) does not count, for up to
        UNASSIGNED_GRACE_S: a topic nobody can be assigned must still end the run."""
        assert self.opts.idle_timeout_s is not None
        if not consumer.assignment():
            if now - started < UNASSIGNED_GRACE_S:
                self._idle_from = None
                return False
        elif self._idle_from is None:
            self._idle_from = now
        since = max(last_message, self._idle_from or last_message)
        return now - since >= self.opts.idle_timeout_s

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        if err.fatal():
            raise BrokerError(f"consuming {self.opts.topic}: {err.str()}")
        self.telemetry.add(CStat.CONSUME_ERRORS)
        log.warning("consuming %s: %s", self.opts.topic, err.str())
        return True

    def _process(self, msgs: list[Message], decoder: MessageDecoder, dlq: DeadLetters, limit: int | None) -> int:
        """Decode and map a consume() batch, write it, then mark its offsets; returns events written.

        Runs of messages of one schema go through the columnar path when the format has one
        (render.py: many messages' records read into columns and mapped at once); a run any
        part of which that path refuses, and every other message, goes message by message
        through the dict path, which decides what is poison.  With a ``limit``, the messages
        after the one that reaches it are left alone (not marked, so not committed: the group
        reads them next time).
        """
        parts: list[list[dict[str, Any]] | Block] = []
        owners: list[Message] = []  # the messages with events, and where each one's first event is
        starts: list[int] = []
        marks: list[Message] = []
        total = pending = 0  # events so far; events not written yet

        def write() -> None:
            nonlocal parts, owners, starts, pending
            if pending:
                batch = Events(parts)
                rejected = with_retry(lambda: self.sink.write(batch), deadline_s=self.opts.retry_deadline_s,
                                      on_retry=self._retrying(f"{self.sink.name} write"))
                self._dead_letter_refused(rejected, owners, starts, dlq)
                self._unacked_events += pending - len(rejected)
            self._unacked_messages += len(owners)
            parts, owners, starts, pending = [], [], [], 0

        for run, frame in self._runs(msgs, decoder):
            if limit is not None and total >= limit:
                break
            block = self._columnar(run, frame, decoder, limit if limit is None else limit - total)
            if block is not None:
                run = run[:len(block.cols.starts) - 1]
                self.telemetry.add(CStat.MESSAGES_READ, len(run))
                self.telemetry.add(CStat.RECORDS_DECODED, len(block))
                owners.extend(run)
                starts.extend((pending + block.cols.starts[:-1]).tolist())
                marks.extend(run)
                parts.append(block)
                total += len(block)
                pending += len(block)
            else:
                for msg in run:
                    if limit is not None and total >= limit:
                        break
                    events = self._one(msg, decoder, dlq)
                    marks.append(msg)
                    if events is not None:
                        owners.append(msg)
                        starts.append(pending)
                        parts.append(events)
                        total += len(events)
                        pending += len(events)
            if pending >= WRITE_EVENTS:
                write()
        write()
        for msg in marks:
            if msg.partition() in self._assigned:  # not one a rebalance inside consume() took away
                self._pending[msg.partition() or 0] = (msg.offset() or 0) + 1
        return total

    def _runs(self, msgs: list[Message], decoder: MessageDecoder) -> Iterator[tuple[list[Message], Frame | None]]:
        """Runs of consecutive messages of one schema with a compiled reader (and a format with a
        columnar form), at most RUN_BYTES; single messages (frame None) for the rest, poison
        included (the dict path dead-letters it with its reason)."""
        run: list[Message] = []
        size = 0
        frame: Frame | None = None
        columnar = self._block is not None
        for msg in msgs:
            value = msg.value() or b""
            try:
                this = self._lookup(partial(decoder.frame, value))
            except PoisonMessage:
                this = None  # _one dead-letters it, with the reason
            if run and (this is None or this != frame or size + len(value) > RUN_BYTES):
                yield run, frame
                run = []
                size = 0
            if this is None or this.reader is None or not columnar:
                yield [msg], None
                continue
            run.append(msg)
            size += len(value)
            frame = this
        if run:
            yield run, frame

    def _columnar(self, run: list[Message], frame: Frame | None, decoder: MessageDecoder,
                  limit: int | None) -> Block | None:
        """The run's events as a Block, or None for the dict path (no frame, or the columnar path
        refused something: the dict path then says what)."""
        if frame is None or self._block is None:
            return None
        values = [m.value() or b"" for m in run]
        try:
            cols = decoder.columns(frame, values)
            if limit is not None and cols.n > limit:  # up to the message that reaches the limit
                last = int(np.searchsorted(cols.starts[1:], limit))
                cols = decoder.columns(frame, values[:last + 1])
            return self._block(cols)
        except (ValueError, TypeError, KeyError, OverflowError, pa.ArrowException) as exc:  # ArrowInvalid: ValueError
            self.telemetry.add(CStat.COLUMNAR_FALLBACKS)
            log.debug("the columnar path refused a run of %d messages (the dict path takes them): %s", len(run), exc)
            return None

    def _one(self, msg: Message, decoder: MessageDecoder, dlq: DeadLetters) -> list[dict[str, Any]] | None:
        """One message through the dict path: its events, or None (dead-lettered)."""
        tel = self.telemetry
        tel.add(CStat.MESSAGES_READ)
        origin = Origin(msg.topic() or self.opts.topic, msg.partition() or 0, msg.offset() or 0)
        where = f"{origin.topic}[{origin.partition}]@{origin.offset}"
        try:
            value: bytes = msg.value() or b""
            name, records = self._lookup(partial(decoder.message, value))
        except PoisonMessage as exc:
            reason = Poison(exc.reason)
            tel.dead_letter(reason, where, str(exc), message=True)
            dlq.send(msg, reason, exc, "producer.consumer.decoding.MessageDecoder")
            return None
        tel.add(CStat.RECORDS_DECODED, len(records))
        try:
            if name == LOG_SCHEMA:
                return LogPart(self.formatter.log_events(records))
            return self.formatter.events(records, origin)
        except MappingError as exc:
            tel.dead_letter(Poison.MAPPING_ERROR, where, str(exc), message=True, records=len(records))
            dlq.send(msg, Poison.MAPPING_ERROR, exc, type(self.formatter).__module__ + "."
                     + type(self.formatter).__qualname__)
            return None

    def _dead_letter_refused(self, rejected: list[tuple[int, str]], owners: list[Message], starts: list[int],
                             dlq: DeadLetters) -> None:
        """One dead letter per message with records the sink refused for good, naming them all."""
        tel = self.telemetry
        by_message: dict[int, tuple[Message, list[int], list[str]]] = {}
        for index, why in rejected:
            k = bisect_right(starts, index) - 1
            msg, i = owners[k], index - starts[k]
            tel.dead_letter(Poison.SINK_REJECTED, f"{msg.topic()}[{msg.partition()}]@{msg.offset()} record {i}", why,
                            records=1)
            entry = by_message.setdefault(id(msg), (msg, [], []))
            entry[1].append(i)
            entry[2].append(why)
        for msg, indices, whys in by_message.values():
            dlq.send(msg, Poison.SINK_REJECTED, SinkError("; ".join(dict.fromkeys(whys))),
                     type(self.sink).__module__ + "." + type(self.sink).__qualname__,
                     index=",".join(map(str, indices)))

    def _update_lag(self, consumer: Consumer) -> None:
        try:
            assigned = consumer.assignment()
            if not assigned:
                self.telemetry.set_lag({})
                return
            lag = {}
            for tp in consumer.position(assigned):
                _lo, hi = consumer.get_watermark_offsets(tp, cached=True)
                if hi >= 0 and tp.offset >= 0:
                    lag[tp.partition] = max(0, hi - tp.offset)
            self.telemetry.set_lag(lag)
        except KafkaException:
            pass  # lag is for a person to read; a failed look is retried next second
