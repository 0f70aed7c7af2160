"""A Kafka topic of JSON events, for tools that cannot read Avro (``--sink kafka:TOPIC``).

Each event is one message, keyed by its event id: on a compacted topic a
replay overwrites instead of duplicating.  ``write`` produces the events and
waits for the broker's acknowledgements (an idempotent producer, acks=all),
so the runner commits only what the topic holds.  A message the broker refuses
for good (too large, an invalid record) is returned refused and dead-lettered;
a failure that would refuse every event (the topic does not exist, writing to
it is not authorized) stops the consumer; any other failure left after
librdkafka's own retries (a timeout, the broker unreachable) raises a
retriable SinkError and the write is repeated (same keys).  A delivery
report's ``retriable()`` is always false, so the error code decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from producer.consumer.sinks.base import EventsIn, as_events
from producer.errors import BrokerError, SinkError

#: refusals of one message (dead-lettered); refusals of the topic (the consumer stops)
PER_MESSAGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG,
                         KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE})
STOPS = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                   KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError.TOPIC_EXCEPTION})


class KafkaJsonSink:
    name = "kafka"

    def __init__(self, conf: Mapping[str, Any], topic: str, event_id: Callable[[dict[str, Any]], str],
                 timeout_s: float = 120.0) -> None:
        self.topic = topic
        self._event_id = event_id
        self._timeout = timeout_s
        try:
            self._producer = Producer({**conf, "enable.idempotence": True, "acks": "all", "linger.ms": 20,
                                       "compression.type": "zstd"})
        except KafkaException as exc:
            raise BrokerError(f"invalid Kafka settings for the JSON sink: {exc}") from exc

    def write(self, events: EventsIn) -> list[tuple[int, str]]:
        failed: dict[int, KafkaError] = {}

        def report(i: int) -> Callable[[KafkaError | None, Message], None]:
            def cb(err: KafkaError | None, _msg: Message) -> None:
                if err is not None:
                    failed[i] = err
            return cb

        for i, (key, line) in enumerate(as_events(events).keyed_lines(self._event_id)):
            while True:
                try:
                    self._producer.produce(self.topic, key=key.encode(), value=line[:-1], on_delivery=report(i))
                    break
                except BufferError:
                    self._producer.poll(0.1)
                except KafkaException as exc:
                    failed[i] = exc.args[0]
                    break
        left = self._producer.flush(self._timeout)
        if left:
            raise SinkError(f"{left} messages to {self.topic} not acknowledged within {self._timeout:g} s",
                            retriable=True)
        stopping = [err for err in failed.values() if err.code() in STOPS]
        if stopping:
            raise SinkError(f"Kafka refuses messages to {self.topic}: {stopping[0].str()}")
        transient = [err for err in failed.values() if err.code() not in PER_MESSAGE]
        if transient:
            raise SinkError(f"{len(transient)} messages to {self.topic} failed: {transient[0].str()}", retriable=True)
        return sorted((i, f"Kafka refused it: {err.str()}") for i, err in failed.items())

    def flush(self) -> None:
        """Nothing held: ``write`` returned after the broker's acknowledgements."""

    def close(self) -> None:
        self._producer.flush(10)
