"""The HTTP ingest's stage: encoded requests -> grouped, numbered entries -> the buffer -> answers.

    POST handler --submit--> [waiting events, bounded] --IngestStage thread--> Buffer.offer --> answer

``submit`` runs on the HTTP server's event loop and never blocks: it answers at
once when it can (a duplicate, a full queue, a stopping agent, Kafka down with
the memory buffer) and otherwise queues the request.  The stage's thread takes
every request that arrived within ``linger_s`` of the first (up to
``max_group_events``), numbers their events (each request's arrive encoded
but for the sequence: ingest/workers.py) as LogEvent messages in one buffer
entry, and offers it to the buffer: with the disk buffer the offer is one
durable commit (one fsync for the whole group), after which every request of
the group is answered 202; with the memory buffer the answer waits until Kafka
has acknowledged the entry (or ``ack_timeout_s`` passes: 503, "unconfirmed").
A refused offer (the buffer is full) answers the group 503.  Answers go back to
the event loop in one hand-over per group.

Accounting (telemetry/events.py): every event of a request that reached the
queue is accepted or refused under one ``Refusal``, answered exactly once
(``_answer``: a timeout and Kafka's acknowledgement may race); a repeat of an
accepted ``Idempotency-Key`` is a duplicate and is not enqueued again; a
repeat of one still being committed waits for the first's answer, and a repeat
of one that timed out (memory buffer) is answered 503 at once until Kafka
decides.  A store that fails answers its group 500 and stops the agent;
requests that arrive after the stage stopped are answered 503.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from producer.buffer.base import Buffer, Outcome
from producer.channel import Cancel
from producer.records import Encoded, Source
from producer.serialize.rows import Parts, RowEncoder
from producer.telemetry.events import STATUS, IngestStat, Refusal, Telemetry

log = logging.getLogger(__name__)

#: Retry-After, in seconds, by status
RETRY_AFTER = {429: 1, 503: 5}
UNCONFIRMED_REPEAT = ("Kafka has not yet acknowledged the first request with this Idempotency-Key; "
                      "retry later with the same key")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the endpoint says to one request."""

    status: int
    text: str
    events: int
    duplicate: bool = False

    @property
    def retry_after(self) -> int | None:
        return RETRY_AFTER.get(self.status)

    def body(self) -> dict[str, Any]:
        if self.status == 202:
            return {"accepted": self.events, "duplicate": self.duplicate}
        return {"error": self.text}


def refusal(reason: Refusal, text: str, events: int) -> Answer:
    return Answer(STATUS[reason], text, events)


@dataclass(eq=False)
class Pending:
    """One queued request, its events encoded but for their sequence; ``reply`` is the handler's (the
    server knows what it is)."""

    parts: Parts
    key: str | None
    size: int
    reply: Any
    arrived_ns: int = field(default_factory=time.monotonic_ns)
    answer: Answer | None = None
    released: bool = False  # no longer counted against the limits

    @property
    def events(self) -> int:
        return self.parts.count


@dataclass
class _Key:
    """An Idempotency-Key: being committed (``waiting`` repeats ride along) or accepted."""

    events: int
    accepted: bool = False
    waiting: list[Pending] = field(default_factory=list)
    at: float = 0.0
    unconfirmed: bool = False  # its first request was answered 503 (Kafka slow) and is still waiting


