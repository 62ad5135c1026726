"""Filtered retrieval through a real FAISS index (issue 22): a filter whose items sit in the cluster
far from the user still gets top_n items, the export's recall gate measures filtered recall and
refuses an index that fails it, and dead entries are compacted away without changing any answer."""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path

import numpy as np
import pipeline
import pytest

from towerserve.export.index import RecallError, build, build_and_tune, export_index, filtered_recall_at_10
from towerserve.server.catalog.index import COMPACT_FRACTION, AnnIndex, FilterSearch
from towerserve.server.catalog.snapshot import build_catalog
from towerserve.server.core.csr import CSR
from towerserve.server.engine.ranking import admissible, ann_rank, rank

FLOOR = 0.95  # export's default recall floor (DEFAULT_MIN_RECALL)
# Every filter through the index, however narrow (HNSW still scores exactly where that is cheaper):
# small catalogues exercise the index path.
THROUGH_THE_INDEX = FilterSearch(exact_items=0, exact_fraction=0.0)


def _two_clusters(n: int, users: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items in two clusters at +c and -c (|c| = 3, unit noise); users all in the first."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal(d)
    c *= 3 / np.linalg.norm(c)
    half = n // 2
    items = np.concatenate([c + rng.standard_normal((half, d)), -c + rng.standard_normal((n - half, d))])
    return items.astype(np.float32), (c + rng.standard_normal((users, d))).astype(np.float32)


def _clusters(n: int, users: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((k, d))
    items = centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))
    queries = centres[rng.integers(0, k, users)] + rng.standard_normal((users, d))
    return items.astype(np.float32), queries.astype(np.float32)


def _catalog(items, users, category, ann, seen=None):
    n = len(items)
    return build_catalog(
        ids=[f"i{j}" for j in range(n)],
        price=np.arange(n) % 100 * 1.0,
        category=category,
        description=["d"] * n,
        features=["f"] * n,
        vectors=items,
        users=users,
        seen=seen if seen is not None else CSR.from_pairs(np.array([0]), np.array([0]), len(users), n),
        candidates=0,
        user_independent=False,
        ann=ann,
    )


def _brute_top(items: np.ndarray, u: np.ndarray, allowed: np.ndarray, k: int) -> set[int]:
    """The k best admitted rows by plain numpy, independent of the ranking code."""
    rows = np.flatnonzero(allowed)
    scores = items[rows].astype(np.float64) @ u.astype(np.float64)
    return set(rows[np.argsort(-scores, kind="stable")[:k]].tolist())


def _flat(items: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    return index


# ------------------------------------------------------------------------------------------ filters


def test_a_filter_in_the_far_cluster_gets_top_n_through_a_tuned_ivf():
    # The case: 60,000 items in two clusters, a filter admitting 25,000 of the far one (wide
    # enough for the index path by the server's own rules). Widening k alone returned 0-9 items.
    items, users = _two_clusters(60_000, 140, 16, seed=0)
    index, tuned = build_and_tune(items, "ivf", users[:100], FLOOR)
    ann = AnnIndex(index, "ivf", tuned.knob, tuned.recall, len(items), np.empty(0, np.int64))
    category = ["far" if 30_000 <= j < 55_000 else "near" for j in range(len(items))]
    cat = _catalog(items, users, category, ann)
    allowed = admissible(cat, None, None, {cat.category_index["far"]})
    assert allowed.sum() == 25_000
    test_users = users[100:]
    # Answered by the index (not by the exact fall-back) for every user.
    assert all(r is not None for r in ann.search_within(test_users, 10, allowed))
    hits = 0
    for u in test_users:
        got = ann_rank(cat, u, 10, set(), allowed)[0]
        assert len(got) == 10 and allowed[got].all()
        hits += len(set(got) & _brute_top(items, u, allowed, 10))
    assert hits / (10 * len(test_users)) >= FLOOR


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "flat"])
def test_every_filter_returns_what_exists_through_every_kind(kind):
    # Small clustered catalogue, every filter forced through the index: filters in the far cluster,
    # narrow ones, ones admitting fewer items than top_n. Each answer holds min(top_n, admitted)
    # items, never a blocked or non-admitted one, and recall@10 holds against numpy.
    items, users = _two_clusters(6000, 30, 16, seed=1)
    if kind == "flat":
        index, knob = _flat(items), 0
    else:  # tuned as export tunes it, the gate's filters searched through the index too
        index, tuned = build_and_tune(items, kind, users, FLOOR, filtering=THROUGH_THE_INDEX)
        knob = tuned.knob
    ann = AnnIndex(index, kind, knob, 1.0, len(items), np.empty(0, np.int64), THROUGH_THE_INDEX)
    category = [f"c{j % 3}" if j >= 3000 else "near" for j in range(len(items))]
    category[5999] = "lonely"
    cat = _catalog(items, users, category, ann)
    rng = random.Random(4)
    hits = total = 0
    for _ in range(60):
        u = users[rng.randrange(len(users))]
        codes = {cat.category_index[rng.choice(["c0", "c1", "c2", "lonely"])]}
        pmax = rng.choice([None, 4.0, 50.0])
        allowed = admissible(cat, None, pmax, codes)
        excluded = set(rng.sample(np.flatnonzero(allowed).tolist(), min(3, int(allowed.sum()))))
        got = ann_rank(cat, u, 10, excluded, allowed)[0]
        admitted = allowed.copy()
        admitted[list(excluded)] = False
        assert len(got) == min(10, int(admitted.sum())) and admitted[got].all()
        want = _brute_top(items, u, admitted, 10)
        hits, total = hits + len(set(got) & want), total + len(want)
    assert hits / total >= FLOOR


