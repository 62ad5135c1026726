"""The hybrid in bounded memory: feature rows built per batch, histories as CSR slices, the catalogue
ranked in blocks, and each of them equal to what it replaced (brute force top-k, full_ranking_metrics,
np.std over the whole matrix, the padded history sample drawn all at once, feature_matrix)."""

import os

os.environ["USE_TF"] = "0"

import tracemalloc  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from towerserve.server.core.csr import CSR  # noqa: E402
from towerserve.server.core.features import MINMAX, TEXT, FieldSpec, FieldTable, feature_matrix  # noqa: E402
from towerserve.server.core.ranking_metrics import full_ranking_metrics  # noqa: E402
from towerserve.trainer.hybrid import fit as hybrid_fit  # noqa: E402
from towerserve.trainer.hybrid import histories, scoring  # noqa: E402
from towerserve.trainer.hybrid import model as hybrid  # noqa: E402
from towerserve.trainer.hybrid import search as hybrid_search  # noqa: E402
from towerserve.trainer.hybrid.config import HybridConfig  # noqa: E402
from towerserve.trainer.hybrid.rows import FeatureRows  # noqa: E402

TINY = HybridConfig(
    dim=8,
    hidden=(16,),
    batch_size=128,
    epochs=2,
    content_epochs=1,
    train_history=6,
    learning_rate=1e-2,
    negatives="in_batch",  # the scaled path: "auto" scores every item at every step up to 20,000
    ease_rank=0,
)


def _positives(rng, n_users: int, n_items: int, per_user: int) -> CSR:
    rows = np.repeat(np.arange(n_users), per_user)
    cols = np.minimum(n_items - 1, (rng.pareto(1.2, size=len(rows)) * 10).astype(np.int64))
    return CSR.from_pairs(rows, (cols + 7 * rows) % n_items, n_users, n_items)