class IdempotencyKeys:
    """Keys of accepted requests for ``ttl_s`` (at most ``max_keys``, the oldest forgotten first), and of
    requests being committed.  Thread-safe."""

    def __init__(self, ttl_s: float, max_keys: int, clock: Callable[[], float] = time.time) -> None:
        self._ttl = ttl_s
        self._max = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self._lock = threading.Lock()

    def restore(self, keys: list[tuple[str, int, int]]) -> None:
        """Keys a previous run committed (the disk buffer's): (key, events, Unix ns), oldest first."""
        with self._lock:
            for key, events, at_ns in keys:
                self._keys[key] = _Key(events, accepted=True, at=at_ns / 1e9)
            self._trim()

    def claim(self, p: Pending) -> _Key | None:
        """The key's state if it is known (``p`` then rides along or is a duplicate); else claim it."""
        assert p.key is not None
        with self._lock:
            self._trim(room=1)
            known = self._keys.get(p.key)
            if known is not None:
                if not known.accepted and not known.unconfirmed:
                    known.waiting.append(p)
                return known
            self._keys[p.key] = _Key(p.events)
            return None

    def settle(self, key: str, accepted: bool) -> list[Pending]:
        """The first request under ``key`` was answered: keep the key if accepted (forget it otherwise, so
        a retry goes through); returns the repeats that waited on it."""
        with self._lock:
            k = self._keys.get(key)
            if k is None:
                return []
            waiting, k.waiting = k.waiting, []
            if accepted:
                k.accepted = True
                k.at = self._clock()
                self._keys.move_to_end(key)
            else:
                del self._keys[key]
            return waiting

    def unconfirmed(self, key: str) -> list[Pending]:
        """The first request under ``key`` got no acknowledgement in time: repeats are answered 503 at once
        until Kafka decides; returns the repeats that waited."""
        with self._lock:
            k = self._keys.get(key)
            if k is None or k.accepted:
                return []
            k.unconfirmed = True
            waiting, k.waiting = k.waiting, []
            return waiting

    def _trim(self, room: int = 0) -> None:
        """Forget the expired keys, and the oldest accepted ones until ``room`` more fit (keys being
        committed are never forgotten: the queue's limits bound them)."""
        cutoff = self._clock() - self._ttl
        while self._keys:
            key, k = next(iter(self._keys.items()))
            if not k.accepted or (k.at >= cutoff and len(self._keys) + room <= self._max):
                break
            del self._keys[key]

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True, slots=True)
class IngestLimits:
    max_queue_events: int
    max_queue_bytes: int
    max_group_events: int
    linger_s: float
    ack_timeout_s: float


