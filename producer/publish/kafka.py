"""The Kafka publisher: buffer entries -> librdkafka -> acknowledgements.

Idempotent, ``acks=all``; the key is the host id and the partitioner is
murmur2 (the Java client's), so one host's messages land in one partition, in
order, whatever client reads or writes the topic.  Any librdkafka property can
be passed through (``[kafka.properties]``: TLS, SASL, ``message.timeout.ms``).

Delivery, in order and never silently lost:

* Entries are taken from the buffer oldest first and produced, at most
  ``window_bytes`` of them outstanding: the rest wait in the buffer, where they
  are durable (disk) and where ``when_full = drop_oldest`` can evict them.
  librdkafka's local queue is bounded too (``queue.buffering.max.kbytes``); a
  full one is waited on (serving delivery reports), never dropped.
* An entry is acknowledged to the buffer (and leaves it) only when every one of
  its messages is delivered, or failed permanently and went to the dead-letter
  file (``Drop.DEAD_LETTER``).
* A retriable failure (broker down, ``message.timeout.ms`` expired, a fatal
  idempotence error, ...) *holds* the publisher: nothing new is produced,
  everything still outstanding in librdkafka is purged at once (it comes back as
  failed), and once nothing is in flight the buffer is rewound and every
  unacknowledged entry is sent again in its original order, after a backoff.
* ``message.timeout.ms`` is enforced here, not by librdkafka (whose own timeout is
  set to infinite): librdkafka expires each message on its own, so an older
  message could expire while a newer one is still delivered, a gap that would
  put the older one after the newer when re-sent.  Here, when the oldest
  outstanding message is older than the timeout, *all* outstanding messages are
  purged together (queued and in flight; the idempotent producer refuses a
  newer in-flight message whose predecessor is missing), so none can overtake.
  Thus the first occurrences of one instance's sequence numbers increase within
  the partition across outages; re-sent messages can repeat (at-least-once)
  with the same identity.

Acknowledgements without a Python call per message (``per_entry_reports``, the
record shape's thousands of messages per entry, and the HTTP ingest's log events): only an entry's *last*
message carries a delivery report.  Its success proves the earlier ones
delivered, because all of an entry's messages share one key and so one
partition, the idempotent producer writes a partition in order and the broker
refuses a sequence number out of order, librdkafka's own timeout is off (above),
and ``enable.gapless.guarantee`` turns any other failure that could leave a gap
into a fatal error, which fails the last message too (librdkafka calls the
property experimental; it is set only here).  An error on the last message
says nothing of the others, so it is retried, never dead-lettered, and after
any failure the next entry is sent with a report per message
(``_Flight.precise``): a message the broker refuses for good reaches the
dead-letter file instead of failing the producer again and again.  With
idempotence turned off, every message carries its report.

Exit is bounded: after ``begin_exit(deadline)`` the publisher stops at the
deadline; what a memory buffer still holds is ``Drop.UNFLUSHED_AT_EXIT``, what
a disk buffer holds stays there for the next start (``Stat.LEFT_IN_BUFFER``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from producer.buffer.base import Buffer, Outcome
from producer.errors import TLS_REFUSALS, BrokerError, HdrlogError
from producer.publish.deadletter import DeadLetters
from producer.records import Encoded, Source
from producer.telemetry.events import Drop, Stat, Telemetry

log = logging.getLogger(__name__)


class _QuietKnownWarnings(logging.Filter):
    """librdkafka warns that enable.gapless.guarantee is experimental each time a producer starts: it is
    set on purpose (module docstring), and the warning would make every record-shape start look wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "enable.gapless.guarantee is experimental" not in record.getMessage()


log.addFilter(_QuietKnownWarnings())

DEFAULTS: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "zstd",
    "linger.ms": 5,  # the batcher already waited; this only gathers one entry's messages
    "batch.num.messages": 10000,
    "partitioner": "murmur2_random",
    "message.timeout.ms": 120000,  # enforced by KafkaPublisher; librdkafka's own is set to 0 (infinite)
    "queue.buffering.max.kbytes": 32768,  # librdkafka's own queue; the buffer holds the rest
    # the topics are created at start with their partitions (ensure_topic); one deleted later is waited for
    # (an unknown topic is retriable), not made again by the broker with its default partition count
    "allow.auto.create.topics": False,
}

#: delivery errors a retry cannot fix: the message goes to the dead-letter file
PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.INVALID_RECORD, KafkaError.POLICY_VIOLATION, KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    KafkaError.INVALID_REQUIRED_ACKS, KafkaError._INVALID_ARG, KafkaError.TOPIC_EXCEPTION,
})
#: the producer's settings an admin client (creating topics) takes too: where and how to connect
ADMIN_KEYS = ("bootstrap.servers", "security.protocol", "ssl.", "sasl.", "client.id", "enable.sasl.", "enable.ssl.",
              "https.", "broker.address.family", "socket.")
