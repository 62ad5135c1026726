"""The catalogue journal in PostgreSQL (psycopg 3): one journal shared by every replica.

Same interface and semantics as the SQLite store (store.py: CatalogStore). Each replica writes its
changes here before acknowledging them, and follows the others' by polling the sequence
(holder.py: every 0.25 s), so a change made through any replica is served by all within a second.

Sequence numbers must appear in commit order, or a follower that has read up to seq 11 could
miss a seq 10 that commits later. Every write therefore takes one transaction-scoped advisory lock
before inserting, so writers across replicas commit one at a time, in sequence order. Catalogue
writes are rare next to reads, and each is one short transaction, so the lock costs little.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence

from ..core.types import NewItemData
from .store import COLUMNS, Change, as_change, delete_rows, upsert_rows

TABLE = "towerserve_catalog_changes"
_LOCK_KEY = 0x746F7765  # "towe": the advisory lock that orders writers

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq BIGSERIAL PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    item_id TEXT NOT NULL,
    description TEXT,
    features TEXT,
    price DOUBLE PRECISION,
    category TEXT,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_item ON {TABLE} (item_id, seq);
"""


class PostgresStore:
    """The journal in table ``towerserve_catalog_changes`` of the database at ``url``.

    One connection guarded by a lock (a psycopg connection serialises its own use anyway, and the
    server's writes are serialised by holder.py); autocommit, with explicit transactions for writes.
    """

    def __init__(self, url: str):
        import psycopg

        self.url = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)  # for logs: never the password
        self._lock = threading.Lock()
        self._db = psycopg.connect(url, autocommit=True)
        with self._db.transaction():
            # Replicas starting together race to create the table: the advisory lock orders them.
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            self._db.execute(_SCHEMA)

    def _write(self, rows: list[tuple]) -> int:
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            with self._db.cursor() as cur:
                cur.executemany(f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
            return int(self._db.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {TABLE}").fetchone()[0])

    def upsert(self, items: Sequence[NewItemData]) -> int:
        return self._write(upsert_rows(items))

    def delete(self, item_ids: Sequence[str]) -> int:
        return self._write(delete_rows(item_ids))

    def changes(self, after: int = 0, upto: int | None = None) -> Iterator[Change]:
        query = f"SELECT seq, {COLUMNS} FROM {TABLE} WHERE seq > %s"
        args: tuple = (after,)
        if upto is not None:
            query += " AND seq <= %s"
            args += (upto,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        yield from map(as_change, rows)

    def last_seq(self) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {TABLE}").fetchone()[0])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])

    def compact(self) -> tuple[int, int]:
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            before = self._db.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]
            self._db.execute(
                f"DELETE FROM {TABLE} WHERE seq NOT IN (SELECT MAX(seq) FROM {TABLE} GROUP BY item_id)"
            )
            after = self._db.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]
        return int(before), int(after)

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["PostgresStore"]
