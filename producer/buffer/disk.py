"""``buffer.type = disk``: entries in SQLite (standard library), WAL mode.

Why SQLite: it is the embedded store whose crash consistency is already
proven (atomic commits through the write-ahead log); an entry is one row
written in one transaction, so after a SIGKILL at any instant an entry is
either whole or absent (tests/test_buffer_crash.py kills a writer mid-stream
and checks exactly that).  benchmarks/buffer_store.py measured it against
checksummed append-only segment files written here by hand; see BENCHMARKS.md.

``synchronous = NORMAL``: a committed entry survives the agent being killed
(the OS has the pages); a power cut may lose the last commits but never
corrupts the file.  Log events from the HTTP ingest are committed with
``durable``: ``synchronous = FULL`` for that commit, so the log is synced to
the device before the client hears 202 (a power cut keeps them too).  The
ingest groups the requests of a few milliseconds into one such commit: one
fsync a group, never one a request.  The idempotency keys of those requests
are written in the same transaction (table ``idempotency``), and kept for
``key_ttl_s`` after it.  Rows are ordered by an AUTOINCREMENT id, so ids are never
reused and the oldest entry is always first.

One agent owns one file: an exclusive ``flock`` on ``<path>.lock`` refuses a
second agent with the same state directory.

A full file system is ``StoreFull`` (the buffer's policy decides), and it is
declared *before* SQLite meets ENOSPC: an append is refused when it would leave
less than ``RESERVE_BYTES`` free (counting what the database's free pages can
take).  SQLite at a
truly full disk cannot even commit the deletes that would free room (the log
and the checkpoint both need space), so the reserve is what keeps an
acknowledgement possible.  Should another process fill the disk anyway, a
delete that fails is kept and retried, never raised: the entry is acknowledged
in memory, and at worst a restart re-sends it (a duplicate, same identity).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from producer.buffer.base import Stored, StoreFull
from producer.errors import ConfigError, HdrlogError
from producer.records import Encoded, Source

log = logging.getLogger(__name__)

#: free space an append must leave on the file system (besides the log's own size)
RESERVE_BYTES = 2 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT    NOT NULL,
    key         BLOB    NOT NULL,
    payload     BLOB    NOT NULL,
    offsets     BLOB,             -- little-endian uint32 start of each message; NULL: one message
    records     INTEGER NOT NULL,
    captured_ns INTEGER NOT NULL,
    source      INTEGER NOT NULL DEFAULT 0  -- records.Source: 0 header records, 1 log events
);
CREATE TABLE IF NOT EXISTS idempotency (
    key    TEXT PRIMARY KEY,
    events INTEGER NOT NULL,
    at_ns  INTEGER NOT NULL        -- Unix time of the commit
) WITHOUT ROWID;
"""
#: appends with keys between two purges of expired keys
PURGE_EVERY = 256


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)


