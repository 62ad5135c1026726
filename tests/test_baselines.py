"""trainer/baselines.py and trainer/collab.py: ItemKNN and EASE by hand and by numpy, λ on validation, skips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from towerserve.server.core.csr import CSR
from towerserve.server.core.ranking_metrics import full_ranking_metrics
from towerserve.trainer import baselines, collab, splits
from towerserve.trainer.data import load_dataset

# 4 users x 5 items. Items' training counts: 1, 3, 4, 1, 3.
KNN_X = np.array(
    [
        [0, 1, 1, 0, 1],
        [0, 1, 1, 0, 1],
        [1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1],
    ]
)


def test_itemknn_by_hand():
    # Co-occurrences and cosines: (0,1) 1/√3, (0,2) 1/2, (1,2) 3/√12 = √3/2, (1,4) 2/3, (2,3) 1/2,
    # (2,4) √3/2, (3,4) 1/√3. Top 2 per item (no tie at the cut):
    #   i0 {i1 1/√3, i2 1/2}  i1 {i2 √3/2, i4 2/3}  i2 {i1 √3/2, i4 √3/2}  i3 {i4 1/√3, i2 1/2}
    #   i4 {i2 √3/2, i1 2/3}
    # score(u, i) sums sim(i, j) over u's items j among i's neighbours, e.g. u0 = {1, 2, 4}:
    # i0 <- i1, i2 = 1/√3 + 1/2; i2 <- i1, i4 = √3; u2 = {0, 1, 2}: i3 <- i2 = 1/2.
    a, h, r, t = 1 / math.sqrt(3), 0.5, math.sqrt(3) / 2, 2 / 3
    expected = np.array(
        [
            [a + h, r + t, 2 * r, a + h, r + t],
            [a + h, r + t, 2 * r, a + h, r + t],
            [a + h, r, r, h, r + t],
            [h, r + t, r, a + h, r],
        ]
    )
    knn = collab.ItemKNN.fit(CSR.from_dense(KNN_X), k=2)
    np.testing.assert_allclose(knn(np.arange(4)), expected, rtol=1e-6)
    np.testing.assert_allclose(knn(np.array([3, 0])), expected[[3, 0]], rtol=1e-6)
    # With every neighbour kept it is plain item-item cosine: X · S with S's diagonal zeroed.
    c = KNN_X.T @ KNN_X
    s = c / np.sqrt(np.outer(np.diag(c), np.diag(c)))
    np.fill_diagonal(s, 0.0)
    full = collab.ItemKNN.fit(CSR.from_dense(KNN_X), k=100)
    np.testing.assert_allclose(full(np.arange(4)), KNN_X @ s, rtol=1e-6)


def test_users_without_training_items_get_popularity():
    x = np.vstack([KNN_X, np.zeros((1, 5), dtype=int)])  # user 4 has no training positives
    train = CSR.from_dense(x)
    pop = x.sum(axis=0).astype(np.float32)
    np.testing.assert_array_equal(collab.ItemKNN.fit(train, k=2)(np.array([4])), [pop])
    np.testing.assert_array_equal(collab.EASE.fit(train, 10.0)(np.array([4, 4])), [pop, pop])


def test_ease_by_hand_and_by_numpy():
    # X = [[1,1,0],[0,1,1],[1,1,1]]: G = XᵀX = [[2,2,1],[2,3,2],[1,2,2]]; with λ = 1, G + I =
    # [[3,2,1],[2,4,2],[1,2,3]], det 16, P = [[.5,-.25,0],[-.25,.5,-.25],[0,-.25,.5]];
    # B = -P / diag(P) = [[0,.5,0],[.5,0,.5],[0,.5,0]]; scores X·B = [[.5,.5,.5],[.5,.5,.5],[.5,1,.5]].
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]])
    model = collab.EASE.fit(CSR.from_dense(x), 1.0)
    np.testing.assert_allclose(model.weights, [[0, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0]], atol=1e-7)
    np.testing.assert_allclose(model(np.arange(3)), [[0.5, 0.5, 0.5]] * 2 + [[0.5, 1.0, 0.5]], atol=1e-6)

    # A larger random matrix against the formula written out directly.
    rng = np.random.default_rng(0)
    x = (rng.random((40, 12)) < 0.3).astype(np.float64)
    x[:, 0] = 1  # no empty rows: the fallback is tested on its own
    p = np.linalg.inv(x.T @ x + 7.0 * np.eye(12))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    model = collab.EASE.fit(CSR.from_dense(x), 7.0)
    np.testing.assert_allclose(model(np.arange(40)), x @ b, rtol=1e-4, atol=1e-5)


def test_gram_in_blocks_equals_xtx(monkeypatch):
    rng = np.random.default_rng(1)
    x = (rng.random((50, 23)) < 0.2).astype(np.int64)
    expected = x.T @ x
    np.testing.assert_array_equal(collab.gram(CSR.from_dense(x)), expected)  # dense chunks of X
    # The sparse path (large catalogues): co-occurrence blocks, never a dense X.
    monkeypatch.setattr(collab, "DENSE_MAX_ITEMS", 0)
    np.testing.assert_array_equal(collab.gram(CSR.from_dense(x)), expected)
    # A budget of a few cells forces one item per block: the blocks must still tile the matrix.
    monkeypatch.setattr(collab, "BLOCK_CELLS", 30)
    assert len(list(collab._item_blocks(CSR.from_dense(x), collab.transpose(CSR.from_dense(x))))) == 23
    np.testing.assert_array_equal(collab.gram(CSR.from_dense(x)), expected)


def _kept_sims(knn: collab.ItemKNN) -> dict[int, list[float]]:
    """Each target's kept neighbour similarities, sorted (blind to which of tied sources was kept)."""
    src, tgt = knn.by_source.pairs()
    return {int(t): sorted(np.round(knn.weights[tgt == t], 6).tolist()) for t in np.unique(tgt)}