class IngestStage:
    """Runs on its own thread (``run``) until the agent detaches; ``submit`` is called on the event loop."""

    name = "ingest"

    def __init__(self, encoder: RowEncoder, topic: str, key: bytes, buffer: Buffer, telemetry: Telemetry,
                 keys: IdempotencyKeys, limits: IngestLimits, *, wait_for_kafka: bool,
                 kafka_down: Callable[[], bool], detached: threading.Event, cancel: Cancel,
                 reply: Callable[[list[Pending]], None]) -> None:
        self._encoder = encoder
        self._topic = topic
        self._key = key
        self._buffer = buffer
        self._tel = telemetry
        self._keys = keys
        self._limits = limits
        self._wait_for_kafka = wait_for_kafka
        self._kafka_down = kafka_down
        self._detached = detached
        self._cancel = cancel
        self._reply = reply
        self._cond = threading.Condition()
        self._queue: deque[Pending] = deque()
        self._wait_lock = threading.Lock()  # taken last, under any other lock
        self._answer_lock = threading.Lock()  # only around setting an answer
        self._waiting: dict[int, list[Pending]] = {}  # entry id -> requests waiting for Kafka (memory buffer)
        self._gone_early: dict[int, Outcome] = {}  # acknowledged before offer() returned
        self._held_events = 0  # queued or waiting for Kafka: what the limits bound
        self._held_bytes = 0
        self._seq = 0
        self._stopped = False
        buffer.add_input()

    # -- the event loop's side ------------------------------------------------------

    def submit(self, p: Pending) -> Answer | None:
        """Queue ``p`` (None: its answer comes through ``reply``) or answer it now."""
        n = p.events
        if self._detached.is_set() or self._cancel.is_set():
            return self._refuse_now(Refusal.UNAVAILABLE, "the agent is stopping", n)
        if self._wait_for_kafka and self._kafka_down():
            return self._refuse_now(Refusal.UNAVAILABLE, "Kafka is unreachable and the buffer is in memory", n)
        with self._cond:  # _stopped is set under it, and the queue emptied for the last time after
            if self._stopped:
                return self._refuse_now(Refusal.UNAVAILABLE, "the agent is stopping", n)
            if (self._held_events + n > self._limits.max_queue_events
                    or self._held_bytes + p.size > self._limits.max_queue_bytes) and self._held_events:
                return self._refuse_now(Refusal.OVERLOADED, "too many events are waiting; retry later", n)
            if p.key is not None:
                known = self._keys.claim(p)
                if known is not None and known.accepted:
                    self._tel.ingest(IngestStat.DUPLICATE_REQUESTS)
                    return Answer(202, "", known.events, duplicate=True)
                if known is not None and known.unconfirmed:
                    return self._refuse_now(Refusal.UNCONFIRMED, UNCONFIRMED_REPEAT, n)
                if known is not None:
                    return None  # rides along with the first request under its key
            self._held_events += n
            self._held_bytes += p.size
            self._queue.append(p)
            if len(self._queue) == 1:
                self._cond.notify()
            return None

    def _refuse_now(self, reason: Refusal, text: str, events: int) -> Answer:
        self._tel.refused(reason, events)
        return refusal(reason, text, events)

    # -- the stage's thread -----------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                group = self._next_group()
                if group is None:
                    break
                self._commit(group)
                self._expire_waits()
        finally:
            with self._cond:
                self._stopped = True
            self._finish()
            self._buffer.close_input()

    def _stopping(self) -> bool:
        return self._detached.is_set() or self._cancel.is_set()

    def _next_group(self) -> list[Pending] | None:
        """The requests of the next group; None when the agent is stopping and nothing is queued."""
        lim = self._limits
        with self._cond:
            while not self._queue:
                if self._stopping():
                    return None
                self._cond.wait(0.1)
                self._expire_waits()
            first = self._queue[0].arrived_ns
            while (sum(p.events for p in self._queue) < lim.max_group_events and not self._stopping()
                   and (left := first / 1e9 + lim.linger_s - time.monotonic()) > 0):
                self._cond.wait(left)
            group: list[Pending] = []
            events = 0
            while self._queue and (not group or events + self._queue[0].events <= lim.max_group_events):
                p = self._queue.popleft()
                group.append(p)
                events += p.events
            return group

    def _commit(self, group: list[Pending]) -> None:
        n = sum(p.events for p in group)
        try:
            payload, offsets = self._encoder.splice([p.parts for p in group], self._seq)
        except Exception as exc:  # noqa: BLE001 - parts come from the encoder (or a parse worker): a bug
            log.exception("encoding %d log events failed", n)
            self._refuse(group, Refusal.FAILED, f"the events could not be encoded: {exc}")
            return
        entry = Encoded(self._topic, self._key, payload, offsets, n, group[0].arrived_ns, source=Source.INGEST)
        keys = [(p.key, p.events) for p in group if p.key is not None]
        try:
            outcome = self._buffer.offer(entry, keys, self._on_gone if self._wait_for_kafka else None)
        except BaseException as exc:  # the store broke: the agent stops, and these requests hear why
            self._refuse(group, Refusal.FAILED, f"the buffer failed: {exc}")
            raise
        if isinstance(outcome, str):
            self._refuse(group, Refusal.UNAVAILABLE, f"cannot buffer the events: {outcome}")
            return
        self._seq += n
        if not self._wait_for_kafka:
            self._accept(group)
            return
        with self._wait_lock:  # Kafka may have acknowledged already: then _on_gone left the outcome here
            early = self._gone_early.pop(outcome, None)
            if early is None:
                self._waiting[outcome] = group
        if early is not None:
            self._settle(group, early)

    def _on_gone(self, entry_id: int, outcome: Outcome) -> None:
        """The buffer's watcher (memory buffer), on the publisher's thread under the buffer's lock: it
        only answers (a hand-over to the event loop)."""
        with self._wait_lock:
            group = self._waiting.pop(entry_id, None)
            if group is None:
                self._gone_early[entry_id] = outcome
                return
        self._settle(group, outcome)

    def _settle(self, group: list[Pending], outcome: Outcome) -> None:
        if outcome is Outcome.DELIVERED:
            self._accept(group)
        elif outcome is Outcome.DEAD_LETTERED:
            self._refuse(group, Refusal.FAILED, "Kafka refused the events for good (they are in the dead-letter file)")
        else:
            self._refuse(group, Refusal.UNAVAILABLE, "the agent stopped before Kafka acknowledged the events")

    def _expire_waits(self) -> None:
        """Memory buffer: answer 503 to the requests Kafka has not acknowledged within ack_timeout_s; their
        events stay in the buffer, and their keys are settled when Kafka answers."""
        if not self._wait_for_kafka:
            return
        cutoff = time.monotonic_ns() - int(self._limits.ack_timeout_s * 1e9)
        late: list[Pending] = []
        with self._wait_lock:
            for group in self._waiting.values():
                late += [p for p in group if p.answer is None and p.arrived_ns < cutoff]
        if late:
            repeats = [r for p in late if p.key is not None for r in self._keys.unconfirmed(p.key)]
            self._refuse(late + repeats, Refusal.UNCONFIRMED,
                         f"Kafka did not acknowledge within {self._limits.ack_timeout_s:g}s; the events may still "
                         "be delivered (retry with the same Idempotency-Key)", settle=False)

    def _accept(self, group: list[Pending]) -> None:
        answered: list[Pending] = []
        events = repeats = 0
        for p in group:
            if self._answer(p, Answer(202, "", p.events)):
                events += p.events
                answered.append(p)
            if p.key is not None:
                for repeat in self._keys.settle(p.key, accepted=True):
                    if self._answer(repeat, Answer(202, "", p.events, duplicate=True)):
                        repeats += 1
                        answered.append(repeat)
        self._tel.ingest(IngestStat.ACCEPTED_REQUESTS, len(answered) - repeats)
        self._tel.ingest(IngestStat.ACCEPTED, events)
        if repeats:
            self._tel.ingest(IngestStat.DUPLICATE_REQUESTS, repeats)
        self._hand_over(answered, group)

    def _refuse(self, group: list[Pending], reason: Refusal, text: str, *, settle: bool = True) -> None:
        answered: list[Pending] = []
        for p in group:
            repeats = self._keys.settle(p.key, accepted=False) if settle and p.key is not None else []
            for q in [p, *repeats]:
                if self._answer(q, refusal(reason, text, q.events)):
                    self._tel.refused(reason, q.events)
                    answered.append(q)
        self._hand_over(answered, group)

    def _answer(self, p: Pending, answer: Answer) -> bool:
        """Give ``p`` its answer unless it has one: the stage (a timeout) and the publisher (Kafka's
        acknowledgement) may both try; exactly one answers and counts."""
        with self._answer_lock:
            if p.answer is not None:
                return False
            p.answer = answer
            return True

    def _hand_over(self, answered: list[Pending], group: list[Pending]) -> None:
        with self._cond:
            for p in group:
                if not p.released:
                    p.released = True
                    self._held_events -= p.events
                    self._held_bytes -= p.size
        if answered:
            self._reply(answered)

    def _finish(self) -> None:
        """The agent failed with requests still queued: they are refused, never left hanging."""
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        if left:
            self._refuse(left, Refusal.UNAVAILABLE, "the agent is stopping")

    def state(self) -> dict[str, int]:
        with self._cond, self._wait_lock:
            return {"queued_requests": len(self._queue), "held_events": self._held_events,
                    "held_bytes": self._held_bytes, "waiting_for_kafka": len(self._waiting),
                    "idempotency_keys": len(self._keys)}