class DiskStore:
    def __init__(self, path: Path, key_ttl_s: float = 86400.0) -> None:
        self.path = path
        self._key_ttl_ns = int(key_ttl_s * 1e9)
        self._appends_with_keys = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - held while open
        except OSError as exc:
            raise ConfigError(f"cannot use the disk buffer at {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise HdrlogError(f"the disk buffer {path} is in use by another agent "
                              "(give each agent its own state_dir)") from None
        except OSError as exc:
            self._lock.close()
            raise HdrlogError(f"cannot lock the disk buffer {path}: {exc.strerror}") from exc
        self._stuck: list[int] = []
        db: sqlite3.Connection | None = None
        try:
            self._db = db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # checkpoint often: entries live in the database file, whose free pages deletes refill,
            # and the log stays small (what a full disk leaves room for)
            self._db.execute("PRAGMA wal_autocheckpoint=64")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
            if "source" not in columns:  # a file from before the HTTP ingest
                self._db.execute("ALTER TABLE entries ADD COLUMN source INTEGER NOT NULL DEFAULT 0")
            self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            self._lock.close()
            raise HdrlogError(f"cannot open the disk buffer {path}: {exc}") from exc

    def _room(self, size: int) -> bool:
        """Whether appending ``size`` bytes leaves the reserve free: the database grows by what of it its
        free pages (left by deleted entries) cannot hold; the reserve covers the log, which checkpoints
        keep to about one entry."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return True
        try:
            free_pages = self._db.execute("PRAGMA freelist_count").fetchone()[0] * self._page
        except sqlite3.Error as exc:
            raise HdrlogError(f"reading the disk buffer {self.path}: {exc}") from exc
        growth = size - free_pages
        # growing the database must leave the whole reserve; refilling its free pages only log headroom
        return st.f_bavail * st.f_frsize >= (growth + RESERVE_BYTES if growth > 0 else RESERVE_BYTES // 2)

    def append(self, entry: Encoded, keys: Sequence[tuple[str, int]] = (), durable: bool = False) -> int:
        """One transaction: the entry and the (key, events) pairs it answers."""
        self._retry_deletes()
        if not self._room(len(entry)):
            raise StoreFull(f"the file system of {self.path} is nearly full")
        offsets = None if entry.offsets is None else struct.pack(f"<{len(entry.offsets)}I", *entry.offsets)
        db = self._db
        try:
            if durable:
                db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN")
            try:
                cur = db.execute(
                    "INSERT INTO entries (topic, key, payload, offsets, records, captured_ns, source) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (entry.topic, entry.key, entry.payload, offsets, entry.records, entry.captured_ns,
                     entry.source.value))
                if keys:
                    now = time.time_ns()
                    db.executemany("INSERT OR REPLACE INTO idempotency (key, events, at_ns) VALUES (?,?,?)",
                                   [(k, n, now) for k, n in keys])
                    self._appends_with_keys += 1
                    if self._appends_with_keys % PURGE_EVERY == 0:
                        db.execute("DELETE FROM idempotency WHERE at_ns < ?", (now - self._key_ttl_ns,))
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise StoreFull(f"no room on the file system of {self.path}") from exc
            raise HdrlogError(f"writing the disk buffer {self.path}: {exc}") from exc
        finally:
            if durable:  # committed or not, later (capture) commits go back to NORMAL; a failure here
                with contextlib.suppress(sqlite3.Error):  # must not undo what was committed
                    db.execute("PRAGMA synchronous=NORMAL")
        return int(cur.lastrowid or 0)

    def recent_keys(self) -> list[tuple[str, int, int]]:
        """The idempotency keys committed within ``key_ttl_s``: (key, events, Unix ns), oldest first."""
        cutoff = time.time_ns() - self._key_ttl_ns
        self._db.execute("DELETE FROM idempotency WHERE at_ns < ?", (cutoff,))
        rows = self._db.execute("SELECT key, events, at_ns FROM idempotency ORDER BY at_ns").fetchall()
        return [(str(k), int(n), int(t)) for k, n, t in rows]

    def load(self, entry_id: int) -> Encoded:
        row = self._db.execute("SELECT topic, key, payload, offsets, records, captured_ns, source FROM entries "
                               "WHERE id=?", (entry_id,)).fetchone()
        if row is None:
            raise HdrlogError(f"disk buffer entry {entry_id} vanished from {self.path}")
        topic, key, payload, offsets, records, captured, source = row
        offs = None if offsets is None else struct.unpack(f"<{len(offsets) // 4}I", offsets)
        return Encoded(topic, bytes(key), bytes(payload), offs, int(records), int(captured), source=Source(source))

    def delete(self, entry_ids: list[int]) -> None:
        ids = self._stuck + entry_ids
        if not ids:
            return
        try:
            self._db.executemany("DELETE FROM entries WHERE id=?", [(i,) for i in ids])
            self._stuck = []
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise HdrlogError(f"updating the disk buffer {self.path}: {exc}") from exc
            self._stuck = ids  # retried with the next delete or append
            log.warning("the file system of %s is full: %d acknowledged entries stay until there is room",
                        self.path, len(ids))

    def stuck(self) -> bool:
        return bool(self._stuck)

    def _retry_deletes(self) -> None:
        if self._stuck:
            self.delete([])

    def existing(self) -> Iterator[Stored]:
        rows = self._db.execute("SELECT id, records, length(payload), captured_ns, source FROM entries ORDER BY id")
        for entry_id, records, size, captured, source in rows.fetchall():
            yield Stored(int(entry_id), int(records), int(size), int(captured), Source(source))

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._lock.close()
