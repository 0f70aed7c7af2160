"""The kernel source: ring buffers -> chunks on the first channel.

The drain-and-pace loop lives here and only here (the tests and the capture
benchmark run this class, not a copy): wait for a wake-up or
``poll_interval``, drain until caught up, and after a partial drain pause
``pace_s`` so that the next drain takes a batch instead of chasing the
producer record by record (each drain has a fixed cost; the ring absorbs the
pause).

Rings taken over from a killed agent (capture/pins.py) come first: their
programs are already detached, so each is drained to its end, in order,
before our own ring; their records keep their capture id, hence their
identity.  After ``detached`` is set, a final drain waits (bounded) until
every record the kernel counted as emitted is read: a program that was
running on another CPU at detach may still add one.

Blocks on a full outbox (backpressure reaches the ring buffer, where the
kernel counts ``ringbuf_reserve_failed``).  A put refused because the agent is
cancelling counts the chunk under the Cancel's reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from producer.capture.ringbuf import RingBufferReader
from producer.channel import Cancel, Channel
from producer.records import Chunk, RingMark
from producer.telemetry.events import Stat, Telemetry

log = logging.getLogger(__name__)

#: records per chunk: bounds a chunk at 8192 x 120 bytes, whatever the ring's size
CHUNK_RECORDS = 8192
#: pause after a partial drain: the latency this adds at high rates, in seconds
PACE_S = 0.01
#: how long the final drain waits for records the kernel counted but has not committed
FINAL_DRAIN_S = 1.0


@dataclass
class Ring:
    """One ring buffer to drain: ours, or one taken over from a killed agent (``taken_over``).

    A taken-over ring is drained as it fills until ``closed`` (its hooks are gone), then to
    its end; once the encode stage has released the position after its last record (every
    batch of it has passed, whatever the buffer type), ``on_done`` is called once.
    """

    capture_id: str
    reader: RingBufferReader
    emitted: Callable[[], int]  # the kernel's count of records its program wrote into this ring
    taken_over: bool = False
    closed: threading.Event | None = None
    on_done: Callable[[Ring], None] | None = None
    drained: int = 0
    finished: bool = False  # drained to its end
    done: bool = False
    released_to: int = -1  # the highest position the encode stage has released (-1: none yet)


class KernelSource:
    name = "capture"

    def __init__(self, rings: list[Ring], outbox: Channel[Chunk], telemetry: Telemetry, cancel: Cancel,
                 detached: threading.Event, poll_interval_s: float, pace_s: float = PACE_S) -> None:
        self._rings = rings
        self._out = outbox
        self._tel = telemetry
        self._cancel = cancel
        self._detached = detached
        self._poll = poll_interval_s
        self._pace = pace_s
        self._by_id = {r.capture_id: r for r in rings}
        self._done_lock = threading.Lock()

    @property
    def rings(self) -> list[Ring]:
        return list(self._rings)

    def run(self) -> None:
        try:
            for ring in self._rings:
                if ring.taken_over:
                    while ring.closed is not None and not ring.closed.is_set() and not self._detached.is_set():
                        ring.reader.wait(self._poll)
                        self.drain_ready(ring)
                    self._drain_to_end(ring)
                    ring.finished = True
                    self._check_done(ring)
            own = [r for r in self._rings if not r.taken_over]
            if own:
                self._follow(own[0])
                self._drain_to_end(own[0])
        finally:
            self._out.close()

    def _follow(self, ring: Ring) -> None:
        """Until detached: wait, drain until caught up, pace."""
        while not self._detached.is_set():
            ring.reader.wait(self._poll)
            if 0 < self.drain_ready(ring) < CHUNK_RECORDS and self._pace:
                self._detached.wait(self._pace)

    def _drain_to_end(self, ring: Ring) -> None:
        """Drain until every record the kernel emitted into ``ring`` is read (bounded wait for stragglers)."""
        end = time.monotonic() + FINAL_DRAIN_S
        while True:
            self.drain_ready(ring)
            if ring.drained >= ring.emitted() - self._already_released(ring) or time.monotonic() > end:
                if ring.taken_over:
                    log.info("drained %d records left by capture %s", ring.drained, ring.capture_id)
                return
            ring.reader.wait(0.01)

    @staticmethod
    def _already_released(ring: Ring) -> int:
        """Records a taken-over ring's previous reader had consumed before we opened it."""
        return ring.reader.start_position // ring.reader.stride if ring.taken_over else 0

    def drain_ready(self, ring: Ring) -> int:
        """Drain ``ring`` until caught up (a chunk smaller than CHUNK_RECORDS); returns records read."""
        total = 0
        while True:
            records, ends = ring.reader.drain(CHUNK_RECORDS)
            n = len(records)
            if n:
                total += n
                ring.drained += n
                self._tel.add(Stat.DRAINED, n)
                if ring.taken_over:
                    self._tel.add(Stat.TAKEN_OVER, n)
                chunk = Chunk(ring.capture_id, records, ends)
                if not self._out.put(chunk, self._cancel):
                    self._tel.drop(self._cancel.reason, n, "the batcher no longer takes records")
            if n < CHUNK_RECORDS:
                return total

    def release(self, mark: RingMark) -> None:
        """The records of ``mark``'s ring up to its position are stored: the kernel may reuse the space."""
        ring = self._by_id.get(mark.capture_id)
        if ring is None:
            return
        with self._done_lock:
            if ring.done:  # its reader is closed
                return
            ring.reader.release(mark.position)
            ring.released_to = max(ring.released_to, mark.position)
        self._check_done(ring)

    def _check_done(self, ring: Ring) -> None:
        """A taken-over ring drained to its end whose last record has passed the encode stage is done
        with.  Not before: its batches may still be in the channels, and their release needs the reader."""
        with self._done_lock:
            if not ring.finished or ring.done:
                return
            if ring.drained and ring.released_to < ring.reader.read_position:
                return
            ring.done = True
        if ring.on_done is not None:
            ring.on_done(ring)
