"""The consumer's wiring: an output format and a sink spec -> Formatter and Sink.

Sink specs (``--sink``):

    stdout              NDJSON on standard output (the default)
    file:DIR            NDJSON files in DIR, rotated by size (sinks/ndjson.py)
    parquet:DIR         Parquet files under DIR/dt=YYYY-MM-DD/host=HOST/ (sinks/parquet.py)
    opensearch:URL      _bulk to OpenSearch or Elasticsearch, _id = event id (sinks/bulk.py)
    elasticsearch:URL   the same
    hec:URL             Splunk HTTP Event Collector, --format cim (sinks/hec.py)
    kafka:TOPIC         JSON messages keyed by event id (sinks/kafka_json.py)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.consumer.cim import CimFormatter
from producer.consumer.ecs import EcsFormatter
from producer.consumer.mapping import Formatter, RawFormatter
from producer.consumer.ocsf import OcsfFormatter
from producer.consumer.sinks.base import Sink, json_line
from producer.consumer.sinks.bulk import BulkSink
from producer.consumer.sinks.hec import HecSink
from producer.consumer.sinks.http import HttpOptions
from producer.consumer.sinks.kafka_json import KafkaJsonSink
from producer.consumer.sinks.ndjson import FileSink, StreamSink
from producer.consumer.sinks.parquet import ParquetSink
from producer.errors import ConfigError
from producer.render import summary_line

FORMATS = ("ecs", "ocsf", "cim", "raw", "text")
SINK_KINDS = ("stdout", "file", "parquet", "opensearch", "elasticsearch", "hec", "kafka")


@dataclass(frozen=True, slots=True)
class SinkOptions:
    file_max_bytes: int = 128 << 20
    file_keep: int = 0
    parquet_file_rows: int = 1_000_000
    parquet_row_group_rows: int = 128 * 1024
    parquet_compression: str = "zstd"
    index: str = "hdrlog-{format}-{date}"   # _bulk: the index ({date}: the event's UTC date, YYYY.MM.DD)
    hec_index: str = ""                     # HEC: the Splunk index (empty: the token's default)
    http: HttpOptions = field(default_factory=HttpOptions)
    kafka: Mapping[str, Any] = field(default_factory=dict)  # the kafka sink's librdkafka settings


def formatter(name: str) -> Formatter:
    """The formatter of ``--format`` (``text`` reads the raw events)."""
    if name == "ecs":
        return EcsFormatter()
    if name == "ocsf":
        return OcsfFormatter()
    if name == "cim":
        return CimFormatter()
    if name in ("raw", "text"):
        return RawFormatter()
    raise ConfigError(f"unknown format {name!r}: one of {', '.join(FORMATS)}")


def _text_line(event: dict[str, object]) -> bytes:
    return (summary_line(event) + "\n").encode()


def sink(spec: str, fmt: str, opts: SinkOptions | None = None) -> Sink:
    """The sink of ``--sink``; a ConfigError naming the spec if it is not one."""
    opts = opts or SinkOptions()
    kind, _, target = spec.partition(":")
    if fmt == "text" and kind != "stdout":
        raise ConfigError("--format text is for a person reading stdout; use ecs, ocsf or raw with a sink")
    if kind == "hec" and fmt != "cim":
        raise ConfigError("the hec sink takes Splunk CIM events: --format cim")
    if kind == "stdout" and not target:
        return StreamSink(sys.stdout.buffer, _text_line if fmt == "text" else json_line)
    if not target or kind not in SINK_KINDS:
        raise ConfigError(f"invalid --sink {spec!r}: one of stdout, file:DIR, parquet:DIR, opensearch:URL, "
                          "elasticsearch:URL, hec:URL, kafka:TOPIC")
    f = formatter(fmt)
    if kind == "file":
        return FileSink(Path(target), prefix=f"hdrlog-{fmt}", max_bytes=opts.file_max_bytes, keep=opts.file_keep)
    if kind == "parquet":
        return ParquetSink(Path(target), f, f.partition, file_rows=opts.parquet_file_rows,
                           row_group_rows=opts.parquet_row_group_rows, compression=opts.parquet_compression)
    if kind in ("opensearch", "elasticsearch"):
        return BulkSink(target, f, opts.index.replace("{format}", fmt), opts.http)
    if kind == "hec":
        return HecSink(target, opts.http, index=opts.hec_index)
    return KafkaJsonSink(opts.kafka, target, f.event_id)
