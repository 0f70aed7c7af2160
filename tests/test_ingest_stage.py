"""The ingest stage in memory (producer/ingest/stage.py): grouping, answers, keys, and the buffer's outcomes.

A real Buffer over a MemoryStore stands in for the pipeline; the test plays the
publisher (take, ack) and the event loop (``reply`` collects the answers).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from producer.buffer.base import Buffer, Outcome
from producer.buffer.memory import MemoryStore
from producer.channel import Cancel
from producer.ingest.parse import FIELDS, Shape
from producer.ingest.stage import IdempotencyKeys, IngestLimits, IngestStage, Pending
from producer.records import Source
from producer.serialize.rows import RowEncoder
from producer.serialize.schemas import AvroSchema
from producer.telemetry.events import Drop, Stat, Telemetry
from tests.conftest import wait_for

ENCODER = RowEncoder(AvroSchema.load("LogEvent"), 9, {"host_id": "h", "agent_instance": "i"})


def row(message: str) -> tuple[Any, ...]:
    values = {"timestamp_ns": 1, "received_ns": 1, "source": Shape.GENERIC.value, "message": message,
              "attributes": {}}
    return tuple(values.get(f) for f in FIELDS)


class Harness:
    def __init__(self, *, wait_for_kafka: bool, cap: int = 1 << 20, linger_s: float = 0.0,
                 max_queue_events: int = 1000, ack_timeout_s: float = 30.0) -> None:
        self.tel = Telemetry()
        self.buffer = Buffer(MemoryStore(), cap, "block", self.tel, "memory")
        self.keys = IdempotencyKeys(ttl_s=60, max_keys=100)
        self.detached = threading.Event()
        self.down = False
        self.answered: list[Pending] = []
        self.stage = IngestStage(ENCODER, "logs", b"h", self.buffer, self.tel, self.keys,
                                 IngestLimits(max_queue_events, 1 << 20, 100, linger_s, ack_timeout_s),
                                 wait_for_kafka=wait_for_kafka, kafka_down=lambda: self.down,
                                 detached=self.detached, cancel=Cancel(), reply=self.answered.extend)
        self.thread = threading.Thread(target=self.stage.run, daemon=True)
        self.thread.start()

    def post(self, *messages: str, key: str | None = None) -> Pending:
        p = Pending(ENCODER.parts([row(m) for m in messages]), key, 10, reply=None)
        now = self.stage.submit(p)
        if now is not None:
            p.answer = now
        return p

    def wait(self, p: Pending) -> Any:
        return wait_for(lambda: p.answer, 10, "an answer")

    def stop(self) -> None:
        self.detached.set()
        self.thread.join(10)


def test_disk_like_answers_202_once_buffered_and_counts_by_source() -> None:
    h = Harness(wait_for_kafka=False)
    a, b = h.post("a", "b"), h.post("c")
    assert (h.wait(a).status, h.wait(b).status) == (202, 202)
    assert h.buffer.records_by_source() == {Source.CAPTURE: 0, Source.INGEST: 3}
    c = h.tel.ingest_snapshot()
    assert (c["accepted"], c["accepted_requests"], c["buffered"]) == (3, 2, 3)
    assert h.tel.get(Stat.BUFFERED) == 0  # the header records' ledger is untouched
    h.stop()


def test_memory_buffer_answers_on_the_outcome() -> None:
    h = Harness(wait_for_kafka=True)
    posted, ids = [], []
    for message, key in (("d", None), ("x", "k-dead"), ("l", None)):  # one entry each
        posted.append(h.post(message, key=key))
        ids.append(wait_for(lambda: h.buffer.take(0.1), 10, "an entry")[0])
    delivered, dead, lost = posted
    assert delivered.answer is None  # nothing before Kafka answers
    h.buffer.ack([ids[0]])
    h.buffer.ack([ids[1]], Outcome.DEAD_LETTERED)
    assert (h.wait(delivered).status, h.wait(dead).status) == (202, 500)
    assert h.buffer.drain_all()[Source.INGEST] == 1
    assert h.wait(lost).status == 503 and "stopped before Kafka" in lost.answer.text
    again = h.post("x", key="k-dead")  # the failed key was forgotten: a retry goes through
    assert again.answer is None
    c = h.tel.ingest_snapshot()
    assert (c["accepted"], c["refused_events_failed"], c["refused_events_unavailable"]) == (1, 1, 1)
    h.stop()


def test_unconfirmed_then_delivered_makes_a_retry_a_duplicate() -> None:
    h = Harness(wait_for_kafka=True, ack_timeout_s=0.2)
    first = h.post("slow", key="k1")
    entry_id, _ = wait_for(lambda: h.buffer.take(0.1), 10, "the entry")
    assert h.wait(first).status == 503 and "may still be delivered" in first.answer.text
    h.buffer.ack([entry_id])  # Kafka answers after all
    wait_for(lambda: h.post("slow", key="k1").answer, 10, "the key to settle")
    retry = h.post("slow", key="k1")
    assert retry.answer is not None and (retry.answer.status, retry.answer.duplicate) == (202, True)
    c = h.tel.ingest_snapshot()
    assert c["refused_events_unconfirmed"] == 1 and c["accepted"] == 0 and c["delivered"] == 0
    h.stop()


def test_a_repeat_while_the_first_is_pending_rides_along() -> None:
    h = Harness(wait_for_kafka=True)
    first, repeat = h.post("once", key="k"), h.post("once", key="k")
    entry_id, entry = wait_for(lambda: h.buffer.take(0.1), 10, "the entry")
    assert entry.records == 1  # the repeat was not enqueued
    h.buffer.ack([entry_id])
    assert h.wait(first).duplicate is False and h.wait(repeat).duplicate is True
    assert h.tel.ingest_snapshot()["duplicate_requests"] == 1
    h.stop()


def test_kafka_down_with_the_memory_buffer_is_503_at_once() -> None:
    h = Harness(wait_for_kafka=True)
    h.down = True
    p = h.post("x")
    assert p.answer is not None and (p.answer.status, p.answer.retry_after) == (503, 5)
    h.stop()


def test_a_full_buffer_is_503_and_nothing_is_evicted() -> None:
    h = Harness(wait_for_kafka=False, cap=300)
    a = h.post("x" * 100)
    assert h.wait(a).status == 202
    b = h.post("y" * 250)
    assert h.wait(b).status == 503 and "buffer is full" in b.answer.text
    assert h.tel.get(Drop.BUFFER_EVICTED) == 0 and h.buffer.records_by_source()[Source.INGEST] == 1
    h.stop()


def test_drop_oldest_passes_over_log_events() -> None:
    from producer.records import Encoded

    tel = Telemetry()
    buf = Buffer(MemoryStore(), 100, "drop_oldest", tel, "memory")
    assert isinstance(buf.offer(Encoded("logs", b"h", b"L" * 60, None, 1, source=Source.INGEST)), int)
    buf.put(Encoded("t", b"h", b"C" * 30, None, 5))
    buf.put(Encoded("t", b"h", b"D" * 30, None, 7))  # evicts the capture entry, never the log event
    assert tel.get(Drop.BUFFER_EVICTED) == 5 and buf.records_by_source() == {Source.CAPTURE: 7, Source.INGEST: 1}


@pytest.mark.parametrize("stopping", ["detached", "cancel"])
def test_a_stopping_agent_refuses_new_requests(stopping: str) -> None:
    h = Harness(wait_for_kafka=False)
    if stopping == "detached":
        h.detached.set()
    else:
        h.stage._cancel.set(Drop.AFTER_FAILURE)  # noqa: SLF001 - the agent's failure path
    p = h.post("late")
    assert p.answer is not None and p.answer.status == 503 and p.answer.text == "the agent is stopping"
    h.stop()


def test_idempotency_keys_expire_and_are_bounded() -> None:
    now = [1000.0]
    keys = IdempotencyKeys(ttl_s=10, max_keys=2, clock=lambda: now[0])
    for k in ("a", "b", "c"):
        p = Pending(ENCODER.parts([row("m")]), k, 1, reply=None)
        assert keys.claim(p) is None
        keys.settle(k, accepted=True)
    assert len(keys) == 2  # "a", the oldest, was forgotten to make room for "c"
    assert keys.claim(Pending(ENCODER.parts([row("m")]), "a", 1, reply=None)) is None
    now[0] += 11
    assert keys.claim(Pending(ENCODER.parts([row("m")]), "c", 1, reply=None)) is None  # expired: claimed afresh


def test_repeats_of_an_unconfirmed_request_are_answered_not_left_waiting() -> None:
    h = Harness(wait_for_kafka=True, ack_timeout_s=0.3)
    first, waiting = h.post("slow", key="k2"), h.post("slow", key="k2")  # the second rides along
    entry_id, _ = wait_for(lambda: h.buffer.take(0.1), 10, "the entry")
    assert h.wait(first).status == 503 and h.wait(waiting).status == 503  # both at the deadline
    later = h.post("slow", key="k2")  # while Kafka still has not answered: at once, not a wait without end
    assert later.answer is not None and later.answer.status == 503 and "not yet acknowledged" in later.answer.text
    h.buffer.ack([entry_id])
    retry = wait_for(lambda: (p := h.post("slow", key="k2")).answer is not None and p.answer.duplicate and p, 10,
                     "the key to be accepted")
    assert retry.answer.status == 202
    c = h.tel.ingest_snapshot()
    assert (c["refused_events_unconfirmed"], c["accepted"]) == (3, 0)
    h.stop()


class _BrokenStore(MemoryStore):
    def append(self, entry: Any, keys: Any = (), durable: bool = False) -> int:
        from producer.errors import HdrlogError

        raise HdrlogError("writing the disk buffer: disk I/O error")


def test_a_broken_store_answers_the_group_and_stops_the_stage() -> None:
    tel = Telemetry()
    buffer = Buffer(_BrokenStore(), 1 << 20, "block", tel, "disk")
    answered: list[Pending] = []
    stage = IngestStage(ENCODER, "logs", b"h", buffer, tel, IdempotencyKeys(60, 10),
                        IngestLimits(100, 1 << 20, 100, 0.0, 1.0), wait_for_kafka=False, kafka_down=lambda: False,
                        detached=threading.Event(), cancel=Cancel(), reply=answered.extend)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            stage.run()
        except BaseException as exc:  # noqa: BLE001 - what the agent's thread wrapper sees
            failures.append(exc)

    p = Pending(ENCODER.parts([row("x")]), "k", 1, reply=None)
    assert stage.submit(p) is None
    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert failures and "disk I/O error" in str(failures[0])
    assert p.answer is not None and p.answer.status == 500 and "the buffer failed" in p.answer.text
    late = stage.submit(Pending(ENCODER.parts([row("y")]), None, 1, reply=None))  # after the stop: refused
    assert late is not None and late.status == 503
    assert tel.ingest_snapshot()["refused_events_failed"] == 1


def test_a_disk_buffer_file_from_before_the_ingest_opens_and_keeps_its_entries(tmp_path: Any) -> None:
    import sqlite3

    from producer.buffer.disk import DiskStore
    from producer.records import Encoded

    path = tmp_path / "buffer.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key BLOB NOT NULL, "
               "payload BLOB NOT NULL, offsets BLOB, records INTEGER NOT NULL, captured_ns INTEGER NOT NULL)")
    db.execute("INSERT INTO entries (topic, key, payload, offsets, records, captured_ns) VALUES "
               "('t', x'68', x'0102', NULL, 7, 5)")
    db.commit()
    db.close()
    store = DiskStore(path)
    try:
        [old] = list(store.existing())
        assert (old.records, old.source) == (7, Source.CAPTURE)
        new = store.append(Encoded("logs", b"h", b"x", None, 2, source=Source.INGEST), [("key-1", 2)], durable=True)
        assert store.load(new).source is Source.INGEST and [k for k, _n, _t in store.recent_keys()] == ["key-1"]
    finally:
        store.close()
