"""Parquet files for a data lake, partitioned ``dt=YYYY-MM-DD/host=<host>/``, written with pyarrow.

Each ``write`` turns its events into Arrow record batches at once (columns,
not dicts, are what is held in memory), grouped by partition: the event's UTC
date and its host (percent-encoded as Hive does).  A partition's rows go to a
file when they reach ``file_rows`` or at ``flush``: written as
``.part-<uuid>.parquet.tmp`` with row groups of ``row_group_rows``, fsynced,
renamed to ``part-<uuid>.parquet`` and the directory fsynced -- a reader
never sees half a file, and a crash leaves at most a ``.tmp`` to ignore.  The
runner commits offsets only after ``flush``; a crash between a file and its
commit re-writes those rows in a later file (at least once; the event ids
dedupe).

The Arrow schema is fixed per output format (``schema_for``): the format's
events for synthetic records that set every field, so every file of a
dataset has the same columns, whatever subset its rows use.  Log events (from
a LogEvent topic: ``LogPart``) are another dataset with their own schema,
under ``logs/`` in the same directory, partitioned alike.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from producer.consumer.mapping import Formatter, Origin, ParquetHints, sample_log_records, sample_records
from producer.consumer.render import Block
from producer.consumer.sinks.base import Events, EventsIn, LogPart, as_events
from producer.errors import SinkError

Partition = tuple[str, str, bool]  # date, host, log events
log = logging.getLogger(__name__)


def leaves(t: pa.Schema | pa.DataType, prefix: str = "") -> list[tuple[str, pa.DataType]]:
    """(Parquet column path, type) of a schema's leaves (``a.b``; ``a.list.element`` for a list)."""
    out: list[tuple[str, pa.DataType]] = []
    for f in t:
        if pa.types.is_struct(f.type):
            out += leaves(f.type, f"{prefix}{f.name}.")
        elif pa.types.is_list(f.type):
            out.append((f"{prefix}{f.name}.list.element", f.type.value_type))
        else:
            out.append((f"{prefix}{f.name}", f.type))
    return out


def schema_for(formatter: Formatter) -> pa.Schema:
    """The Arrow schema of ``formatter``'s events: inferred from events that set every field."""
    return pa.Table.from_pylist(formatter.events(sample_records(), Origin("schema", 0, 0))).schema


def log_schema_for(formatter: Formatter) -> pa.Schema:
    """The Arrow schema of ``formatter``'s log events (consumer/logs.py), inferred alike."""
    return pa.Table.from_pylist(formatter.log_events(sample_log_records())).schema


class ParquetSink:
    name = "parquet"

    def __init__(self, directory: Path, formatter: Formatter, partition: Callable[[dict[str, Any]], tuple[str, str]], *,
                 file_rows: int = 1_000_000, row_group_rows: int = 128 * 1024, compression: str = "zstd") -> None:
        self.directory = directory
        self.schema = schema_for(formatter)
        self.log_schema = log_schema_for(formatter)
        self._partition = partition
        self._file_rows = file_rows
        self._row_group_rows = row_group_rows
        self._compression = compression
        hints: ParquetHints = getattr(formatter, "parquet", ParquetHints())
        cols = leaves(self.schema)
        self._dictionary: bool | list[str] = [p for p, _ in cols if p not in hints.unique] if hints.unique else True
        self._encoding = {p: "DELTA_BINARY_PACKED" for p, t in cols if p in hints.unique and pa.types.is_integer(t)}
        self._statistics: bool | list[str] = True if hints.string_stats is None else \
            [p for p, t in cols if not pa.types.is_string(t) or p in hints.string_stats]
        self._pending: dict[Partition, list[pa.RecordBatch]] = {}
        self._rows: dict[Partition, int] = {}
        self.files_written = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create {directory}: {exc.strerror}") from exc

    def _schema(self, key: Partition) -> pa.Schema:
        return self.log_schema if key[2] else self.schema

    def _groups(self, events: Events) -> dict[Partition, list[pa.RecordBatch]]:
        """The events as Arrow record batches, by partition (a Block's straight from its columns)."""
        groups: dict[Partition, list[pa.RecordBatch]] = {}
        for p in events.parts:
            if isinstance(p, Block) and p.batch.schema.equals(self.schema):
                for (dt, host), batch in p.partitions():
                    groups.setdefault((dt, host, False), []).append(batch)
                continue
            logs = isinstance(p, LogPart)
            rows: dict[Partition, list[dict[str, Any]]] = {}
            for e in (p.dicts() if isinstance(p, Block) else p):
                rows.setdefault((*self._partition(e), logs), []).append(e)
            for key, part in rows.items():
                groups.setdefault(key, []).append(pa.RecordBatch.from_pylist(part, schema=self._schema(key)))
        return groups

    def write(self, events: EventsIn) -> list[tuple[int, str]]:
        """Buffer the events as Arrow; files that reach ``file_rows`` are written now, and a
        failure to write one leaves its rows buffered for ``flush`` (which raises it): a retried
        ``write`` would buffer the same rows twice."""
        for key, batches in self._groups(as_events(events)).items():
            rows = pa.Table.from_batches(batches, schema=self._schema(key))
            start = 0
            while start < rows.num_rows:  # a file closes at exactly file_rows
                room = self._file_rows - self._rows.get(key, 0)
                part = rows.slice(start, room)
                start += part.num_rows
                self._pending.setdefault(key, []).extend(part.to_batches())
                self._rows[key] = self._rows.get(key, 0) + part.num_rows
                if self._rows[key] >= self._file_rows:
                    try:
                        self._write_file(key)
                    except SinkError as exc:
                        log.warning("%s (kept for the next flush)", exc)
        return []

    def _write_file(self, key: Partition) -> None:
        batches = self._pending.pop(key, [])
        self._rows.pop(key, None)
        if not batches:
            return
        dt, host, logs = key
        folder = (self.directory / "logs" if logs else self.directory) / f"dt={dt}" / f"host={quote(host, safe='')}"
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_batches(batches, schema=self._schema(key))
            if logs:  # the format's hints name the header dataset's columns
                pq.write_table(table, tmp, row_group_size=self._row_group_rows, compression=self._compression)
            else:
                pq.write_table(table, tmp, row_group_size=self._row_group_rows, compression=self._compression,
                               use_dictionary=self._dictionary, column_encoding=self._encoding or None,
                               write_statistics=self._statistics)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.rename(tmp, folder / name)
            dirfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as exc:
            self._pending[key] = batches + self._pending.get(key, [])  # kept for the retry
            self._rows[key] = sum(b.num_rows for b in self._pending[key])
            tmp.unlink(missing_ok=True)
            raise SinkError(f"cannot write {folder / name}: {exc.strerror}", retriable=True) from exc
        self.files_written += 1

    def flush(self) -> None:
        for key in list(self._pending):
            self._write_file(key)

    def close(self) -> None:
        self.flush()
