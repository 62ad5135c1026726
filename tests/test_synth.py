"""trainer/synth/generator.py: reproducible files, both regimes, the seed schema, density, long form, oracle replay, notebook scale."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from towerserve.server.core.ranking_metrics import full_ranking_metrics
from towerserve.trainer import baselines, splits
from towerserve.trainer.data import (
    GENERATOR_FILE,
    ITEMS_FILE,
    LONG_FILE,
    MATRIX_FILE,
    TRUTH_FILE,
    USERS_FILE,
    load_dataset,
)
from towerserve.trainer.synth import generator as synth


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def dense_positives(root: Path) -> np.ndarray:
    ds = load_dataset(root)
    return ds.positives.dense_rows(np.arange(ds.n_users))


# sha256 of generator version 1's files for 200 x 40, seed 3 (computed before the latent regime
# existed): the content regime must keep writing exactly these bytes.
CONTENT_DIGESTS = {
    False: {
        GENERATOR_FILE: "9f4e55e338ab5489cd091de0fa1ee305f1903c46927f66d6a3e28d7a8f0f78b0",
        ITEMS_FILE: "373a8f7c44ad6c4f3c51ce410fe574d423d961d5b0d291419dbace6301e19a21",
        TRUTH_FILE: "bcc13297e0991481c4cfc3d41c1b9ba2f2153233a0b439a4de758698918ca774",
        MATRIX_FILE: "2ddd4faa05d435db0fa0e6bf17fe4fc48713981c2a8bc224cf428d0994fe5962",
        USERS_FILE: "33a6a794644c6fc4511cb66b4e3c3880f1ee289eb3c8c37a3f5b30739efb13b5",
    },
    True: {
        GENERATOR_FILE: "80ef40af1dd8f9de9fb9294c9685cff092b29f0de6cd71a84ec406eaa5c5c187",
        LONG_FILE: "26cf42993f29f5bab87f460c5b11d3a26ec83dad7f4b88130f515d910f19d604",
        ITEMS_FILE: "373a8f7c44ad6c4f3c51ce410fe574d423d961d5b0d291419dbace6301e19a21",
        USERS_FILE: "33a6a794644c6fc4511cb66b4e3c3880f1ee289eb3c8c37a3f5b30739efb13b5",
    },
}


@pytest.mark.parametrize("long_form", [False, True])
def test_content_regime_is_byte_identical_to_version_1(tmp_path, long_form):
    synth.generate(
        tmp_path, n_users=200, n_items=40, seed=3, long_form=long_form, progress=False, regime="content"
    )
    assert digests(tmp_path) == CONTENT_DIGESTS[long_form]


@pytest.mark.parametrize("regime", synth.REGIMES)
@pytest.mark.parametrize("long_form", [False, True])
def test_same_seed_gives_identical_bytes(tmp_path, long_form, regime):
    kw = dict(n_users=200, n_items=40, seed=3, long_form=long_form, progress=False, regime=regime)
    a = synth.generate(tmp_path / "a", **kw)
    b = synth.generate(tmp_path / "b", **kw)
    assert a == b
    da, db = digests(tmp_path / "a"), digests(tmp_path / "b")
    expected = {USERS_FILE, ITEMS_FILE, GENERATOR_FILE} | (
        {LONG_FILE} if long_form else {MATRIX_FILE, TRUTH_FILE}
    )
    assert set(da) == expected
    assert da == db


def test_different_seed_gives_different_data(tmp_path):
    synth.generate(tmp_path / "a", n_users=200, n_items=40, seed=3, progress=False)
    synth.generate(tmp_path / "b", n_users=200, n_items=40, seed=4, progress=False)
    da, db = digests(tmp_path / "a"), digests(tmp_path / "b")
    for name in (USERS_FILE, ITEMS_FILE, MATRIX_FILE, TRUTH_FILE):
        assert da[name] != db[name], name
    assert (dense_positives(tmp_path / "a") != dense_positives(tmp_path / "b")).any()


def test_files_follow_the_seed_schema(small_data):
    users = pd.read_csv(small_data / USERS_FILE, dtype=str)
    items = pd.read_csv(small_data / ITEMS_FILE, dtype=str)
    matrix = pd.read_csv(small_data / MATRIX_FILE, dtype={"user_id": str})
    assert users.shape == (300, 4) and list(users.columns) == ["user_id", "age", "profession", "personality"]
    assert items.shape == (60, 5) and list(items.columns) == [
        "item_id",
        "description",
        "features",
        "price",
        "category",
    ]
    assert matrix.shape == (300, 61)
    assert list(matrix.columns) == ["user_id"] + items["item_id"].tolist()
    assert matrix["user_id"].tolist() == users["user_id"].tolist()
    assert set(np.unique(matrix.iloc[:, 1:].to_numpy())) <= {0, 1}
    ages = users["age"].astype(int)
    assert ages.between(18, 90).all()
    assert set(users["personality"]) <= set(synth.PERSONALITIES)
    assert set(users["profession"]) <= set(synth.PROFESSIONS)
    assert set(items["category"]) <= set(synth.CATEGORIES)
    assert (items["price"].astype(int) >= 1).all()
    assert not users.isna().any().any() and not items.isna().any().any()


def test_user_ids_are_prefixed_by_personality_and_count_up(small_data):
    users = pd.read_csv(small_data / USERS_FILE, dtype=str)
    counters: dict[str, int] = {}
    for uid, personality in zip(users["user_id"], users["personality"]):
        prefix = synth.PERSONALITIES[personality][0]
        counters[prefix] = counters.get(prefix, 0) + 1
        assert uid == f"{prefix}_{counters[prefix]:04d}", (uid, personality)
    assert re.fullmatch(r"[a-z]{3}_0001", users["user_id"].iloc[0])
    items = pd.read_csv(small_data / ITEMS_FILE, dtype=str)
    assert items["item_id"].tolist() == [f"item_{i:04d}" for i in range(1, 61)]


def test_descriptions_name_the_category(small_data):
    items = pd.read_csv(small_data / ITEMS_FILE, dtype=str)
    for desc, category, features in zip(items["description"], items["category"], items["features"]):
        assert category in desc, (category, desc)
        attrs = synth.CATEGORIES[category][1]
        assert sum(a in desc for a in attrs) >= 2, desc  # and at least two of the category's attributes
        phrases = features.split(", ")
        assert 2 <= len(phrases) <= 5 and len(set(phrases)) == len(phrases)


def test_true_probabilities_file(small_data):
    truth = np.load(small_data / TRUTH_FILE)
    assert truth.shape == (300, 60) and truth.dtype == np.float32
    assert ((truth > 0) & (truth < 1)).all()
    positives = dense_positives(small_data)
    # The ones were drawn from these probabilities: positives sit on higher probabilities.
    assert truth[positives].mean() > 1.5 * truth[~positives].mean()
    meta = json.loads((small_data / GENERATOR_FILE).read_text())
    assert meta["users"] == 300 and meta["items"] == 60 and meta["seed"] == 7 and meta["form"] == "matrix"
    assert meta["positives"] == positives.sum()
    assert abs(truth.mean() - meta["target_density"]) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("regime", synth.REGIMES)
@pytest.mark.parametrize("target", [synth.NOTEBOOK_DENSITY, 0.03])
def test_density_hits_the_target(tmp_path, target, regime):
    summary = synth.generate(
        tmp_path, n_users=2000, n_items=500, seed=5, density=target, progress=False, regime=regime
    )
    ds = load_dataset(tmp_path)
    assert summary["positives"] == ds.positives.nnz
    assert abs(ds.density - target) <= 0.003, ds.density


def test_long_form_draws_the_same_pairs(tmp_path, small_data):
    long_root = tmp_path / "long"
    summary = synth.generate(long_root, n_users=300, n_items=60, seed=7, long_form=True, progress=False)
    assert summary["form"] == "long"
    assert not (long_root / TRUTH_FILE).exists() and not (long_root / MATRIX_FILE).exists()
    header = (long_root / LONG_FILE).read_text().splitlines()[0]
    assert header == "user_id,item_id"
    # Users and items are the same files; the long form's pairs are exactly the matrix form's ones.
    assert (long_root / USERS_FILE).read_bytes() == (small_data / USERS_FILE).read_bytes()
    assert (long_root / ITEMS_FILE).read_bytes() == (small_data / ITEMS_FILE).read_bytes()
    long_ds, matrix_ds = load_dataset(long_root), load_dataset(small_data)
    np.testing.assert_array_equal(long_ds.positives.indptr, matrix_ds.positives.indptr)
    np.testing.assert_array_equal(long_ds.positives.indices, matrix_ds.positives.indices)
    assert summary["positives"] == matrix_ds.positives.nnz
    # The oracle replays the generator for the long form: the same probabilities as the dense file.
    truth = np.load(small_data / TRUTH_FILE)
    users = np.array([299, 0, 150, 7, 7])
    np.testing.assert_allclose(baselines.OracleScores(long_root)(users), truth[users], rtol=1e-6)
    replayed = np.concatenate([p for _, p in synth.true_probabilities(long_root)])
    np.testing.assert_allclose(replayed, truth, rtol=1e-6)


def test_regenerating_in_the_other_form_removes_stale_files(tmp_path):
    synth.generate(tmp_path, n_users=50, n_items=20, seed=1, progress=False)
    assert (tmp_path / MATRIX_FILE).exists() and (tmp_path / TRUTH_FILE).exists()
    synth.generate(tmp_path, n_users=50, n_items=20, seed=1, long_form=True, progress=False)
    assert not (tmp_path / MATRIX_FILE).exists() and not (tmp_path / TRUTH_FILE).exists()
    assert load_dataset(tmp_path).n_users == 50


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_users=0), "users and items must be >= 1"),
        (dict(n_items=0), "users and items must be >= 1"),
        (dict(density=0.0), "density must be in"),
        (dict(density=1.0), "density must be in"),
        (dict(regime="mixed"), "regime must be one of latent, content (got 'mixed')"),
        (dict(latent_weight=0.0), "latent_weight must be a finite number > 0 (got 0.0)"),
        (dict(latent_weight=float("nan")), "latent_weight must be a finite number > 0"),
        (dict(regime="content", latent_weight=1.0), "the content regime has no latent term"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        synth.generate(tmp_path, **{"n_users": 10, "n_items": 5, "progress": False, **kwargs})


def test_latent_regime_adds_taste_no_attribute_expresses(tmp_path):
    latent = synth.generate(tmp_path / "l", n_users=300, n_items=60, seed=7, progress=False)
    content = synth.generate(
        tmp_path / "c", n_users=300, n_items=60, seed=7, progress=False, regime="content"
    )
    assert latent["regime"] == "latent" and latent["generator_version"] == synth.GENERATOR_VERSION
    assert (latent["latent_weight"], latent["latent_dim"]) == (synth.DEFAULT_LATENT_WEIGHT, synth.LATENT_DIM)
    assert "regime" not in content and content["generator_version"] == 1
    # Same people and catalogue; only who bought what (and its truth) changes.
    dl, dc = digests(tmp_path / "l"), digests(tmp_path / "c")
    assert dl[USERS_FILE] == dc[USERS_FILE] and dl[ITEMS_FILE] == dc[ITEMS_FILE]
    assert dl[MATRIX_FILE] != dc[MATRIX_FILE] and dl[TRUTH_FILE] != dc[TRUTH_FILE]
    # The latent term is w * P.Q / 4 with P, Q ~ N(0, I_16): standard deviation w, mean 0.
    world = synth.load_world(tmp_path / "l")
    users = np.arange(300)
    term = world.logits(users, None).astype(np.float64) - world.logits(users, None, latent=False)
    assert abs(term.std() / synth.DEFAULT_LATENT_WEIGHT - 1) < 0.1 and abs(term.mean()) < 0.1
    # Users with identical attributes no longer share one ranking of the catalogue.
    truth = np.load(tmp_path / "l" / TRUTH_FILE)
    assert np.corrcoef(truth.ravel(), world.logits(users, None, latent=False).ravel())[0, 1] < 0.8
    # A heavier weight is recorded and replayed.
    synth.generate(tmp_path / "h", n_users=50, n_items=20, seed=7, progress=False, latent_weight=3.5)
    assert synth.load_world(tmp_path / "h").latent_weight == 3.5


def test_unknown_generator_version_is_refused(tmp_path):
    synth.generate(tmp_path, n_users=20, n_items=10, seed=1, long_form=True, progress=False)
    meta = json.loads((tmp_path / GENERATOR_FILE).read_text())
    (tmp_path / GENERATOR_FILE).write_text(json.dumps({**meta, "generator_version": 9}))
    with pytest.raises(ValueError, match="generator version 9 cannot be replayed by version 2"):
        synth.load_world(tmp_path)


# ------------------------------------------------------------------------------------ notebook scale


@pytest.fixture(scope="module")
def notebook_scale(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("notebook_scale")
    synth.generate(root, n_users=10_000, n_items=1_000, seed=42, progress=False)
    return root


@pytest.mark.slow
def test_acceptance_at_notebook_scale(notebook_scale):
    users = pd.read_csv(notebook_scale / USERS_FILE, dtype=str)
    items = pd.read_csv(notebook_scale / ITEMS_FILE, dtype=str)
    with open(notebook_scale / MATRIX_FILE) as fh:
        n_columns = len(fh.readline().rstrip("\n").split(","))
        n_rows = sum(1 for _ in fh)
    assert users.shape == (10_000, 4)
    assert len(items) == 1_000 and items.shape[1] == 5
    assert (n_rows, n_columns) == (10_000, 1_001)
    ds = load_dataset(notebook_scale)
    assert abs(ds.density - 0.0966) <= 0.003, ds.density


@pytest.mark.slow
def test_oracle_replays_every_block_at_notebook_scale(tmp_path, notebook_scale):
    # Only generator.json: the oracle must rebuild the world and replay blocks of 2,000 users.
    shutil.copy(notebook_scale / GENERATOR_FILE, tmp_path / GENERATOR_FILE)
    assert synth.block_size(1_000) == 2_000
    truth = np.load(notebook_scale / TRUTH_FILE, mmap_mode="r")
    users = np.array([9_999, 0, 1_999, 2_000, 4_000, 1, 7_321, 2_001])  # five blocks, out of order
    oracle = baselines.OracleScores(tmp_path)
    np.testing.assert_allclose(oracle(users), truth[users], rtol=1e-6)
    np.testing.assert_allclose(oracle(np.array([5_000, 5_001])), truth[[5_000, 5_001]], rtol=1e-6)


@pytest.mark.slow
def test_baselines_are_ordered_at_notebook_scale(notebook_scale):
    ds = load_dataset(notebook_scale)
    split = splits.holdout_split(ds.positives, ds.users["user_id"].to_numpy())
    results = baselines.evaluate_baselines(split.train, split.test, notebook_scale, ks=(10,))
    world = synth.load_world(notebook_scale)
    # What a perfect content-only model could reach: the true logit without the latent term.
    results["content_only"] = full_ranking_metrics(
        lambda u: world.logits(u, None, latent=False), split.test, split.train, ks=(10,)
    )
    ndcg = {k: v["ndcg@10"] for k, v in results.items()}
    assert ndcg["random"] < ndcg["mostpop"] < ndcg["itemknn"] < ndcg["ease"] < ndcg["oracle"]
    assert ndcg["oracle"] >= 2 * ndcg["mostpop"]
    # The latent regime's calibration (docs/data.md): for known users the collaborative signal beats
    # the best content-only ranking clearly, and the truth stays well above EASE.
    assert ndcg["ease"] > 1.5 * ndcg["content_only"]
    assert ndcg["oracle"] > 1.2 * ndcg["ease"]
    assert results["ease"]["lambda"] == 1000.0
    assert results["random"]["users"] == results["oracle"]["users"] == results["ease"]["users"] > 9_000


def test_content_regime_replays_from_version_1_json(tmp_path):
    synth.generate(tmp_path / "m", n_users=120, n_items=30, seed=2, progress=False, regime="content")
    synth.generate(
        tmp_path / "l", n_users=120, n_items=30, seed=2, long_form=True, progress=False, regime="content"
    )
    assert synth.load_world(tmp_path / "l").regime == "content"
    replayed = np.concatenate([p for _, p in synth.true_probabilities(tmp_path / "l")])
    np.testing.assert_allclose(replayed, np.load(tmp_path / "m" / TRUTH_FILE), rtol=1e-6)