def test_a_narrow_filter_is_scored_exactly_and_equals_the_exact_path():
    items, users = _two_clusters(6000, 20, 16, seed=2)
    ann = AnnIndex(build(items, "ivf"), "ivf", 4, 1.0, len(items), np.empty(0, np.int64))
    category = [f"c{j % 50}" for j in range(len(items))]
    seen = CSR.from_pairs(np.repeat(np.arange(20), 5), np.arange(100) * 60, 20, len(items))
    cat, exact = _catalog(items, users, category, ann, seen), _catalog(items, users, category, None, seen)
    allowed = admissible(cat, None, None, {cat.category_index["c7"]})  # 120 items: below exact_items
    assert ann.search_within(users, 10, allowed) == [None] * len(users)
    for j, u in enumerate(users):
        want = rank(exact, u, 10, {7}, admissible(exact, None, None, {7}), seen.row(j))
        assert ann_rank(cat, u, 10, {7}, allowed, seen.row(j)) == want


def test_a_filter_through_a_flat_index_equals_the_exact_path_with_exclusions_and_seen_items():
    # An exact FAISS index behind the filtered path: the selector, the blocked rows and the scoring
    # must then give the exact path's answer, probabilities included.
    items, users = _clusters(3000, 30, 16, 40, seed=3)
    seen = CSR.from_pairs(
        np.repeat(np.arange(30), 8), np.random.default_rng(0).integers(0, 3000, 240), 30, 3000
    )
    category = [f"c{j % 7}" for j in range(3000)]
    ann = AnnIndex(_flat(items), "flat", 0, 1.0, 3000, np.empty(0, np.int64), THROUGH_THE_INDEX)
    cat, exact = _catalog(items, users, category, ann, seen), _catalog(items, users, category, None, seen)
    rng = random.Random(5)
    for _ in range(80):
        u = rng.randrange(30)
        top_n = rng.choice([1, 10, 50])
        excluded = set(rng.sample(range(3000), rng.choice([0, 5, 200])))
        codes = set(rng.sample(range(7), rng.choice([1, 3])))
        pmax = rng.choice([None, 21.0, 80.0])
        s = seen.row(u) if rng.random() < 0.7 else None
        want = rank(exact, users[u], top_n, excluded, admissible(exact, None, pmax, codes), s)
        assert ann_rank(cat, users[u], top_n, excluded, admissible(cat, None, pmax, codes), s) == want


# ------------------------------------------------------------------------------------- recall gate

# 30,000 items in 20 clusters: IVF meets the unfiltered floor at a small nprobe; a 1 % region filter
# is missed unless the search widens for it (measured: recall 0.85 at nprobe 256 without widening).
GATE_ITEMS = _clusters(30_000, 100, 16, 20, seed=1)
NO_WIDENING = FilterSearch(exact_items=0, exact_fraction=0.0, share=0.0)


