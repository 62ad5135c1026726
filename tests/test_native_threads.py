"""Native objects shared by request threads: ONNX Runtime sessions, the FAISS index, the SQLite journal.

Each is hammered by at least 32 callers at once, and the answers are checked, not only the status
codes: a data race in a shared buffer would return a wrong number, not an error. So the ORT paths
are compared with a second server that answered the same requests one at a time, the index with
what its writers did, and the journal with what every thread wrote. (tests/test_concurrency.py
holds the tokenizer regression; this extends it to every native object of the request paths.)
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pipeline
import pytest
from pipeline import running_server

from towerserve.clients.client import ItemData, RecommenderClient, RetryPolicy, TowerserveError, User
from towerserve.server.catalog.index import AnnIndex
from towerserve.server.catalog.store import DELETE, SQLiteStore, latest
from towerserve.server.core.types import NewItemData

CALLERS = 32  # per path
ONCE = RetryPolicy(attempts=1)  # an UNAVAILABLE must show, not be retried away


def together(n: int, fn: Callable[[int], None], timeout: float = 300.0) -> list[str]:
    """Runs ``fn(0..n-1)`` on n threads released at once; returns what they raised."""
    barrier, errors, lock = threading.Barrier(n), [], threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            fn(i)
        except Exception as err:  # noqa: BLE001 - every failure is reported by the caller
            with lock:
                errors.append(f"caller {i}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "callers still running: a deadlock?"
    return errors


def _client(running) -> RecommenderClient:
    return RecommenderClient(f"127.0.0.1:{running.port}", timeout=120, retry=ONCE)


# ------------------------------------------------------------------------------- ONNX Runtime paths


def _user(c: int) -> User:
    """An unseen user whose texts no table or cache holds: every request runs the encoder."""
    return User(
        age=18.0 + c % 90, profession=f"threads profession {c} " + "x" * (c % 7), personality=f"mood {c}"
    )


def _item(c: int, tag: str = "") -> ItemData:
    return ItemData(
        f"nt_{c}{tag}", f"threads description {c}{tag}", f"features {c} " * (1 + c % 5), 5.0 + c, "nt"
    )


def _calls(client: RecommenderClient, c: int, items: list[str], categories: list[str]) -> dict:
    """Caller c's requests on each ORT path; the results that must not depend on concurrency."""
    # Exported categories only: the items upserted meanwhile (category "nt") cannot enter the answer.
    rec = client.recommend(user=_user(c), top_n=5, categories=categories)
    pairs = [(_user(c + 1000), items[(c + k) % len(items)]) for k in range(3)]
    return {"recommend": [(x.item_id, x.score) for x in rec.items], "score": client.score(pairs).scores}


def _write(client: RecommenderClient, c: int) -> None:
    """Encoder + item tower + journal: two new items, then one of them deleted."""
    done = client.upsert_items([_item(c), _item(c, "_gone")])
    assert (done.inserted, done.updated) == (2, 0), done
    assert client.delete_items([f"nt_{c}_gone"]).deleted == 1


def test_ort_sessions_under_32_callers_per_path_answer_as_one_at_a_time(serving, items, tmp_path):
    item_ids = list(items)[:8]
    with running_server(serving, threads=CALLERS, state_dir=tmp_path / "state") as busy:
        with _client(busy) as client:
            categories = client.model_info().categories
        got: dict[int, dict] = {}

        def caller(i: int) -> None:
            c, path = i % CALLERS, i // CALLERS
            with _client(busy) as client:
                if path < 2:  # Recommend and Score of unseen users: encoder + user tower
                    if path == 0:
                        got[c] = _calls(client, c, item_ids, categories)
                    else:
                        client.score([(_user(c + 2000), item_ids[c % len(item_ids)])])
                else:  # UpsertItems and DeleteItems: encoder + item tower + the journal
                    _write(client, c)

        assert together(3 * CALLERS, caller) == []
        with _client(busy) as client:
            new_scores = client.score([(_user(0), f"nt_{c}") for c in range(CALLERS)]).scores
            with pytest.raises(TowerserveError) as err:
                client.score([(_user(0), "nt_0_gone")])
            assert err.value.code.name == "NOT_FOUND"
            assert client.model_info().item_count == len(items) + CALLERS

    with running_server(serving) as quiet, _client(quiet) as client:  # the same requests, one at a time
        want = {c: _calls(client, c, item_ids, categories) for c in range(CALLERS)}
        for c in range(CALLERS):
            _write(client, c)
        want_new = client.score([(_user(0), f"nt_{c}") for c in range(CALLERS)]).scores
    for c in range(CALLERS):
        assert [i for i, _ in got[c]["recommend"]] == [i for i, _ in want[c]["recommend"]], c
        np.testing.assert_allclose(
            [s for _, s in got[c]["recommend"]], [s for _, s in want[c]["recommend"]], atol=1e-6
        )
        np.testing.assert_allclose(got[c]["score"], want[c]["score"], atol=1e-6)
    np.testing.assert_allclose(new_scores, want_new, atol=1e-6)


