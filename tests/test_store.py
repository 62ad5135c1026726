"""The catalogue journal, embedded (SQLite, server/catalog/store.py) and shared (a real PostgreSQL server,
server/catalog/store_pg.py): durable order, latest-per-item, compaction, reopening, concurrent readers."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from towerserve.server.catalog.journal import open_store
from towerserve.server.catalog.store import DELETE, UPSERT, SQLiteStore, latest
from towerserve.server.core.types import NewItemData


@pytest.fixture(params=["sqlite", "postgres"])
def reopen(request, tmp_path):
    """A callable opening the same journal again each time it is called (one per backend)."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path)
    from postgres import fresh_database

    url = fresh_database(request.getfixturevalue("postgres_url"))
    return lambda: open_store(url=url)


def _item(item_id: str, price: float = 1.0, description: str = "d") -> NewItemData:
    return NewItemData(item_id, description, "f", price, "c")


def test_changes_come_back_in_order_and_survive_reopening(reopen):
    store = reopen()
    assert store.last_seq() == 0 and store.count() == 0
    s1 = store.upsert([_item("a"), _item("b", 2.0)]).seq
    s2 = store.delete(["a"]).seq
    s3 = store.upsert([_item("a", 3.0, "é ✓ \u202e")]).seq
    assert (s1, s2, s3) == (2, 3, 4)
    store.close()

    again = reopen()
    got = list(again.changes())
    assert [(c.seq, c.op, c.item_id) for c in got] == [
        (1, UPSERT, "a"),
        (2, UPSERT, "b"),
        (3, DELETE, "a"),
        (4, UPSERT, "a"),
    ]
    assert got[1].item == _item("b", 2.0) and got[2].item is None
    assert got[3].item.description == "é ✓ \u202e"
    assert [c.seq for c in again.changes(after=2)] == [3, 4]
    assert [c.seq for c in again.changes(after=1, upto=3)] == [2, 3]


def test_latest_keeps_each_items_last_change_in_journal_order(reopen):
    store = reopen()
    store.upsert([_item("a"), _item("b")])
    store.delete(["b"])
    store.upsert([_item("a", 9.0)])
    store.upsert([_item("c")])
    last = latest(store.changes())
    assert [(c.item_id, c.op) for c in last] == [("b", DELETE), ("a", UPSERT), ("c", UPSERT)]
    assert last[1].item.price == 9.0


def test_compact_leaves_the_same_latest_changes(reopen):
    store = reopen()
    for k in range(5):
        store.upsert([_item("a", float(k)), _item(f"x{k}")])
    store.delete(["x0", "x1"])
    want = [(c.item_id, c.op, c.item) for c in latest(store.changes())]
    assert store.compact() == (12, 6)  # a once, x0..x4 once each
    assert [(c.item_id, c.op, c.item) for c in latest(store.changes())] == want
    assert [(c.item_id, c.op, c.item) for c in store.changes()] == want
    # Sequence numbers keep growing after compaction (AUTOINCREMENT), so replicas never go back.
    assert store.upsert([_item("z")]).seq == 13


def test_the_journal_is_wal_with_full_sync(tmp_path):
    store = SQLiteStore(tmp_path)
    store.upsert([_item("a")])
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # synchronous is per connection: the store's own connection is what writes.
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()


def test_readers_in_other_threads_see_every_committed_write(reopen):
    store = reopen()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read():
        try:
            while not stop.is_set():
                seqs = [c.seq for c in store.changes()]
                assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
                store.count()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    for k in range(50):
        store.upsert([_item(f"i{k}")])
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert store.count() == 50


def test_writers_on_two_connections_commit_in_sequence_order(reopen):
    """Two writers (two replicas) at once, and a follower that reads only past the last sequence
    number it saw (as holder.py does): it must still collect every change, i.e. no change ever
    commits below a sequence number a reader has already seen."""
    a, b, reader = reopen(), reopen(), reopen()
    collected: list[int] = []
    stop = threading.Event()

    def follow():
        while True:
            done = stop.is_set()
            collected.extend(c.seq for c in reader.changes(collected[-1] if collected else 0))
            if done:
                return

    def write(store, tag):
        for k in range(40):
            store.upsert([_item(f"{tag}{k}")])

    writers = [threading.Thread(target=write, args=(s, t)) for s, t in ((a, "a"), (b, "b"))]
    watcher = threading.Thread(target=follow)
    watcher.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    watcher.join()
    assert collected == sorted(c.seq for c in reader.changes())
    assert reader.count() == 80 and len(collected) == 80


def test_open_store_picks_the_backend(tmp_path):
    assert open_store(None) is None
    assert isinstance(open_store(tmp_path / "new" / "dir"), SQLiteStore)
    with pytest.raises(ValueError, match="postgresql://"):
        open_store(url="mysql://somewhere/db")


