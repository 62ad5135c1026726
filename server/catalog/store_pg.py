"""The catalogue journal in PostgreSQL (psycopg 3 and psycopg_pool): one journal shared by replicas.

Same interface and semantics as the SQLite store (store.py: CatalogStore, write ids included). Each
replica writes its changes here before acknowledging them, and follows the others' by polling the
sequence (holder.py: every 0.25 s), so a change made through any replica is served by all within a
second.

Sequence numbers must appear in commit order, or a follower that has read up to seq 11 could
miss a seq 10 that commits later. Every write therefore takes one transaction-scoped advisory lock
before inserting, so writers across replicas commit one at a time, in sequence order. Catalogue
writes are rare next to reads, and each is one short transaction, so the lock costs little.

**Outages.** Connections come from a small pool that reconnects in the background with backoff,
so a database restart costs the writes made while it is down (JournalUnavailable: the server answers
UNAVAILABLE) and nothing after. Every session runs with ``lock_timeout`` (a writer waits at most that
long for another replica's lock: a replica partitioned mid-transaction cannot stall the others for
the ~2 hours TCP would take to notice), ``statement_timeout`` and
``idle_in_transaction_session_timeout`` (the server frees a lock whose holder went silent), TCP
keepalives and ``tcp_user_timeout`` (a dead peer is noticed in seconds). One thing no server-side
timeout covers is a database that stops answering altogether (a frozen host): the kernel still
accepts our bytes, so each operation also has a client-side watchdog that shuts the socket down
after :attr:`PgTimeouts.operation_s`, failing the call instead of hanging a writer. Opening the store
never waits for the database: the schema is created on the first successful use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..core.secrets import redact
from ..core.types import Interaction, NewItemData
from .store import (
    COLUMNS,
    EVENT_COLUMNS,
    PAGE_ROWS,
    WRITE_ID_RETENTION_S,
    Change,
    Journaled,
    JournalError,
    JournalUnavailable,
    as_change,
    as_event,
    delete_rows,
    encode_reply,
    event_rows,
    fresh_events,
    purgeable_deletes,
    recorded_reply,
    upsert_rows,
)

_LOGGER = logging.getLogger(__name__)

TABLE = "towerserve_catalog_changes"
WRITES = "towerserve_catalog_writes"
EVENTS = "towerserve_interactions"
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
CREATE TABLE IF NOT EXISTS {WRITES} (
    write_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    reply TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {EVENTS} (
    seq BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    weight DOUBLE PRECISION NOT NULL,
    event_id TEXT,
    recorded_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS {EVENTS}_event ON {EVENTS} (event_id) WHERE event_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS {EVENTS}_user ON {EVENTS} (user_id, seq);
"""


@dataclass(frozen=True)
class PgTimeouts:
    """Seconds each wait on the database may take (see the module docstring for why each exists).

    Attributes:
        connect_s: establishing a connection (libpq ``connect_timeout``).
        acquire_s: waiting for a pooled connection while the pool reconnects.
        lock_s: waiting for the writers' advisory lock or a row lock (``lock_timeout``).
        statement_s: one statement (``statement_timeout``); also bounds an idle transaction.
        operation_s: one whole operation, enforced on our side (a frozen server answers nothing).
        keepalive_s: TCP keepalive idle time; probes follow every second, 3 of them.
    """

    connect_s: float = 3.0
    acquire_s: float = 2.0
    lock_s: float = 2.0
    statement_s: float = 5.0
    operation_s: float = 8.0
    keepalive_s: int = 5

    def connection_kwargs(self) -> dict:
        ms = lambda s: int(s * 1000)  # noqa: E731
        return {
            "autocommit": True,
            "connect_timeout": max(1, round(self.connect_s)),
            "keepalives": 1,
            "keepalives_idle": self.keepalive_s,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": ms(self.operation_s),
            "options": (
                f"-c lock_timeout={ms(self.lock_s)} -c statement_timeout={ms(self.statement_s)} "
                f"-c idle_in_transaction_session_timeout={ms(self.operation_s)}"
            ),
        }


class _Watchdog:
    """Shuts ``conn``'s socket down if the block it guards outlasts ``seconds``, so a read blocked on a
    server that answers nothing returns (with an OperationalError); ``fired`` says it did."""

    def __init__(self, conn, seconds: float):
        self.conn, self.fired = conn, False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError, ValueError):
            fd = self.conn.pgconn.socket
            # A duplicate of the descriptor: shutdown acts on the socket itself, close only on the copy.
            with socket.socket(fileno=socket.dup(fd)) as s:
                s.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