def test_itemknn_sparse_path_equals_dense_path(monkeypatch):
    rng = np.random.default_rng(2)
    x = (rng.random((80, 30)) < 0.15).astype(np.int64)
    x[7] = 0  # one user without training items
    train = CSR.from_dense(x)
    users = np.array([5, 7, 0, 79, 5])
    dense = {k: collab.ItemKNN.fit(train, k=k) for k in (6, 30)}
    assert dense[6].dense is not None
    monkeypatch.setattr(collab, "DENSE_MAX_ITEMS", 0)
    monkeypatch.setattr(collab, "BLOCK_CELLS", 100)  # several item blocks and user chunks
    sparse = {k: collab.ItemKNN.fit(train, k=k) for k in (6, 30)}
    assert sparse[6].dense is None
    # Every neighbour kept (no tie at a cut-off): the same scores exactly.
    np.testing.assert_allclose(sparse[30](users), dense[30](users), rtol=1e-6)
    # k = 6: the same similarities per item; which of two tied sources is kept may differ.
    assert _kept_sims(sparse[6]) == _kept_sims(dense[6])
    assert sparse[6].by_source.nnz <= 6 * 30  # at most k neighbours per item


def test_itemknn_sparse_path_keeps_the_smaller_source_at_a_tie(monkeypatch):
    # Items 1, 2 and 3 each co-occur with item 0 once, with the same norms: a three-way tie for k = 2.
    x = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]])
    monkeypatch.setattr(collab, "DENSE_MAX_ITEMS", 0)
    knn = collab.ItemKNN.fit(CSR.from_dense(x), k=2)
    src, tgt = knn.by_source.pairs()
    assert sorted(src[tgt == 0].tolist()) == [1, 2]  # cosine 1/sqrt(3) each; 3 loses the tie