MAX_BACKOFF_S = 30.0
#: a broker's TLS alerts (lower case) for a client certificate missing or refused: retrying cannot help
CLIENT_CERT_ALERTS = ("alert bad certificate", "alert certificate required", "alert unknown ca")
#: bytes of entries outstanding in librdkafka at most (a few batch messages' worth)
WINDOW_BYTES = 4 << 20


def is_permanent(err: KafkaError) -> bool:
    """Classified here, where librdkafka's errors enter: everything not known to be permanent is retried."""
    return err.code() in PERMANENT


def connect_failure(servers: str, protocol: str, errors: list[KafkaError], exc: KafkaException) -> BrokerError:
    """Why a client (the agent's producer, the consumer) got no metadata: a refusal of its security
    settings (``refusal``, or a plaintext client on a TLS listener: ``speaks_tls``), which retrying
    cannot mend, or a retriable "cannot reach"."""
    for err in reversed(errors):
        refused = refusal(err, servers)
        if refused is not None:
            return BrokerError(refused)
    if protocol.lower() in ("plaintext", "sasl_plaintext") and speaks_tls(servers):
        return BrokerError(f"Kafka at {servers} is a TLS listener, and security.protocol is {protocol.upper()}: "
                           f"set SSL or SASL_SSL (and ssl.ca.location)")
    return BrokerError(f"cannot reach Kafka at {servers}: {first_line(exc)}", retriable=True)


def refusal(err: KafkaError | None, servers: str) -> str | None:
    """The one-line reason when ``err`` says the broker refused this client's security settings (retrying
    cannot help), else None: SASL authentication failed, the TLS handshake failed (an untrusted
    certificate, TLS to a plaintext port), or the broker closed a plaintext connection at once (plaintext
    to a TLS port: librdkafka says so)."""
    if err is None:
        return None
    text = err.str()
    # (not every _AUTHENTICATION is the broker's refusal: an OAUTHBEARER token that could not be fetched
    # is one too, and may come next time; not every _SSL is a certificate: a reset mid-handshake is one)
    if err.code() == KafkaError._AUTHENTICATION and "Authentication failed" in text:
        return f"Kafka at {servers} refused the credentials (sasl.username, sasl.password): {text}"
    # the broker's TLS alert for a client certificate missing or not signed by its CA (after the handshake,
    # under TLS 1.3: librdkafka sees it on its first read)
    if err.code() in (KafkaError._SSL, KafkaError._TRANSPORT) and any(t in text.lower() for t in CLIENT_CERT_ALERTS):
        return (f"the TLS handshake with Kafka at {servers} failed: the broker requires a client certificate its "
                f"CA signed (ssl.certificate.location, ssl.key.location): {text}")
    if err.code() == KafkaError._SSL and any(t in text.lower() for t in TLS_REFUSALS):
        return (f"the TLS handshake with Kafka at {servers} failed (ssl.ca.location, security.protocol): "
                f"{text}")
    return None


def speaks_tls(servers: str, timeout_s: float = 2.0) -> bool:
    """Whether the first of ``servers`` completes a TLS handshake (its certificate unchecked: this only
    tells a plaintext client that it reached a TLS listener, which closes the connection without a word)."""
    first = servers.split(",")[0].strip().rpartition("://")[2]
    host, _, port = first.rpartition(":")
    if not port.isdigit():
        return False
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock, \
                ctx.wrap_socket(sock):
            return True
    except (OSError, ssl.SSLError):
        return False


def first_line(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def producer_config(bootstrap_servers: str, properties: Mapping[str, str]) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap_servers, **DEFAULTS, **properties}