class PostgresStore:
    """The journal in table ``towerserve_catalog_changes`` of the database at ``url``.

    Args:
        url: a ``postgresql://`` URL (libpq's forms; a password in it never reaches a log or error).
            Opening never waits for the database: the server starts, and serves reads, while it is down.
        timeouts: see :class:`PgTimeouts`.
        pool_size: connections at most (writes are serialised by holder.py; the rest are the
            follower's polls and GetModelInfo, so a few suffice).
    """

    def __init__(self, url: str, timeouts: PgTimeouts = PgTimeouts(), pool_size: int = 3):
        import psycopg
        from psycopg_pool import ConnectionPool

        try:  # a malformed URL is a configuration error, said at start and without its password
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as err:
            raise ValueError(
                f"--catalog-url is not a valid PostgreSQL URL: {redact(str(err), url)}"
            ) from None
        self.url = redact(url, url)
        self._redact = lambda text: redact(text, url)  # noqa: E731  (the raw URL stays in here only)
        self.timeouts = timeouts
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        # open=False then open(wait=False): the pool connects in the background, so a server starts
        # (and serves reads) while the database is down, and reconnects with backoff after an outage.
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs=timeouts.connection_kwargs(),
            open=False,
            timeout=timeouts.acquire_s,
            # The pool's backoff doubles without bound (measured: 25 s to the first write after a 30 s
            # outage). Giving up after a few seconds ends a backoff; the next request then grows the
            # pool with a fresh attempt, so a write succeeds as soon as the database is back.
            reconnect_timeout=3.0,
            name="towerserve-journal",
        )
        self._pool.open(wait=False)
        # The pool warns at every failed attempt; the server logs one line per outage instead (holder.py).
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

    # ------------------------------------------------------------------------------- connections

    @contextlib.contextmanager
    def _connection(self) -> Iterator:
        """A live pooled connection with the schema in place, watched for the whole operation.

        Raises:
            JournalUnavailable: no connection within the acquire timeout, or the database failed the
                operation for a reason of its own (gone, restarting, timed out, frozen).
        """
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            conn = self._live()
            try:
                with _Watchdog(conn, self.timeouts.operation_s):
                    self._ensure_schema(conn)
                    yield conn
            finally:
                self._pool.putconn(conn)  # a broken one is closed there, and replaced in the background
        except PoolTimeout:
            raise JournalUnavailable(f"{self.url}: the catalogue database cannot be reached") from None
        except psycopg.errors.DataError as err:  # the request's fault (validation should have caught it)
            raise JournalError(
                f"{self.url}: the database refused the data ({self._redact(str(err))})"
            ) from None
        except psycopg.Error as err:
            raise JournalUnavailable(
                f"{self.url}: the catalogue database failed ({type(err).__name__}: {self._redact(str(err)).strip()})"
            ) from None

    def _live(self):
        """A pooled connection that answers: one a database restart broke fails an empty query (under
        the watchdog, which a frozen server needs) and is handed back for the pool to replace, and
        the next one is tried. The pool's own ``check`` would wait on a frozen server unguarded."""
        import psycopg

        for _ in range(self._pool.max_size + 1):
            conn = self._pool.getconn()
            try:
                with _Watchdog(conn, self.timeouts.operation_s) as watchdog:
                    conn.execute("")
                return conn
            except psycopg.OperationalError:
                self._pool.putconn(conn)
                if watchdog.fired:  # not a stale connection: a server that answers nothing
                    raise JournalUnavailable(
                        f"{self.url}: the catalogue database did not answer within "
                        f"{self.timeouts.operation_s:g} s"
                    ) from None
        return self._pool.getconn()  # every pooled one was stale: a fresh one (or PoolTimeout)

    def _ensure_schema(self, conn) -> None:
        if self._schema_ready:
            return
        with self._schema_lock, conn.transaction():
            # Replicas starting together race to create the tables: the advisory lock orders them.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(_SCHEMA)
        self._schema_ready = True

    def reachable(self) -> bool:
        """Whether the database answers now (within the acquire timeout)."""
        try:
            with self._connection() as conn:
                conn.execute("SELECT 1")
            return True
        except JournalError:
            return False

    # ------------------------------------------------------------------------------------ writes

    def _once(self, write_id: str, body: Callable) -> tuple[Journaled, object]:
        """As the SQLite store's: ``body(conn)`` in one transaction under the writers' lock (sequence
        numbers appear in commit order), recorded under ``write_id``; a repeat runs nothing."""
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            if write_id:
                found = conn.execute(
                    f"SELECT seq, reply FROM {WRITES} WHERE write_id = %s", (write_id,)
                ).fetchone()
                if found is not None:
                    return Journaled(int(found[0]), json.loads(found[1])), None
            seq, keep, extra = body(conn)
            if write_id:
                conn.execute(
                    f"INSERT INTO {WRITES} (write_id, seq, reply, at) VALUES (%s, %s, %s, %s)",
                    (write_id, seq, encode_reply(keep), time.time()),
                )
            return Journaled(seq), extra

    def _write(self, rows: list[tuple], write_id: str, reply: Mapping | None) -> Journaled:
        def body(conn):
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
            return int(conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {TABLE}").fetchone()[0]), reply, None

        return self._once(write_id, body)[0]

    def upsert(
        self, items: Sequence[NewItemData], write_id: str = "", reply: Mapping | None = None
    ) -> Journaled:
        return self._write(upsert_rows(items), write_id, reply)

    def delete(self, item_ids: Sequence[str], write_id: str = "", reply: Mapping | None = None) -> Journaled:
        return self._write(delete_rows(item_ids), write_id, reply)

    def record(
        self, events: Sequence[Interaction], write_id: str = "", reply: Mapping | None = None
    ) -> tuple[Journaled, list[Interaction]]:
        def body(conn):
            ids = [e.event_id for e in events if e.event_id]
            known = set()
            if ids:
                rows = conn.execute(
                    f"SELECT event_id FROM {EVENTS} WHERE event_id = ANY(%s)", (ids,)
                ).fetchall()
                known = {r[0] for r in rows}
            kept = fresh_events(events, known)
            with conn.cursor() as cur:
                insert = f"INSERT INTO {EVENTS} ({EVENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                cur.executemany(insert, event_rows(kept))
            seq = int(conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {EVENTS}").fetchone()[0])
            return seq, recorded_reply(reply, len(events), len(kept)), kept

        done, kept = self._once(write_id, body)
        return done, kept or []

    def events(self, after: int = 0, upto: int | None = None) -> Iterator[tuple[int, Interaction]]:
        query = (
            f"SELECT seq, {EVENT_COLUMNS} FROM {EVENTS} WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s"
        )
        upto = self.last_event() if upto is None else upto
        while after < upto:
            with self._connection() as conn:
                rows = conn.execute(query, (after, upto, PAGE_ROWS)).fetchall()
            if not rows:
                return
            yield from map(as_event, rows)
            after = int(rows[-1][0])

    def user_events(self, user_id: str, limit: int) -> list[Interaction]:
        query = f"SELECT seq, {EVENT_COLUMNS} FROM {EVENTS} WHERE user_id = %s ORDER BY seq DESC LIMIT %s"
        with self._connection() as conn:
            rows = conn.execute(query, (user_id, limit)).fetchall()
        return [e for _, e in map(as_event, rows)]

    def last_event(self) -> int:
        with self._connection() as conn:
            return int(conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {EVENTS}").fetchone()[0])

    # ------------------------------------------------------------------------------------- reads

    def changes(self, after: int = 0, upto: int | None = None) -> Iterator[Change]:
        query = f"SELECT seq, {COLUMNS} FROM {TABLE} WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s"
        upto = self.last_seq() if upto is None else upto
        while after < upto:
            with self._connection() as conn:
                rows = conn.execute(query, (after, upto, PAGE_ROWS)).fetchall()
            if not rows:
                return
            yield from map(as_change, rows)
            after = int(rows[-1][0])

    def last_seq(self) -> int:
        with self._connection() as conn:
            return int(conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {TABLE}").fetchone()[0])

    def count(self) -> int:
        with self._connection() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])

    def compact(self, keep_delete: Callable[[str], bool] | None = None) -> tuple[int, int]:
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            before = conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]
            conn.execute(
                f"DELETE FROM {TABLE} WHERE seq NOT IN (SELECT MAX(seq) FROM {TABLE} GROUP BY item_id)"
            )
            rows = conn.execute(f"SELECT seq, op, item_id FROM {TABLE} WHERE op = 'delete'").fetchall()
            purge = purgeable_deletes(rows, keep_delete)
            if purge:
                conn.execute(f"DELETE FROM {TABLE} WHERE seq = ANY(%s)", (purge,))
            conn.execute(f"DELETE FROM {WRITES} WHERE at < %s", (time.time() - WRITE_ID_RETENTION_S,))
            after = conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]
        return int(before), int(after)

    def close(self) -> None:
        self._pool.close(timeout=5)


__all__ = ["PgTimeouts", "PostgresStore"]
