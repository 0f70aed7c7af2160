"""Disk buffer stores side by side: the agent's SQLite store vs checksummed append-only segments.

The workload is the buffer's: append an entry (one encoded batch), read it back
for the publisher, delete it once acknowledged; entries of two sizes (a 100-record
batch, ~9 KB, and a 4096-record batch, ~370 KB).  Both stores make an entry
survive the process being killed without fsync per entry (SQLite WAL with
synchronous=NORMAL; the segment file written with one write() per entry).
The segment store is the obvious hand-written alternative, written here only
as the foil: a length+CRC32 header per entry, a tombstone file for deletes,
and no crash recovery beyond skipping a torn tail.

Prints entries/s, MB/s and CPU per entry for each; run from the repository root:
    .venv/bin/python benchmarks/buffer_store.py [seconds per case]
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer.buffer.disk import DiskStore  # noqa: E402
from producer.records import Encoded  # noqa: E402


class SegmentStore:
    """The foil: one append-only segment file, length + CRC32 per entry, deletes as tombstones."""

    def __init__(self, path: Path) -> None:
        self._data = open(path, "ab+")  # noqa: SIM115 - closed in close()
        self._dead = open(path.with_suffix(".dead"), "ab")  # noqa: SIM115
        self._index: dict[int, tuple[int, int]] = {}
        self._next = 1

    def append(self, entry: Encoded) -> int:
        entry_id = self._next
        self._next += 1
        header = struct.pack("<QII", entry_id, len(entry.payload), zlib.crc32(entry.payload))
        offset = self._data.seek(0, os.SEEK_END)
        self._data.write(header + entry.payload)
        self._data.flush()
        self._index[entry_id] = (offset + len(header), len(entry.payload))
        return entry_id

    def load(self, entry_id: int) -> bytes:
        offset, size = self._index[entry_id]
        self._data.seek(offset)
        return self._data.read(size)

    def delete(self, ids: list[int]) -> None:
        self._dead.write(b"".join(struct.pack("<Q", i) for i in ids))
        self._dead.flush()
        for i in ids:
            del self._index[i]

    def close(self) -> None:
        self._data.close()
        self._dead.close()


def run(store: object, size: int, seconds: float) -> dict[str, float]:
    payload = os.urandom(size)
    entry = Encoded("t", b"host", payload, None, size // 90, 0)
    n = 0
    wall0, cpu0 = time.monotonic(), time.process_time()
    while time.monotonic() - wall0 < seconds:
        entry_id = store.append(entry)  # type: ignore[attr-defined]
        store.load(entry_id)  # type: ignore[attr-defined]
        store.delete([entry_id])  # type: ignore[attr-defined]
        n += 1
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    return {"entries_s": n / wall, "mb_s": n * size / wall / 1e6, "us_cpu": cpu / n * 1e6}


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    base = Path(tempfile.mkdtemp(prefix="hdrlog-bench-", dir="/var/tmp"))
    print(f"{'store':<9} {'entry':>9} {'entries/s':>10} {'MB/s':>8} {'CPU us/entry':>13}")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for size in (9_000, 370_000):
        for name in ("sqlite", "segments"):
            path = base / f"{name}-{size}"
            store: object = DiskStore(path.with_suffix(".sqlite")) if name == "sqlite" else SegmentStore(path)
            try:
                r = run(store, size, seconds)
            finally:
                store.close()  # type: ignore[attr-defined]
            results[(name, size)] = r
            print(f"{name:<9} {size:>9,} {r['entries_s']:>10,.0f} {r['mb_s']:>8.0f} {r['us_cpu']:>13.0f}")
    for size in (9_000, 370_000):
        ratio = results[("sqlite", size)]["mb_s"] / results[("segments", size)]["mb_s"]
        print(f"entries of {size:,} bytes: sqlite / segments = {ratio:.2f}x the throughput")
    for f in base.iterdir():
        f.unlink()
    base.rmdir()


if __name__ == "__main__":
    main()
