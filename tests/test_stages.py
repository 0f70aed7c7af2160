"""Each stage driven in memory: fill every channel and buffer, and prove its policy.

These are the pure-logic tests (an in-memory fake stands in for librdkafka's
producer); the same stages run against the real kernel, broker and registry in
test_e2e.py, test_delivery.py and the fault tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException

from producer import abi
from producer.batch.batcher import Batcher
from producer.buffer.base import Buffer, StoreFull
from producer.buffer.disk import DiskStore
from producer.buffer.memory import MemoryStore
from producer.channel import Cancel, Channel, Closed
from producer.errors import HdrlogError
from producer.publish.deadletter import DeadLetters
from producer.publish.kafka import KafkaPublisher
from producer.records import Chunk, Encoded, RingMark
from producer.telemetry.events import Drop, Stat, Telemetry
from tests.conftest import wait_for

# -- channel --------------------------------------------------------------------------


def test_channel_blocks_when_full_and_gives_up_only_on_cancel() -> None:
    waits: list[int] = []
    ch: Channel[int] = Channel("c", 2, on_full_wait=lambda: waits.append(1))
    assert ch.put(1) and ch.put(2)
    cancel = Cancel()
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(ch.put(3, cancel)))
    t.start()
    wait_for(lambda: len(waits) >= 2, 5, "the put to wait on the full channel")
    assert not done and len(ch) == 2
    assert ch.get(0) == 1  # room: the blocked put goes through, in order
    t.join(5)
    assert done == [True] and [ch.get(0), ch.get(0)] == [2, 3]
    assert ch.put(4) and ch.put(5)
    cancel.set(Drop.UNFLUSHED_AT_EXIT)
    assert ch.put(6, cancel) is False and cancel.reason is Drop.UNFLUSHED_AT_EXIT
    ch.close()
    assert [ch.get(0), ch.get(0)] == [4, 5]
    with pytest.raises(Closed):
        ch.get(0)


def test_channel_abandon_returns_what_was_left() -> None:
    ch: Channel[str] = Channel("c", 3)
    ch.put("a")
    ch.put("b")
    assert ch.abandon() == ["a", "b"] and len(ch) == 0


# -- batcher ----------------------------------------------------------------------------


def _chunk(capture: str, n: int, start_seq: int = 0, pos0: int = 0) -> Chunk:
    a = np.zeros(n, dtype=abi.RECORD_DTYPE)
    a["seq"] = np.arange(start_seq, start_seq + n)
    ends = (np.arange(1, n + 1, dtype=np.uint64) * 128 + pos0).astype(np.uint64)
    return Chunk(capture, a, ends)


def test_batcher_bounds_by_records_and_keeps_order_and_ring_marks() -> None:
    now = [0.0]
    b = Batcher(max_records=4, linger_s=1.0, clock=lambda: now[0])
    out = b.add(_chunk("c", 10))
    assert [len(x) for x in out] == [4, 4] and b.pending == 2
    assert [x.mark for x in out] == [RingMark("c", 4 * 128), RingMark("c", 8 * 128)]
    assert np.concatenate([x.records["seq"] for x in out]).tolist() == list(range(8))
    out = b.add(_chunk("c", 3, start_seq=10, pos0=10 * 128))
    assert [x.records["seq"].tolist() for x in out] == [[8, 9, 10, 11]]  # across chunks
    assert out[0].mark == RingMark("c", 12 * 128)
    last = b.flush()
    assert last is not None and last.records["seq"].tolist() == [12] and b.flush() is None


def test_batcher_linger_and_capture_change() -> None:
    now = [0.0]
    b = Batcher(max_records=100, linger_s=0.5, clock=lambda: now[0])
    assert b.add(_chunk("old", 3)) == [] and b.deadline() == 0.5
    now[0] = 0.4
    assert b.due() is None
    # a new capture's records never share a batch with the old one's
    out = b.add(_chunk("new", 2))
    assert [(x.capture_id, len(x)) for x in out] == [("old", 3)]
    now[0] = 1.0
    due = b.due()
    assert due is not None and (due.capture_id, len(due)) == ("new", 2)


# -- buffer -------------------------------------------------------------------------------


def _entry(n: int, size: int = 100, tag: int = 0) -> Encoded:
    return Encoded("t", b"k", bytes([tag % 256]) * size, None, n, 1)


def _store(kind: str, tmp: Path) -> Any:
    return MemoryStore() if kind == "memory" else DiskStore(tmp / "buffer.sqlite")


@pytest.fixture(params=["memory", "disk"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_buffer(kind: str, tmp_path: Path) -> Any:
    """Buffer(cap, policy, telemetry) of this test's kind, closed at the end."""
    made: list[Buffer] = []

    def make(cap: int, policy: str, tel: Telemetry) -> Buffer:
        made.append(Buffer(_store(kind, tmp_path), cap, policy, tel, kind))
        return made[-1]

    yield make
    for b in made:
        b.close()