@dataclass
class _Flight:
    """One entry being delivered: its messages' outcomes as they come back."""

    entry_id: int
    entry: Encoded
    on_done: Callable[[_Flight], None]
    started: float = 0.0  # when its first message was produced (monotonic)
    remaining: int = 0
    sent: int = 0  # messages handed to librdkafka
    produced_all: bool = False
    next_message: int = 0
    delivered_records: int = 0
    delivered_messages: int = 0
    retry: KafkaError | None = None
    dead: list[tuple[bytes, KafkaError, int]] = field(default_factory=list)
    precise: bool = True  # a report per message; else only the last message's, standing for all of them

    def sent_up_to(self, index: int) -> None:
        """Messages before ``index`` are in librdkafka's hands."""
        self.sent += index - self.next_message
        self.next_message = index

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        """librdkafka's delivery report for one message of the entry (on the publisher thread)."""
        self.remaining -= 1
        records = self.entry.records if self.entry.offsets is None else 1
        if not self.precise:  # the last message: it stands for every message of the entry
            if err is None:
                self.delivered_records += self.sent * records
                self.delivered_messages += self.sent
            elif self.retry is None:
                self.retry = err  # even a permanent error: which of the others failed is unknown
        elif err is None:
            self.delivered_records += records
            self.delivered_messages += 1
        elif is_permanent(err):
            self.dead.append((bytes(msg.value() or b""), err, records))
        elif self.retry is None:
            self.retry = err
        if self.remaining == 0 and self.produced_all:
            self.on_done(self)


