"""NDJSON sinks: one JSON event per line, to stdout or to rotating files that any shipper picks up.

``FileSink`` appends to ``<dir>/<prefix>.ndjson`` at each flush (the runner's
commit interval).  When it passes ``max_bytes`` it is closed and renamed to
``<prefix>-<UTC time>-<n>.ndjson`` (Filebeat, Fluent Bit and Vector follow a
rename), and a new file is started; ``keep`` bounds how many rotated files
stay (0: all).  ``flush`` is fsync: after it the events survive a crash of
this host, and their offsets may be committed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from producer.consumer.sinks.base import EventsIn, as_events, json_line
from producer.errors import SinkError

log = logging.getLogger(__name__)


class StreamSink:
    """Standard output (or any binary stream): acknowledged once the pipe took the bytes.

    ``line`` renders one event (default: a JSON line; the demo's ``text`` format: a readable line).
    """

    name = "stdout"

    def __init__(self, out: BinaryIO, line: Callable[[dict[str, Any]], bytes] = json_line) -> None:
        self._out = out
        self._line = line

    def write(self, events: EventsIn) -> list[tuple[int, str]]:
        try:
            self._out.write(as_events(events).ndjson(self._line))
        except BrokenPipeError as exc:
            raise SinkError("standard output was closed by its reader") from exc
        return []

    def flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError as exc:
            raise SinkError("standard output was closed by its reader") from exc

    def close(self) -> None:
        self.flush()


class FileSink:
    """NDJSON files; ``write`` only buffers, ``flush`` appends the buffer, fsyncs and rotates.

    A failed flush (a full disk) truncates the file back to where it was, so no torn line is
    left, keeps the buffer, and raises a retriable SinkError: the runner retries the flush
    and commits nothing meanwhile."""

    name = "file"

    def __init__(self, directory: Path, *, prefix: str = "hdrlog", max_bytes: int = 128 << 20, keep: int = 0,
                 clock: Any = time.time) -> None:
        self.directory = directory
        self._prefix = prefix
        self._max = max_bytes
        self._keep = keep
        self._clock = clock
        self._serial = 0
        self._buffer: list[bytes] = []
        self.path = directory / f"{prefix}.ndjson"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open across writes
        except OSError as exc:
            raise SinkError(f"cannot open {self.path}: {exc.strerror}") from exc

    def write(self, events: EventsIn) -> list[tuple[int, str]]:
        self._buffer.append(as_events(events).ndjson())
        return []

    def flush(self) -> None:
        data = b"".join(self._buffer)
        if data:
            start = self._file.tell()
            try:
                self._file.write(data)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                self._undo(start)
                raise SinkError(f"cannot write {self.path}: {exc.strerror}", retriable=True) from exc
        self._buffer.clear()
        if self._file.tell() >= self._max:
            self._rotate()

    def _undo(self, size: int) -> None:
        """Cut a partly written flush off, so the file ends with a whole line."""
        try:
            self._file.seek(size)
            self._file.truncate(size)
        except (OSError, ValueError):
            self._reopen()

    def _reopen(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = open(self.path, "ab")  # noqa: SIM115

    def _rotate(self) -> None:
        """Rename the full file aside and start a new one; on failure, go on appending to it."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        while True:  # never over an earlier run's file
            self._serial += 1
            target = self.directory / f"{self._prefix}-{stamp}-{self._serial}.ndjson"
            if not target.exists():
                break
        try:
            self._file.close()
            os.rename(self.path, target)
        except OSError as exc:
            log.warning("cannot rotate %s (appending to it still): %s", self.path, exc.strerror)
        self._reopen()
        if self._keep:
            rotated = sorted(self.directory.glob(f"{self._prefix}-*.ndjson"), key=lambda p: p.stat().st_mtime)
            for old in rotated[:-self._keep]:
                old.unlink(missing_ok=True)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._file.close()

    def files(self) -> list[Path]:
        """Every file this sink writes to or has rotated, oldest first."""
        rotated = sorted(self.directory.glob(f"{self._prefix}-*.ndjson"), key=lambda p: p.stat().st_mtime)
        return [*rotated, self.path]
