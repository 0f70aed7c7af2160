"""Console consumer: read the topic with a consumer group, decode through the
registry (consumer/decoding.py: both message shapes, every schema version),
print one JSON object (or one readable line) per header record.

Offsets are committed after a message's records have been written out, so a
crash re-reads rather than skips.  Stops after ``max_records`` records or when
no message has arrived for ``idle_timeout_s``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from producer.consumer.decoding import MessageDecoder
from producer.errors import BrokerError, SerializationError
from producer.render import render, summary_line
from producer.serialize.registry import Registry


@dataclass(frozen=True, slots=True)
class ConsumeOptions:
    bootstrap_servers: str
    schema_registry: str
    topic: str
    group: str
    from_beginning: bool = False
    max_records: int | None = None
    idle_timeout_s: float | None = None
    kafka: Mapping[str, str] | None = None
    registry: Mapping[str, str] | None = None
    text: bool = False  # one human line per record instead of JSON


@dataclass
class ConsumeReport:
    records: int = 0


def consume(opts: ConsumeOptions, out: TextIO, *,
            on_record: Callable[[dict[str, Any], Message], None] | None = None) -> ConsumeReport:
    registry = Registry(opts.schema_registry, opts.registry)
    decoder = MessageDecoder(registry)
    conf: dict[str, Any] = {
        "bootstrap.servers": opts.bootstrap_servers,
        "group.id": opts.group,
        "auto.offset.reset": "earliest" if opts.from_beginning else "latest",
        "enable.auto.commit": False,
    }
    conf.update(opts.kafka or {})
    try:
        consumer = Consumer(conf)
    except KafkaException as exc:
        raise BrokerError(f"invalid Kafka consumer settings: {exc}") from exc
    report = ConsumeReport()
    try:
        try:
            consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise BrokerError(f"cannot reach Kafka at {opts.bootstrap_servers}: "
                              f"{exc.args[0].str() if exc.args else exc}") from exc
        consumer.subscribe([opts.topic])
        last = time.monotonic()
        while opts.max_records is None or report.records < opts.max_records:
            msg = consumer.poll(0.5)
            if msg is None:
                if opts.idle_timeout_s is not None and time.monotonic() - last >= opts.idle_timeout_s:
                    break
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise BrokerError(f"consuming {opts.topic}: {err.str()}")
            last = time.monotonic()
            try:
                records = decoder.records(msg.value() or b"")
            except SerializationError as exc:
                raise SerializationError(
                    f"message at {msg.topic()}[{msg.partition()}]@{msg.offset()} cannot be decoded: {exc}") from exc
            for record in records:
                out.write((summary_line(record) if opts.text else
                           json.dumps(render(record), separators=(",", ":"))) + "\n")
                if on_record is not None:
                    on_record(record, msg)
            out.flush()
            consumer.commit(message=msg, asynchronous=False)
            report.records += len(records)
    finally:
        consumer.close()
        registry.close()
    return report
