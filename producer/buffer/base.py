"""The buffer between the encoder and the publisher, and its full-buffer policy.

In Vector's vocabulary: ``buffer.type = memory | disk`` picks the store,
``when_full = block | drop_newest | drop_oldest`` what a full buffer does, and
``max_bytes`` the cap.  ``Buffer`` holds the policy and the order; a ``Store``
(memory.py, disk.py) only keeps the bytes.

An entry leaves the buffer only when the publisher acknowledges it
(``ack``: Kafka acknowledged it, or it went to the dead-letter file).  The
publisher ``take``s entries oldest first; after a retriable failure it
``rewind``s, and every unacknowledged entry is handed out again in its
original order, so new entries queue behind the ones being retried and the
host's order holds.

Policies, each counted (telemetry/events.py):
    block        ``put`` waits for room (backpressure back to the ring buffer)
    drop_newest  a ``put`` that does not fit is refused: Drop.BUFFER_FULL; and so is every later one
                 until an acknowledgement frees room, so what is kept is an unbroken run of the
                 oldest (a smaller later entry never slips into the gap a larger one left)
    drop_oldest  the oldest entries not yet handed out are evicted: Drop.BUFFER_EVICTED
An entry larger than the whole cap can never fit and is refused under every
policy (Drop.BUFFER_FULL).  A store that runs out of room before the cap (a
full disk) counts as full.

Log events (``Source.INGEST``) come in by ``offer``, which never waits, never
evicts and counts nothing: a refusal goes back to the HTTP client as a 503,
whose retry is the policy.  Their entries are never evicted either (the
client was told they are safe); ``drop_oldest`` passes over them.  With the
disk store, ``offer`` commits them durably (``synchronous = FULL`` for that
commit) together with the request's idempotency keys.  Its ``on_gone`` tells
the ingest when an entry has left (delivered, dead-lettered, or lost at exit):
the memory buffer answers 202 only then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from producer.channel import Cancel
from producer.records import Encoded, Source
from producer.telemetry.events import Drop, Stat, Telemetry

log = logging.getLogger(__name__)


class StoreFull(Exception):
    """The store has no room left (a full disk), whatever the cap says."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What the buffer keeps in memory about one stored entry."""

    id: int
    records: int
    size: int
    captured_ns: int
    source: Source = Source.CAPTURE


class Outcome(Enum):
    """How an entry left the buffer (``Buffer.watch``)."""

    DELIVERED = "delivered"
    DEAD_LETTERED = "dead_lettered"  # some of its messages were refused for good
    LOST = "lost"                    # removed at exit undelivered (memory buffer)


