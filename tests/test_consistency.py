"""Replicas on one journal mean the same thing by a write (server/api/holder.py, server/catalog/store*.py):
a delete that overtakes the upsert it removes, a retry whose first answer was lost, and PostgreSQL
going away, frozen or down at start — against real servers and a real PostgreSQL."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from pipeline import running_server
from postgres import fresh_database, postgres_server

from towerserve.clients.client import ItemData, RecommenderClient, RetryPolicy, TowerserveError
from towerserve.server.catalog.store_pg import PgTimeouts

CATEGORY = "consistency"


def _item(name: str, price: float = 5.0) -> ItemData:
    return ItemData(name, f"{name} described", "feature words", price, CATEGORY)


def _target(running) -> str:
    return f"127.0.0.1:{running.port}"


def _served(client: RecommenderClient, user: str, top_n: int = 50) -> set[str]:
    got = client.recommend(user, top_n=top_n, categories=[CATEGORY])
    return {i.item_id for i in got.items}


def _until(condition, seconds: float, what: str) -> float:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < seconds, what
        time.sleep(0.02)
    return time.monotonic() - t0


def test_a_delete_through_a_lagging_replica_wins_everywhere(serving, journal):
    """Upsert X via A; delete X via B before B's follower has seen the upsert. B holds no X, yet the
    delete is journaled after the upsert, so X ends deleted on both, and after both restart."""
    with (
        running_server(serving, **journal) as a,
        running_server(serving, **journal) as b,
        RecommenderClient(_target(a)) as ca,
        RecommenderClient(_target(b)) as cb,
    ):
        user = a.holder.get().user_ids[0]
        b.holder.following.clear()  # B lags: it applies nothing others write
        assert ca.upsert_items([_item("x")]).inserted == 1
        assert "x" in _served(ca, user) and "x" not in _served(cb, user)
        gone = cb.delete_items(["x"])
        assert gone.deleted == 0 and gone.sequence > 0  # B did not hold it, and journaled it anyway
        b.holder.following.set()
        _until(lambda: "x" not in _served(ca, user), 2.0, "A still serves x")
        time.sleep(0.6)  # B's follower has replayed A's upsert and its own delete, in journal order
        assert "x" not in _served(cb, user)
    with (
        running_server(serving, **journal) as a,
        running_server(serving, **journal) as b,
        RecommenderClient(_target(a)) as ca,
        RecommenderClient(_target(b)) as cb,
    ):
        assert "x" not in _served(ca, user) and "x" not in _served(cb, user)


class _LoseFirstReply(grpc.UnaryUnaryClientInterceptor):
    """Lets the first call of ``method`` reach the server and commit, runs ``meanwhile`` (another
    client's write), then loses the reply: the caller sees UNAVAILABLE and its client retries."""

    def __init__(self, method: str, meanwhile):
        self.method, self.meanwhile, self.lost = method, meanwhile, []

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        if details.method.endswith("/" + self.method) and not self.lost:
            outcome.result()  # committed on the server
            self.lost.append(request.write_id)
            self.meanwhile()
            raise _Lost()
        return outcome


class _Lost(grpc.RpcError, grpc.Call):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "reply lost (test)"

    def initial_metadata(self):
        return ()

    def trailing_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


@pytest.mark.parametrize("write", ["delete", "upsert"])
def test_a_retried_write_never_undoes_a_newer_one(serving, journal, write):
    """A's write commits and its reply is lost; B writes the same item; A's client retries (same write
    id, through the other replica): the retry is answered from the journal and B's write stands."""
    retry = RetryPolicy(attempts=3, initial_backoff=0.05, max_backoff=0.05)
    both = None
    with (
        running_server(serving, **journal) as a,
        running_server(serving, **journal) as b,
        RecommenderClient(_target(a)) as ca,
        RecommenderClient(_target(b)) as cb,
    ):
        user = a.holder.get().user_ids[0]
        cb.upsert_items([_item("x", 1.0)])
        _until(lambda: "x" in _served(ca, user), 2.0, "A never served x")
        both = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"  # each try may reach either replica
        if write == "delete":
            lose = _LoseFirstReply("DeleteItems", lambda: cb.upsert_items([_item("x", 2.0)]))
            with RecommenderClient(both, retry=retry, interceptors=[lose]) as client:
                got = client.delete_items(["x"])
            assert got.repeated and got.deleted == 1  # the first application's reply
        else:
            lose = _LoseFirstReply("UpsertItems", lambda: cb.delete_items(["x"]))
            with RecommenderClient(both, retry=retry, interceptors=[lose]) as client:
                got = client.upsert_items([_item("x", 3.0)])
            assert got.repeated and got.updated == 1
        assert len(lose.lost) == 1 and lose.lost[0]
        time.sleep(0.6)  # both followers have applied everything
        for c in (ca, cb):
            served = {i.item_id: i.price for i in c.recommend(user, top_n=50, categories=[CATEGORY]).items}
            # B's newer write stands: x upserted again at price 2 after the delete, or x deleted.
            assert served.get("x") == (2.0 if write == "delete" else None), served


def test_a_bad_write_id_is_invalid_argument(serving):
    with running_server(serving) as running, RecommenderClient(_target(running)) as c:
        for bad in ("x" * 129, "tab\tinside", "é"):
            with pytest.raises(TowerserveError) as err:
                c.upsert_items([_item("y")], write_id=bad)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "write_id" in err.value.details
        with pytest.raises(TowerserveError) as err:
            c.upsert_items([ItemData("nul", "a\x00b", "f", 1.0, CATEGORY)])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in err.value.details
        # Without a journal a retry is still recognised, by this process.
        first = c.upsert_items([_item("y")], write_id="same")
        again = c.upsert_items([_item("y", 9.0)], write_id="same")
        assert not first.repeated and again.repeated and again.inserted == first.inserted == 1


@pytest.mark.parametrize("journal", ["sqlite", "none"], indirect=False)
def test_a_write_id_names_one_call(serving, tmp_path, journal):
    """A DeleteItems sent with an UpsertItems' write_id (and the other way round) is refused, naming
    the first call, and applies nothing: answering it with the upsert's reply would say it deleted."""
    where = {"state_dir": tmp_path / "state"} if journal == "sqlite" else {}
    with running_server(serving, **where) as running, RecommenderClient(_target(running)) as c:
        user = running.holder.get().user_ids[0]
        assert c.upsert_items([_item("kept")], write_id="put-1").inserted == 1
        with pytest.raises(TowerserveError) as err:
            c.delete_items(["kept"], write_id="put-1")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "UpsertItems" in err.value.details and "put-1" in err.value.details
        assert "kept" in _served(c, user)
        assert c.delete_items(["kept"], write_id="del-1").deleted == 1
        with pytest.raises(TowerserveError) as err:
            c.upsert_items([_item("kept")], write_id="del-1")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "DeleteItems" in err.value.details
        assert "kept" not in _served(c, user)
        assert c.delete_items(["kept"], write_id="del-1").repeated  # its own retry still answers OK


FAST = PgTimeouts(connect_s=1.0, acquire_s=1.0, lock_s=1.0, statement_s=2.0, operation_s=3.0)


def _info(running):
    return running.holder.info()


def test_postgres_stopped_under_load_then_back(serving):
    """Reads never fail while PostgreSQL is down; writes fail UNAVAILABLE within their deadline, and
    succeed within 5 s of its return, with no restart of the server; the outage is one log line each
    way, and GetModelInfo says whether the journal is reachable."""
    with postgres_server() as pg:
        url = fresh_database(pg.url)
        with running_server(serving, catalog_url=url) as a, RecommenderClient(_target(a), timeout=5) as c:
            user = a.holder.get().user_ids[0]
            c.upsert_items([_item("before")])
            failures: list[BaseException] = []
            stop = threading.Event()

            def read() -> None:
                while not stop.is_set():
                    try:
                        c.recommend(user, top_n=5)
                    except BaseException as err:  # every failure reaches the test
                        failures.append(err)

            readers = [threading.Thread(target=read) for _ in range(2)]
            for t in readers:
                t.start()
            try:
                pg.stop()
                _until(lambda: not c.model_info().journal_reachable, 5.0, "outage not noticed")
                t0 = time.monotonic()
                with pytest.raises(TowerserveError) as err:
                    c.upsert_items([_item("during")], timeout=2.0)
                assert err.value.code == grpc.StatusCode.UNAVAILABLE, err.value.details
                assert time.monotonic() - t0 < 2.0
                assert "password" not in err.value.details
                pg.start()
                back = _until(lambda: _write_ok(c, "after"), 5.0, "writes did not come back within 5 s")
                assert back < 5.0
                _until(lambda: c.model_info().journal_reachable, 2.0, "still reported unreachable")
            finally:
                stop.set()
                for t in readers:
                    t.join()
            assert failures == []
            assert {"before", "after"} <= _served(c, user) and "during" not in _served(c, user)


def _write_ok(client: RecommenderClient, name: str) -> bool:
    try:
        client.upsert_items([_item(name)], timeout=2.0)
        return True
    except TowerserveError as err:
        assert err.code == grpc.StatusCode.UNAVAILABLE, err.details
        return False


def test_a_server_started_while_postgres_is_down_serves_reads_then_replays(serving):
    with postgres_server() as pg:
        url = fresh_database(pg.url)
        with running_server(serving, catalog_url=url) as a, RecommenderClient(_target(a)) as c:
            c.upsert_items([_item("journaled")])
        pg.stop()
        with running_server(serving, catalog_url=url) as a, RecommenderClient(_target(a)) as c:
            user = a.holder.get().user_ids[0]
            assert len(c.recommend(user, top_n=5).items) == 5  # reads, from the bundle
            assert not c.model_info().journal_reachable
            with pytest.raises(TowerserveError) as err:
                c.upsert_items([_item("refused")])
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
            pg.start()
            _until(lambda: "journaled" in _served(c, user), 5.0, "the journal was not replayed")
            assert c.model_info().journal_reachable and c.model_info().journal_behind == 0


def test_a_frozen_lock_holder_stalls_no_other_writer_past_the_lock_timeout(postgres_url):
    """A replica's session frozen mid-transaction, holding the writers' lock (a partition, or a paused
    VM): another replica's write waits the lock timeout, then fails UNAVAILABLE, not for hours."""
    import os
    import signal

    import psycopg

    from towerserve.server.catalog.store import JournalUnavailable
    from towerserve.server.catalog.store_pg import _LOCK_KEY, PostgresStore
    from towerserve.server.core.types import NewItemData

    url = fresh_database(postgres_url)
    other = PostgresStore(url, FAST)
    item = NewItemData("x", "d", "f", 1.0, "c")
    other.upsert([item])  # schema in place
    holder = psycopg.connect(url, autocommit=True)
    holder.execute("BEGIN")
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(JournalUnavailable) as err:
            other.upsert([item])
        waited = time.monotonic() - t0
        assert FAST.lock_s * 0.9 < waited < FAST.lock_s + 2.0, (
            waited
        )  # the lock timeout, plus a loaded machine
        assert "lock" in str(err.value).lower()
    finally:
        os.kill(pid, signal.SIGCONT)
        holder.close()
    assert other.upsert([item]).seq > 1  # the lock was freed with its session
    other.close()


def test_a_frozen_database_fails_writes_within_the_watchdog(serving):
    """The whole server frozen (SIGSTOP): nothing server-side can time out, so our watchdog does;
    writes fail UNAVAILABLE within the operation bound and reads go on."""
    with postgres_server() as pg:
        url = fresh_database(pg.url)
        from towerserve.server.catalog.store import JournalUnavailable
        from towerserve.server.catalog.store_pg import PostgresStore
        from towerserve.server.core.types import NewItemData

        store = PostgresStore(url, FAST)
        item = NewItemData("x", "d", "f", 1.0, "c")
        store.upsert([item])
        pg.freeze()
        try:
            t0 = time.monotonic()
            with pytest.raises(JournalUnavailable):
                store.upsert([item])
            assert time.monotonic() - t0 < FAST.operation_s + FAST.acquire_s + 1.0
        finally:
            pg.thaw()
        _until(lambda: _store_ok(store, item), 5.0, "writes did not come back after the thaw")
        store.close()


def _store_ok(store, item) -> bool:
    from towerserve.server.catalog.store import JournalError

    try:
        store.upsert([item])
        return True
    except JournalError:
        return False


def test_a_large_catch_up_keeps_the_candidate_lists(serving, tmp_path):
    """A replica catching up on hundreds of another's upserts patches (or rebuilds off to the side) its
    candidate lists: no snapshot without them is ever published, so known users never drop to the
    slow path, and its own write made during the catch-up stands over the journal's older one."""
    journal = {"state_dir": tmp_path / "state"}
    with (
        running_server(serving, **journal) as a,
        running_server(serving, **journal) as b,
        RecommenderClient(_target(a)) as ca,
        RecommenderClient(_target(b)) as cb,
    ):
        user = b.holder.get().user_ids[0]
        assert b.holder.get().catalog.cand_rows is not None  # the bundle serves known users from lists
        b.holder.following.clear()
        limit = ca.model_info().max_upsert_items
        names = [f"bulk-{k}" for k in range(300)]
        for start in range(0, len(names), limit):
            ca.upsert_items([_item(n) for n in names[start : start + limit]])
        ca.upsert_items([_item("contested", 1.0)])
        dropped: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                if b.holder.get().catalog.cand_rows is None:
                    dropped.append(1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            b.holder.following.set()
            cb.upsert_items([_item("contested", 7.0)])  # ours, newer than A's, while B catches up
            _until(
                lambda: b.holder.behind == 0 and b.holder.applied >= b.holder.journal_head,
                10.0,
                "no catch-up",
            )
            _until(
                lambda: len(_served(cb, user, 400) & set(names)) == len(names), 5.0, "bulk items missing on B"
            )
        finally:
            stop.set()
            watcher.join()
        assert dropped == []
        prices = {i.item_id: i.price for i in cb.recommend(user, top_n=400, categories=[CATEGORY]).items}
        assert prices["contested"] == 7.0
