"""The catalogue journal: every acknowledged UpsertItems and DeleteItems, durable before the OK.

A small interface (:class:`CatalogStore`) with two implementations: :class:`SQLiteStore` here
(stdlib ``sqlite3``, WAL, ``synchronous=FULL``) and the PostgreSQL store shared by replicas
(store_pg.py). The journal is a sequence of changes, one row per item (an upsert with its fields, or a
delete); the server replays it onto whatever model it loads, so an item's vector always comes from
the served model's own encoder and item tower. Writes are serialised by the caller (holder.py); reads
may come from any thread or process.

**Write ids.** A write may carry a client-chosen id. It is recorded in table ``writes`` in the same
transaction as the write's changes, with the reply the server gave; a write whose id is already
there journals nothing and gets that reply back (:class:`Journaled`). So a retry whose first try
committed (its answer lost) is applied once, and never re-applied after someone else's newer write.
Ids older than :data:`WRITE_ID_RETENTION_S` are dropped by compaction.

**Interactions** (RecordInteractions) go to their own table with their own sequence: they are
events to keep (a user's history, the next training set), not item states a later change
supersedes, so compaction never drops them. An event with a client ``event_id`` is recorded once.

**Failures** are :class:`JournalError` subclasses naming the file or host and the cause, so the
server can answer with the right status and log one clear line: :class:`JournalUnavailable` (the
database is away or timed out: retry later), :class:`JournalFull` (disk full or file size limit),
:class:`JournalReadOnly` (the file or folder cannot be written). Nothing was journaled when one is
raised.

Why SQLite rather than a hand-written fsync'd log: a committed transaction is atomic and durable
(WAL fsynced on commit with ``synchronous=FULL``), a torn tail after a crash is rolled back by SQLite
itself, compaction is one statement, and `towerserve catalog dump` reads it while the server writes
(WAL readers never block the writer). The fsync is the cost either way (benchmarks/bench_durability.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from ..core.types import Interaction, NewItemData

JOURNAL_FILE = "catalog.sqlite"
UPSERT, DELETE = "upsert", "delete"
# How long a write id is remembered: a client retries within seconds to minutes; a day covers a
# client that waits out a long outage, and compaction drops older ids.
WRITE_ID_RETENTION_S = 24 * 3600
# Rows read per query when replaying: the journal is streamed, never loaded whole.
PAGE_ROWS = 10_000
# A failed write with less room than this left (free bytes, or bytes under the file size limit) is
# reported as a full journal: SQLite's write granularity is a page plus its WAL frame, far below it.
ROOM_MARGIN = 1 << 20

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
CREATE TABLE IF NOT EXISTS writes (
    write_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    reply TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    weight REAL NOT NULL,
    event_id TEXT,
    recorded_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS interactions_event ON interactions (event_id) WHERE event_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS interactions_user ON interactions (user_id, seq);
"""


class Change(NamedTuple):
    """One journaled change: ``item`` is the upserted item, or None for a delete of ``item_id``."""

    seq: int
    op: str
    item_id: str
    item: NewItemData | None
    at: float


class Journaled(NamedTuple):
    """What a journal write did: ``seq`` is the last sequence number of the write; ``reply`` is None
    when it was journaled now, else the reply recorded when its write id was first journaled (and
    ``seq`` is that write's)."""

    seq: int
    reply: dict | None = None


class JournalError(Exception):
    """The journal could not do what was asked; nothing was journaled. The message names the file or
    host and the cause (never a password)."""


class JournalUnavailable(JournalError):
    """The database is away, refused us, or timed out: retry later."""


class JournalFull(JournalError):
    """No room to write: the disk or the file size limit is full."""


class JournalReadOnly(JournalError):
    """The journal file or its folder cannot be written."""


# The columns of a journal row, in the order both stores write and read them.
COLUMNS = "op, item_id, description, features, price, category, at"
EVENT_COLUMNS = "user_id, item_id, at, kind, weight, event_id, recorded_at"


def event_rows(events: Sequence[Interaction]) -> list[tuple]:
    """Rows (EVENT_COLUMNS) for ``events``, stamped now; an empty event id is stored as NULL."""
    now = time.time()
    return [(e.user_id, e.item_id, e.at, e.kind, e.weight, e.event_id or None, now) for e in events]


def as_event(row: tuple) -> tuple[int, Interaction]:
    """An interactions row read back as (seq, Interaction): ``seq`` followed by EVENT_COLUMNS."""
    seq, user, item, at, kind, weight, event_id, _ = row
    return int(seq), Interaction(user, item, float(at), kind, float(weight), event_id or "")


def fresh_events(events: Sequence[Interaction], known_ids: set[str]) -> list[Interaction]:
    """``events`` less those whose event id is in ``known_ids`` or repeats an earlier one of the batch."""
    out, seen = [], set(known_ids)
    for e in events:
        if e.event_id:
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
        out.append(e)
    return out


def recorded_reply(reply: Mapping | None, n: int, kept: int) -> dict:
    """A RecordInteractions reply: ``reply``'s keys with the counts of recorded and duplicate events."""
    return {**dict(reply or {}), "recorded": kept, "duplicates": n - kept}


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