def test_the_gate_records_filtered_recall_and_raises_the_knob_for_it(tmp_path):
    import faiss

    items, queries = GATE_ITEMS
    (tmp_path / "m").mkdir()
    entry = export_index(tmp_path, Path("m"), "ivf", items, queries, FLOOR, THROUGH_THE_INDEX)
    assert set(entry.filtered_recall_at_10) == {"1%", "10%"}
    assert min(entry.filtered_recall_at_10.values()) >= FLOOR and entry.recall_at_10 >= FLOOR
    # The recorded numbers are what the written index gives, measured the way Recommend searches.
    from towerserve.export.index import gate_filters

    index = faiss.read_index(str(tmp_path / entry.file))
    ann = AnnIndex(index, "ivf", entry.search, 1.0, len(items), np.empty(0, np.int64), THROUGH_THE_INDEX)
    for name, (allowed, want) in gate_filters(items, queries).items():
        got = filtered_recall_at_10(ann, items, queries, allowed, want)
        assert got == pytest.approx(entry.filtered_recall_at_10[name], abs=1e-4)
    # Unfiltered alone would have stopped at a smaller nprobe: the filters raised it.
    _, unfiltered = build_and_tune(items, "ivf", queries, FLOOR, filters={})
    assert entry.search > unfiltered.knob
    # With the server's own rules both filters are narrow at this size: scored exactly, full marks.
    assert export_index(tmp_path, Path("m"), "ivf", items, queries, FLOOR).filtered_recall_at_10 == {
        "1%": 1.0,
        "10%": 1.0,
    }


def test_the_gate_refuses_an_index_that_meets_the_floor_only_unfiltered(tmp_path):
    items, queries = GATE_ITEMS
    (tmp_path / "m").mkdir()
    with pytest.raises(RecallError, match=r"ivf reaches recall@10 1\.0000 \(1% filter 0\.\d+"):
        export_index(tmp_path, Path("m"), "ivf", items, queries, FLOOR, NO_WIDENING)
    assert not (tmp_path / "m" / "item_index.faiss").exists()


def test_auto_never_keeps_a_kind_that_fails_the_filtered_gate(tmp_path, caplog):
    # Above AUTO_EXACT_MAX_ITEMS, so auto builds and tunes both kinds (~2 s at d = 16): the
    # filter-blind IVF meets the unfiltered floor only, HNSW (scoring the 1 % filter exactly, as
    # its cost rule says) meets all three and is kept.
    items, queries = _clusters(52_000, 100, 16, 20, seed=1)
    (tmp_path / "m").mkdir()
    with caplog.at_level(logging.INFO, logger="towerserve.export.index"):
        entry = export_index(tmp_path, Path("m"), "auto", items, queries, FLOOR, NO_WIDENING)
    assert "ivf index misses the recall floor" in caplog.text and "1% filter" in caplog.text
    assert entry.kind == "hnsw" and min(entry.filtered_recall_at_10.values()) >= FLOOR


# -------------------------------------------------------------------------------------- compaction


