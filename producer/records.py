"""The in-process types that travel between stages.

    Chunk   what one drain copied out of one ring buffer (numpy, bpf/record.h layout)
    Batch   records of one capture, bounded by records and linger (still numpy)
    Encoded the bytes of one or more Kafka messages: one buffer entry

Records stay columnar (``abi.RECORD_DTYPE`` arrays) from the ring buffer to
the encoder; no Python object exists per record on the Kafka path.  A ring
position (``RingMark``) rides along so that, with a disk buffer, the ring's
consumer position advances only once the records are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt


class Source(Enum):
    """Where a buffer entry's records came from: each has its own ledger (telemetry/events.py)."""

    CAPTURE = 0  # header records from the kernel
    INGEST = 1   # log events from POST /api/v1/logging


Records = npt.NDArray[Any]
"""An array of ``abi.RECORD_DTYPE``."""


def concat(parts: list[Records]) -> Records:
    """Record arrays end to end, as bytes: np.concatenate of a structured dtype with padding copies field by
    field and returns a packed dtype (a different layout) -- ~10x the cost."""
    if len(parts) == 1:
        return parts[0]
    dtype = parts[0].dtype
    out: Records = np.concatenate([np.ascontiguousarray(p).view(np.uint8).reshape(-1) for p in parts]).view(dtype)
    return out


@dataclass(frozen=True, slots=True)
class RingMark:
    """The consumer position of one capture's ring buffer just after some record."""

    capture_id: str
    position: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """Records drained from one ring buffer, in ring order.

    ``end_positions[i]`` is the ring consumer position just after ``records[i]``.
    """

    capture_id: str
    records: Records
    end_positions: npt.NDArray[np.uint64]

    def __len__(self) -> int:
        return len(self.records)

    def mark(self, index: int) -> RingMark:
        """The position after ``records[index]``."""
        return RingMark(self.capture_id, int(self.end_positions[index]))


@dataclass(frozen=True, slots=True)
class Batch:
    """Records of one capture, ready to encode; ``mark`` is where its ring can be released to."""

    capture_id: str
    records: Records
    mark: RingMark | None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def first_ts_ns(self) -> int:
        return int(self.records["ts_ns"].min()) if len(self.records) else 0


@dataclass(frozen=True, slots=True)
class Encoded:
    """One buffer entry: the values of one or more messages to one topic, under one key.

    ``payload`` holds the values back to back; ``offsets`` (None for a single
    message) are where each value starts, so record shape keeps one entry per
    batch instead of one per record.  ``records`` is how many header records
    (or log events: ``source``) the entry stands for, the accounting unit;
    ``captured_ns`` the capture time (kernel monotonic clock) of its oldest
    record, for the delivery latency (for log events: when the first of them
    was received, on the same clock).
    """

    topic: str
    key: bytes
    payload: bytes
    offsets: tuple[int, ...] | None
    records: int
    captured_ns: int = 0
    mark: RingMark | None = None
    source: Source = Source.CAPTURE

    @property
    def messages(self) -> int:
        return 1 if self.offsets is None else len(self.offsets)

    def values(self) -> list[bytes]:
        if self.offsets is None:
            return [self.payload]
        ends = (*self.offsets[1:], len(self.payload))
        return [self.payload[a:b] for a, b in zip(self.offsets, ends, strict=True)]

    def __len__(self) -> int:
        return len(self.payload)