def encode_reply(reply: Mapping | None) -> str:
    return json.dumps(dict(reply or {}), sort_keys=True)


def purgeable_deletes(
    latest_changes: Iterable[tuple[int, str, str]], keep_delete: Callable[[str], bool] | None
) -> list[int]:
    """The sequence numbers of latest changes (seq, op, item_id) that compaction may also drop: deletes
    of ids ``keep_delete`` says no bundle holds (replaying such a delete is a no-op); none without it."""
    if keep_delete is None:
        return []
    return [seq for seq, op, item_id in latest_changes if op == DELETE and not keep_delete(item_id)]


class CatalogStore(Protocol):
    """Where catalogue changes are journaled: SQLite (this module) or PostgreSQL (store_pg.py)."""

    url: str

    def upsert(
        self, items: Sequence[NewItemData], write_id: str = "", reply: Mapping | None = None
    ) -> Journaled:
        """Journals ``items`` in one durable transaction, with ``write_id`` and ``reply`` (if an id is
        given and already journaled: nothing, and the first reply back)."""
        ...

    def delete(self, item_ids: Sequence[str], write_id: str = "", reply: Mapping | None = None) -> Journaled:
        """Journals deletes of ``item_ids``, as :meth:`upsert`."""
        ...

    def changes(self, after: int = 0, upto: int | None = None) -> Iterator[Change]:
        """Changes with ``after < seq <= upto``, in order, read a page at a time."""
        ...

    def last_seq(self) -> int: ...

    def count(self) -> int: ...

    def compact(self, keep_delete: Callable[[str], bool] | None = None) -> tuple[int, int]:
        """Keeps only each item's latest change, drops write ids past their retention and, with
        ``keep_delete``, deletes of ids it rejects; returns (entries before, after)."""
        ...

    def record(
        self, events: Sequence[Interaction], write_id: str = "", reply: Mapping | None = None
    ) -> tuple[Journaled, list[Interaction]]:
        """Journals ``events`` (less those whose event id it already holds) in one durable transaction.

        Returns:
            (what the journal did: its reply is ``reply`` with "recorded" and "duplicates"; the events
            journaled now: none when ``write_id`` was journaled before).
        """
        ...

    def events(self, after: int = 0, upto: int | None = None) -> Iterator[tuple[int, Interaction]]:
        """(seq, interaction) with ``after < seq <= upto``, in order, read a page at a time."""
        ...

    def last_event(self) -> int: ...

    def user_events(self, user_id: str, limit: int) -> list[Interaction]:
        """A user's ``limit`` most recently recorded interactions, newest first."""
        ...

    def close(self) -> None: ...