def test_buffer_take_ack_rewind_keeps_order(new_buffer: Any) -> None:
    tel = Telemetry()
    buf = new_buffer(10_000, "block", tel)
    for i in range(4):
        assert buf.put(_entry(1, tag=i))
    taken = [buf.take(0) for _ in range(3)]
    assert [t[1].payload[0] for t in taken if t] == [0, 1, 2]
    buf.ack([taken[1][0]])  # the middle one delivered
    assert buf.rewind() == 2  # two handed out and unacknowledged
    again = [buf.take(0) for _ in range(3)]
    assert [t[1].payload[0] for t in again if t] == [0, 2, 3]  # oldest first, new ones behind
    assert buf.take(0) is None
    assert tel.get(Stat.BUFFERED) == 4 and buf.state().entries == 3


def test_buffer_block_waits_for_room(new_buffer: Any) -> None:
    tel = Telemetry()
    buf = new_buffer(250, "block", tel)
    assert buf.put(_entry(1)) and buf.put(_entry(1))
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(buf.put(_entry(1, tag=9))))
    t.start()
    wait_for(lambda: tel.get(Stat.BUFFER_FULL_WAITS) > 0, 5, "the put to wait")
    assert not done
    first = buf.take(0)
    assert first is not None
    buf.ack([first[0]])
    t.join(5)
    assert done == [True] and buf.state().entries == 2
    cancel = Cancel()
    cancel.set(Drop.UNFLUSHED_AT_EXIT)
    assert buf.put(_entry(1), cancel) is False  # full and cancelled: nothing stored, nothing counted
    assert sum(tel.get(d) for d in Drop) == 0


def test_buffer_drop_newest_counts_what_it_refuses(new_buffer: Any) -> None:
    tel = Telemetry()
    buf = new_buffer(250, "drop_newest", tel)
    for i in range(5):
        assert buf.put(_entry(3, tag=i))
    assert buf.state().records == 6 and tel.get(Drop.BUFFER_FULL) == 9
    assert [buf.take(0)[1].payload[0] for _ in range(2)] == [0, 1]  # type: ignore[index]


def test_buffer_drop_newest_keeps_an_unbroken_oldest_run(new_buffer: Any) -> None:
    tel = Telemetry()
    buf = new_buffer(250, "drop_newest", tel)
    assert buf.put(_entry(1, size=200, tag=0))
    assert buf.put(_entry(1, size=100, tag=1))  # does not fit: refused
    assert buf.put(_entry(1, size=20, tag=2))   # would fit, but a gap would open before it: refused too
    assert buf.state().entries == 1 and tel.get(Drop.BUFFER_FULL) == 2
    taken = buf.take(0)
    assert taken is not None
    buf.ack([taken[0]])                         # the broker acknowledged: room again
    assert buf.put(_entry(1, size=20, tag=3)) and buf.state().entries == 1


