"""The catalogue journal: every acknowledged UpsertItems and DeleteItems, durable before the OK.

A small interface (:class:`CatalogStore`) with one embedded implementation, :class:`SQLiteStore`
(stdlib ``sqlite3``, WAL, ``synchronous=FULL``). The journal is a sequence of changes, one row per item
(an upsert with its fields, or a delete); the server replays it onto whatever model it loads, so an
item's vector always comes from the served model's own encoder and item tower. Writes are
serialised by the caller (holder.py); reads may come from any thread or process.

Why SQLite rather than a hand-written fsync'd log: a committed transaction is atomic and durable
(WAL fsynced on commit with ``synchronous=FULL``), a torn tail after a crash is rolled back by SQLite
itself, compaction is one statement, and `towerserve catalog dump` reads it while the server writes
(WAL readers never block the writer). The fsync is the cost either way (benchmarks/bench_durability.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from ..core.types import NewItemData

JOURNAL_FILE = "catalog.sqlite"
UPSERT, DELETE = "upsert", "delete"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    item_id TEXT NOT NULL,
    description TEXT,
    features TEXT,
    price REAL,
    category TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_item ON changes (item_id, seq);
"""


class Change(NamedTuple):
    """One journaled change: ``item`` is the upserted item, or None for a delete of ``item_id``."""

    seq: int
    op: str
    item_id: str
    item: NewItemData | None
    at: float


# The columns of a journal row, in the order both stores write and read them.
COLUMNS = "op, item_id, description, features, price, category, at"


def upsert_rows(items: Sequence[NewItemData]) -> list[tuple]:
    """Journal rows (COLUMNS) for upserts of ``items``, stamped now."""
    now = time.time()
    return [(UPSERT, i.item_id, i.description, i.features, float(i.price), i.category, now) for i in items]


def delete_rows(item_ids: Sequence[str]) -> list[tuple]:
    """Journal rows (COLUMNS) for deletes of ``item_ids``, stamped now."""
    now = time.time()
    return [(DELETE, x, None, None, None, None, now) for x in item_ids]


def as_change(row: tuple) -> Change:
    """A journal row read back as ``seq`` followed by COLUMNS."""
    seq, op, item_id, desc, feats, price, cat, at = row
    item = NewItemData(item_id, desc, feats, price, cat) if op == UPSERT else None
    return Change(int(seq), op, item_id, item, at)


class CatalogStore(Protocol):
    """Where catalogue changes are journaled (SQLite here; the scale-out issue adds PostgreSQL)."""

    url: str

    def upsert(self, items: Sequence[NewItemData]) -> int:
        """Journals ``items`` in one durable transaction; returns the last sequence number."""
        ...

    def delete(self, item_ids: Sequence[str]) -> int:
        """Journals deletes of ``item_ids`` in one durable transaction; returns the last sequence number."""
        ...

    def changes(self, after: int = 0, upto: int | None = None) -> Iterator[Change]:
        """Changes with ``after < seq <= upto``, in order."""
        ...

    def last_seq(self) -> int: ...

    def count(self) -> int: ...

    def compact(self) -> tuple[int, int]:
        """Keeps only each item's latest change; returns (entries before, after)."""
        ...

    def close(self) -> None: ...


class SQLiteStore:
    """The journal in ``state_dir/catalog.sqlite``.

    One connection guarded by a lock: sqlite3 connections must not be used by two threads at once,
    and the server's writes are serialised anyway (holder.py), so a pool would buy nothing.
    """

    def __init__(self, state_dir: Path | str):
        self.path = Path(state_dir) / JOURNAL_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{self.path}"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an OK is never ahead of the disk.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def _write(self, rows: list[tuple]) -> int:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(f"INSERT INTO changes ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                seq = cur.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            return int(seq)

    def upsert(self, items: Sequence[NewItemData]) -> int:
        return self._write(upsert_rows(items))

    def delete(self, item_ids: Sequence[str]) -> int:
        return self._write(delete_rows(item_ids))

    def changes(self, after: int = 0, upto: int | None = None) -> Iterator[Change]:
        query = f"SELECT seq, {COLUMNS} FROM changes WHERE seq > ?"
        args: tuple = (after,)
        if upto is not None:
            query += " AND seq <= ?"
            args += (upto,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        yield from map(as_change, rows)

    def last_seq(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM changes").fetchone()[0])

    def compact(self) -> tuple[int, int]:
        with self._lock:
            before = self._db.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # An item's latest change says everything: replaying it alone gives the same catalogue.
                self._db.execute(
                    "DELETE FROM changes WHERE seq NOT IN (SELECT MAX(seq) FROM changes GROUP BY item_id)"
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            after = self._db.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
        return int(before), int(after)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def latest(changes: Iterator[Change]) -> list[Change]:
    """Each item's last change, in journal order: replaying these equals replaying every change."""
    last: dict[str, Change] = {}
    for c in changes:
        last.pop(c.item_id, None)  # re-insert, so the order is that of each item's last change
        last[c.item_id] = c
    return list(last.values())