def _no_room(path: Path) -> str | None:
    """Why the journal at ``path`` cannot grow, if that is why a write failed, else None.

    SQLite reports a write the kernel refused for room as SQLITE_FULL or as a plain "disk I/O error"
    (EFBIG from a file size limit comes back that way), so the cause is read off the system.
    """
    sizes = [p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and sizes and max(sizes) + ROOM_MARGIN >= soft:
        return f"the process's file size limit ({soft} bytes) is reached"
    free = shutil.disk_usage(path.parent).free
    if free < ROOM_MARGIN:
        return f"no space left on its file system ({free} bytes free)"
    return None


def _sqlite_error(path: Path, err: sqlite3.Error) -> JournalError:
    """The JournalError for an sqlite3 error on the journal at ``path``."""
    text = str(err)
    if isinstance(err, sqlite3.OperationalError) and ("disk is full" in text or "disk I/O" in text):
        cause = _no_room(path)
        if cause or "disk is full" in text:
            return JournalFull(f"{path}: no room to write the catalogue journal: {cause or text}")
    if "readonly" in text or "read-only" in text:
        return JournalReadOnly(f"{path}: the catalogue journal cannot be written ({text})")
    if "unable to open" in text:
        return JournalReadOnly(f"{path}: the catalogue journal cannot be opened for writing ({text})")
    return JournalError(f"{path}: catalogue journal error ({text})")


class SQLiteStore:
    """The journal in ``state_dir/catalog.sqlite``.

    One connection guarded by a lock: sqlite3 connections must not be used by two threads at once,
    and the server's writes are serialised anyway (holder.py), so a pool would buy nothing.

    Raises:
        JournalReadOnly: the folder or the file cannot be written (checked at open, not at the first
            write: a server must not report a durable catalogue it cannot write).
    """

    def __init__(self, state_dir: Path | str):
        self.path = Path(state_dir) / JOURNAL_FILE
        self.url = f"sqlite:///{self.path}"
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise JournalReadOnly(
                f"{self.path.parent}: cannot create the state folder ({err.strerror})"
            ) from None
        for p in (self.path.parent, self.path):
            # os.access is True for root whatever the mode; the probe write below catches the rest.
            if p.exists() and not os.access(p, os.W_OK):
                raise JournalReadOnly(f"{p}: the catalogue journal cannot be written (permission denied)")
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so an OK is never ahead of the disk.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._probe()
        except sqlite3.Error as err:
            raise _sqlite_error(self.path, err) from None

    def _probe(self) -> None:
        """A write that changes nothing, so a read-only file fails here rather than on the first OK."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM writes WHERE write_id = ''")
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        # A failed COMMIT (disk full) may already have rolled back: never let "cannot rollback - no
        # transaction is active" hide the error that matters.
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _once(self, write_id: str, body: Callable) -> tuple[Journaled, object]:
        """Runs ``body(cursor)`` in one durable transaction recorded under ``write_id``. ``body`` writes
        its rows and returns (its last sequence number, the reply to keep, anything for the caller).
        A write id the journal holds runs nothing: (its first application's seq and reply, None)."""
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    if write_id:
                        found = cur.execute(
                            "SELECT seq, reply FROM writes WHERE write_id = ?", (write_id,)
                        ).fetchone()
                        if found is not None:
                            cur.execute("COMMIT")
                            return Journaled(int(found[0]), json.loads(found[1])), None
                    seq, keep, extra = body(cur)
                    if write_id:
                        cur.execute(
                            "INSERT INTO writes (write_id, seq, reply, at) VALUES (?, ?, ?, ?)",
                            (write_id, seq, encode_reply(keep), time.time()),
                        )
                    cur.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.Error as err:
                raise _sqlite_error(self.path, err) from None
            return Journaled(seq), extra

    def _write(self, rows: list[tuple], write_id: str, reply: Mapping | None) -> Journaled:
        def body(cur):
            cur.executemany(f"INSERT INTO changes ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            return int(cur.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]), reply, None

        return self._once(write_id, body)[0]

    def upsert(
        self, items: Sequence[NewItemData], write_id: str = "", reply: Mapping | None = None
    ) -> Journaled:
        return self._write(upsert_rows(items), write_id, reply)

    def record(
        self, events: Sequence[Interaction], write_id: str = "", reply: Mapping | None = None
    ) -> tuple[Journaled, list[Interaction]]:
        def body(cur):
            ids = [e.event_id for e in events if e.event_id]
            known = set()
            for k in range(0, len(ids), 500):  # SQLite's bound on host parameters
                part = ids[k : k + 500]
                query = f"SELECT event_id FROM interactions WHERE event_id IN ({','.join('?' * len(part))})"
                known.update(r[0] for r in cur.execute(query, part))
            kept = fresh_events(events, known)
            cur.executemany(
                f"INSERT INTO interactions ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", event_rows(kept)
            )
            seq = int(cur.execute("SELECT COALESCE(MAX(seq), 0) FROM interactions").fetchone()[0])
            return seq, recorded_reply(reply, len(events), len(kept)), kept

        done, kept = self._once(write_id, body)
        return done, kept or []

    def events(self, after: int = 0, upto: int | None = None) -> Iterator[tuple[int, Interaction]]:
        query = (
            f"SELECT seq, {EVENT_COLUMNS} FROM interactions WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
        )
        upto = self.last_event() if upto is None else upto
        while after < upto:
            with self._lock:
                rows = self._db.execute(query, (after, upto, PAGE_ROWS)).fetchall()
            if not rows:
                return
            yield from map(as_event, rows)
            after = int(rows[-1][0])

    def user_events(self, user_id: str, limit: int) -> list[Interaction]:
        query = f"SELECT seq, {EVENT_COLUMNS} FROM interactions WHERE user_id = ? ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (user_id, limit)).fetchall()
        return [e for _, e in map(as_event, rows)]

    def last_event(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM interactions").fetchone()[0])

    def delete(self, item_ids: Sequence[str], write_id: str = "", reply: Mapping | None = None) -> Journaled:
        return self._write(delete_rows(item_ids), write_id, reply)

    def changes(self, after: int = 0, upto: int | None = None) -> Iterator[Change]:
        query = f"SELECT seq, {COLUMNS} FROM changes WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
        upto = self.last_seq() if upto is None else upto
        while after < upto:
            with self._lock:
                rows = self._db.execute(query, (after, upto, PAGE_ROWS)).fetchall()
            if not rows:
                return
            yield from map(as_change, rows)
            after = int(rows[-1][0])

    def last_seq(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM changes").fetchone()[0])

    def compact(self, keep_delete: Callable[[str], bool] | None = None) -> tuple[int, int]:
        with self._lock:
            before = self._db.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # An item's latest change says everything: replaying it alone gives the same catalogue.
                self._db.execute(
                    "DELETE FROM changes WHERE seq NOT IN (SELECT MAX(seq) FROM changes GROUP BY item_id)"
                )
                purge = purgeable_deletes(
                    self._db.execute("SELECT seq, op, item_id FROM changes WHERE op = 'delete'"), keep_delete
                )
                self._db.executemany("DELETE FROM changes WHERE seq = ?", [(s,) for s in purge])
                self._db.execute("DELETE FROM writes WHERE at < ?", (time.time() - WRITE_ID_RETENTION_S,))
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
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
