"""Evaluation on a seeded user sample: the sample, the per-user NDCG behind the interval, full evaluation untouched."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from towerserve.server.core.csr import CSR
from towerserve.server.core.ranking_metrics import full_ranking_metrics
from towerserve.trainer import baselines, evalsample, splits
from towerserve.trainer.data import load_dataset
from towerserve.trainer.evalsample import (
    confidence_interval,
    default_eval_users,
    ranking_metrics,
    sample_users,
)


def _random_sets(n_users=400, n_items=50, seed=0) -> tuple[CSR, CSR]:
    rng = np.random.default_rng(seed)
    pairs = np.unique(rng.integers(0, n_users * n_items, size=n_users * 8))
    u, i = np.divmod(pairs, n_items)
    test = rng.random(len(u)) < 0.3
    # Users 0..9 have no test positive: they must never be drawn.
    test &= u >= 10
    train = CSR.from_pairs(u[~test], i[~test], n_users, n_items)
    return train, CSR.from_pairs(u[test], i[test], n_users, n_items)


def test_sample_is_seeded_and_drawn_from_users_with_test_positives():
    _, test = _random_sets()
    eligible = np.flatnonzero(test.row_lengths() > 0)
    a = sample_users(test, 100, seed=3)
    assert a.dtype == np.int64 and len(a) == 100 and np.all(np.diff(a) > 0)
    assert np.isin(a, eligible).all()
    np.testing.assert_array_equal(a, sample_users(test, 100, seed=3))
    assert not np.array_equal(a, sample_users(test, 100, seed=4))
    # As many as there are eligible users (or more, or None) is the whole population.
    assert sample_users(test, len(eligible), seed=3) is None
    assert sample_users(test, None, seed=3) is None
    with pytest.raises(ValueError, match="at least 1 user"):
        sample_users(test, 0, seed=3)


def test_block_sample_takes_whole_runs_but_the_last():
    _, test = _random_sets()
    eligible = np.flatnonzero(test.row_lengths() > 0)
    s = sample_users(test, 75, seed=1, block=20)
    assert len(s) == 75 and np.isin(s, eligible).all()
    runs, counts = np.unique(s // 20, return_counts=True)
    whole = np.array([np.sum(eligible // 20 == r) for r in runs])
    # Every run but one is taken whole (the one cut short completes the count).
    assert np.sum(counts < whole) <= 1
    assert len(runs) < 75 / 10  # a run holds ~20 eligible users: far fewer runs than users
    np.testing.assert_array_equal(s, sample_users(test, 75, seed=1, block=20))


def test_default_sample_size():
    assert default_eval_users(10_000, 1_000) is None  # the seed scale: everyone, as before
    assert default_eval_users(20_000, 50_000) is None  # 10⁹ cells exactly: still everyone
    assert default_eval_users(20_000, 100_000) == 2_000  # 2 x 10⁸ / 10⁵
    assert default_eval_users(1_000_000, 1_000_000) == 1_000  # 200 by the budget, raised to the floor
    assert default_eval_users(1_000_000, 2_000) == 10_000  # 10⁵ by the budget, capped
    assert default_eval_users(1_500, 1_000_000) == 1_000


def test_full_evaluation_is_full_ranking_metrics_unchanged():
    train, test = _random_sets()
    scores = np.random.default_rng(5).random((train.n_rows, train.n_cols)).astype(np.float32)
    row = ranking_metrics(lambda u: scores[u], test, train)
    assert row == full_ranking_metrics(lambda u: scores[u], test, train)
    assert "eval_sample" not in row and "ndcg@10_ci95_low" not in row


@pytest.mark.parametrize("ties", [False, True])
def test_interval_is_around_the_sampled_ndcg(ties):
    train, test = _random_sets()
    rng = np.random.default_rng(9)
    # Integer scores tie heavily (like MostPopular's counts): the per-user values must still match.
    scores = rng.integers(0, 4, (train.n_rows, train.n_cols)) if ties else rng.random((400, 50))
    scores = scores.astype(np.float32)
    users = sample_users(test, 150, seed=2)
    row = ranking_metrics(lambda u: scores[u], test, train, users=users)
    assert row["eval_sample"] == 150.0 and row["users"] == 150.0
    full = full_ranking_metrics(lambda u: scores[u], test, train, users=users)
    assert {k: row[k] for k in full} == full
    per_user = evalsample.per_user_ndcg(scores[users], users, test, train, k=10, kmax=20)
    assert len(per_user) == 150
    assert math.isclose(per_user.mean(), row["ndcg@10"], rel_tol=1e-12)
    half = 1.959963984540054 * per_user.std(ddof=1) / math.sqrt(150)
    assert math.isclose(row["ndcg@10_ci95_low"], row["ndcg@10"] - half, rel_tol=1e-9)
    assert math.isclose(row["ndcg@10_ci95_high"], row["ndcg@10"] + half, rel_tol=1e-9)
    assert row["ndcg@10_ci95_low"] < row["ndcg@10"] < row["ndcg@10_ci95_high"]


def test_confidence_interval_by_hand():
    # mean 0.5, sd (ddof 1) of [0.4, 0.6, 0.4, 0.6] = sqrt(0.04/3) = 0.11547; half = 1.96 * 0.11547 / 2
    lo, hi = confidence_interval(np.array([0.4, 0.6, 0.4, 0.6]))
    assert math.isclose(lo, 0.5 - 0.113158, abs_tol=1e-5) and math.isclose(hi, 0.5 + 0.113158, abs_tol=1e-5)
    # [0, 1, 0, 1]: half = 1.96 * 0.57735 / 2 = 0.565792 reaches past both ends; NDCG lives in [0, 1].
    assert confidence_interval(np.array([0.0, 1.0, 0.0, 1.0])) == (0.0, 1.0)
    assert all(math.isnan(x) for x in confidence_interval(np.array([0.3])))


def test_every_baseline_is_judged_on_the_same_sample(small_data):
    ds = load_dataset(small_data)
    split = splits.holdout_split(ds.positives, ds.users["user_id"].to_numpy())
    users = sample_users(split.test, 60, seed=42)
    res = baselines.evaluate_baselines(split.train, split.test, small_data, users=users)
    assert set(res) == {"random", "mostpop", "itemknn", "ease", "oracle"}
    for name, row in res.items():
        assert row["eval_sample"] == 60.0, name
        assert row["users"] == res["random"]["users"], name
        assert row["ndcg@10_ci95_low"] <= row["ndcg@10"] <= row["ndcg@10_ci95_high"], name
    oracle = baselines.OracleScores(small_data)
    alone = full_ranking_metrics(oracle, split.test, split.train, users=users)
    assert res["oracle"]["ndcg@10"] == alone["ndcg@10"]
    # Without a sample, the rows are what they were: no sample keys, everyone judged.
    full = baselines.evaluate_baselines(split.train, split.test, small_data)
    assert "eval_sample" not in full["mostpop"] and full["mostpop"]["users"] > 60


def test_itemknn_is_skipped_above_its_limit(small_data):
    ds = load_dataset(small_data)
    split = splits.holdout_split(ds.positives, ds.users["user_id"].to_numpy())
    res = baselines.evaluate_baselines(split.train, split.test, small_data, knn_max_items=59)
    assert res["itemknn"] is None and res["ease"] is not None
    (note,) = baselines.skipped_notes(res, ds.n_items, knn_max_items=59)
    assert note.startswith("ItemKNN skipped: 60 items is above its limit of 59")


def test_long_form_data_samples_whole_generator_blocks(tmp_path):
    from towerserve.trainer.synth import generator as synth

    synth.generate(tmp_path, n_users=400, n_items=40, seed=3, long_form=True, progress=False)
    block = baselines.OracleScores.replay_block(tmp_path)
    assert (
        block == synth.block_size(40) == json.loads((tmp_path / "generator.json").read_text())["block_users"]
    )
    assert baselines.OracleScores.replay_block(None) == 1


def test_train_judges_every_model_on_one_sample(small_data, bert, tmp_path):
    from towerserve.trainer.text import EncoderConfig
    from towerserve.trainer.train import FitConfig, TrainConfig, train

    cfg = TrainConfig(
        models=("two_tower",),
        fit=FitConfig(epochs=1, batch_size=512, patience=0),
        encoder=EncoderConfig(model=str(bert), cache_dir=None),
        progress=False,
        cold=False,
        eval_users=80,
    )
    metrics = train(small_data, tmp_path / "art", cfg)
    rows = metrics["holdout"]
    assert {r["eval_sample"] for r in rows.values()} == {80.0}
    assert len({r["users"] for r in rows.values()}) == 1
    for name, row in rows.items():
        assert row["ndcg@10_ci95_low"] <= row["ndcg@10"] <= row["ndcg@10_ci95_high"], name
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["evaluation"] == {"holdout": {"sample": 80, "seed": 42}}
    assert json.loads((tmp_path / "art" / "metrics.json").read_text()) == metrics
    report = (tmp_path / "art" / "report" / "report.md").read_text()
    assert "Judged on a fixed sample of 80 users (seed 42)" in report
    assert f"two_tower [{rows['two_tower']['ndcg@10_ci95_low']:.4f}, " in report


def test_the_new_items_segment_ranks_held_out_items_among_themselves():
    positives = CSR.from_dense(np.random.default_rng(3).random((60, 40)) < 0.25)
    split = splits.cold_split(positives, np.arange(60), user_frac=0.2, item_frac=0.25, seed=1)
    cold = np.zeros(40, bool)
    cold[split.cold_items] = True
    truth = split.test.dense_rows(np.arange(60)).astype(np.float64)
    # Knowing the test positives ranks them first among new items: NDCG 1, whatever the warm items score.
    perfect = lambda u: truth[u] + 10.0 * ~cold  # noqa: E731
    assert evalsample.new_item_ndcg(perfect, split) == pytest.approx(1.0)
    # The reverse order puts every new-item positive below every new-item non-positive.
    worst = evalsample.new_item_ndcg(lambda u: -truth[u], split)
    assert worst is not None and worst < 0.5
    by_hand = full_ranking_metrics(
        lambda u: np.where(cold, -truth[u], -100.0),
        CSR.from_dense(truth.astype(bool) & cold),
        split.train,
        ks=(10,),
    )["ndcg@10"]
    assert worst == pytest.approx(by_hand)
    # No held-out items (the holdout split): no segment.
    assert evalsample.new_item_ndcg(perfect, splits.holdout_split(positives, np.arange(60))) is None
