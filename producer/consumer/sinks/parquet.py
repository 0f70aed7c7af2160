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
dataset has the same columns, whatever subset its rows use.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from producer.consumer.mapping import Formatter, Origin, sample_records
from producer.errors import SinkError

Partition = tuple[str, str]
log = logging.getLogger(__name__)


def schema_for(formatter: Formatter) -> pa.Schema:
    """The Arrow schema of ``formatter``'s events: inferred from events that set every field."""
    return pa.Table.from_pylist(formatter.events(sample_records(), Origin("schema", 0, 0))).schema


class ParquetSink:
    name = "parquet"

    def __init__(self, directory: Path, formatter: Formatter, partition: Callable[[dict[str, Any]], Partition], *,
                 file_rows: int = 1_000_000, row_group_rows: int = 128 * 1024, compression: str = "zstd") -> None:
        self.directory = directory
        self.schema = schema_for(formatter)
        self._partition = partition
        self._file_rows = file_rows
        self._row_group_rows = row_group_rows
        self._compression = compression
        self._pending: dict[Partition, list[pa.RecordBatch]] = {}
        self._rows: dict[Partition, int] = {}
        self.files_written = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create {directory}: {exc.strerror}") from exc

    def write(self, events: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        """Buffer the events as Arrow; files that reach ``file_rows`` are written now, and a
        failure to write one leaves its rows buffered for ``flush`` (which raises it): a retried
        ``write`` would buffer the same rows twice."""
        groups: dict[Partition, list[dict[str, Any]]] = {}
        for e in events:
            groups.setdefault(self._partition(e), []).append(e)
        for key, rows in groups.items():
            start = 0
            while start < len(rows):  # a file closes at exactly file_rows
                room = self._file_rows - self._rows.get(key, 0)
                part = rows[start:start + room]
                start += len(part)
                self._pending.setdefault(key, []).append(pa.RecordBatch.from_pylist(part, schema=self.schema))
                self._rows[key] = self._rows.get(key, 0) + len(part)
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
        dt, host = key
        folder = self.directory / f"dt={dt}" / f"host={quote(host, safe='')}"
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_batches(batches, schema=self.schema)
            pq.write_table(table, tmp, row_group_size=self._row_group_rows, compression=self._compression)
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