# ------------------------------------------------------------------------------------------- FAISS


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def _faiss_index(kind: str, vectors: np.ndarray):
    import faiss

    if kind == "flat":
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return index
    from towerserve.export.index import build

    return build(vectors, kind)


SEARCHES = 30  # per searcher: bounded, so the writers finish however the index lock schedules them


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_faiss_index_searched_by_32_threads_while_32_write(kind):
    """Searches never see a removed row (removed before they began), nor a row twice; at the end the
    live rows are exactly what the writers left (checked exactly on the flat index)."""
    n, per_writer = 2000, 4
    ann = AnnIndex(_faiss_index(kind, _vectors(n, 0)), kind, 64, 1.0, n, np.empty(0, dtype=np.int64))
    queries = _vectors(CALLERS, 1)
    gone: list[int] = []  # rows removed so far, appended once remove() has returned
    live = set(range(n))
    lock = threading.Lock()

    def searcher(i: int) -> None:
        for _ in range(SEARCHES):
            with lock:
                removed = set(gone)
            rows = ann.search(queries[i], 50)
            assert len(rows) == len(set(rows.tolist())), f"a row proposed twice: {rows}"
            assert not removed & set(rows.tolist()), f"removed rows proposed: {removed & set(rows.tolist())}"
            assert ((rows >= 0) & (rows < n + CALLERS * per_writer)).all(), rows

    def writer(w: int) -> None:
        rng = np.random.default_rng(100 + w)
        mine = [r for r in range(n) if r % CALLERS == w]  # each writer owns its rows: no two touch one
        for k in range(per_writer):
            new_row = n + w * per_writer + k
            ann.upsert(np.array([mine[k], new_row]), rng.standard_normal((2, 16)).astype(np.float32))
            ann.remove(np.array([mine[-1 - k]]))
            with lock:
                gone.append(mine[-1 - k])
                live.discard(mine[-1 - k])
                live.add(new_row)

    assert together(2 * CALLERS, lambda i: searcher(i) if i < CALLERS else writer(i - CALLERS)) == []
    assert len(gone) == CALLERS * per_writer and ann.tombstones >= 2 * len(gone)
    if kind == "flat":  # exact search over everything: exactly the live rows, each once
        rows = ann.search(queries[0], len(ann))
        assert sorted(rows.tolist()) == sorted(live)


def test_a_write_is_not_starved_by_overlapping_searches():
    """A reader-preferring lock let searches that kept overlapping hold an upsert off indefinitely
    (62 s behind two searching threads), with UpsertItems and DeleteItems queued behind it."""
    n = 2000
    vectors = _vectors(n, 0)
    ann = AnnIndex(_faiss_index("flat", vectors), "flat", 0, 1.0, n, np.empty(0, dtype=np.int64))
    stop, waits = threading.Event(), []

    def caller(i: int) -> None:
        if i < CALLERS:  # searchers: until the writer is done, or 5 s (so a starved writer ends too)
            deadline = time.monotonic() + 5.0
            while not stop.is_set() and time.monotonic() < deadline:
                ann.search(vectors[i], 50)
            return
        time.sleep(0.2)  # the searches are overlapping by now
        for k in range(5):
            t0 = time.perf_counter()
            ann.upsert(np.array([k]), vectors[k : k + 1])
            waits.append(time.perf_counter() - t0)
        stop.set()

    assert together(CALLERS + 1, caller) == []
    # Starved writers waited 62 s before the writer-first lock; 5 s leaves a loaded machine room.
    assert max(waits) < 5.0, f"upserts waited {[round(w, 3) for w in waits]} s behind searches"