def _live_rows(ann: AnnIndex, queries: np.ndarray) -> list[list[int]]:
    """Every row an exhaustive search of each query proposes (IVF at nprobe = nlist)."""
    return [sorted(ann.search(q, len(ann), widen=10**6).tolist()) for q in queries]


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "flat"])
def test_dead_entries_are_compacted_past_the_threshold_and_answers_stay_the_same(kind):
    n = 4000
    items, users = _clusters(n, 20, 16, 30, seed=6)
    index = _flat(items) if kind == "flat" else build(items, kind)
    ann = AnnIndex(index, kind, 2 if kind == "ivf" else 64, 1.0, n, np.empty(0, np.int64))
    rng = np.random.default_rng(7)
    vectors = items.copy()
    # Replace items in batches until tombstones pass the threshold; delete a few along the way.
    deleted: set[int] = set()
    for step in range(12):
        rows = rng.choice(n, 100, replace=False)
        new = (items[rng.integers(0, n, 100)] + 0.5 * rng.standard_normal((100, 16))).astype(np.float32)
        ann.upsert(rows, new)
        vectors[rows] = new
        deleted -= set(rows.tolist())
        if step % 3 == 0:
            gone = rng.choice(n, 20, replace=False)
            ann.remove(gone)
            deleted |= set(gone.tolist())
        if ann.compactions or not ann.wait_for_compaction(0):
            break
    assert ann.wait_for_compaction(60) and ann.compactions == 1
    assert ann.tombstones <= COMPACT_FRACTION * len(ann)
    live = sorted(set(range(n)) - deleted)
    assert len(ann) - ann.tombstones == len(live)
    if kind != "hnsw":  # exhaustive searches: exactly the live rows, each once
        assert _live_rows(ann, users[:3]) == [live] * 3
    # Answers against the current vectors: exact for flat and for IVF probing every list; HNSW by recall.
    exact = _catalog(vectors, users, ["c"] * n, None)
    cat = _catalog(vectors, users, ["c"] * n, ann)
    if kind == "ivf":
        ann.knob = index.nlist
    hits = 0
    for u in users:
        # The deleted rows excluded from the exact path (the snapshots here never heard of the deletes).
        got, want = ann_rank(cat, u, 10, set(), None)[0], rank(exact, u, 10, deleted, None)[0]
        assert not set(got) & deleted
        if kind != "hnsw":
            assert got == want
        hits += len(set(got) & set(want))
    assert hits / (10 * len(users)) >= FLOOR


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_writes_during_a_compaction_are_replayed_onto_the_new_index(kind):
    n = 30_000
    items, users = _clusters(n, 4, 16, 30, seed=8)
    ann = AnnIndex(
        _flat(items) if kind == "flat" else build(items, kind), kind, 1, 1.0, n, np.empty(0, np.int64)
    )
    rng = np.random.default_rng(9)
    first = rng.permutation(n)[: n // 3]
    ann.compact_fraction = 1.0  # no background compaction: this test starts its own
    ann.upsert(first, items[first])
    vectors, deleted = items.copy(), set()
    compactor = threading.Thread(target=ann.compact)
    compactor.start()
    # Upserts of new and old rows and deletes, while the copy runs (and after it, harmlessly).
    for k in range(60):
        rows = rng.choice(n + 100, 20, replace=False)
        new = rng.standard_normal((20, 16)).astype(np.float32)
        ann.upsert(rows, new)
        vectors = np.concatenate(
            [vectors, np.zeros((max(0, int(rows.max()) + 1 - len(vectors)), 16), np.float32)]
        )
        vectors[rows] = new
        deleted -= set(rows.tolist())
        if k % 4 == 0:
            gone = rng.choice(n, 5, replace=False)
            ann.remove(gone)
            deleted |= set(gone.tolist())
    compactor.join()
    assert ann.compactions == 1 and ann.tombstones < n // 3
    live = sorted(set(range(len(vectors))) - deleted - set(np.flatnonzero(~vectors.any(axis=1)).tolist()))
    assert _live_rows(ann, users[:2]) == [live] * 2
    # Each live row's entry holds its latest vector: the index's own best row is the exact best one.
    ann.knob = ann.index.nlist if kind == "ivf" else 0
    v64 = vectors.astype(np.float64)
    for u in users:
        best = ann.search(u, 1, widen=10**6)
        scores = np.where(np.isin(np.arange(len(vectors)), live), v64 @ u.astype(np.float64), -np.inf)
        assert best.tolist() == [int(np.argmax(scores))]


# ------------------------------------------------------------------------------- through the engine


def test_a_filtered_recommend_through_a_served_ivf_bundle_equals_the_exact_server(serving, tmp_path):
    from towerserve.server.engine.engine import Engine, EngineConfig

    out = pipeline.ivf_copy(serving, tmp_path / "serving_ivf")
    ann = Engine(out, EngineConfig(model="two_tower", candidates=0))
    exact = Engine(out, EngineConfig(model="two_tower", candidates=0, exact=True))
    assert ann.ann is not None and ann.ann.kind == "ivf"
    ann.ann.filtering = THROUGH_THE_INDEX  # a catalogue this small would be scored exactly
    for user in ann.user_ids[:30]:
        for categories in ([c] for c in ann.catalog.categories):
            for kw in ({"categories": categories}, {"categories": categories, "exclude_seen": False}):
                assert ann.recommend(user, 5, **kw)[1:] == exact.recommend(user, 5, **kw)[1:], (user, kw)
