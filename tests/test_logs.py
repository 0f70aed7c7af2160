"""Repeated errors are rate-limited, with a count of what was held back."""

from __future__ import annotations

import logging

from producer.telemetry.logs import RepeatFilter


def _rec(msg: str, level: int = logging.ERROR, name: str = "producer.publish.kafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_repeats_are_held_back_and_counted() -> None:
    now = [0.0]
    f = RepeatFilter(interval_s=10, clock=lambda: now[0])
    assert f.filter(_rec("connect to 127.0.0.1:9092 failed (after 0ms)"))
    for ms in range(1, 6):
        now[0] += 1
        assert not f.filter(_rec(f"connect to 127.0.0.1:9092 failed (after {ms}ms)"))
    assert f.filter(_rec("another problem"))
    now[0] += 10
    rec = _rec("connect to 127.0.0.1:9092 failed (after 9ms)")
    assert f.filter(rec)
    assert rec.getMessage().endswith("(5 similar held back in the last 10s)")


def test_other_stages_pass() -> None:
    f = RepeatFilter(interval_s=10, clock=lambda: 0.0)
    assert all(f.filter(_rec(f"replaced 2 stale hdrlog hook(s) on eth{i}", logging.WARNING, "producer.pipeline"))
               for i in range(3))