def test_lambda_is_chosen_on_training_positives_only(small_data):
    ds = load_dataset(small_data)
    split = splits.holdout_split(ds.positives, ds.users["user_id"].to_numpy())
    fit, val = collab.validation_split(split.train)
    # Validation is carved out of training: disjoint halves whose union is exactly the training set.
    assert fit.nnz + val.nnz == split.train.nnz and val.nnz > 0
    union = fit.union(val)
    np.testing.assert_array_equal(union.indptr, split.train.indptr)
    np.testing.assert_array_equal(union.indices, split.train.indices)

    grid = (1.0, 30.0, 3000.0)
    lam, scores = collab.choose_lambda(split.train, grid)
    assert set(scores) == set(grid) and scores[lam] == max(scores.values())
    # Recomputed by hand from the validation split: the same numbers.
    judged = np.flatnonzero((val.row_lengths() > 0) & (fit.row_lengths() > 0))
    for g in grid:
        m = full_ranking_metrics(collab.EASE.fit(fit, g), val, fit, ks=(10,), users=judged)
        assert m["ndcg@10"] == pytest.approx(scores[g])

    # The test positives play no part: any test set gives the same λ.
    rows, cols = split.test.pairs()
    for part in (slice(0, None, 2), slice(1, None, 2)):
        test = CSR.from_pairs(rows[part], cols[part], split.test.n_rows, split.test.n_cols)
        res = baselines.evaluate_baselines(split.train, test, None, ks=(10,), ease_lambdas=grid)
        assert res["ease"]["lambda"] == lam


def test_every_baseline_on_the_holdout_split(small_data):
    ds = load_dataset(small_data)
    split = splits.holdout_split(ds.positives, ds.users["user_id"].to_numpy())
    res = baselines.evaluate_baselines(split.train, split.test, small_data, ks=(10,))
    assert list(res) == ["random", "mostpop", "itemknn", "ease", "oracle"]
    assert res["ease"]["lambda"] in collab.EASE_LAMBDAS and res["itemknn"]["k"] == collab.KNN_K
    users = {r["users"] for r in res.values()}
    assert len(users) == 1  # every row judged on the same users
    ndcg = {k: v["ndcg@10"] for k, v in res.items()}
    # Known users: the collaborative signal beats popularity; nothing beats the truth.
    assert ndcg["random"] < ndcg["mostpop"] < min(ndcg["itemknn"], ndcg["ease"])
    assert max(ndcg["itemknn"], ndcg["ease"]) < ndcg["oracle"]
    assert baselines.skipped_notes(res, ds.n_items) == []
    assert set(baselines.evaluate_baselines(split.train, split.test, None, collaborative=False)) == {
        "random",
        "mostpop",
        "oracle",
    }


def test_cold_users_fall_back_to_popularity(small_data):
    ds = load_dataset(small_data)
    split = splits.cold_split(ds.positives, ds.users["user_id"].to_numpy())
    res = baselines.evaluate_baselines(split.train, split.test, small_data, ks=(10,))
    # Every judged user is cold: ItemKNN and EASE rank exactly as MostPopular.
    assert res["itemknn"] == res["mostpop"] and res["ease"] == res["mostpop"]
    # The same holds when the models are fitted and asked for those users.
    knn = collab.ItemKNN.fit(split.train, k=10)
    cold = split.cold_users[:5]
    np.testing.assert_array_equal(knn(cold), np.tile(collab.popularity(split.train), (len(cold), 1)))


def test_ease_is_skipped_above_its_size_limit(small_data):
    ds = load_dataset(small_data)
    split = splits.holdout_split(ds.positives, ds.users["user_id"].to_numpy())
    res = baselines.evaluate_baselines(split.train, split.test, None, ks=(10,), ease_max_items=59)
    assert res["ease"] is None and res["itemknn"] is not None and res["oracle"] is None
    notes = baselines.skipped_notes(res, ds.n_items, ease_max_items=59)
    assert notes[0].startswith("EASE skipped: 60 items is above its limit of 59")
    assert notes[1].startswith("oracle: skipped")
    # The default limit and the reason at the size the docs quote.
    assert collab.ease_skip_reason(collab.EASE_MAX_ITEMS) is None
    assert "3.2 GB" in collab.ease_skip_reason(20_000)


def test_replayed_oracle_reuses_its_world_until_the_data_changes(tmp_path):
    from towerserve.trainer.synth import generator as synth

    synth.generate(tmp_path, n_users=60, n_items=20, seed=1, long_form=True, progress=False)
    first = baselines.OracleScores(tmp_path)
    second = baselines.OracleScores(tmp_path)
    assert second._world is first._world  # train builds one per split: the world is drawn once
    before = first(np.arange(60))
    synth.generate(tmp_path, n_users=60, n_items=20, seed=2, long_form=True, progress=False)
    after = baselines.OracleScores(tmp_path)
    assert after._world is not first._world
    assert not np.array_equal(after(np.arange(60)), before)
