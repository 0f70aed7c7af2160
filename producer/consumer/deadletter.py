"""The dead-letter topic: ``<topic>.dlq``, with Kafka Connect's error headers.

A message the consumer can never turn into events (``Poison`` reasons) is
produced here unchanged -- key, value and the original headers -- with the
headers Kafka Connect writes when ``errors.deadletterqueue.context.headers.enable``
is on, so the tools that read a Connect DLQ read this one:

    __connect.errors.topic / .partition / .offset   where the message was
    __connect.errors.connector.name                  the consumer group
    __connect.errors.task.id                         this member's client id
    __connect.errors.stage                           VALUE_CONVERTER | TRANSFORMATION | TASK_PUT
    __connect.errors.class.name                      the hdrlog class that refused it
    __connect.errors.exception.class.name / .message the error
    hdrlog.errors.reason                             the Poison reason (bad_magic, unknown_schema, ...)
    hdrlog.errors.record.index                       for a sink refusal: which records of the message (a, b, ...)

One dead letter per message, however many of its records a sink refused.

``flush`` waits for the broker's acknowledgement of every dead letter; the
runner calls it before committing, so a message is never committed before it
is either in the sink or here.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from producer.consumer.telemetry import Poison
from producer.errors import BrokerError

STAGES = {Poison.BAD_MAGIC: "VALUE_CONVERTER", Poison.UNKNOWN_SCHEMA: "VALUE_CONVERTER",
          Poison.WRONG_SCHEMA: "VALUE_CONVERTER", Poison.DECODE_ERROR: "VALUE_CONVERTER",
          Poison.MAPPING_ERROR: "TRANSFORMATION", Poison.SINK_REJECTED: "TASK_PUT"}


log = logging.getLogger(__name__)


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


class DeadLetters:
    def __init__(self, conf: Mapping[str, Any], topic: str, group: str, member: str) -> None:
        self.topic = dlq_topic(topic)
        self._group = group
        self._member = member
        self._failed: list[str] = []
        self.sent = 0
        # zstd and a large client-side limit: a dead letter is the original message (compressed by the
        # agent's producer) plus ~0.5 KB of headers; the broker's limit applies to the compressed batch
        self._conf = {**conf, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                      "compression.type": "zstd", "message.max.bytes": 64 << 20,
                      "logger": log}  # librdkafka's lines as the consumer's own (JSON with --log-format json)
        self._made: Producer | None = None  # at the first dead letter: most runs never connect it

    @property
    def _producer(self) -> Producer:
        if self._made is None:
            try:
                self._made = Producer(self._conf)
            except KafkaException as exc:
                raise BrokerError(f"invalid Kafka settings for the dead-letter producer: {exc}") from exc
        return self._made

    def ensure_topic(self, admin_conf: Mapping[str, Any], partitions: int) -> None:
        """Create the dead-letter topic if it does not exist (its partitions: the source topic's)."""
        admin = AdminClient(dict(admin_conf))
        futures = admin.create_topics([NewTopic(self.topic, num_partitions=max(1, partitions))])
        for fut in futures.values():
            try:
                fut.result(timeout=30)
            except concurrent.futures.TimeoutError as exc:
                raise BrokerError(f"cannot create the dead-letter topic {self.topic}: no answer in 30 s") from exc
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create the dead-letter topic {self.topic}: {exc.args[0].str()}") from exc

    def send(self, msg: Message, reason: Poison, error: BaseException, cls: str, index: str | None = None) -> None:
        original = msg.headers() or []
        headers: list[tuple[str, str | bytes | None]] = list(
            original.items() if isinstance(original, dict) else original)
        ctx = {
            "__connect.errors.topic": msg.topic() or "",
            "__connect.errors.partition": str(msg.partition()),
            "__connect.errors.offset": str(msg.offset()),
            "__connect.errors.connector.name": self._group,
            "__connect.errors.task.id": self._member,
            "__connect.errors.stage": STAGES[reason],
            "__connect.errors.class.name": cls,
            "__connect.errors.exception.class.name": f"{type(error).__module__}.{type(error).__qualname__}",
            "__connect.errors.exception.message": str(error),
            "hdrlog.errors.reason": reason.value,
        }
        if index is not None:
            ctx["hdrlog.errors.record.index"] = index  # comma-separated when several records were refused
        headers += [(k, v.encode()) for k, v in ctx.items()]
        while True:
            try:
                self._producer.produce(self.topic, value=msg.value(), key=msg.key(), headers=headers,
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise BrokerError(f"cannot dead-letter {msg.topic()}[{msg.partition()}]@{msg.offset()} "
                                  f"({reason.value}): {exc.args[0].str()}") from exc
        self._producer.poll(0)
        self.sent += 1

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(err.str())

    def flush(self, timeout_s: float = 60.0) -> None:
        """Every dead letter sent so far acknowledged; a BrokerError otherwise (nothing is committed then)."""
        left = 0 if self._made is None else self._made.flush(timeout_s)
        if left:
            raise BrokerError(f"{left} dead letters to {self.topic} not acknowledged within {timeout_s:.0f} s",
                              retriable=True)
        if self._failed:
            first, n = self._failed[0], len(self._failed)
            self._failed.clear()
            raise BrokerError(f"{n} dead letters to {self.topic} refused: {first}")

    def close(self) -> None:
        if self._made is not None:
            self._made.flush(10)