def _world(seed: int, n_users: int, n_items: int, dim: int = 6):
    """Field tables (random unit vectors, as sentence embeddings are), raw numbers and positives."""
    rng = np.random.default_rng(seed)

    def table(distinct: int, n: int) -> FieldTable:
        v = rng.normal(size=(distinct, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return FieldTable(np.array([f"t{j}" for j in range(distinct)]), v, rng.integers(distinct, size=n))

    tables = {"job": table(5, n_users), "desc": table(max(2, n_items // 3), n_items)}
    uspec = [FieldSpec("job", TEXT, dim), FieldSpec("age", MINMAX, 1, lo=18.0, hi=80.0)]
    ispec = [FieldSpec("desc", TEXT, dim), FieldSpec("price", MINMAX, 1, lo=0.0, hi=100.0)]
    raw_u = {"age": rng.integers(18, 81, size=n_users).astype(np.float64)}
    raw_i = {"price": rng.uniform(0, 100, size=n_items)}
    return uspec, ispec, tables, raw_u, raw_i, _positives(rng, n_users, n_items, 8)


# --- the blocked search against brute force ------------------------------------------------------------


def _small_blocks(monkeypatch, items: int = 7, cells: int = 40):
    monkeypatch.setattr(scoring, "ITEM_BLOCK", items)
    monkeypatch.setattr(scoring, "BLOCK_CELLS", cells)


def test_blocked_top_k_is_the_brute_force_top_k_ties_and_masks_included(monkeypatch):
    _small_blocks(monkeypatch)
    rng = np.random.default_rng(0)
    n_users, n_items, k = 23, 50, 10
    scores = rng.integers(0, 6, size=(n_users, n_items)).astype(np.float32)  # many ties, across blocks
    scores[3, :] = 1.0  # one user with every item tied
    scores[4, 5] = -np.inf  # the model's own -inf: below every finite score, above the masked items
    exclude = CSR.from_dense(rng.random((n_users, n_items)) < 0.3)
    exclude = exclude.union(CSR.from_pairs(np.full(45, 5), np.arange(45), n_users, n_items))  # 5 left
    users = np.array([0, 3, 4, 5, 9, 22])
    got = scoring.top_k(lambda pos, lo, hi: [scores[users[pos], lo:hi]], users, n_items, k, exclude)[0]
    for r, u in enumerate(users):
        s = scores[u].copy()
        s[np.isneginf(s)] = np.finfo(np.float32).min
        s[exclude.row(u)] = -np.inf
        want = np.lexsort((np.arange(n_items), -s))[:k]  # best first, ties by ascending item
        np.testing.assert_array_equal(got[r], want)


def test_blocked_ndcg_is_full_ranking_metrics(monkeypatch):
    _small_blocks(monkeypatch)
    rng = np.random.default_rng(1)
    n_users, n_items = 40, 60
    uvec = rng.normal(size=(n_users, 5)).astype(np.float32)
    ivec = rng.normal(size=(n_items, 5)).astype(np.float32)
    fit = CSR.from_dense(rng.random((n_users, n_items)) < 0.2)
    val = CSR.from_dense(rng.random((n_users, n_items)) < 0.1).minus(fit)
    users = np.array([u for u in range(0, n_users, 2) if u != 4])  # a sample, user 4 left out
    want = full_ranking_metrics(lambda u: uvec[u] @ ivec.T, val, fit, ks=(10,), users=users)["ndcg@10"]
    got = scoring.ndcg(lambda pos, lo, hi: [uvec[users[pos]] @ ivec[lo:hi].T], users, fit, val)[0]
    assert got == pytest.approx(want, abs=1e-12)
    # Several scorings in one pass, and blocks kept inside groups: the same figures.
    groups = [np.arange(0, len(users), 2), np.arange(1, len(users), 2)]
    two = scoring.ndcg(
        lambda pos, lo, hi: [uvec[users[pos]] @ ivec[lo:hi].T, -(uvec[users[pos]] @ ivec[lo:hi].T)],
        users,
        fit,
        val,
        n_scorings=2,
        groups=groups,
    )
    rev = full_ranking_metrics(lambda u: -(uvec[u] @ ivec.T), val, fit, ks=(10,), users=users)["ndcg@10"]
    assert two == pytest.approx([want, rev], abs=1e-12)
    with pytest.raises(ValueError, match="sorted, distinct"):
        scoring.ndcg(lambda pos, lo, hi: [uvec[pos] @ ivec[lo:hi].T], users[::-1], fit, val)


def test_the_spread_of_whole_rows_is_numpys_over_the_whole_matrix(monkeypatch):
    monkeypatch.setattr(scoring, "BLOCK_CELLS", 100)
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(37, 45)).astype(np.float32)
    want = float(np.mean(np.std(scores, axis=1)))
    assert scoring.mean_row_std(lambda pos: scores[pos], 37, 45) == want
    groups = [np.arange(0, 37, 3), np.setdiff1d(np.arange(37), np.arange(0, 37, 3))]
    assert scoring.mean_row_std(lambda pos: scores[pos], 37, 45, groups) == want
    assert scoring.mean_row_std(lambda pos: np.zeros((len(pos), 45), np.float32), 37, 45) == 1.0


# --- histories ------------------------------------------------------------------------------------------


def _drawn_at_once(train: CSR, cap: int, rng) -> list[np.ndarray]:
    """The sample as the hybrid drew it before histories were CSR: every user x longest at once."""
    padded = hybrid.pad_histories([train.row(u) for u in range(train.n_rows)])
    keys = rng.random(padded.shape, dtype=np.float32)
    keys[padded == 0] = 2.0
    pick = np.argpartition(keys, cap - 1, axis=1)[:, :cap]
    rows = np.take_along_axis(padded, pick, axis=1)
    return [r[r > 0] - 1 for r in rows]


def test_padded_histories_are_pad_histories_and_the_sample_is_the_one_drawn_at_once(monkeypatch):
    rng = np.random.default_rng(3)
    train = _positives(rng, 300, 90, 5).union(CSR.from_pairs(np.zeros(40), np.arange(40), 300, 90))
    users = np.array([0, 7, 3, 299])
    want = hybrid.pad_histories([train.row(u) for u in users])
    np.testing.assert_array_equal(histories.padded(train, users), want)
    np.testing.assert_array_equal(histories.padded(train, users, 3), want[:, :3])
    width = histories.longest(train)
    assert histories.sample(train, width, np.random.default_rng(0)) is train  # all fit: no draw
    monkeypatch.setattr(histories, "BLOCK_CELLS", 500)  # many blocks: the stream continues across them
    got = histories.sample(train, 6, np.random.default_rng([5, 31]))
    for u, row in enumerate(_drawn_at_once(train, 6, np.random.default_rng([5, 31]))):
        np.testing.assert_array_equal(got.row(u), row)
    # Over EXACT_DRAW_CELLS: keys for the long histories' items only, still a subset of at most cap.
    monkeypatch.setattr(histories, "EXACT_DRAW_CELLS", 0)
    cheap = histories.sample(train, 6, np.random.default_rng(1))
    for u in range(train.n_rows):
        row, full = cheap.row(u), train.row(u)
        assert len(row) == min(6, len(full)) and set(row) <= set(full)
    dropped = histories.drop(train, histories.longest(train), 0.5, np.random.default_rng(2))
    assert 0.3 * train.nnz < dropped.nnz < 0.7 * train.nnz and not len(
        set(dropped.row(0)) - set(train.row(0))
    )


# --- feature rows -----------------------------------------------------------------------------------------


def test_feature_rows_are_feature_matrix_rows_and_count_values_by_table_row():
    uspec, _, tables, raw_u, _, _ = _world(4, 200, 30)
    full = feature_matrix(uspec, tables, raw_u)
    rows = FeatureRows.of_tables(uspec, tables, raw_u)
    ids = np.array([5, 0, 199, 5])
    np.testing.assert_array_equal(rows.take(ids), full[ids])
    np.testing.assert_array_equal(rows.column(6, ids), full[ids, 6])
    some = np.arange(0, 200, 3)
    for source in (rows, FeatureRows(matrix=full)):
        values, counts = source.distinct_values(0, 6, some)
        want_values, want_counts = np.unique(full[some, :6], axis=0, return_counts=True)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(counts, want_counts)
    assert sum(len(r) for _, r in rows.blocks(64)) == 200


# --- the whole hybrid path at two sizes -------------------------------------------------------------------


class _Counting(FeatureRows):
    """FeatureRows that remember the most rows one call asked for."""

    largest = 0

    def take(self, ids):
        _Counting.largest = max(_Counting.largest, len(ids))
        return super().take(ids)


def test_the_hybrid_never_builds_an_entities_by_features_matrix(monkeypatch):
    from towerserve.trainer.hybrid import attributes

    for module, name in ((hybrid_fit, "TOWER_BLOCK"), (hybrid_fit, "USER_BATCH"), (attributes, "GRAM_BLOCK")):
        monkeypatch.setattr(module, name, 64)
    uspec, ispec, tables, raw_u, raw_i, pos = _world(5, 600, 400)
    U = _Counting(specs=uspec, tables=tables, raw=raw_u)
    I = _Counting(specs=ispec, tables=tables, raw=raw_i)
    _Counting.largest = 0
    neg = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    final, choice, _ = hybrid_search.train_split(U, I, pos, neg, TINY, 0, search=({},), uspec=uspec)
    # A step's users or distinct items (a 128-row batch), or a block of 64: never all 600 users or all
    # 400 items at once.
    assert 0 < _Counting.largest <= 128
    assert choice.blend.weights is not None and len(final.history["loss"]) == TINY.content_epochs + 2


def _peak(n_items: int) -> tuple[int, float]:
    """Traced numpy peak (bytes) of choosing and refitting the hybrid on a catalogue of ``n_items``."""
    uspec, ispec, tables, raw_u, raw_i, pos = _world(6, 800, n_items)
    U = feature_matrix(uspec, tables, raw_u)
    I = feature_matrix(ispec, tables, raw_i)
    neg = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    tracemalloc.start()
    try:
        final, choice, _ = hybrid_search.train_split(U, I, pos, neg, replace(TINY, epochs=1), 0, search=({},))
        return tracemalloc.get_traced_memory()[1], choice.candidates[0].val_ndcg
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_users_times_items(monkeypatch):
    # Validation ranks ~800 users against the catalogue every epoch and the blend's grid ~24 times:
    # scored whole, that is 800 x items floats (12.8 MB at 4,000 items, several times over for masks,
    # sorts and copies). In blocks, growing the catalogue 8x adds only its O(items) vectors and ids.
    monkeypatch.setattr(scoring, "BLOCK_CELLS", 65_536)
    small, _ = _peak(500)
    large, ndcg = _peak(4_000)
    one_matrix = 800 * 4_000 * 4
    assert large - small < one_matrix / 4, (small, large)
    assert 0 <= ndcg <= 1