class KafkaPublisher:
    """Publisher stage: takes entries from the buffer until it is exhausted or the exit deadline passes."""

    name = "publish"

    def __init__(self, bootstrap_servers: str, properties: Mapping[str, str], buffer: Buffer,
                 telemetry: Telemetry, dead_letters: DeadLetters, *, retry_backoff_s: float = 1.0,
                 window_bytes: int = WINDOW_BYTES, per_entry_reports: bool = False,
                 producer_factory: Callable[[dict[str, Any]], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._conf = producer_config(bootstrap_servers, properties)
        self._conf["error_cb"] = self._on_error
        try:
            self._timeout_s = float(self._conf.pop("message.timeout.ms")) / 1000.0
        except ValueError as exc:
            raise BrokerError(f"invalid Kafka settings: message.timeout.ms: {exc}") from exc
        self._conf.pop("delivery.timeout.ms", None)
        self._conf["message.timeout.ms"] = 0  # see the module docstring: the timeout is ours
        self._factory = producer_factory or (lambda conf: Producer(conf, logger=log))
        # one report per entry needs the ordering the idempotent producer gives (module docstring)
        self._per_entry_reports = per_entry_reports and str(self._conf["enable.idempotence"]).lower() == "true"
        if self._per_entry_reports:
            self._conf["enable.gapless.guarantee"] = True
        self._precise_next = not self._per_entry_reports
        self._buffer = buffer
        self._tel = telemetry
        self._dead = dead_letters
        self._window = window_bytes
        self._backoff0 = retry_backoff_s
        self._backoff = retry_backoff_s
        self._clock = clock
        self._flights: dict[int, _Flight] = {}
        self._partial: _Flight | None = None  # an entry whose messages did not all fit librdkafka's queue
        self._hold: KafkaError | None = None
        self._fatal = False
        self._exit_at: float | None = None
        self._stop = threading.Event()
        self._finished = False
        self._failure: HdrlogError | None = None
        self._connect_error: KafkaError | None = None  # what check_reachable explains a failure with
        try:
            self._producer = self._factory(self._conf)
        except KafkaException as exc:
            raise BrokerError(f"invalid Kafka settings: {first_line(exc)}") from exc

    # -- start-up ------------------------------------------------------------------

    def check_reachable(self, timeout_s: float) -> None:
        """Raise a BrokerError unless cluster metadata arrives in time: retriable (the broker may be
        starting), unless the broker refused the credentials or the TLS handshake (``refusal``)."""
        self._connect_error = None
        try:
            self._producer.list_topics(timeout=max(timeout_s, 0.5))
        except KafkaException as exc:
            self._producer.poll(0)  # serve the error callbacks: they say why
            raise connect_failure(self.bootstrap_servers, str(self._conf.get("security.protocol", "plaintext")),
                                  [] if self._connect_error is None else [self._connect_error], exc) from exc

    def ensure_topic(self, topic: str, partitions: int, timeout_s: float = 15.0) -> None:
        """Create ``topic`` (broker-default replication) unless it exists."""
        try:
            meta = self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerError(f"cannot read metadata from {self.bootstrap_servers}: {first_line(exc)}",
                              retriable=True) from exc
        if topic in meta.topics and not meta.topics[topic].error:
            return
        admin = AdminClient({k: v for k, v in self._conf.items() if k.startswith(ADMIN_KEYS)})
        fut = admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic]
        try:
            fut.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise BrokerError(f"cannot create topic {topic}: Kafka at {self.bootstrap_servers} did not answer "
                              f"in {timeout_s:g} s") from exc
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            raise BrokerError(f"cannot create topic {topic}: {first_line(exc)}") from exc

    # -- side messages (AgentStats) --------------------------------------------------

    def publish_side(self, topic: str, key: bytes, value: bytes, done: Callable[[bool], None]) -> bool:
        """Produce one message outside the buffer (telemetry); ``done(ok)`` on its report. Thread-safe."""
        try:
            self._producer.produce(topic, value=value, key=key,
                                   on_delivery=lambda err, _msg: done(err is None))
            return True
        except (BufferError, KafkaException):
            return False

    # -- the stage -------------------------------------------------------------------

    def begin_exit(self, deadline: float) -> None:
        """Deliver what is buffered until ``deadline`` (monotonic), then stop."""
        self._exit_at = deadline

    def stop(self) -> None:
        self._stop.set()

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    @property
    def holding(self) -> bool:
        return self._hold is not None

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._exit_at is not None and self._clock() >= self._exit_at:
                    break
                if self._buffer.exhausted and not self._flights:
                    break
                if self._hold is not None:
                    self._serve_hold()
                    continue
                self._expire()
                flight = self._partial or self._next()
                if flight is not None:
                    self._produce(flight)
                self._poll(0)
        finally:
            self._finish()

    def _next(self) -> _Flight | None:
        if sum(len(f.entry) for f in self._flights.values()) >= self._window:
            self._poll(0.05)  # the window is full: wait for acknowledgements
            return None
        item = self._buffer.take(0.05 if self._flights else 0.2)
        if item is None:
            self._poll(0.05 if self._flights else 0)
            return None
        entry_id, entry = item
        return _Flight(entry_id, entry, self._done, precise=self._precise_next or entry.messages == 1)

    def _expire(self) -> None:
        """``message.timeout.ms``: the oldest outstanding entry waited too long; fail everything outstanding."""
        if self._timeout_s <= 0 or not self._flights:
            return
        oldest = min(f.started for f in self._flights.values())
        if self._clock() - oldest >= self._timeout_s:
            self._begin_hold(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out", retriable=True),
                             "Local: Message timed out")

    def _produce(self, flight: _Flight) -> None:
        values = flight.entry.values()
        per_message = flight.entry.records if flight.entry.offsets is None else 1  # records per message
        if not flight.started:
            flight.started = self._clock()
        self._flights[flight.entry_id] = flight
        self._partial = flight
        first = flight.sent
        try:
            if not self._send(flight, values, per_message):
                return  # stays partial: the exit deadline or stop came first; counted at exit
        finally:
            produced = flight.sent - first
            source = flight.entry.source
            self._tel.add(Stat.MESSAGES_PRODUCED, produced, source)  # once per entry, not per message
            self._tel.add(Stat.PRODUCED, produced * per_message, source)
        flight.produced_all = True
        self._partial = None
        if flight.remaining == 0:
            self._done(flight)

    def _send(self, flight: _Flight, values: list[bytes], per_message: int) -> bool:
        """Produce the entry's messages from where it stopped; False if it has to stop half-way.

        Without reports per message, the messages before the last go out in a tight loop: produce()
        serves no reports, so no failure can arrive in the middle of it."""
        produce, topic, key = self._producer.produce, flight.entry.topic, flight.entry.key
        last = len(values) - 1
        while flight.next_message <= last:
            if self._hold is not None:  # a failure came back meanwhile: send no more of it
                flight.retry = flight.retry or self._hold
                return True
            i = flight.next_message
            try:
                if not flight.precise:
                    while i < last:
                        produce(topic, values[i], key)
                        i += 1
                produce(topic, value=values[i], key=key, on_delivery=flight)
                i += 1
                flight.remaining += 1
            except BufferError:
                flight.sent_up_to(i)
                self._tel.add(Stat.PRODUCER_QUEUE_FULL_WAITS)
                self._poll(0.05)
                if self._stop.is_set() or (self._exit_at is not None and self._clock() >= self._exit_at):
                    return False
                self._expire()  # a queue full for longer than message.timeout.ms is a failure too
                continue
            except KafkaException as exc:
                flight.sent_up_to(i)
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is not None and is_permanent(err) and (flight.precise or i < last):
                    # refused locally (too large for message.max.bytes): never sent, so no report covers it
                    flight.dead.append((values[i], err, per_message))
                    flight.next_message = i + 1
                    continue
                if err is not None and is_permanent(err):  # the last message, which was to report for all
                    flight.retry = flight.retry or err
                    return True
                self._fatal = True  # a fatal producer state: start over with a new producer
                self._begin_hold(err, first_line(exc))
                flight.retry = flight.retry or self._hold
                return True
            flight.sent_up_to(i)
        return True

    def _done(self, flight: _Flight) -> None:
        """Every message of ``flight`` has an outcome (or will never be sent).

        Runs inside ``producer.poll`` (librdkafka's delivery report): nothing may raise out of it."""
        if self._finished:
            return  # after exit the buffer has decided what the entry is (counted or kept)
        self._flights.pop(flight.entry_id, None)
        entry = flight.entry
        if flight.retry is not None:
            self._tel.add(Stat.REQUEUED, entry.records, entry.source)
            if flight.retry.fatal():
                self._fatal = True
            if not flight.precise:
                self._precise_next = True  # find the message behind it, if the broker refuses one for good
            self._begin_hold(flight.retry, flight.retry.str())
            return
        try:
            self._buffer.ack([flight.entry_id], Outcome.DEAD_LETTERED if flight.dead else Outcome.DELIVERED)
        except HdrlogError as exc:  # the store is broken: stop, with this entry still unacknowledged
            self._failure = exc
            self._stop.set()
            return
        if flight.precise and flight.delivered_messages:
            self._precise_next = not self._per_entry_reports
        self._tel.add(Stat.DELIVERED, flight.delivered_records, entry.source)
        self._tel.add(Stat.MESSAGES_DELIVERED, flight.delivered_messages, entry.source)
        if flight.delivered_messages:
            self._tel.broker_up()
            self._backoff = self._backoff0
            if entry.captured_ns and entry.source is Source.CAPTURE:
                self._tel.delivered_after(max(0.0, (time.monotonic_ns() - entry.captured_ns) / 1e9))
        if flight.dead:
            kept = f"kept in {self._dead.path}"
            try:
                for value, err, records in flight.dead:
                    self._dead.write(entry.topic, entry.key, value, err.name(), err.str(), records)
            except OSError as exc:
                kept = f"NOT kept: writing {self._dead.path} failed: {exc.strerror}"
            lost = sum(r for _v, _e, r in flight.dead)
            self._tel.delivery_failed(flight.dead[0][1].str(), retriable=False)
            self._tel.drop(Drop.DEAD_LETTER, lost, f"Kafka refused for good ({flight.dead[0][1].name()}); {kept}",
                           entry.source)

    def _begin_hold(self, err: KafkaError | None, text: str) -> None:
        if self._hold is None:
            self._hold = err or KafkaError(KafkaError._FATAL, text, fatal=True)
            self._tel.delivery_failed(text, retriable=True)
            self._tel.broker_down(text)
            # everything outstanding comes back as failed (ERR__PURGE_QUEUE / ERR__PURGE_INFLIGHT) at once:
            # no message produced after the failure can overtake the ones that failed
            with contextlib.suppress(KafkaException):
                self._producer.purge(in_queue=True, in_flight=True, blocking=False)

    def _serve_hold(self) -> None:
        """Wait for every entry in flight to resolve; then rewind, back off, and resume."""
        if self._flights:
            self._poll(0.1)
            return
        # messages sent without a report of their own (all but an entry's last) leave with the purge too
        end = self._clock() + 5.0
        while len(self._producer) and self._clock() < end and not self._stop.is_set():
            with contextlib.suppress(KafkaException):
                self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._poll(0.1)
        if self._fatal:
            log.warning("re-creating the Kafka producer after a fatal error")
            self._producer.flush(0)
            self._producer = self._factory(self._conf)
            self._fatal = False
        again = self._buffer.rewind()
        self._tel.add(Stat.DELIVERY_RETRIES)
        log.info("re-sending %d records in %.1fs (%s)", again, self._backoff, self._hold.str() if self._hold else "")
        end = self._clock() + self._backoff
        while self._clock() < end and not self._stop.is_set():
            if self._exit_at is not None and self._clock() >= self._exit_at:
                break
            self._poll(0.1)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        self._hold = None

    def _poll(self, timeout: float) -> None:
        """Serve delivery reports; a fatal producer error (which poll raises) holds the publisher."""
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            self._fatal = True
            self._begin_hold(err, first_line(exc))

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._tel.broker_down(err.str())
        if refusal(err, self.bootstrap_servers) is not None or self._connect_error is None:
            self._connect_error = err
        log.warning("kafka: %s", err.str())

    def _finish(self) -> None:
        """Exit: deliver within the deadline what is in flight; count or keep the rest."""
        left = max(0.0, (self._exit_at or self._clock()) - self._clock())
        end = self._clock() + left
        while self._flights and self._clock() < end:
            self._poll(min(0.1, max(0.0, end - self._clock())))
        # what is still unresolved stays unacknowledged: the buffer decides what that means, and a
        # report that comes later changes nothing (see _done)
        self._finished = True
        self._flights.clear()
        self._partial = None
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        """Drop what librdkafka still holds, without serving its reports: the agent has counted it."""
        with contextlib.suppress(KafkaException):
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
