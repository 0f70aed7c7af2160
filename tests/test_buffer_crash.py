"""Crash consistency of the disk buffer: a writer SIGKILLed in the middle of writing.

A child process appends entries of varied sizes as fast as it can and prints
each id once its commit has returned.  The parent kills it at an arbitrary
moment (while it is writing the next one), reopens the file, and requires that
every entry the child reported is there, byte for byte, that every entry there
is whole (its bytes are a function of its own index), and that nothing but at
most the one entry committed after the last report appears.  Ten kills, on the
same file, each reopening what the previous one left.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

from producer.buffer.disk import DiskStore
from tests.conftest import ROOT

WRITER = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from producer.buffer.disk import DiskStore
from producer.records import Encoded

def payload(i):
    size = 1000 + (i * 7919) % 300_000
    block = hashlib.sha256(str(i).encode()).digest()
    return (block * (size // 32 + 1))[:size]

store = DiskStore(Path(sys.argv[1]))
i = int(sys.argv[3])
while True:
    entry_id = store.append(Encoded("t", str(i).encode(), payload(i), (0, 17) if i % 2 else None, i, i))
    print(entry_id, i, flush=True)
    i += 1
"""


def payload(i: int) -> bytes:
    size = 1000 + (i * 7919) % 300_000
    block = hashlib.sha256(str(i).encode()).digest()
    return (block * (size // 32 + 1))[:size]


def test_a_killed_writer_leaves_whole_entries_only(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    reported: dict[int, int] = {}  # entry id -> index, as the child said after each commit
    start = 0
    for kill in range(10):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(ROOT), str(start)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        for _ in range(20 + 7 * kill):  # a different moment each time
            line = child.stdout.readline()
            assert line, "the writer died on its own"
            entry_id, index = map(int, line.split())
            reported[entry_id] = index
        child.send_signal(signal.SIGKILL)
        tail = child.stdout.read()  # lines already written before the kill count as reported too
        child.stdout.close()
        child.wait(10)
        for line in tail.splitlines():
            entry_id, index = map(int, line.split())
            reported[entry_id] = index

        store = DiskStore(path)
        try:
            present = {s.id: s for s in store.existing()}
            assert set(reported) <= set(present), f"kill {kill}: reported entries missing"
            extra = set(present) - set(reported)
            assert len(extra) <= 1, f"kill {kill}: {len(extra)} entries nobody reported"
            for entry_id in present:
                e = store.load(entry_id)
                index = e.records  # the writer stores its index as the record count
                assert e.key == str(index).encode() and e.payload == payload(index), f"entry {entry_id} is torn"
                assert e.offsets == ((0, 17) if index % 2 else None)
                if entry_id in reported:
                    assert reported[entry_id] == index
            start = max(e.records for e in map(store.load, present)) + 1
            for entry_id in extra:
                reported[entry_id] = store.load(entry_id).records
        finally:
            store.close()
