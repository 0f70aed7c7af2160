"""/metrics: the agent's counters in Prometheus naming, read from the same snapshot as the summary.

A collector in a per-agent ``CollectorRegistry`` (no global state) turns, at
each scrape, the typed counters of telemetry/events.py, the kernel counters and
the gauges into metric families:

    hdrlog_kernel_<counter>_total          seen, filtered, sampled_out, emitted, ringbuf_reserve_failed, ...
    hdrlog_records_<stat>_total            drained, encoded, buffered, delivered, requeued, ...
    hdrlog_<stat>_total                    messages_delivered, delivery_retries, batches, ...
    hdrlog_records_dropped_total{reason}   one series per Drop reason, zeros included
    hdrlog_buffer_{bytes,records,entries,in_flight_entries,cap_bytes}, hdrlog_channel_depth{channel}
    hdrlog_kafka_up                        0 while the broker is unreachable
    hdrlog_delivery_latency_seconds        histogram: capture of a batch's oldest record -> Kafka's ack
    hdrlog_ingest_<stat>_total             requests, bytes, accepted_requests, duplicate_requests
    hdrlog_ingest_events_<stat>_total      accepted; and through the buffer: buffered, delivered, ...
    hdrlog_ingest_events_dropped_total{reason}, hdrlog_ingest_{requests,events}_refused_total{reason}
    hdrlog_ingest_response_seconds         histogram: request arrival -> 202
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from producer.telemetry.events import INGEST_LEDGER, RECORD_STATS, Drop, IngestStat, Refusal, Stat, Telemetry

ANSWER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def stat_metric(stat: Stat) -> str:
    return f"hdrlog_records_{stat.value}" if stat in RECORD_STATS else f"hdrlog_{stat.value}"


class _AgentCollector(Collector):
    def __init__(self, telemetry: Telemetry, kernel: Callable[[], Mapping[str, int]],
                 gauges: Callable[[], Mapping[str, float]]) -> None:
        self._tel = telemetry
        self._kernel = kernel
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        for name, value in self._kernel().items():
            yield CounterMetricFamily(f"hdrlog_kernel_{name}", f"kernel counter {name} (all CPUs)", value=value)
        snap = self._tel.snapshot()
        for stat in Stat:
            yield CounterMetricFamily(stat_metric(stat), f"{stat.value} (telemetry/events.py)", value=snap[stat.value])
        dropped = CounterMetricFamily("hdrlog_records_dropped", "records lost, by reason", labels=["reason"])
        for drop in Drop:
            dropped.add_metric([drop.value.removeprefix("dropped_")], snap[drop.value])
        yield dropped
        depth = GaugeMetricFamily("hdrlog_channel_depth", "items queued between stages", labels=["channel"])
        for name, level in self._gauges().items():
            if name.startswith("channel_"):
                depth.add_metric([name.removeprefix("channel_")], level)
            else:
                yield GaugeMetricFamily(f"hdrlog_{name}", name.replace("_", " "), value=level)
        yield depth
        yield GaugeMetricFamily("hdrlog_kafka_up", "0 while the broker is unreachable",
                                value=0 if self._tel.outage_since is not None else 1)
        yield from _ingest_families(self._tel.ingest_snapshot())


def _ingest_families(snap: dict[str, int]) -> Iterator[Metric]:
    """The HTTP ingest's ledger (telemetry/events.py): requests as answered, events through the buffer."""
    for stat in IngestStat:
        name = "hdrlog_ingest_events_accepted" if stat is IngestStat.ACCEPTED else f"hdrlog_ingest_{stat.value}"
        yield CounterMetricFamily(name, f"ingest {stat.value}", value=snap[stat.value])
    for what in ("requests", "events"):
        refused = CounterMetricFamily(f"hdrlog_ingest_{what}_refused", f"ingest {what} refused, by reason",
                                      labels=["reason"])
        for r in Refusal:
            refused.add_metric([r.value], snap[f"refused_{what}_{r.value}"])
        yield refused
    dropped = CounterMetricFamily("hdrlog_ingest_events_dropped", "log events lost, by reason", labels=["reason"])
    for item in INGEST_LEDGER:
        if isinstance(item, Drop):
            dropped.add_metric([item.value.removeprefix("dropped_")], snap[item.value])
        else:
            yield CounterMetricFamily(f"hdrlog_ingest_events_{item.value}", f"log events {item.value}",
                                      value=snap[item.value])
    yield dropped


class Metrics:
    """The registry one agent's /metrics renders."""

    def __init__(self, telemetry: Telemetry, kernel: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_AgentCollector(telemetry, kernel, telemetry.gauges))
        self.latency = Histogram("hdrlog_delivery_latency_seconds",
                                 "capture time of a batch's oldest record to Kafka's acknowledgement",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        telemetry.on_latency(self.latency.observe)
        self.answered = Histogram("hdrlog_ingest_response_seconds", "arrival of a log request to its 202",
                                  buckets=ANSWER_BUCKETS, registry=self.registry)
        telemetry.on_answered(self.answered.observe)

    def render(self) -> bytes:
        return generate_latest(self.registry)
