"""The agent's typed counters, and the events that move them.

Every user-space counter is a member of ``Stat`` or ``Drop``; nothing counts
under a free string.  ``Telemetry`` is the one place a stage reports to:
``add`` bumps a counter (the hot path, no log), ``drop`` bumps a drop reason
*and* writes its log line, ``delivery_failed`` records the last delivery error
with its time, and so on.  The exit summary, ``/metrics``
(telemetry/metrics.py), ``/api/v1/status`` and the AgentStats records all read
the same ``snapshot()``.

Accounting (tests reconcile it exactly): every record drained from a ring
buffer, plus every record a previous run left in the disk buffer
(``restored``), ends as ``delivered`` (or ``printed``), under one ``Drop``
reason, or ``left_in_buffer`` (a disk buffer keeps it for the next start).

Log events taken over HTTP (``Source.INGEST``) keep a ledger of their own
(``ingest_snapshot``), so neither total hides the other:

* requests and their events as answered: every event of a request is
  ``accepted`` (202) or refused under one ``Refusal`` (the request's status
  code says which); a repeat of an accepted request (its ``Idempotency-Key``)
  is ``duplicate_requests`` and adds nothing;
* events through the buffer, under the same Stat and Drop names as records:
  ``buffered`` + ``restored`` = ``delivered`` + drops + ``left_in_buffer``.
  With the disk buffer an event is accepted once buffered; with the memory
  buffer once delivered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from producer.records import Source

log = logging.getLogger(__name__)


class Stat(StrEnum):
    """Counters of records and messages as they move; not losses."""

    DRAINED = "drained"                       # records copied out of a ring buffer (ours or a taken-over one)
    TAKEN_OVER = "taken_over"                 # of those, from a previous agent's ring buffer
    BATCHES = "batches"                       # batches made by the batcher
    ENCODED = "encoded"                       # records encoded into messages
    BUFFERED = "buffered"                     # records stored in the buffer
    RESTORED = "restored"                     # records a previous run left in the disk buffer, found at start
    PRODUCED = "produced"                     # records handed to librdkafka (re-sends included)
    DELIVERED = "delivered"                   # records acknowledged by Kafka
    PRINTED = "printed"                       # records written by --stdout / --output
    REQUEUED = "requeued"                     # records returned to the buffer by a retriable failure
    LEFT_IN_BUFFER = "left_in_buffer"         # records the disk buffer keeps for the next start
    MESSAGES_PRODUCED = "messages_produced"   # Kafka messages handed to librdkafka
    MESSAGES_DELIVERED = "messages_delivered"
    DELIVERY_RETRIES = "delivery_retries"     # times the publisher held, rewound and re-sent
    CAPTURE_QUEUE_FULL_WAITS = "capture_queue_full_waits"
    BUFFER_FULL_WAITS = "buffer_full_waits"
    PRODUCER_QUEUE_FULL_WAITS = "producer_queue_full_waits"
    STATS_PUBLISHED = "stats_published"       # AgentStats records acknowledged
    STATS_FAILED = "stats_failed"             # AgentStats records not delivered (telemetry, not data)


#: the Stats that count records (``hdrlog_records_<name>_total`` in /metrics); the others count
#: messages, batches or waits (``hdrlog_<name>_total``)
RECORD_STATS = frozenset({Stat.DRAINED, Stat.TAKEN_OVER, Stat.ENCODED, Stat.BUFFERED, Stat.RESTORED,
                          Stat.PRODUCED, Stat.DELIVERED, Stat.PRINTED, Stat.REQUEUED, Stat.LEFT_IN_BUFFER})


class Drop(StrEnum):
    """Why a record was lost; each is counted, logged, and reaches /metrics."""

    SERIALIZE_ERROR = "dropped_serialize_error"      # a record did not fit the schema
    BUFFER_FULL = "dropped_buffer_full"              # when_full = drop_newest: the buffer refused it
    BUFFER_EVICTED = "dropped_buffer_evicted"        # when_full = drop_oldest: pushed out by newer ones
    DEAD_LETTER = "dropped_dead_letter"              # a permanent delivery failure: in the dead-letter file
    UNFLUSHED_AT_EXIT = "dropped_unflushed_at_exit"  # memory buffer: not delivered by the exit deadline
    STDOUT_CLOSED = "dropped_stdout_closed"          # --stdout: the reader went away
    AFTER_FAILURE = "dropped_after_failure"          # a stage failed and the agent stopped


#: the Stat and Drop names the ingest's ledger keeps (the others are capture's alone)
INGEST_LEDGER: tuple[Stat | Drop, ...] = (
    Stat.BUFFERED, Stat.RESTORED, Stat.PRODUCED, Stat.DELIVERED, Stat.REQUEUED, Stat.LEFT_IN_BUFFER,
    Stat.MESSAGES_PRODUCED, Stat.MESSAGES_DELIVERED, Drop.DEAD_LETTER, Drop.UNFLUSHED_AT_EXIT, Drop.AFTER_FAILURE)


class IngestStat(StrEnum):
    """Counters of ``POST /api/v1/logging`` as answered."""

    REQUESTS = "requests"                      # requests that reached the endpoint
    BYTES = "bytes"                            # their body bytes read
    ACCEPTED_REQUESTS = "accepted_requests"    # answered 202 (a duplicate's repeat not included)
    ACCEPTED = "accepted"                      # events in them
    DUPLICATE_REQUESTS = "duplicate_requests"  # a repeat of an accepted Idempotency-Key: 202, nothing enqueued
    PARSE_WORKER_RESTARTS = "parse_worker_restarts"  # a parse worker died (its requests answered 503)


class Refusal(StrEnum):
    """Why a request (and every event in it) was not accepted; each is also its HTTP status."""

    INVALID = "invalid"            # 400: an event (or the body) is unusable; the answer lists each index
    UNAUTHORIZED = "unauthorized"  # 401: the bearer token is missing or wrong
    TOO_LARGE = "too_large"        # 413: the body is over ingest.max_body_bytes (its events are not counted)
    INCOMPLETE = "incomplete"      # 408/411: the body did not arrive whole in time, or came without a length
    OVERLOADED = "overloaded"      # 429: the queue of waiting events is full
    UNAVAILABLE = "unavailable"    # 503: the buffer has no room, Kafka is down (memory buffer), or stopping
    UNCONFIRMED = "unconfirmed"    # 503: Kafka did not acknowledge in time (memory buffer): it may still
    FAILED = "failed"              # 500: Kafka refused the events for good (dead-letter file), or a bug


STATUS = {Refusal.INVALID: 400, Refusal.UNAUTHORIZED: 401, Refusal.TOO_LARGE: 413, Refusal.INCOMPLETE: 408,
          Refusal.OVERLOADED: 429,
          Refusal.UNAVAILABLE: 503, Refusal.UNCONFIRMED: 503, Refusal.FAILED: 500}


@dataclass(frozen=True, slots=True)
class DeliveryError:
    text: str
    retriable: bool
    at: float  # Unix time


class Telemetry:
    """The counters of one agent, its gauges, and the events that log as they count.

    Thread-safe: stages on several threads report here.  ``clock`` is wall time
    (Unix seconds) for the "when" of errors and outages; tests inject it.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._values: dict[str, int] = {s.value: 0 for s in Stat} | {d.value: 0 for d in Drop}
        refused = {f"refused_{w}_{r.value}": 0 for r in Refusal for w in ("requests", "events")}
        self._ingest = {s.value: 0 for s in IngestStat} | {s.value: 0 for s in INGEST_LEDGER} | refused
        self._gauges: dict[str, Callable[[], float]] = {}
        self._latency: list[Callable[[float], None]] = []
        self._answered: list[Callable[[float], None]] = []
        self.last_delivery_error: DeliveryError | None = None
        self.outage_since: float | None = None  # Unix time the broker became unreachable, or None

    # -- counting ----------------------------------------------------------------

    def add(self, stat: Stat, n: int = 1, source: Source = Source.CAPTURE) -> None:
        with self._lock:
            (self._values if source is Source.CAPTURE else self._ingest)[stat.value] += n

    def drop(self, reason: Drop, n: int, why: str, source: Source = Source.CAPTURE) -> None:
        """Count ``n`` records (or log events) lost for ``reason`` and say so."""
        if n <= 0:
            return
        with self._lock:
            (self._values if source is Source.CAPTURE else self._ingest)[reason.value] += n
        what = "records" if source is Source.CAPTURE else "log events"
        log.warning("%d %s dropped (%s): %s", n, what, reason.value, why)

    # -- the HTTP ingest -----------------------------------------------------------

    def ingest(self, stat: IngestStat, n: int = 1) -> None:
        with self._lock:
            self._ingest[stat.value] += n

    def ingest_request(self, body_bytes: int) -> None:
        """A request reached the endpoint (one lock for both counters: this is per request)."""
        with self._lock:
            self._ingest[IngestStat.REQUESTS.value] += 1
            self._ingest[IngestStat.BYTES.value] += body_bytes

    def refused(self, reason: Refusal, events: int) -> None:
        """A request (with ``events`` events, 0 if unknown) was answered ``STATUS[reason]``."""
        with self._lock:
            self._ingest[f"refused_requests_{reason.value}"] += 1
            self._ingest[f"refused_events_{reason.value}"] += events

    def answered(self, seconds: float) -> None:
        """A request was answered 202 ``seconds`` after it arrived."""
        for observe in self._answered:
            observe(seconds)

    def on_answered(self, observe: Callable[[float], None]) -> None:
        self._answered.append(observe)

    def ingest_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._ingest)

    def get(self, name: Stat | Drop) -> int:
        with self._lock:
            return self._values[name.value]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    # -- delivery events ---------------------------------------------------------

    def delivery_failed(self, text: str, *, retriable: bool) -> None:
        self.last_delivery_error = DeliveryError(text, retriable, self._clock())
        log.warning("delivery failed (%s): %s", "will retry" if retriable else "permanent", text)

    def broker_down(self, text: str) -> None:
        if self.outage_since is None:
            self.outage_since = self._clock()
            log.warning("Kafka unreachable: %s", text)

    def broker_up(self) -> None:
        if self.outage_since is not None:
            log.info("Kafka reachable again after %.1fs", self._clock() - self.outage_since)
            self.outage_since = None

    def delivered_after(self, seconds: float) -> None:
        """A batch was acknowledged ``seconds`` after its oldest record was captured."""
        for observe in self._latency:
            observe(seconds)

    def on_latency(self, observe: Callable[[float], None]) -> None:
        self._latency.append(observe)

    # -- gauges ------------------------------------------------------------------

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Register a value read when someone looks (channel depth, buffer bytes, ...)."""
        self._gauges[name] = read

    def gauges(self) -> Mapping[str, float]:
        return {name: read() for name, read in list(self._gauges.items())}
