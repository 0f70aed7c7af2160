"""The consumer's typed counters, its /metrics, and its progress line.

Accounting (tests reconcile it exactly): every message read is either
``messages_written`` (its records were mapped and reached the sink) or
``messages_dead_lettered`` under a ``Poison`` reason; every record decoded is
``events_written`` or ``records_dead_lettered`` (a sink refused it for good).
Nothing is committed before the sink and the dead-letter topic acknowledge.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import TextIO

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class CStat(StrEnum):
    MESSAGES_READ = "messages_read"
    MESSAGES_WRITTEN = "messages_written"            # its records went to the sink (any it refused: below)
    MESSAGES_DEAD_LETTERED = "messages_dead_lettered"
    RECORDS_DECODED = "records_decoded"
    EVENTS_WRITTEN = "events_written"                # acknowledged by the sink
    RECORDS_DEAD_LETTERED = "records_dead_lettered"  # refused for good by the sink (message in the DLQ)
    COMMITS = "commits"
    COMMIT_FAILURES = "commit_failures"
    RETRIES = "retries"                              # a registry or sink call retried after a transient failure
    CONSUME_ERRORS = "consume_errors"                # non-fatal errors librdkafka reported while consuming
    REBALANCES = "rebalances"
    COLUMNAR_FALLBACKS = "columnar_fallbacks"        # runs the columnar path refused: the dict path took them


class Poison(StrEnum):
    """Why a message (or one record of it) went to the dead-letter topic."""

    BAD_MAGIC = "bad_magic"              # not the Confluent wire format
    UNKNOWN_SCHEMA = "unknown_schema"    # the registry has no schema with that id
    WRONG_SCHEMA = "wrong_schema"        # a schema that is not a header record schema
    DECODE_ERROR = "decode_error"        # the body does not match its schema
    MAPPING_ERROR = "mapping_error"      # a record could not be mapped to the output format
    SINK_REJECTED = "sink_rejected"      # the sink refused a record for good (e.g. HTTP 400 for one item)


class ConsumerTelemetry:
    """Counters of one consumer; thread-safe (the metrics server reads them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(CStat, 0)
        self._poison = dict.fromkeys(Poison, 0)
        self._lag: dict[int, int] = {}

    def add(self, stat: CStat, n: int = 1) -> None:
        with self._lock:
            self._counts[stat] += n

    def dead_letter(self, reason: Poison, where: str, why: str, *, message: bool = False, records: int = 0) -> None:
        """One dead letter: its reason, and the message (``message``) and/or ``records`` it takes
        out of the written counts; counted and logged in one call."""
        with self._lock:
            self._poison[reason] += 1
            self._counts[CStat.MESSAGES_DEAD_LETTERED] += int(message)
            self._counts[CStat.RECORDS_DEAD_LETTERED] += records
        log.warning("dead-lettered %s (%s): %s", where, reason.value, why)

    def set_lag(self, lag: Mapping[int, int]) -> None:
        with self._lock:
            self._lag = dict(lag)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            out = {s.value: v for s, v in self._counts.items()}
            out.update({f"dead_letter_{p.value}": v for p, v in self._poison.items()})
            return out

    def lag(self) -> dict[int, int]:
        with self._lock:
            return dict(self._lag)

    def poison(self) -> dict[str, int]:
        with self._lock:
            return {p.value: v for p, v in self._poison.items()}


class _Collector(Collector):
    def __init__(self, tel: ConsumerTelemetry) -> None:
        self._tel = tel

    def collect(self) -> Iterator[Metric]:
        snap = self._tel.snapshot()
        for stat in CStat:
            yield CounterMetricFamily(f"hdrlog_consumer_{stat.value}", stat.value.replace("_", " "),
                                      value=snap[stat.value])
        dead = CounterMetricFamily("hdrlog_consumer_dead_letters", "messages (or records) dead-lettered, by reason",
                                   labels=["reason"])
        for reason, n in self._tel.poison().items():
            dead.add_metric([reason], n)
        yield dead
        lag = GaugeMetricFamily("hdrlog_consumer_lag_messages", "high watermark minus position", labels=["partition"])
        for partition, n in sorted(self._tel.lag().items()):
            lag.add_metric([str(partition)], n)
        yield lag


def metrics_renderer(tel: ConsumerTelemetry) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(tel))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class Progress:
    """One status line on a terminal, rewritten every ``interval_s``: events/s, lag per partition, DLQ."""

    def __init__(self, tel: ConsumerTelemetry, out: TextIO | None = None, interval_s: float = 1.0) -> None:
        self._tel = tel
        self._out = out if out is not None else sys.stderr
        self._interval = interval_s
        self._last_t = time.monotonic()
        self._last_n = 0
        self.enabled = self._out.isatty()

    def tick(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last_t < self._interval):
            return
        snap = self._tel.snapshot()
        n = snap[CStat.EVENTS_WRITTEN]
        rate = (n - self._last_n) / max(now - self._last_t, 1e-9)
        self._last_t, self._last_n = now, n
        lag = self._tel.lag()
        lag_text = " ".join(f"p{p}:{v}" for p, v in sorted(lag.items())) or "-"
        line = (f"\r{n} events ({rate:,.0f}/s)  lag {sum(lag.values())} [{lag_text}]  "
                f"dead-lettered {snap[CStat.MESSAGES_DEAD_LETTERED]}  commits {snap[CStat.COMMITS]}")
        self._out.write(line[:200].ljust(80) + ("\n" if final else ""))
        self._out.flush()
