"""Schema registry access (Confluent-compatible API), errors classified here.

Connection failures and 5xx answers are retriable; 4xx answers (an
incompatible schema, a bad subject) are not and carry the registry's reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from producer.errors import RegistryError


def _classify(exc: Exception, url: str, what: str) -> RegistryError:
    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code or 0
        return RegistryError(
            f"schema registry at {url} refused {what}: {exc.error_message} (HTTP {status})",
            retriable=status >= 500 or status in (408, 429),
        )
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RegistryError(f"cannot reach schema registry at {url}: {reason}", retriable=True)


class Registry:
    """A thin, error-classifying wrapper of confluent-kafka's SchemaRegistryClient."""

    def __init__(self, url: str, properties: Mapping[str, str] | None = None) -> None:
        conf: dict[str, Any] = {"url": url, "timeout": 10}
        conf.update(properties or {})
        self.url = url
        try:
            self._client = SchemaRegistryClient(conf)
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"invalid schema registry settings: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> SchemaRegistryClient:
        return self._client

    def register(self, subject: str, schema_text: str) -> int:
        """Register (or find) the Avro schema under ``subject``; returns its id."""
        try:
            return int(self._client.register_schema(subject, Schema(schema_text, "AVRO")))
        except Exception as exc:  # httpx/requests transport errors vary by version
            raise _classify(exc, self.url, f"registering {subject}") from exc

    def schema_text(self, schema_id: int) -> str:
        try:
            return str(self._client.get_schema(schema_id).schema_str)
        except Exception as exc:
            raise _classify(exc, self.url, f"schema id {schema_id}") from exc