def _cli(*args: str):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
    cmd = [sys.executable, "-m", "towerserve.clients.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def test_catalog_dump_and_compact_commands(tmp_path):
    import json

    store = SQLiteStore(tmp_path)
    store.upsert([_item("a"), _item("b")])
    store.upsert([_item("a", 2.5, "naïve ✓")])
    store.delete(["b"])
    store.close()
    done = _cli("catalog", "dump", "--state-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["item_id"], r["op"], r["seq"]) for r in rows] == [("a", "upsert", 3), ("b", "delete", 4)]
    assert rows[0]["description"] == "naïve ✓" and rows[0]["price"] == 2.5 and "description" not in rows[1]
    out = tmp_path / "all.jsonl"
    assert _cli("catalog", "dump", "--all", "--state-dir", str(tmp_path), "--out", str(out)).returncode == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4
    done = _cli("catalog", "compact", "--state-dir", str(tmp_path))
    assert done.returncode == 0 and "4 -> 2 changes" in done.stdout, done.stderr
    again = _cli("catalog", "dump", "--all", "--state-dir", str(tmp_path))
    assert [json.loads(line)["seq"] for line in again.stdout.splitlines()] == [3, 4]
    missing = _cli("catalog", "dump", "--state-dir", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no catalogue journal" in missing.stderr
    assert not (tmp_path / "nope").exists()  # a typo never creates an empty journal


def test_a_write_id_is_journaled_once_and_answered_from_the_journal(reopen):
    """A retry of a committed write (same id) journals nothing and gets the first reply back, even
    after another client's newer write of the same item, and after reopening."""
    store = reopen()
    first = store.delete(["a"], "w-1", {"deleted": 1, "item_count": 4})
    newer = store.upsert([_item("a", 2.0)], "w-2", {"inserted": 1, "updated": 0, "item_count": 5})
    retry = store.delete(["a"], "w-1", {"deleted": 0, "item_count": 5})
    assert first.reply is None and newer.reply is None
    assert retry == (first.seq, {"deleted": 1, "item_count": 4})
    assert store.last_seq() == newer.seq  # nothing journaled by the retry
    store.close()
    again = reopen()
    assert again.upsert([_item("a", 9.0)], "w-2").reply == {"inserted": 1, "updated": 0, "item_count": 5}
    assert [(c.op, c.item.price) for c in latest(again.changes())] == [
        (UPSERT, 2.0)
    ]  # the newer write stands
    assert again.delete(["b"], "w-3").reply is None  # a new id is a new write


def test_compaction_purges_deletes_no_bundle_holds(reopen):
    store = reopen()
    store.upsert([_item("a"), _item("b"), _item("c")])
    store.delete(["a", "b", "never-seen"])
    assert store.compact() == (6, 4)  # without a bundle to ask, each id's delete stays
    assert sorted((c.item_id, c.op) for c in store.changes()) == [
        ("a", DELETE),
        ("b", DELETE),
        ("c", UPSERT),
        ("never-seen", DELETE),
    ]
    bundle = {"b"}  # "b" is in a bundle: its delete must still be replayed onto it
    assert store.compact(keep_delete=bundle.__contains__) == (4, 2)
    assert [(c.item_id, c.op) for c in store.changes()] == [("c", UPSERT), ("b", DELETE)]
    assert store.upsert([_item("d")]).seq > 6  # sequence numbers are never reused


def test_catalog_compact_on_postgres_drops_deletes_no_bundle_holds(postgres_url, serving):
    """`towerserve catalog compact --catalog-url ... --artifacts BUNDLE`: a delete of a bundle item stays
    (replaying it removes the item from that bundle), one of an id the bundle lacks goes."""
    from postgres import fresh_database

    from towerserve.server.catalog.cli import bundle_ids

    url = fresh_database(postgres_url)
    in_bundle = sorted(bundle_ids([serving]))[0]
    store = open_store(url=url)
    store.upsert([_item("new")])
    store.delete([in_bundle, "new", "never-seen"])
    store.close()
    done = _cli("catalog", "compact", "--catalog-url", url, "--artifacts", str(serving))
    assert done.returncode == 0 and "4 -> 1 changes" in done.stdout, done.stdout + done.stderr
    dumped = _cli("catalog", "dump", "--all", "--catalog-url", url)
    assert [json.loads(line)["item_id"] for line in dumped.stdout.splitlines()] == [in_bundle]


def test_interactions_are_journaled_once_per_event_id_and_read_back_in_order(reopen):
    from towerserve.server.core.types import Interaction

    store = reopen()
    assert store.last_event() == 0
    first = [Interaction("u1", "a", 10.0, "click", 1.0, "e1"), Interaction("u1", "b", 11.0, "", 2.0, "")]
    done, kept = store.record(first, "w1", {"created_users": 0})
    assert done.reply is None and kept == first and done.seq == 2
    again = [Interaction("u1", "a", 10.0, "click", 1.0, "e1"), Interaction("u2", "a", 12.0, "buy", 1.0, "e2")]
    again += [Interaction("u2", "c", 13.0, "", 1.0, "e2")]  # e2 twice in one batch: the first counts
    done, kept = store.record(again)
    assert [e.event_id for e in kept] == ["e2"] and done.seq == 3
    assert store.record(first, "w1") == ((2, {"created_users": 0, "recorded": 2, "duplicates": 0}), [])
    store.close()
    back = list(reopen().events())
    assert [(s, e.user_id, e.item_id, e.kind, e.weight, e.event_id) for s, e in back] == [
        (1, "u1", "a", "click", 1.0, "e1"),
        (2, "u1", "b", "", 2.0, ""),
        (3, "u2", "a", "buy", 1.0, "e2"),
    ]
    assert [s for s, _ in reopen().events(after=1, upto=2)] == [2]
