"""The Avro schemas of schemas/ (the data contract), loaded and parsed once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from producer.errors import SerializationError


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

    @classmethod
    def load(cls, name: str, directory: Path | None = None) -> AvroSchema:
        path = (directory or schema_dir()) / f"{name}.avsc"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            parsed = fastavro.parse_schema(raw)
        except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
            raise SerializationError(f"schema {path} cannot be used: {exc}") from exc
        return cls(name, json.dumps(raw, separators=(",", ":")), parsed)
