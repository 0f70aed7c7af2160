"""Kafka producer wrapper: delivery reports drive the counters.

Idempotent, ``acks=all``, zstd; the key is the host id and the partitioner is
murmur2 (the Java client's), so one host's records land in one partition in
order whatever client reads or writes the topic.  Any librdkafka property can
be passed through from the config (TLS, SASL, ...).

Blocks on a full local queue (serving delivery reports while it waits), never
drops there.  A delivery that fails for good is counted as
``dropped_delivery_failed``; the spool that will keep such batches is a later
stage (docs/architecture.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from producer.errors import BrokerError
from producer.telemetry.counters import Counters

log = logging.getLogger(__name__)

DEFAULTS: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "zstd",
    "linger.ms": 20,
    "batch.num.messages": 10000,
    "partitioner": "murmur2_random",
    "message.timeout.ms": 120000,
}


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class KafkaPublisher:
    """Publishes framed messages to one topic; counts every outcome."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        counters: Counters,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self._counters = counters
        self._conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, **DEFAULTS}
        self._conf.update(properties or {})
        try:
            self._producer = Producer(self._conf, logger=log)
        except KafkaException as exc:
            raise BrokerError(f"invalid Kafka settings: {_first_line(exc)}") from exc

    def _admin_conf(self) -> dict[str, Any]:
        keep = ("bootstrap.servers", "security.protocol", "ssl.", "sasl.", "client.id")
        return {k: v for k, v in self._conf.items() if k.startswith(keep)}

    def check_reachable(self, timeout_s: float) -> None:
        """Raise a retriable BrokerError unless cluster metadata arrives in time."""
        try:
            self._producer.list_topics(timeout=max(timeout_s, 0.5))
        except KafkaException as exc:
            raise BrokerError(
                f"cannot reach Kafka at {self.bootstrap_servers}: {_first_line(exc)}",
                retriable=True,
            ) from exc

    def ensure_topic(self, partitions: int, timeout_s: float = 15.0) -> None:
        """Create the topic (broker-default replication) unless it exists."""
        try:
            meta = self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerError(f"cannot read metadata from {self.bootstrap_servers}: {_first_line(exc)}",
                              retriable=True) from exc
        if self.topic in meta.topics and not meta.topics[self.topic].error:
            return
        admin = AdminClient(self._admin_conf())
        fut = admin.create_topics([NewTopic(self.topic, num_partitions=partitions)])[self.topic]
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            raise BrokerError(f"cannot create topic {self.topic}: {_first_line(exc)}") from exc

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self._counters.add("delivered")
            return
        self._counters.add("dropped_delivery_failed")
        log.error("delivery failed: %s", err.str())

    def publish(self, key: bytes, value: bytes, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Queue one message; when librdkafka's queue is full, wait for room (serving
        delivery reports) until ``give_up()`` says the exit deadline has passed.
        Returns whether the message was queued."""
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                self._counters.add("produced")
                return True
            except BufferError:
                if give_up():
                    return False
                self._counters.add("producer_queue_full_waits")
                self._producer.poll(0.05)

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        """Deliver what is queued within ``timeout_s``; returns how many are still queued."""
        deadline = time.monotonic() + timeout_s
        remaining = len(self._producer)
        while remaining and time.monotonic() < deadline:
            remaining = self._producer.flush(min(0.5, max(deadline - time.monotonic(), 0.0)))
        return int(remaining)
