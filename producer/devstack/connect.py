"""A Kafka Connect worker (standalone) for the consumer issue's "real downstream client":
``hdrlog stack up --connect``.

Apache Kafka's own ``connect-runtime`` and ``connect-file`` jars with
``log4j-slf4j-impl``, plus Apicurio's registry-aware Avro converter
(``apicurio-registry-utils-converter`` 2.6.x: the 3.x converter and
Confluent's do not resolve from Maven Central), which reads the Confluent
framing with ``apicurio.registry.as-confluent=true`` and
``apicurio.registry.use-id=contentId`` against Apicurio 3's ``/apis/registry/v2``.
The worker's REST API listens on 127.0.0.1; connectors are created through it
(``connector_config`` is the README's recipe for a FileStreamSink on the
record-shape topic).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from producer.devstack import kafka

MAIN_CLASS = "org.apache.kafka.connect.cli.ConnectStandalone"
CONVERTER = "io.apicurio.registry.utils.converter.AvroConverter"

QUIET_LOGGERS = ("org.apache.kafka.connect.runtime.rest.RestServer",)  # a line per REST call otherwise


def worker_properties(*, bootstrap_servers: str, port: int, offsets: Path) -> str:
    return "\n".join([
        "# Written by hdrlog on every start; edits are overwritten.",
        f"bootstrap.servers={bootstrap_servers}",
        f"listeners=http://127.0.0.1:{port}",
        f"offset.storage.file.filename={offsets}",
        "key.converter=org.apache.kafka.connect.storage.StringConverter",
        "value.converter=org.apache.kafka.connect.json.JsonConverter",
        "",
    ])


def log4j2_config(log: Path) -> str:
    return kafka.log4j2_config(log, QUIET_LOGGERS)


def jvm_args(java: Path, libs: Path, log4j2: Path) -> list[str]:
    return [str(java), "-Xms256m", "-Xmx512m", f"-Dlog4j2.configurationFile={log4j2}", "-cp", f"{libs}/*"]


def registry_v2_url(ccompat_url: str) -> str:
    """Apicurio's v2 API beside its Confluent-compatible one."""
    return ccompat_url.split("/apis/", 1)[0] + "/apis/registry/v2"


def connector_config(*, topic: str, file: str, registry_url: str, name: str = "hdrlog-file-sink") -> dict[str, object]:
    """A FileStreamSink reading the record-shape topic through the registry (the README's recipe)."""
    return {"name": name, "config": {
        "connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
        "tasks.max": "1",
        "topics": topic,
        "file": file,
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": CONVERTER,
        "value.converter.apicurio.registry.url": registry_v2_url(registry_url),
        "value.converter.apicurio.registry.as-confluent": "true",
        "value.converter.apicurio.registry.use-id": "contentId",
        "consumer.override.auto.offset.reset": "earliest",
    }}


class ConnectProbe:
    """Answers "does the worker's REST API answer with its version yet?"."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as r:  # noqa: S310 - our own loopback URL
                return bool(json.loads(r.read()).get("version"))
        except (OSError, urllib.error.URLError, ValueError):
            return False
