"""trainer/synth/pooled.py: pooled sampling is reproducible, hits its density, draws positives only from
the pool, and its Oracle (the noiseless logit) ranks as the true probabilities do and beats MostPopular."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from towerserve.trainer import baselines, splits
from towerserve.trainer.data import GENERATOR_FILE, LONG_FILE, load_dataset
from towerserve.trainer.synth import generator as synth
from towerserve.trainer.synth import pooled as synth_pooled


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def pooled(root: Path, n_users: int = 400, n_items: int = 20_000, density: float = 0.001, **kw) -> dict:
    return synth.generate(
        root,
        n_users,
        n_items,
        seed=5,
        density=density,
        long_form=True,
        progress=False,
        sampling="pooled",
        **kw,
    )


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    """2,000 users x 5,000 items, forced pooled, ~20 positives per user."""
    root = tmp_path_factory.mktemp("pooled")
    synth.generate(
        root, 2000, 5000, seed=11, density=0.004, long_form=True, progress=False, sampling="pooled"
    )
    return root


def test_same_seed_gives_identical_files(tmp_path):
    pooled(tmp_path / "a")
    pooled(tmp_path / "b")
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    pooled(tmp_path / "c", pool=1024)
    assert digests(tmp_path / "c")[LONG_FILE] != digests(tmp_path / "a")[LONG_FILE]


def test_generator_json_records_the_pool(medium):
    meta = json.loads((medium / GENERATOR_FILE).read_text())
    assert meta["sampling"] == "pooled" and meta["pool"] == synth_pooled.default_pool(5000, 0.004) == 2048
    assert meta["form"] == "long"


def test_density_hits_the_target_and_the_true_probabilities(medium):
    meta = json.loads((medium / GENERATOR_FILE).read_text())
    expected = sum(float(p.sum(dtype=np.float64)) for _, p in synth.true_probabilities(medium))
    # ~40,000 positives: Poisson-like spread ~200; the intercept's sample adds a little bias.
    assert abs(meta["positives"] - 40_000) < 0.03 * 40_000
    assert abs(meta["positives"] - expected) < 5 * np.sqrt(expected)
    pairs = pd.read_csv(medium / LONG_FILE)
    assert len(pairs) == meta["positives"] and not pairs.duplicated().any()


def test_positives_come_only_from_the_pool(tmp_path):
    pooled(tmp_path)
    world = synth.load_world(tmp_path)
    meta = json.loads((tmp_path / GENERATOR_FILE).read_text())
    m, n_items = meta["pool"], meta["items"]
    draws = list(synth_pooled._block_draws(world, synth_pooled._Cells(world), m, 0))
    rows = np.concatenate([r for r, _, _ in draws])
    items = np.concatenate([i for _, i, _ in draws])
    drawn = set((rows * n_items + items).tolist())
    # Every user's pool: the distinct items of Poisson(M / n) draws per cell, ~1,950 of 20,000 here.
    sizes = np.bincount(rows[np.unique(rows * n_items + items, return_index=True)[1]], minlength=400)
    assert abs(sizes.mean() - n_items * -np.expm1(-m / n_items)) < 0.02 * m
    pairs = pd.read_csv(tmp_path / LONG_FILE)
    uid = {u: i for i, u in enumerate(world.users["user_id"])}
    iid = {u: i for i, u in enumerate(world.items["item_id"])}
    keys = pairs["user_id"].map(uid).to_numpy() * n_items + pairs["item_id"].map(iid).to_numpy()
    assert len(keys) > 100 and set(keys.tolist()) <= drawn  # block 0 holds every user here


def test_oracle_ranks_like_the_true_probabilities(medium):
    world = synth.load_world(medium)
    users = np.arange(20)
    probs = next(iter(synth.true_probabilities(medium)))[1][:20]
    oracle = baselines.OracleScores(medium)(users)
    np.testing.assert_array_equal(oracle, world.logits(users, None))
    assert baselines.OracleScores.replay_block(medium) == 1
    # P(positive) is increasing in the logit: the same order, up to float32 ties among tiny probabilities.
    for p, z in zip(probs, oracle):
        top = np.argsort(-z)[:50]
        assert np.all(np.diff(p[top]) <= 1e-9)


def test_oracle_beats_most_popular(medium):
    ds = load_dataset(medium)
    split = splits.holdout_split(ds.positives, ds.users["user_id"].to_numpy(), seed=0)
    res = baselines.evaluate_baselines(split.train, split.test, medium, collaborative=False)
    assert res["oracle"]["ndcg@10"] > 2 * res["mostpop"]["ndcg@10"] > 0
    assert res["mostpop"]["ndcg@10"] > res["random"]["ndcg@10"]


def test_auto_keeps_dense_below_the_threshold_and_for_matrix_form():
    cells = synth_pooled.AUTO_POOLED_CELLS
    assert synth_pooled.choose_sampling("auto", 10_000, 1_000, True) == "dense"
    assert synth_pooled.choose_sampling("auto", cells // 1000 + 1, 1000, True) == "pooled"
    assert synth_pooled.choose_sampling("auto", 10**6, 10**6, False) == "dense"


def test_dense_generator_json_has_no_pool_keys(small_data):
    meta = json.loads((small_data / GENERATOR_FILE).read_text())
    assert "sampling" not in meta and "pool" not in meta


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"long_form": False}, "long form only"),
        ({"sampling": "sparse"}, "sampling must be one of"),
        ({"pool": 0}, "pool must be >= 1"),
        ({"pool": 16, "density": 0.05}, "use a larger --pool"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, message):
    args = {"long_form": True, "sampling": "pooled", "density": 0.005, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        synth.generate(tmp_path, 50, 400, **args)


def test_cli_generate_pooled(tmp_path):
    from towerserve.clients.cli import main

    rc = main(
        ["generate", "--out", str(tmp_path), "--users", "100", "--items", "2000", "--density", "0.005"]
        + ["--long", "--sampling", "pooled", "--pool", "1024", "--quiet"]
    )
    assert rc in (0, None)
    meta = json.loads((tmp_path / GENERATOR_FILE).read_text())
    assert meta["sampling"] == "pooled" and meta["pool"] == 1024


@pytest.mark.slow
def test_oracle_beats_most_popular_at_a_larger_catalogue(tmp_path):
    # 5,000 x 200,000 = 10⁹ cells: the dense generator would draw them all; pooled draws ~10⁷.
    synth.generate(
        tmp_path, 5000, 200_000, seed=3, density=1e-4, long_form=True, progress=False, sampling="pooled"
    )
    ds = load_dataset(tmp_path)
    split = splits.holdout_split(ds.positives, ds.users["user_id"].to_numpy(), seed=0)
    users = np.arange(0, 5000, 5)
    res = baselines.evaluate_baselines(split.train, split.test, tmp_path, collaborative=False, users=users)
    assert res["oracle"]["ndcg@10"] > 2 * res["mostpop"]["ndcg@10"]
