"""DeleteItems in the engine: a deleted item leaves every path (candidate lists, exact, the index) and
lookups, row numbers never move, and the same id can come back as a new item."""

from __future__ import annotations

import numpy as np
import pytest

from towerserve.server.catalog.index import AnnIndex
from towerserve.server.catalog.snapshot import deleted
from towerserve.server.core.config import EngineConfig
from towerserve.server.core.csr import CSR
from towerserve.server.core.types import NewItemData
from towerserve.server.engine import scoring
from towerserve.server.engine.engine import Engine
from towerserve.server.engine.errors import NotFound
from towerserve.server.engine.info import model_info
from towerserve.server.engine.ranking import ann_rank


def test_a_deleted_item_leaves_every_path_and_can_come_back(serving):
    listed = Engine(serving, EngineConfig(model="two_tower", candidates=8))
    exact = Engine(serving, EngineConfig(model="two_tower", candidates=0))
    n = len(listed.catalog)
    users = listed.user_ids[:30]
    # Each user's favourite: deleting them truncates many candidate lists at once.
    favourites = sorted({listed.catalog.ids[listed.recommend(u, 1)[1][0]] for u in users})
    for e in (listed, exact):
        assert e.delete_items([*favourites, "no-such-item", favourites[0]]) == (
            len(favourites),
            n - len(favourites),
        )
        assert e.catalog.item_count == n - len(favourites) and len(e.catalog) == n  # rows never move
        assert model_info(e).item_count == n - len(favourites)
    rows = {exact.catalog.columns.index.get(x) for x in favourites}
    assert rows == {None}
    for u in users:
        for kw in ({}, {"exclude_seen": False}, {"top_n": 20}):
            kw = {"top_n": 5, **kw}
            got, want = listed.recommend(u, **kw), exact.recommend(u, **kw)
            assert got[1:] == want[1:], (u, kw)
            assert not {got[0].ids[j] for j in got[1]} & set(favourites)
    with pytest.raises(NotFound):
        scoring.score(exact, [(users[0], favourites[0])])
    # The same id upserted again is a new item, in a new row, recommendable again.
    back = NewItemData(favourites[0], "a brand new description", "new features", 3.0, "new-category")
    for e in (listed, exact):
        assert e.upsert_items([back]) == (1, 0, n - len(favourites) + 1)
        assert e.catalog.row(favourites[0]) == n
        assert e.recommend(users[0], 3, categories=["new-category"])[1] == [n]
    assert listed.delete_items(["no-such-item"]) == (0, n - len(favourites) + 1)


def test_the_index_never_proposes_a_deleted_row():
    import faiss

    rng = np.random.default_rng(3)
    d, n = 8, 500
    items = rng.standard_normal((n, d)).astype(np.float32)
    flat = faiss.IndexFlatIP(d)
    flat.add(items)
    ann = AnnIndex(flat, "flat", 0, 1.0, n, np.empty(0, dtype=np.int64))
    from towerserve.server.catalog.snapshot import build_catalog

    users = rng.standard_normal((4, d)).astype(np.float32)
    seen = CSR.from_pairs(np.array([0]), np.array([0]), 4, n)
    cat = build_catalog(
        [f"i{j}" for j in range(n)],
        np.ones(n),
        ["c"] * n,
        ["d"] * n,
        ["f"] * n,
        items,
        users=users,
        seen=seen,
        candidates=0,
        user_independent=False,
        ann=ann,
    )
    top = ann_rank(cat, users[1], 10, set(), None)[0]
    cat2, rows = deleted(cat, [f"i{j}" for j in top[:5]], users, seen, False)
    ann.remove(rows)
    assert sorted(rows.tolist()) == sorted(top[:5])
    assert not set(ann.search(users[1], n).tolist()) & set(top[:5])
    assert ann_rank(cat2, users[1], 5, set(), None)[0] == top[5:10]
    assert ann.tombstones == 5 and cat2.item_count == n - 5


def test_delete_and_upsert_churn_reuses_rows_but_never_an_exported_one(serving, monkeypatch):
    """The soak's memory growth: every delete-and-upsert used to add a row for good. Rows an upsert
    added are reused (after REUSE_AFTER, 0 here); exported rows stay masked (recorded interactions
    name them); every path still agrees."""
    from towerserve.server.catalog import columns

    monkeypatch.setattr(columns, "REUSE_AFTER", 0.0)
    listed = Engine(serving, EngineConfig(model="two_tower", candidates=8))
    exact = Engine(serving, EngineConfig(model="two_tower", candidates=0))
    n = len(exact.catalog)
    exported_victim = exact.catalog.ids[0]
    for e in (listed, exact):
        e.delete_items([exported_victim])
        for k in range(50):
            e.upsert_items([NewItemData("churn", f"version {k} of a churned item", "f", 1.0 + k, "churned")])
            e.delete_items(["churn"])
        e.upsert_items([NewItemData("churn", "the last version", "f", 2.0, "churned")])
        # One row for the churned id (reused 50 times), none for the exported one.
        assert len(e.catalog) == n + 1 and e.catalog.item_count == n
        assert e.catalog.row("churn") == n and e.catalog.row(exported_victim) is None
        assert 0 in e.catalog.nan_rows.tolist() and n not in e.catalog.nan_rows.tolist()
    for u in listed.user_ids[:20]:
        got, want = listed.recommend(u, 10), exact.recommend(u, 10)
        assert got[1:] == want[1:], u
        assert 0 not in got[1]
    assert exact.recommend(exact.user_ids[0], 5, categories=["churned"])[1] == [n]
    assert exact.catalog.description[n] == "the last version"