def test_buffer_drop_oldest_evicts_only_what_is_not_being_sent(new_buffer: Any) -> None:
    tel = Telemetry()
    buf = new_buffer(300, "drop_oldest", tel)
    for i in range(3):
        buf.put(_entry(2, tag=i))
    sending = buf.take(0)  # entry 0 is in flight: it must not be evicted
    assert sending is not None and sending[1].payload[0] == 0
    buf.put(_entry(2, tag=3))
    buf.put(_entry(2, tag=4))
    assert tel.get(Drop.BUFFER_EVICTED) == 4  # entries 1 and 2
    buf.ack([sending[0]])
    rest = [buf.take(0) for _ in range(2)]
    assert [r[1].payload[0] for r in rest if r] == [3, 4]
    # with everything in flight there is nothing to evict: the new entry is refused
    buf.put(_entry(2, tag=5))
    assert buf.take(0) is not None  # 5 is in the buffer: 3 and 4 in flight, 5 fits (300 cap)
    buf.put(_entry(7, tag=6))
    assert tel.get(Drop.BUFFER_FULL) == 7


def test_buffer_refuses_an_entry_larger_than_the_cap(new_buffer: Any) -> None:
    tel = Telemetry()
    buf = new_buffer(150, "block", tel)
    assert buf.put(_entry(5, size=151))  # returns at once: it could never fit
    assert tel.get(Drop.BUFFER_FULL) == 5 and buf.state().entries == 0


