"""The Avro schemas of schemas/ (the data contract), and which subject each goes under.

Subjects follow TopicNameStrategy: the value schema of topic T is registered
under ``T-value``.  The header topic carries HeaderBatch (``kafka.shape =
batch``) or HeaderRecord (``record``); the two cannot share a topic, and the
registry's compatibility check refuses a switch of shape on one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from producer.errors import SerializationError

#: the schema of each message shape
SHAPE_SCHEMAS = {"batch": "HeaderBatch", "record": "HeaderRecord"}


def schema_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "schemas", here / "schemas"):
        if (cand / "HeaderRecord.avsc").is_file():
            return cand
    raise SerializationError("schemas/HeaderRecord.avsc not found beside the producer package")


@dataclass(frozen=True, slots=True)
class AvroSchema:
    name: str
    text: str  # canonical JSON as registered
    parsed: Any  # fastavro's parsed schema
    raw: Any  # the JSON document as written

    @classmethod
    def load(cls, name: str, directory: Path | None = None) -> AvroSchema:
        path = (directory or schema_dir()) / f"{name}.avsc"
        return cls.from_file(name, path)

    @classmethod
    def from_file(cls, name: str, path: Path) -> AvroSchema:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SerializationError(f"schema {path} cannot be used: {exc}") from exc
        return cls.from_raw(name, raw, str(path))

    @classmethod
    def from_raw(cls, name: str, raw: Any, where: str = "") -> AvroSchema:
        """The schema of a JSON document (``raw`` is kept as given; fastavro parses a copy)."""
        try:
            parsed = fastavro.parse_schema(json.loads(json.dumps(raw)))
        except (ValueError, fastavro.schema.SchemaParseException) as exc:
            raise SerializationError(f"schema {where or name} cannot be used: {exc}") from exc
        return cls(name, json.dumps(raw, separators=(",", ":")), parsed, raw)


@dataclass(frozen=True, slots=True)
class Subject:
    """One schema under one subject (TopicNameStrategy)."""

    topic: str
    schema: AvroSchema

    @property
    def name(self) -> str:
        return f"{self.topic}-value"


def agent_subjects(topic: str, shape: str, stats_topic: str, logs_topic: str = "") -> list[Subject]:
    """The subjects an agent writes: the header topic's, and the stats and log-event topics' if there are."""
    out = [Subject(topic, AvroSchema.load(SHAPE_SCHEMAS[shape]))]
    if stats_topic:
        out.append(Subject(stats_topic, AvroSchema.load("AgentStats")))
    if logs_topic:
        out.append(Subject(logs_topic, AvroSchema.load("LogEvent")))
    return out
