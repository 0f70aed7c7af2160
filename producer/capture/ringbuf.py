"""Drain a BPF ring buffer of fixed-size records without a per-record callback.

The ring buffer is mapped into this process exactly as libbpf maps it: the
consumer-position page read-write, then the producer-position page and the
data area read-only, the data area mapped twice back to back by the kernel so
a record that wraps is still contiguous.  Because every record has the same
size, the span between the consumer and producer positions is a regular
array: one numpy view finds the committed prefix (busy bit clear) and copies
it out in one call.  This is what lets the user-space side keep up with the
kernel (BENCHMARKS.md: 3 to 5 times bcc's per-record callback).

Reading and releasing are separate: ``drain`` copies records out and moves a
private read position; the kernel's consumer position (what frees ring space)
moves on ``release``.  With ``release_on_drain`` (the memory buffer) every
drain releases at once; with a disk buffer the pipeline releases a position
only once the records before it are stored, so a killed agent's successor
finds every unstored record still in the ring (capture/pins.py).

Assumes x86-64 (TSO) load ordering between the producer position, the record
headers and the data, as libbpf's C reader does with explicit barriers.
"""

from __future__ import annotations

import mmap
import select
from typing import Any

import numpy as np
import numpy.typing as npt

from producer.errors import CaptureError

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8  # struct bpf_ringbuf_hdr { u32 len; u32 pg_off; }


class RingBufferReader:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF holding ``record_dtype`` records."""

    def __init__(self, map_fd: int, size_bytes: int, record_dtype: np.dtype[Any], *,
                 release_on_drain: bool = True) -> None:
        if size_bytes <= 0 or size_bytes & (size_bytes - 1):
            raise CaptureError(f"ring buffer size {size_bytes} is not a power of two")
        page = mmap.PAGESIZE
        self._size = size_bytes
        self._mask = size_bytes - 1
        self._rec_size = record_dtype.itemsize
        self._stride = (_HDR + self._rec_size + 7) & ~7
        try:
            self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod = mmap.mmap(map_fd, page + 2 * size_bytes, mmap.MAP_SHARED,
                                   mmap.PROT_READ, offset=page)
        except OSError as exc:
            raise CaptureError(f"cannot map the ring buffer: {exc.strerror}") from exc
        self._page = page
        # The positions are read and written through aligned 8-byte numpy views: numpy
        # loads and stores an aligned native integer with one instruction, so neither side
        # ever sees a torn position.  (struct.pack_into copies bytewise: the kernel then
        # saw half-written consumer positions and refused reservations it had room for.)
        self._cons_pos = np.frombuffer(self._cons, dtype=np.uint64, count=1, offset=0)
        self._prod_pos = np.frombuffer(self._prod, dtype=np.uint64, count=1, offset=0)
        self._slot = np.dtype({
            "names": ["len", "rec"],
            "formats": ["<u4", record_dtype],
            "offsets": [0, _HDR],
            "itemsize": self._stride,
        })
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)
        self._release_on_drain = release_on_drain
        self._read = self._consumer_pos()  # where the next drain starts (>= the consumer position)
        self.start_position = self._read  # a ring taken over may have been partly consumed already

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def stride(self) -> int:
        """Bytes one record takes in the ring (header included, 8-aligned)."""
        return self._stride

    def pending_bytes(self) -> int:
        """Bytes the kernel wrote that are not released yet (read or not)."""
        return self._producer_pos() - self._consumer_pos()

    def unread_bytes(self) -> int:
        return self._producer_pos() - self._read

    @property
    def read_position(self) -> int:
        """Where the next drain starts: the position after the last record read."""
        return self._read

    def release(self, position: int) -> None:
        """Let the kernel reuse the ring up to ``position`` (a value from ``drain``); never backwards."""
        if self._read >= position > self._consumer_pos():
            self._cons_pos[0] = position

    def _consumer_pos(self) -> int:
        return int(self._cons_pos[0])

    def _producer_pos(self) -> int:
        return int(self._prod_pos[0])

    def wait(self, timeout_s: float) -> bool:
        """Block until the kernel signals data or ``timeout_s`` passes."""
        try:
            return bool(self._epoll.poll(timeout_s))
        except InterruptedError:
            return False

    def drain(self, max_records: int = 1 << 20) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint64]]:
        """Copy out the committed records after the read position (up to ``max_records``).

        Returns the records and, for each, the ring position just after it (what
        ``release`` takes).  Releases at once when ``release_on_drain``.
        """
        cons = self._read
        avail = self._producer_pos() - cons
        empty = (np.empty(0, dtype=self._slot["rec"]), np.empty(0, dtype=np.uint64))
        if avail <= 0:
            return empty
        if avail % self._stride:
            raise CaptureError(
                f"ring buffer holds {avail} bytes, not a whole number of {self._stride}-byte "
                "records: the kernel program and this reader disagree on the record layout"
            )
        n = min(avail // self._stride, max_records)
        start = self._page + (cons & self._mask)
        slots = np.frombuffer(self._prod, dtype=self._slot, count=n, offset=start)
        lens = slots["len"]
        busy = np.flatnonzero(lens & _BUSY)
        ready = int(busy[0]) if busy.size else n
        if ready == 0:
            return empty
        lens = lens[:ready]
        keep = (lens & _DISCARD) == 0
        bad = np.flatnonzero(keep & ((lens & ~np.uint32(_BUSY | _DISCARD)) != self._rec_size))
        if bad.size:
            raise CaptureError(
                f"ring buffer record of {int(lens[bad[0]] & 0xFFFFFFF)} bytes, expected "
                f"{self._rec_size}: the kernel program and this reader disagree on the layout"
            )
        ends = np.arange(1, ready + 1, dtype=np.uint64) * np.uint64(self._stride) + np.uint64(cons)
        # the records as bytes, one row per slot: a strided byte copy is ~8x cheaper than numpy's
        # field-by-field copy of a structured array
        raw = np.frombuffer(self._prod, dtype=np.uint8, count=n * self._stride, offset=start)
        rows = raw.reshape(n, self._stride)[:ready, _HDR:_HDR + self._rec_size]
        if not keep.all():
            rows = rows[keep]
            ends = ends[keep]
        out = rows.copy().view(self._slot["rec"]).reshape(-1)
        del slots, lens, raw, rows
        self._read = cons + ready * self._stride
        if self._release_on_drain:
            self._cons_pos[0] = self._read
        return out, ends

    def close(self) -> None:
        del self._cons_pos, self._prod_pos  # release the exports before unmapping
        self._epoll.close()
        self._cons.close()
        self._prod.close()
