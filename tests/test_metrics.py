"""server/core/ranking_metrics.py: full-ranking metrics against hand-computed cases, scikit-learn, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import ndcg_score, roc_auc_score

from towerserve.server.core.csr import CSR
from towerserve.server.core.ranking_metrics import (
    dense_score_fn,
    full_ranking_metrics,
    notebook_metric,
    topk_indices,
)


def csr(rows: list[list[int]], n_cols: int) -> CSR:
    """A CSR from one list of column ids per row."""
    r = [u for u, cols in enumerate(rows) for _ in cols]
    c = [i for cols in rows for i in cols]
    return CSR.from_pairs(np.array(r, dtype=np.int64), np.array(c, dtype=np.int64), len(rows), n_cols)


def metrics(scores, test, train=None, **kw):
    return full_ranking_metrics(dense_score_fn(np.asarray(scores, dtype=np.float32)), test, train, **kw)


L2, L3, L4, L5 = (math.log2(x) for x in (2, 3, 4, 5))

# One user, six items. Item 0 is a training positive (masked); items 1 and 4 are held out.
#   candidates by score: 1 (.8, rel), 2 (.7), 3 (.6), 4 (.5, rel), 5 (.4)  -> relevant at ranks 1 and 4
ONE_SCORES = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]]
ONE_TEST = csr([[1, 4]], 6)
ONE_TRAIN = csr([[0]], 6)


def test_topk_metrics_by_hand():
    m = metrics(ONE_SCORES, ONE_TEST, ONE_TRAIN, ks=(2, 5))
    # @2: top = [1, 2], hits [1, 0]
    assert m["hitrate@2"] == pytest.approx(1.0)
    assert m["precision@2"] == pytest.approx(1 / 2)
    assert m["recall@2"] == pytest.approx(1 / 2)
    # DCG = 1/log2(2); ideal with min(2 relevant, 2) on top = 1/log2(2) + 1/log2(3)
    assert m["ndcg@2"] == pytest.approx((1 / L2) / (1 / L2 + 1 / L3))  # 0.61315
    # AP@2 = (precision at the hit at rank 1 = 1/1) / min(2, 2) = 0.5
    assert m["map@2"] == pytest.approx(0.5)
    # @5: top = [1, 2, 3, 4, 5] (the masked item 0 never appears), hits [1, 0, 0, 1, 0]
    assert m["hitrate@5"] == pytest.approx(1.0)
    assert m["precision@5"] == pytest.approx(2 / 5)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["ndcg@5"] == pytest.approx((1 / L2 + 1 / L5) / (1 / L2 + 1 / L3))  # 0.87722
    # AP@5 = (1/1 + 2/4) / min(2, 5) = 0.75
    assert m["map@5"] == pytest.approx(0.75)
    # Coverage: items recommended to anyone / all items: {1, 2} of 6, {1..5} of 6.
    assert m["coverage@2"] == pytest.approx(2 / 6)
    assert m["coverage@5"] == pytest.approx(5 / 6)
    assert m["users"] == 1.0


def test_mrr_and_auc_by_hand():
    m = metrics(ONE_SCORES, ONE_TEST, ONE_TRAIN)
    assert m["mrr"] == pytest.approx(1.0)  # first relevant at rank 1
    # Positives .8 and .5 against negatives .7 .6 .4 (item 0 masked, not a negative):
    # .8 beats 3, .5 beats 1 -> 4 of 2 x 3 pairs.
    assert m["auc"] == pytest.approx(4 / 6)


def test_masked_item_is_neither_relevant_nor_irrelevant():
    # Without the mask item 0 (.9) would be a negative ranked first: the first relevant would be at rank 2.
    unmasked = metrics(ONE_SCORES, ONE_TEST, ks=(2,))
    assert unmasked["mrr"] == pytest.approx(1 / 2)
    assert unmasked["precision@2"] == pytest.approx(1 / 2)  # top = [0, 1]
    assert unmasked["auc"] == pytest.approx(4 / 8)  # negatives 0, 2, 3, 5: .8 beats 3, .5 beats 1
    masked = metrics(ONE_SCORES, ONE_TEST, ONE_TRAIN)
    assert masked["mrr"] == pytest.approx(1.0)


def test_training_positive_that_is_also_a_test_positive_is_not_counted():
    # Item 1 is in both: it is masked, so only item 4 is relevant; ranking 2, 3, 4, 5 puts it 3rd.
    m = metrics(ONE_SCORES, ONE_TEST, csr([[0, 1]], 6), ks=(3,))
    assert m["recall@3"] == pytest.approx(1.0)  # 1 of 1 relevant
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / L4) / (1 / L2))  # 0.5
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["auc"] == pytest.approx(1 / 3)  # .5 beats .4 only, of negatives .7 .6 .4


def test_masked_items_are_never_returned_and_never_covered():
    # Two users, four items; everything but item 3 is a training positive of user 0.
    scores = [[9.0, 8.0, 7.0, 1.0], [1.0, 2.0, 3.0, 4.0]]
    test = csr([[3], [0]], 4)
    train = csr([[0, 1, 2], []], 4)
    m = metrics(scores, test, train, ks=(1, 4))
    # user 0 can only be shown item 3 (a hit at rank 1); user 1 sees 3, 2, 1, 0 (hit at rank 4).
    assert m["hitrate@1"] == pytest.approx(1 / 2)
    assert m["precision@4"] == pytest.approx((1 / 4 + 1 / 4) / 2)
    assert m["mrr"] == pytest.approx((1 + 1 / 4) / 2)
    # coverage@1: {3} from both users; coverage@4: user 0 adds nothing masked, user 1 adds all four.
    assert m["coverage@1"] == pytest.approx(1 / 4)
    assert m["coverage@4"] == pytest.approx(1.0)
    only0 = metrics(scores, test, train, ks=(4,), users=np.array([0]))
    assert only0["coverage@4"] == pytest.approx(1 / 4)  # items 0-2 are masked for user 0: never covered
    # auc: user 0 has no negative left (skipped); user 1's positive is below all three negatives.
    assert m["auc"] == pytest.approx(0.0)


def test_mrr_ties_use_the_expected_rank():
    # Items 0-3 tie at .5 with two of them (2, 3) relevant; item 4 (.9) is above them all.
    # expected rank = greater + 1 + (tied - tied_rel) / (tied_rel + 1) = 1 + 1 + (4 - 2) / 3 = 8/3
    m = metrics([[0.5, 0.5, 0.5, 0.5, 0.9, 0.1]], csr([[2, 3]], 6))
    assert m["mrr"] == pytest.approx(3 / 8)
    # auc with ties counted half: each positive vs 0 (tie), 1 (tie), 4 (lose), 5 (win) = 2 -> 4 / (2 x 4)
    assert m["auc"] == pytest.approx(0.5)


def test_mrr_ties_only_count_the_best_relevant_score():
    # Best relevant score .7 (item 1) ties with item 0 (irrelevant) and item 2 (.3, relevant) is lower.
    # greater = 1 (item 3 at .9); tied = 2, tied_rel = 1 -> rank = 1 + 1 + (2 - 1) / 2 = 2.5
    m = metrics([[0.7, 0.7, 0.3, 0.9, 0.1]], csr([[1, 2]], 5))
    assert m["mrr"] == pytest.approx(1 / 2.5)
    # A tie group made only of relevant items costs nothing: rank = 0 + 1 + (2 - 2) / 3 = 1
    m = metrics([[0.7, 0.7, 0.3]], csr([[0, 1]], 3))
    assert m["mrr"] == pytest.approx(1.0)


def test_users_without_test_positives_are_skipped():
    # User 1 has no held-out positives, user 2's only one is also a training positive: only user 0 counts.
    scores = np.array(ONE_SCORES * 3)
    test = csr([[1, 4], [], [3]], 6)
    train = csr([[0], [2], [3]], 6)
    m = metrics(scores, test, train, ks=(2, 5))
    assert m["users"] == 1.0
    assert m == metrics(ONE_SCORES, ONE_TEST, ONE_TRAIN, ks=(2, 5))


def test_no_evaluable_user_gives_zeros():
    m = metrics([[0.1, 0.2]], csr([[]], 2))
    assert m["users"] == 0.0 and m["ndcg@10"] == 0.0 and m["mrr"] == 0.0 and m["auc"] == 0.0


def test_users_argument_restricts_the_evaluation():
    # User 0: relevant at rank 1 (ndcg@1 = 1); user 1: relevant last (ndcg@1 = 0).
    scores = [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]
    test = csr([[0], [2]], 3)
    assert metrics(scores, test, ks=(1,))["ndcg@1"] == pytest.approx(0.5)
    assert metrics(scores, test, ks=(1,), users=np.array([0]))["ndcg@1"] == pytest.approx(1.0)
    only1 = metrics(scores, test, ks=(1,), users=np.array([1, 1]))  # duplicates count once
    assert only1["ndcg@1"] == pytest.approx(0.0) and only1["users"] == 1.0


def random_problem(seed: int, n_users: int = 60, n_items: int = 40, levels: int | None = None):
    """Random scores (ties when ``levels`` is set), a ~15 % train mask and ~10 % test positives."""
    rng = np.random.default_rng(seed)
    if levels:
        scores = rng.integers(0, levels, size=(n_users, n_items)).astype(np.float32)
    else:
        scores = rng.permutation(n_users * n_items).reshape(n_users, n_items).astype(np.float32)
    train_dense = rng.random((n_users, n_items)) < 0.15
    test_dense = (rng.random((n_users, n_items)) < 0.10) & ~train_dense
    test_dense[0] = False  # a user with nothing held out
    return scores, CSR.from_dense(test_dense), CSR.from_dense(train_dense), test_dense, train_dense


def test_chunking_does_not_change_the_result():
    scores, test, train, _, _ = random_problem(1, n_users=50, levels=5)
    calls = []
    chunked = full_ranking_metrics(
        dense_score_fn(scores), test, train, chunk_users=7, on_chunk=lambda: calls.append(1)
    )
    whole = full_ranking_metrics(dense_score_fn(scores), test, train)
    assert chunked.keys() == whole.keys()
    for key in whole:
        assert chunked[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-12), key
    # Users without test positives (user 0 at least) are dropped before chunking.
    n_with_test = int((test.row_lengths() > 0).sum())
    assert n_with_test < 50
    assert len(calls) == math.ceil(n_with_test / 7)


def test_on_chunk_may_abandon_the_evaluation():
    scores, test, train, _, _ = random_problem(2)

    def deadline():
        raise TimeoutError("over budget")

    with pytest.raises(TimeoutError):
        full_ranking_metrics(dense_score_fn(scores), test, train, on_chunk=deadline)


@pytest.mark.parametrize("levels", [None, 4])
def test_auc_matches_sklearn_per_user(levels):
    scores, test, train, test_dense, train_dense = random_problem(3, levels=levels)
    expected = []
    for u in range(scores.shape[0]):
        keep = ~train_dense[u]
        y = test_dense[u][keep]
        if 0 < y.sum() < len(y):
            expected.append(roc_auc_score(y, scores[u][keep]))
    m = full_ranking_metrics(dense_score_fn(scores), test, train)
    assert m["auc"] == pytest.approx(np.mean(expected), rel=1e-9)


@pytest.mark.parametrize("k", [1, 5, 10, 20])
def test_ndcg_matches_sklearn_per_user(k):
    scores, test, train, test_dense, train_dense = random_problem(4)  # distinct scores: no tie conventions
    expected = []
    for u in range(scores.shape[0]):
        keep = ~train_dense[u]
        y = test_dense[u][keep]
        if y.sum():
            expected.append(ndcg_score([y.astype(float)], [scores[u][keep]], k=k))
    m = full_ranking_metrics(dense_score_fn(scores), test, train, ks=(k,))
    assert m["users"] == len(expected)
    assert m[f"ndcg@{k}"] == pytest.approx(np.mean(expected), rel=1e-6)


def test_recall_and_precision_match_a_plain_loop():
    scores, test, train, test_dense, train_dense = random_problem(5)
    k = 10
    rec, prec, hit = [], [], []
    for u in range(scores.shape[0]):
        cand = np.flatnonzero(~train_dense[u])
        rel = test_dense[u][cand]
        if not rel.any():
            continue
        top = cand[np.argsort(-scores[u][cand], kind="stable")[:k]]
        h = test_dense[u][top].sum()
        rec.append(h / rel.sum())
        prec.append(h / k)
        hit.append(h > 0)
    m = full_ranking_metrics(dense_score_fn(scores), test, train, ks=(k,))
    assert m["recall@10"] == pytest.approx(np.mean(rec))
    assert m["precision@10"] == pytest.approx(np.mean(prec))
    assert m["hitrate@10"] == pytest.approx(np.mean(hit))


def test_topk_indices_order():
    scores = np.array(
        [[0.1, 0.9, 0.5, 0.7, 0.3], [5.0, 4.0, 3.0, 2.0, 1.0], [-np.inf, 1.0, -np.inf, 2.0, 0.0]],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(topk_indices(scores, 3), [[1, 3, 2], [0, 1, 2], [3, 1, 4]])
    np.testing.assert_array_equal(topk_indices(scores, 10)[0], [1, 3, 2, 4, 0])  # k capped at n_cols
    assert topk_indices(scores, 0).shape == (3, 0)
    rng = np.random.default_rng(0)
    big = rng.random((20, 300)).astype(np.float32)
    np.testing.assert_array_equal(topk_indices(big, 17), np.argsort(-big, axis=1)[:, :17])


def test_nan_scores_raise():
    scores = np.array([[0.1, np.nan, 0.3]])
    with pytest.raises(ValueError, match="NaN"):
        full_ranking_metrics(dense_score_fn(scores), csr([[0]], 3))


@pytest.mark.parametrize("shape", [(1, 2), (2, 3), (3,)])
def test_wrong_score_shape_raises(shape):
    with pytest.raises(ValueError, match=r"score_fn returned .*expected \(1, 3\)"):
        full_ranking_metrics(lambda u: np.zeros(shape), csr([[0]], 3))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="ks must be positive"):
        metrics([[0.1, 0.2]], csr([[0]], 2), ks=(0, 5))
    with pytest.raises(ValueError, match="differ"):
        metrics([[0.1, 0.2]], csr([[0]], 2), train=csr([[0]], 3))


def test_notebook_metric_is_the_mean_score():
    assert notebook_metric(np.array([0.2, 0.4, 0.9])) == pytest.approx(0.5)  # (0.2 + 0.4 + 0.9) / 3
    with pytest.raises(ValueError):
        notebook_metric(np.array([]))


# --------------------------------------------------------------------------------------------- properties

problems = st.integers(2, 8).flatmap(
    lambda n_items: st.tuples(
        hnp.arrays(np.int64, (5, n_items), elements=st.integers(0, 6)),  # small ints: ties are common
        hnp.arrays(np.bool_, (5, n_items)),
        hnp.arrays(np.bool_, (5, n_items)),
    )
)


@settings(max_examples=60, deadline=None)
@given(problems)
def test_invariant_under_strictly_increasing_transform(problem):
    raw, test_dense, train_dense = problem
    test, train = CSR.from_dense(test_dense), CSR.from_dense(train_dense)
    base = metrics(raw.astype(np.float32), test, train, ks=(1, 3, 10))
    # x -> x^3 + 2x - 7 is strictly increasing and exact in float32 for these small integers.
    moved = metrics((raw**3 + 2 * raw - 7).astype(np.float32), test, train, ks=(1, 3, 10))
    for key in base:
        assert moved[key] == pytest.approx(base[key], abs=1e-12), key
    for key, value in base.items():
        assert 0.0 <= value <= (5.0 if key == "users" else 1.0), key


@settings(max_examples=60, deadline=None)
@given(problems)
def test_perfect_ranking_scores_one(problem):
    raw, test_dense, train_dense = problem
    rel = test_dense & ~train_dense
    # Every relevant item strictly above every other candidate; noise only orders within each group.
    scores = (rel * 100 + raw).astype(np.float32)
    m = metrics(scores, CSR.from_dense(test_dense), CSR.from_dense(train_dense), ks=(1, 3, 10))
    n_eval = int((rel.sum(axis=1) > 0).sum())
    assert m["users"] == n_eval
    if n_eval:
        for key in ("ndcg@1", "ndcg@3", "ndcg@10", "map@3", "map@10", "hitrate@1", "mrr"):
            assert m[key] == pytest.approx(1.0), key
        n_neg = (~train_dense & ~rel).sum(axis=1)
        if ((rel.sum(axis=1) > 0) & (n_neg > 0)).any():
            assert m["auc"] == pytest.approx(1.0)


def test_positive_scored_minus_inf_stays_in_range():
    # Item 1 is masked; the positive (item 0) is -inf, below the only negative (item 2, .2):
    # AUC = 0 of 1 pairs; first relevant at rank 2 (behind item 2) -> MRR 1/2.
    m = metrics([[-np.inf, 0.5, 0.2]], csr([[0]], 3), csr([[1]], 3), ks=(1,))
    assert m["auc"] == pytest.approx(0.0)
    assert m["mrr"] == pytest.approx(1 / 2)
