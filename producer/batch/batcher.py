"""Group drained chunks into batches bounded by records and linger.

Pure logic with an injected clock (``Batcher``) and the stage that runs it on
a thread between two channels (``BatchStage``).  A batch never mixes two
captures (a taken-over ring buffer's records go out before ours, in their own
batches); a chunk may be split across batches.  The encoder bounds bytes.

Contract: every record that comes in goes out, in order, in exactly one
batch; ``flush()`` at the end of input hands out the partial batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from producer.channel import Cancel, Channel, Closed
from producer.records import Batch, Chunk, Records, RingMark, concat
from producer.telemetry.events import Drop, Stat, Telemetry


class Batcher:
    """Accumulates records; hands out a batch when it is full or its oldest record has waited ``linger_s``."""

    def __init__(self, max_records: int, linger_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_records
        self._linger = linger_s
        self._clock = clock
        self._parts: list[Records] = []
        self._count = 0
        self._capture = ""
        self._mark: RingMark | None = None
        self._since: float | None = None  # when the oldest pending record arrived

    @property
    def pending(self) -> int:
        return self._count

    def deadline(self) -> float | None:
        """When the pending batch is due, or None if nothing is pending."""
        return None if self._since is None else self._since + self._linger

    def add(self, chunk: Chunk) -> list[Batch]:
        """Take a chunk; return the batches it completed (full ones, or the pending one on a capture change)."""
        out: list[Batch] = []
        if self._count and chunk.capture_id != self._capture:
            out.append(self._take())
        self._capture = chunk.capture_id
        start = 0
        n = len(chunk)
        while start < n:
            if self._since is None:
                self._since = self._clock()
            take = min(n - start, self._max - self._count)
            self._parts.append(chunk.records[start:start + take])
            self._count += take
            self._mark = chunk.mark(start + take - 1)
            start += take
            if self._count >= self._max:
                out.append(self._take())
        return out

    def due(self) -> Batch | None:
        """The pending batch if its linger has passed."""
        deadline = self.deadline()
        if deadline is not None and self._clock() >= deadline:
            return self._take()
        return None

    def flush(self) -> Batch | None:
        """The pending batch, whatever its age (end of input)."""
        return self._take() if self._count else None

    def _take(self) -> Batch:
        records = concat(self._parts)
        batch = Batch(self._capture, records, self._mark)
        self._parts = []
        self._count = 0
        self._mark = None
        self._since = None
        return batch


class BatchStage:
    """Runs a Batcher between the chunk channel and the batch channel (blocks on a full one)."""

    name = "batch"

    def __init__(self, batcher: Batcher, inbox: Channel[Chunk], outbox: Channel[Batch], telemetry: Telemetry,
                 cancel: Cancel, clock: Callable[[], float] = time.monotonic) -> None:
        self._batcher = batcher
        self._in = inbox
        self._out = outbox
        self._tel = telemetry
        self._cancel = cancel
        self._clock = clock

    def run(self) -> None:
        try:
            while True:
                deadline = self._batcher.deadline()
                timeout = 0.5 if deadline is None else max(0.0, deadline - self._clock())
                try:
                    chunk = self._in.get(timeout)
                except Closed:
                    break
                ready = self._batcher.add(chunk) if chunk is not None else []
                due = self._batcher.due()
                for batch in ready + ([due] if due is not None else []):
                    self._emit(batch)
            last = self._batcher.flush()
            if last is not None:
                self._emit(last)
        except BaseException:
            # a bug: the agent stops; what the batcher holds is counted, not lost unseen
            self._tel.drop(Drop.AFTER_FAILURE, self._batcher.pending, "the batch stage failed")
            raise
        finally:
            self._out.close()

    def _emit(self, batch: Batch) -> None:
        self._tel.add(Stat.BATCHES)
        if not self._out.put(batch, self._cancel):
            self._tel.drop(self._cancel.reason, len(batch), "the encoder no longer takes batches")