def _hnsw_copy(serving: Path, dst: Path) -> Path:
    """A copy of the bundle whose two_tower serves through an HNSW index, as `towerserve export --index
    hnsw` writes one (the index over the exported item vectors, listed and hashed in the manifest),
    without the minute a real export takes (tests/test_export.py runs that one)."""
    import faiss

    from towerserve.export.index import INDEX_FILE, build

    pipeline.copy_serving(serving, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    split = manifest["models"]["two_tower"]["splits"]["holdout"]
    rel = str(Path(split["item_vectors_file"]).parent / INDEX_FILE)
    faiss.write_index(build(np.load(dst / split["item_vectors_file"]), "hnsw"), str(dst / rel))
    split["index"] = {"kind": "hnsw", "file": rel, "search": 64, "recall_at_10": 1.0, "queries": 0}
    data = (dst / rel).read_bytes()
    manifest["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_index_path_of_a_served_hnsw_bundle_under_concurrent_upserts_and_deletes(
    serving, users, items, tmp_path
):
    """Known users answered through the index (no candidate lists) while 32 callers upsert and delete:
    no errors, and an item deleted before a Recommend began never comes back."""
    out = _hnsw_copy(serving, tmp_path / "serving_hnsw")
    user_ids = [u["user_id"] for u in users]
    gone: set[str] = set()
    lock = threading.Lock()
    with running_server(
        out, model="two_tower", threads=4, candidate_budget_mb=0, state_dir=tmp_path / "state"
    ) as running:
        with _client(running) as client:
            assert client.model_info().index_kind == "hnsw"
            # Twins of items the first users like best: new items that rank, so a stale one would show.
            liked = [client.recommend(u, top_n=1).items[0] for u in user_ids[:8]]

        def caller(i: int) -> None:
            with _client(running) as client:
                for k in range(6):
                    if i < CALLERS:
                        with lock:
                            removed = set(gone)
                        rec = client.recommend(user_ids[(i * 6 + k) % len(user_ids)], top_n=10)
                        assert len(rec.items) == 10 and not removed & {x.item_id for x in rec.items}
                    else:
                        c = (i - CALLERS) * 6 + k
                        x = liked[c % len(liked)]
                        client.upsert_items(
                            [ItemData(f"hn_{c}", x.description, x.features, x.price, x.category)]
                        )
                        if k % 2:
                            client.delete_items([f"hn_{c - 1}", f"hn_{c}"])
                            with lock:
                                gone.update({f"hn_{c - 1}", f"hn_{c}"})

        assert together(2 * CALLERS, caller) == []
        with _client(running) as client:  # every item upserted here was deleted again
            assert client.model_info().item_count == len(items)


# ------------------------------------------------------------------------------------------ SQLite


def test_sqlite_journal_written_and_read_by_32_threads(tmp_path):
    """32 threads upsert, delete, read changes, count and compact one store while another connection
    reads (as `towerserve catalog dump` does): sequence numbers unique and ordered, every row intact."""
    store = SQLiteStore(tmp_path)
    rounds = 8
    text = "é ✓ \u202e 👩‍👩‍👧 \x00 end"  # odd Unicode and NUL survive the store's round trip
    written: dict[int, list[int]] = {}

    def caller(t: int) -> None:
        seqs = written.setdefault(t, [])
        for k in range(rounds):
            item = NewItemData(f"t{t}_i{k % 3}", f"{text} {t} {k}", "f", float(t * 100 + k), "c")
            seqs.append(store.upsert([item]).seq)
            if k % 3 == 2:
                seqs.append(store.delete([f"t{t}_i{k % 2}"]).seq)
            changes = list(store.changes(after=max(0, store.last_seq() - 50)))
            assert [c.seq for c in changes] == sorted({c.seq for c in changes})
            assert store.count() >= 1
            if t % 8 == 0 and k == rounds // 2:  # compaction while everyone writes
                store.compact()
            if t == 1:
                other = SQLiteStore(tmp_path)  # a second connection reading the live journal
                seen = [c.seq for c in other.changes()]
                assert seen == sorted(set(seen))
                other.close()

    assert together(CALLERS, caller) == []
    for seqs in written.values():
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert len({s for seqs in written.values() for s in seqs}) == sum(map(len, written.values()))
    # Each thread owns its item ids, so each item's latest change is its owner's last write to it.
    final = {c.item_id: c for c in latest(store.changes())}
    for t in range(CALLERS):
        want: dict[str, tuple] = {}
        for k in range(rounds):
            want[f"t{t}_i{k % 3}"] = ("upsert", float(t * 100 + k), f"{text} {t} {k}")
            if k % 3 == 2:
                want[f"t{t}_i{k % 2}"] = (DELETE, None, None)
        for item_id, (op, price, desc) in want.items():
            c = final[item_id]
            assert c.op == op and (
                c.item is None if op == DELETE else (c.item.price, c.item.description) == (price, desc)
            )
    assert store.last_seq() == max(s for seqs in written.values() for s in seqs)
    store.close()