class Store(Protocol):
    """Where entries' bytes live.  Ids are increasing integers, never reused."""

    def append(self, entry: Encoded, keys: Sequence[tuple[str, int]] = (), durable: bool = False) -> int:
        """Store ``entry`` (for disk: committed before return; with ``durable``, synced to the device),
        with the (idempotency key, events) pairs it answers, in one transaction; raises StoreFull."""
        ...

    def load(self, entry_id: int) -> Encoded: ...
    def delete(self, entry_ids: list[int]) -> None: ...

    def stuck(self) -> bool:
        """Deletes are waiting for room (a full disk): evicting would free nothing now."""
        ...

    def existing(self) -> Iterator[Stored]:
        """The entries already there when opened (a previous run's), oldest first."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BufferState:
    entries: int
    records: int
    bytes: int
    in_flight: int
    cap_bytes: int
    oldest_captured_ns: int | None


class Buffer:
    """Ordered, capped, policy-driven; thread-safe (the encoder puts, the publisher takes and acks)."""

    def __init__(self, store: Store, cap_bytes: int, when_full: str, telemetry: Telemetry, kind: str) -> None:
        """One input (the encoder) until ``add_input`` says there are more."""
        self.store = store
        self._store = store
        self._cap = cap_bytes
        self._policy = when_full
        self._tel = telemetry
        self.kind = kind
        self._cond = threading.Condition()
        self._entries: OrderedDict[int, Stored] = OrderedDict()
        self._handed: set[int] = set()  # taken and not acknowledged
        self._cursor = 0  # the highest id handed out since the last rewind
        self._bytes = 0
        self._records = 0
        self._by_source = dict.fromkeys(Source, 0)
        self._inputs = 1
        self._closed = False
        self._refusing = False  # drop_newest refused an entry: refuse all until room is freed
        self._watchers: dict[int, Callable[[int, Outcome], None]] = {}
        for s in store.existing():
            self._index(s)
        for source, n in self._by_source.items():
            if n:
                telemetry.add(Stat.RESTORED, n, source)
        if self._entries:
            log.info("the %s buffer holds %d records and log events (%d bytes) from a previous run; they go first",
                     kind, self._records, self._bytes)

    def _index(self, s: Stored) -> None:
        self._entries[s.id] = s
        self._bytes += s.size
        self._records += s.records
        self._by_source[s.source] += s.records

    def _unindex(self, entry_id: int, outcome: Outcome) -> Stored | None:
        s = self._entries.pop(entry_id, None)
        if s is not None:
            self._refusing = False
            self._bytes -= s.size
            self._records -= s.records
            self._by_source[s.source] -= s.records
            self._handed.discard(entry_id)
            watcher = self._watchers.pop(entry_id, None)
            if watcher is not None:
                watcher(entry_id, outcome)
        return s

    # -- the encoder's side -------------------------------------------------------

    def put(self, entry: Encoded, cancel: Cancel | None = None) -> bool:
        """Store ``entry`` or count it under the policy; False only if ``cancel`` stopped a blocked put
        (then nothing was stored or counted: the caller counts it)."""
        size = len(entry)
        with self._cond:
            if size > self._cap:
                self._tel.drop(Drop.BUFFER_FULL, entry.records,
                               f"an entry of {size} bytes is larger than the {self.kind} buffer's cap {self._cap}")
                return True
            while True:
                if self._refusing and self._policy == "drop_newest":
                    self._tel.drop(Drop.BUFFER_FULL, entry.records,
                                   f"the {self.kind} buffer is full (refusing until the broker acknowledges)")
                    return True
                if self._bytes + size <= self._cap:
                    try:
                        self._append(entry)
                        return True
                    except StoreFull as exc:
                        full_reason = str(exc)
                else:
                    full_reason = f"{self._bytes} of {self._cap} bytes used"
                if self._policy == "drop_newest":
                    self._refusing = True
                    self._tel.drop(Drop.BUFFER_FULL, entry.records, f"the {self.kind} buffer is full ({full_reason})")
                    return True
                if self._policy == "drop_oldest" and not self._store.stuck() and self._evict_for(size):
                    continue  # (a store that cannot even delete frees nothing by evicting: refuse instead)
                if self._policy == "drop_oldest" and self._store.stuck():
                    self._tel.drop(Drop.BUFFER_FULL, entry.records,
                                   f"the {self.kind} buffer is full and cannot free room ({full_reason})")
                    return True
                if self._policy == "drop_oldest" and not self._evictable():
                    self._tel.drop(Drop.BUFFER_FULL, entry.records,
                                   f"the {self.kind} buffer is full and all of it is being sent ({full_reason})")
                    return True
                if cancel is not None and cancel.is_set():
                    return False
                self._tel.add(Stat.BUFFER_FULL_WAITS)
                self._cond.wait(0.1)

    def _append(self, entry: Encoded, keys: Sequence[tuple[str, int]] = (), durable: bool = False) -> int:
        entry_id = self._store.append(entry, keys, durable)
        self._index(Stored(entry_id, entry.records, len(entry), entry.captured_ns, entry.source))
        self._tel.add(Stat.BUFFERED, entry.records, entry.source)
        self._cond.notify_all()
        return entry_id

    def offer(self, entry: Encoded, keys: Sequence[tuple[str, int]] = (),
              on_gone: Callable[[int, Outcome], None] | None = None) -> int | str:
        """Log events: store ``entry`` durably now, or say why not (no room, a full disk); never waits,
        never evicts, counts no drop.  Returns the entry's id or the reason.  ``on_gone(id, outcome)`` is
        called (under the buffer's lock: it must only hand over) when the entry leaves the buffer."""
        with self._cond:
            if self._bytes + len(entry) > self._cap:
                return f"the {self.kind} buffer is full ({self._bytes} of {self._cap} bytes used)"
            try:
                entry_id = self._append(entry, keys, durable=True)
            except StoreFull as exc:
                return str(exc)
            if on_gone is not None:
                self._watchers[entry_id] = on_gone
            return entry_id

    def _evictable(self) -> list[int]:
        """What drop_oldest may evict: entries not being sent, and never log events."""
        return [i for i, s in self._entries.items() if i not in self._handed and s.source is Source.CAPTURE]

    def _evict_for(self, size: int) -> bool:
        """Evict the oldest entries not handed out until ``size`` fits (or one at a time on a full store)."""
        victims: list[int] = []
        free = self._cap - self._bytes
        for entry_id in self._evictable():
            if free >= size and victims:
                break
            victims.append(entry_id)
            free += self._entries[entry_id].size
        if not victims:
            return False
        self._store.delete(victims)
        lost = sum(s.records for v in victims if (s := self._unindex(v, Outcome.LOST)) is not None)
        self._tel.drop(Drop.BUFFER_EVICTED, lost, f"the {self.kind} buffer is full: evicted the oldest entries")
        return True

    def add_input(self) -> None:
        """Another stage puts here (the HTTP ingest): input ends when every one has closed it."""
        with self._cond:
            self._inputs += 1

    def close_input(self) -> None:
        """One input has finished; once all have, ``take`` returns None when everything is handed out."""
        with self._cond:
            self._inputs -= 1
            self._closed = self._inputs <= 0
            self._cond.notify_all()

    # -- the publisher's side -----------------------------------------------------

    def take(self, timeout: float) -> tuple[int, Encoded] | None:
        """The oldest entry not handed out since the last rewind, or None after ``timeout``."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry_id in self._entries:
                    if entry_id > self._cursor:
                        self._cursor = entry_id
                        self._handed.add(entry_id)
                        return entry_id, self._store.load(entry_id)
                left = end - time.monotonic()
                if left <= 0 or (self._closed and not self._entries):
                    return None
                self._cond.wait(min(left, 0.1))

    def ack(self, entry_ids: list[int], outcome: Outcome = Outcome.DELIVERED) -> None:
        """Delivered (or dead-lettered): gone for good."""
        with self._cond:
            self._store.delete(entry_ids)
            for entry_id in entry_ids:
                self._unindex(entry_id, outcome)
            self._cond.notify_all()

    def rewind(self) -> int:
        """Hand every unacknowledged entry out again, oldest first; returns how many records that is."""
        with self._cond:
            again = sum(self._entries[i].records for i in self._handed if i in self._entries)
            self._handed.clear()
            self._cursor = 0
            self._cond.notify_all()
            return again

    def drain_all(self) -> dict[Source, int]:
        """Remove everything (exit of a memory buffer); returns the records removed by source, to be counted."""
        with self._cond:
            ids = list(self._entries)
            self._store.delete(ids)
            lost = dict.fromkeys(Source, 0)
            for i in ids:
                s = self._unindex(i, Outcome.LOST)
                if s is not None:
                    lost[s.source] += s.records
            self._cond.notify_all()
            return lost

    def records_by_source(self) -> dict[Source, int]:
        with self._cond:
            return dict(self._by_source)

    @property
    def exhausted(self) -> bool:
        """Input closed and nothing left: the publisher is done."""
        with self._cond:
            return self._closed and not self._entries

    def state(self) -> BufferState:
        with self._cond:
            oldest = next(iter(self._entries.values())).captured_ns if self._entries else None
            return BufferState(len(self._entries), self._records, self._bytes, len(self._handed), self._cap,
                               oldest)

    def close(self) -> None:
        self._store.close()
