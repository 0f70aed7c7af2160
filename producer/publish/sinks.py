"""Publishers that are not Kafka: JSON lines on stdout (``--stdout``) or appended to a file.

They take entries from the buffer like the Kafka publisher and acknowledge each
once written.  When stdout's reader goes away (``hdrlog agent --stdout | head``)
the agent stops and everything not printed is ``Drop.STDOUT_CLOSED``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO, Protocol

from producer.buffer.base import Buffer
from producer.telemetry.events import Drop, Stat, Telemetry


class Publisher(Protocol):
    """The last stage: takes entries from the buffer and acknowledges what reached its destination."""

    name: str

    def run(self) -> None:
        """Until the buffer is exhausted, ``stop()``, or the exit deadline."""
        ...

    def begin_exit(self, deadline: float) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class StreamPublisher:
    """Writes each entry's payload (JSON lines) to a binary stream and flushes."""

    name = "print"

    def __init__(self, out: BinaryIO, buffer: Buffer, telemetry: Telemetry, on_closed: Callable[[], None],
                 clock: Callable[[], float]) -> None:
        self._out = out
        self._buffer = buffer
        self._tel = telemetry
        self._on_closed = on_closed
        self._clock = clock
        self._closed = False
        self._stopped = False
        self._exit_at: float | None = None

    def begin_exit(self, deadline: float) -> None:
        self._exit_at = deadline

    def stop(self) -> None:
        self._stopped = True

    def run(self) -> None:
        while not self._stopped and not self._buffer.exhausted:
            if self._exit_at is not None and self._clock() >= self._exit_at:
                return
            item = self._buffer.take(0.2)
            if item is None:
                continue
            entry_id, entry = item
            if self._closed:
                self._tel.drop(Drop.STDOUT_CLOSED, entry.records, "the reader of stdout went away")
            else:
                try:
                    self._out.write(entry.payload)
                    self._out.flush()
                    self._tel.add(Stat.PRINTED, entry.records)
                except BrokenPipeError:
                    self._closed = True
                    self._tel.drop(Drop.STDOUT_CLOSED, entry.records, "the reader of stdout went away")
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, self._out.fileno())  # no second error when Python flushes at exit
                    os.close(devnull)
                    self._on_closed()
            self._buffer.ack([entry_id])

    def close(self) -> None:
        return None