class _FullStore(MemoryStore):
    """A store whose file system fills up after ``room`` entries."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def append(self, entry: Encoded, keys: Sequence[tuple[str, int]] = (), durable: bool = False) -> int:
        if len(self._entries) >= self.room:
            raise StoreFull("no room on the file system")
        return super().append(entry)


@pytest.mark.parametrize(("policy", "reason", "lost"), [
    ("drop_newest", Drop.BUFFER_FULL, 2), ("drop_oldest", Drop.BUFFER_EVICTED, 2)])
def test_a_full_store_counts_as_full(policy: str, reason: Drop, lost: int) -> None:
    tel = Telemetry()
    buf = Buffer(_FullStore(room=2), 1 << 20, policy, tel, "disk")
    for i in range(4):
        buf.put(_entry(1, tag=i))
    assert tel.get(reason) == lost and buf.state().entries == 2


def test_a_store_that_cannot_delete_does_not_evict_everything() -> None:
    """A full disk where even deletes wait: evicting frees nothing, so the new entry is refused instead."""

    class _Stuck(_FullStore):
        def stuck(self) -> bool:
            return True

    tel = Telemetry()
    buf = Buffer(_Stuck(room=3), 1 << 20, "drop_oldest", tel, "disk")
    for i in range(5):
        buf.put(_entry(1, tag=i))
    assert buf.state().entries == 3 and tel.get(Drop.BUFFER_EVICTED) == 0 and tel.get(Drop.BUFFER_FULL) == 2


def test_disk_buffer_survives_reopening_and_is_one_agents(tmp_path: Path) -> None:
    tel = Telemetry()
    store = DiskStore(tmp_path / "b.sqlite")
    with pytest.raises(HdrlogError, match="in use by another agent"):
        DiskStore(tmp_path / "b.sqlite")
    buf = Buffer(store, 1 << 20, "block", tel, "disk")
    record_entry = Encoded("t", b"k", b"aaabbbbcc", (0, 3, 7), 3, 42)
    buf.put(record_entry)
    buf.put(_entry(4, tag=7))
    first = buf.take(0)
    assert first is not None
    buf.ack([first[0]])
    buf.put(_entry(5, tag=8))
    buf.close()
    tel2 = Telemetry()
    again = Buffer(DiskStore(tmp_path / "b.sqlite"), 1 << 20, "block", tel2, "disk")
    assert tel2.get(Stat.RESTORED) == 9 and again.state().records == 9
    got = [again.take(0) for _ in range(2)]
    assert [g[1].payload[0] for g in got if g] == [7, 8]
    assert record_entry.values() == [b"aaa", b"bbbb", b"cc"]
    again.close()


# -- publisher ----------------------------------------------------------------------------


class FakeProducer:
    """librdkafka's producer as the publisher sees it: a local queue, then delivery reports on poll.

    ``outcome(value)`` decides each message's fate when it is reported: None (delivered) or a
    KafkaError.  ``capacity`` bounds the local queue (BufferError beyond it).  A message produced
    without a callback is reported to nobody; if it fails, every later message fails with a fatal
    error, as librdkafka's ``enable.gapless.guarantee`` does, until the producer is re-created.
    """

    def __init__(self, outcome: Callable[[bytes], KafkaError | None], capacity: int = 1000) -> None:
        self.outcome = outcome
        self.capacity = capacity
        self.queue: list[tuple[bytes, Any]] = []
        self.delivered: list[bytes] = []  # in the order "Kafka" received them
        self.purges = 0
        self.stalled = False  # a broker that does not answer: no report comes back
        self.fatal = False
        self.refuse: Callable[[bytes], KafkaError | None] = lambda value: None  # refused at produce()
        self.reports = 0  # delivery reports served to a callback

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any = None) -> None:
        refused = self.refuse(value)
        if refused is not None:
            raise KafkaException(refused)
        if len(self.queue) >= self.capacity:
            raise BufferError("queue full")
        self.queue.append((value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        served = 0
        while self.queue and not self.stalled:
            value, cb = self.queue.pop(0)
            err = KafkaError(KafkaError._FATAL, "gap", fatal=True) if self.fatal else self.outcome(value)
            if err is None:
                self.delivered.append(value)
            elif cb is None:
                self.fatal = True
            if cb is not None:
                self.reports += 1
                cb(err, _Msg(value))
            served += 1
        if not served and timeout:
            time.sleep(min(timeout, 0.01))
        return served

    def purge(self, in_queue: bool = True, in_flight: bool = False, blocking: bool = False) -> None:
        self.purges += 1
        queued, self.queue = self.queue, []
        for value, cb in queued:
            if cb is not None:
                cb(KafkaError(KafkaError._PURGE_QUEUE), _Msg(value))

    def flush(self, timeout: float = 0) -> int:
        self.poll(0)
        self.fatal = False  # called only before the publisher re-creates its producer
        return 0

    def __len__(self) -> int:
        return len(self.queue)


class _Msg:
    def __init__(self, value: bytes) -> None:
        self._v = value

    def value(self) -> bytes:
        return self._v


def _publisher(buf: Buffer, tel: Telemetry, producer: FakeProducer, tmp: Path, **kw: Any) -> KafkaPublisher:
    return KafkaPublisher("fake:9092", {}, buf, tel, DeadLetters(tmp / "dead.jsonl"), retry_backoff_s=0.01,
                          producer_factory=lambda conf: producer, **kw)


def _run(pub: KafkaPublisher, buf: Buffer) -> None:
    buf.close_input()
    t = threading.Thread(target=pub.run)
    t.start()
    t.join(20)
    assert not t.is_alive()


def test_publisher_delivers_in_order_and_acks(tmp_path: Path) -> None:
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    for i in range(5):
        buf.put(_entry(10, tag=i))
    buf.put(Encoded("t", b"k", b"xyz", (0, 1, 2), 3, 1))  # record shape: three messages, one entry
    producer = FakeProducer(lambda v: None)
    _run(_publisher(buf, tel, producer, tmp_path), buf)
    assert [v[0] for v in producer.delivered[:5]] == [0, 1, 2, 3, 4] and producer.delivered[5:] == [b"x", b"y", b"z"]
    assert tel.get(Stat.DELIVERED) == 53 and tel.get(Stat.MESSAGES_DELIVERED) == 8
    assert buf.state().entries == 0


def test_a_retriable_failure_holds_rewinds_and_resends_in_order(tmp_path: Path) -> None:
    """Entry 2 times out once: nothing after it may overtake it; it and what followed are re-sent."""
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    for i in range(6):
        buf.put(_entry(1, tag=i))
    failed = {2: 1}

    def outcome(value: bytes) -> KafkaError | None:
        if failed.get(value[0]):
            failed[value[0]] -= 1
            return KafkaError(KafkaError._MSG_TIMED_OUT)
        return None

    producer = FakeProducer(outcome)
    pub = _publisher(buf, tel, producer, tmp_path)
    _run(pub, buf)
    firsts: list[int] = []
    for v in producer.delivered:
        if v[0] not in firsts:
            firsts.append(v[0])
    assert firsts == [0, 1, 2, 3, 4, 5]
    assert tel.get(Stat.DELIVERED) == 6 and tel.get(Stat.DELIVERY_RETRIES) >= 1 and tel.get(Stat.REQUEUED) >= 1
    assert sum(tel.get(d) for d in Drop) == 0
    assert tel.last_delivery_error is not None and tel.last_delivery_error.retriable


def test_a_permanent_failure_goes_to_the_dead_letter_file(tmp_path: Path) -> None:
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    for i in range(3):
        buf.put(_entry(4, tag=i))
    producer = FakeProducer(lambda v: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if v[0] == 1 else None)
    _run(_publisher(buf, tel, producer, tmp_path), buf)
    assert tel.get(Stat.DELIVERED) == 8 and tel.get(Drop.DEAD_LETTER) == 4
    lines = (tmp_path / "dead.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"error":"MSG_SIZE_TOO_LARGE"' in lines[0] and '"records":4' in lines[0]
    assert buf.state().entries == 0


def test_record_shape_is_acknowledged_by_one_report_per_entry(tmp_path: Path) -> None:
    """Three entries of 100 messages each: 3 delivery reports (not 300), and all 300 counted delivered."""
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    for i in range(3):
        buf.put(Encoded("t", b"k", bytes([i]) * 100, tuple(range(100)), 100, 1))
    producer = FakeProducer(lambda v: None)
    _run(_publisher(buf, tel, producer, tmp_path, per_entry_reports=True), buf)
    assert producer.reports == 3 and len(producer.delivered) == 300
    assert tel.get(Stat.DELIVERED) == 300 and tel.get(Stat.MESSAGES_DELIVERED) == 300
    assert buf.state().entries == 0


def test_a_refused_message_inside_a_record_entry_is_found_and_dead_lettered(tmp_path: Path) -> None:
    """Message 37 of a 100-message entry is refused for good: the gap is fatal, the entry is re-sent with a
    report per message, 37 goes to the dead-letter file and the rest are delivered; the next entry goes back
    to one report."""
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    buf.put(Encoded("t", b"k", bytes(range(100)), tuple(range(100)), 100, 1))
    buf.put(Encoded("t", b"k", bytes([200]) * 50, tuple(range(50)), 50, 1))
    producer = FakeProducer(lambda v: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if v == bytes([37]) else None)
    _run(_publisher(buf, tel, producer, tmp_path, per_entry_reports=True), buf)
    assert tel.get(Drop.DEAD_LETTER) == 1 and tel.get(Stat.DELIVERED) == 149
    assert set(producer.delivered) == {bytes([i]) for i in range(100) if i != 37} | {bytes([200])}
    assert tel.get(Stat.DELIVERED) + tel.get(Drop.DEAD_LETTER) == 150 and buf.state().entries == 0
    assert '"records":1' in (tmp_path / "dead.jsonl").read_text()
    assert producer.reports == 1 + 100 + 1  # the failed try, the precise re-send, the next entry


@pytest.mark.parametrize("refused", [4, 9])
def test_a_message_refused_at_produce_in_a_record_entry(tmp_path: Path, refused: int) -> None:
    """librdkafka refuses message ``refused`` of 10 locally (too large): it goes to the dead-letter file, the
    other 9 are delivered.  When it is the last one, which was to report for the entry, the entry is sent
    again with a report per message."""
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    buf.put(Encoded("t", b"k", bytes(range(10)), tuple(range(10)), 10, 1))
    producer = FakeProducer(lambda v: None)
    producer.refuse = lambda v: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if v == bytes([refused]) else None
    _run(_publisher(buf, tel, producer, tmp_path, per_entry_reports=True), buf)
    assert tel.get(Drop.DEAD_LETTER) == 1 and tel.get(Stat.DELIVERED) == 9 and buf.state().entries == 0
    assert sorted(set(producer.delivered)) == [bytes([i]) for i in range(10) if i != refused]
    assert producer.reports == (1 if refused < 9 else 9)  # one for the entry; or none, then each of the 9 sent again


def test_a_full_local_queue_is_waited_on_not_dropped(tmp_path: Path) -> None:
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    buf.put(Encoded("t", b"k", bytes(range(50)), tuple(range(50)), 50, 1))
    producer = FakeProducer(lambda v: None, capacity=7)
    _run(_publisher(buf, tel, producer, tmp_path), buf)
    assert len(producer.delivered) == 50 and tel.get(Stat.DELIVERED) == 50
    assert tel.get(Stat.PRODUCER_QUEUE_FULL_WAITS) > 0


def test_reports_after_exit_change_nothing(tmp_path: Path) -> None:
    """Once the publisher has finished, the agent has counted what it left; a late report is ignored
    and closing drops what librdkafka holds without serving its reports."""
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    buf.put(_entry(4))
    producer = FakeProducer(lambda v: None)
    producer.stalled = True
    pub = _publisher(buf, tel, producer, tmp_path)
    pub.begin_exit(time.monotonic() + 0.3)
    _run(pub, buf)
    assert buf.state().records == 4  # left for the agent to count
    producer.stalled = False
    producer.poll(0)  # a late report
    pub.close()
    assert tel.get(Stat.DELIVERED) == 0 and buf.state().records == 4


def test_a_dead_letter_file_that_cannot_be_written_still_counts(tmp_path: Path) -> None:
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    buf.put(_entry(3))
    (tmp_path / "dead.jsonl").mkdir()  # not writable as a file
    producer = FakeProducer(lambda v: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    _run(_publisher(buf, tel, producer, tmp_path), buf)
    assert tel.get(Drop.DEAD_LETTER) == 3 and buf.state().entries == 0


def test_exit_deadline_leaves_the_rest_in_the_buffer(tmp_path: Path) -> None:
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    for i in range(3):
        buf.put(_entry(2, tag=i))
    producer = FakeProducer(lambda v: KafkaError(KafkaError._MSG_TIMED_OUT))  # the broker never answers
    pub = _publisher(buf, tel, producer, tmp_path)
    pub.begin_exit(time.monotonic() + 0.5)
    _run(pub, buf)
    assert tel.get(Stat.DELIVERED) == 0 and buf.state().records == 6  # the agent counts these at exit


def test_a_stalled_broker_gets_only_the_window_the_rest_stays_evictable(tmp_path: Path) -> None:
    tel = Telemetry()
    buf = Buffer(MemoryStore(), 700, "drop_oldest", tel, "memory")
    for i in range(5):
        buf.put(_entry(1, tag=i))
    producer = FakeProducer(lambda v: None)
    producer.stalled = True
    pub = _publisher(buf, tel, producer, tmp_path, window_bytes=250)
    t = threading.Thread(target=pub.run)
    t.start()
    wait_for(lambda: len(producer.queue) == 3, 5, "the window to fill")
    assert buf.state().in_flight == 3  # 0, 1, 2 outstanding; 3 and 4 wait in the buffer
    buf.put(_entry(1, tag=5))
    buf.put(_entry(1, tag=6))
    buf.put(_entry(1, tag=7))  # over the 700-byte cap: the oldest not outstanding (3) goes
    assert tel.get(Drop.BUFFER_EVICTED) == 1
    producer.stalled = False
    buf.close_input()
    t.join(10)
    assert [v[0] for v in producer.delivered] == [0, 1, 2, 4, 5, 6, 7]
    assert tel.get(Stat.DELIVERED) == 7


# -- the agent, with in-memory parts ---------------------------------------------------------


class _Hooks:
    attached = ["fake0"]

    def attach_all(self) -> list[str]:
        return self.attached

    def watch(self) -> None:
        return None

    def detach_all(self) -> None:
        return None


class _Source:
    """Hands out ``chunks`` chunks of 10 records, then ends (as capture does after detach)."""

    name = "capture"

    def __init__(self, out: Channel[Chunk], tel: Telemetry, cancel: Cancel, chunks: int) -> None:
        self._out, self._tel, self._cancel, self._n = out, tel, cancel, chunks

    def run(self) -> None:
        try:
            for i in range(self._n):
                self._tel.add(Stat.DRAINED, 10)
                if not self._out.put(_chunk("c", 10, start_seq=10 * i), self._cancel):
                    self._tel.drop(self._cancel.reason, 10, "test")
        finally:
            self._out.close()


class _Encoder:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def encode(self, batch: Any) -> list[Encoded]:
        if self.fail:
            raise RuntimeError("an encoder bug")
        return [Encoded("t", b"k", b"x" * len(batch), None, len(batch), 1)]


def _agent(tmp: Path, producer: FakeProducer, encoder: _Encoder, flush_s: float) -> tuple[Any, Telemetry]:
    from producer.agent import Agent, AgentParts
    from producer.batch.batcher import BatchStage
    from producer.serialize.encoder import EncodeStage

    tel = Telemetry()
    cancel = Cancel()
    chunks: Channel[Chunk] = Channel("capture", 4)
    batches: Channel[Any] = Channel("batch", 2)
    buf = Buffer(MemoryStore(), 1 << 20, "block", tel, "memory")
    pub = _publisher(buf, tel, producer, tmp)
    parts = AgentParts(
        hooks=_Hooks(), source=_Source(chunks, tel, cancel, 3),
        stages=[BatchStage(Batcher(5, 0.01), chunks, batches, tel, cancel),
                EncodeStage(encoder, batches, buf, tel, cancel, lambda mark: None)],
        publisher=pub, buffer=buf, telemetry=tel, cancel=cancel, detached=threading.Event(),
        channels=[chunks, batches], kernel_counters=lambda: {"emitted": 30})
    return Agent(parts, duration_s=None, flush_timeout_s=flush_s), tel


def test_agent_delivers_everything_then_stops(tmp_path: Path) -> None:
    agent, tel = _agent(tmp_path, FakeProducer(lambda v: None), _Encoder(), flush_s=5)
    stop = threading.Event()
    stop.set()  # stop at once: the stop sequence drains and delivers what the source hands out
    report = agent.run(stop)
    assert report.user["drained"] == report.user["delivered"] == 30
    assert report.interfaces == ["fake0"] and sum(tel.get(d) for d in Drop) == 0


def test_agent_exit_deadline_counts_what_a_stalled_broker_kept(tmp_path: Path) -> None:
    producer = FakeProducer(lambda v: None)
    producer.stalled = True
    agent, tel = _agent(tmp_path, producer, _Encoder(), flush_s=0.5)
    stop = threading.Event()
    stop.set()
    t0 = time.monotonic()
    report = agent.run(stop)
    assert time.monotonic() - t0 < 5  # bounded by the flush deadline
    assert report.user["delivered"] == 0 and report.user["dropped_unflushed_at_exit"] == 30


def test_agent_stage_failure_stops_and_counts(tmp_path: Path) -> None:
    agent, tel = _agent(tmp_path, FakeProducer(lambda v: None), _Encoder(fail=True), flush_s=2)
    with pytest.raises(HdrlogError, match="an encoder bug"):
        agent.run(threading.Event())
    snap = tel.snapshot()
    assert snap["drained"] == 30 and snap["delivered"] == 0
    assert snap["dropped_after_failure"] == 30  # every record the failed stage never passed on
