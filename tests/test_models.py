"""trainer.models: the notebook's seed layers, the dot-product serving towers, and why seed cannot personalise."""

import os

os.environ["USE_TF"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from pipeline import PERSONAL_SHARE, personal_share  # noqa: E402

from towerserve.server.core.features import FieldSpec, feature_matrix, load_tables  # noqa: E402
from towerserve.server.core.numerics import sigmoid  # noqa: E402
from towerserve.trainer import cli as trainer_cli  # noqa: E402
from towerserve.trainer import models  # noqa: E402

keras = models.keras


def _randomise(model, seed: int) -> None:
    """Random values in every trainable weight (biases too), so nothing is zero by initialisation."""
    rng = np.random.default_rng(seed)
    for w in model.trainable_weights:
        w.assign(rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32"))


# --- seed architecture -------------------------------------------------------------------------------


def test_build_seed_has_exactly_the_notebook_layers():
    m = models.build_seed(5, 7)
    dense = [layer for layer in m.layers if isinstance(layer, keras.layers.Dense)]
    assert [(d.name, d.units, d.activation.__name__) for d in dense] == [
        ("user_dense", 64, "relu"),
        ("item_dense", 64, "relu"),
        ("head", 1, "sigmoid"),
    ]
    kinds = sorted(type(layer).__name__ for layer in m.layers)
    assert kinds == ["Concatenate", "Dense", "Dense", "Dense", "InputLayer", "InputLayer"]
    # (5*64 + 64) + (7*64 + 64) + (128*1 + 1) = 384 + 512 + 129 = 1025
    assert m.count_params() == 1025
    assert [tuple(t.shape) for t in m.inputs] == [(None, 5), (None, 7)]
    assert tuple(m.outputs[0].shape) == (None, 1)


def test_build_rejects_unknown_kind():
    with pytest.raises(
        ValueError, match=r"model kind must be one of \('seed', 'two_tower', 'hybrid'\) \(got 'mlp'\)"
    ):
        models.build("mlp", 5, 7)
    with pytest.raises(ValueError, match="got 'mlp'"):
        models.serving_towers(models.build_seed(5, 7), "mlp")


def test_the_kind_table_is_the_one_list_of_kinds():
    assert models.MODEL_KINDS == tuple(models.KINDS) == ("seed", "two_tower", "hybrid")
    assert trainer_cli.ALL_MODELS == models.MODEL_KINDS  # the CLI's copy, kept free of Keras
    assert all(k.name == name for name, k in models.KINDS.items())
    # only the seed's concat-linear head ranks every user alike
    assert {name: k.user_independent for name, k in models.KINDS.items()} == {
        "seed": True,
        "two_tower": False,
        "hybrid": False,
    }
    # only the hybrid's user tower takes ids and histories (tests/test_hybrid.py checks its towers)
    assert [name for name, k in models.KINDS.items() if k.ids_and_history] == ["hybrid"]
    with pytest.raises(
        ValueError, match=r"model kind must be one of \('seed', 'two_tower', 'hybrid'\) \(got 'mlp'\)"
    ):
        models.model_kind("mlp")


def test_two_tower_shapes_and_frozen_ones_column():
    m = models.build_two_tower(5, 7, dim=4, hidden=(8,))
    ut, it = models.serving_towers(m, "two_tower")
    u = np.asarray(ut(np.random.default_rng(0).normal(size=(3, 5)).astype("float32")))
    assert u.shape == (3, 5)  # dim 4 + the constant column
    np.testing.assert_array_equal(u[:, -1], 1.0)
    assert tuple(it.outputs[0].shape) == (None, 5)
    assert not m.get_layer("user_tower").get_layer("user_one").trainable


# --- serving towers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in models.MODEL_KINDS if not models.ids_and_history(k)])
def test_serving_towers_reproduce_the_model(kind):
    m = models.build(kind, 5, 7, dim=4, hidden=(8,))
    _randomise(m, seed=1)
    rng = np.random.default_rng(2)
    xu = rng.normal(size=(20, 5)).astype("float32")
    xi = rng.normal(size=(20, 7)).astype("float32")
    ut, it = models.serving_towers(m, kind)
    u, v = np.asarray(ut(xu), dtype=np.float64), np.asarray(it(xi), dtype=np.float64)
    want = np.asarray(m([xu, xi])).reshape(-1)
    got = sigmoid(np.einsum("nd,nd->n", u, v))
    assert np.ptp(want) > 0.1  # the scores actually vary; a constant model would pass trivially
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_seed_towers_are_score_plus_constant_column():
    m = models.build_seed(5, 7)
    _randomise(m, seed=3)
    ut, it = models.serving_towers(m, "seed")
    rng = np.random.default_rng(4)
    xu, xi = rng.normal(size=(6, 5)).astype("float32"), rng.normal(size=(6, 7)).astype("float32")
    u, v = np.asarray(ut(xu)), np.asarray(it(xi))
    assert u.shape == v.shape == (6, 2)
    np.testing.assert_array_equal(u[:, 1], 1.0)  # [s_u, 1]
    np.testing.assert_array_equal(v[:, 0], 1.0)  # [1, c_i]
    # c_i = w_i . relu(W_i x_i + b_i) + head bias, by hand with numpy
    W, b = m.get_layer("item_dense").get_weights()
    k, c = m.get_layer("head").get_weights()
    np.testing.assert_allclose(v[:, 1], np.maximum(xi @ W + b, 0) @ k[64:, 0] + c[0], rtol=1e-5, atol=1e-5)


# --- seed is not personalised (the trained pipeline models) -------------------------------------------


def _features(art, kind: str, split: str = "holdout"):
    manifest = json.loads((art / "manifest.json").read_text())
    entry = manifest["models"][kind]["splits"][split]
    tables = load_tables(art / "embeddings.npz")
    users = pd.read_csv(art / "users.csv", dtype={"user_id": str})
    items = pd.read_csv(art / "items.csv", dtype={"item_id": str})
    raw = {"age": users["age"].to_numpy(np.float64), "price": items["price"].to_numpy(np.float64)}

    def side(name):
        return feature_matrix([FieldSpec.from_json(d) for d in entry["features"][name]], tables, raw)

    model = keras.saving.load_model(art / entry["model"])
    return model, side("user"), side("item"), users


def _rankings(model, U, I, users) -> np.ndarray:
    """Every item ranked for each user by the full Keras model, nothing masked: [len(users), n_items]."""
    n = len(I)
    xu = np.repeat(U[users], n, axis=0)
    xi = np.tile(I, (len(users), 1))
    scores = np.asarray(model([xu, xi])).reshape(len(users), n)
    return np.argsort(-scores, axis=1, kind="stable")


def test_seed_ranks_items_identically_for_every_user(built):
    assert models.user_independent("seed") is True
    assert models.user_independent("two_tower") is False
    model, U, I, users = _features(built["artifacts"], "seed")
    a = 0
    b = int(
        np.flatnonzero((users["profession"] != users["profession"][a]) & (users["age"] != users["age"][a]))[0]
    )
    assert not np.allclose(U[a], U[b])
    ranks = _rankings(model, U, I, np.array([a, b]))
    np.testing.assert_array_equal(ranks[0], ranks[1])
    # the scores themselves do differ per user: only the order is shared
    sa = np.asarray(model([np.repeat(U[[a]], len(I), 0), I]))
    sb = np.asarray(model([np.repeat(U[[b]], len(I), 0), I]))
    assert np.abs(sa - sb).max() > 1e-6
    # and so does every other user's order: one ranking for the whole user base
    assert len({tuple(r) for r in _rankings(model, U, I, np.arange(len(U)))}) == 1


def test_two_tower_personalises(built):
    model, U, I, users = _features(built["artifacts"], "two_tower")
    ranks = _rankings(model, U, I, np.arange(len(U)))[:, :10]
    firsts = users.groupby(["profession", "personality"]).head(1).index.to_numpy()
    lists = {tuple(users.loc[i, ["profession", "personality"]]): tuple(ranks[i]) for i in firsts}
    assert len(lists) >= 5 and personal_share(lists) >= PERSONAL_SHARE, personal_share(lists)  # 1.0 of 67
    seed, U0, I0, _ = _features(built["artifacts"], "seed")  # the control: one list for every group
    ranks0 = _rankings(seed, U0, I0, firsts)[:, :10]
    assert len({tuple(r) for r in ranks0}) == 1


# --- id lookups --------------------------------------------------------------------------------------


def test_with_lookup_equals_feeding_the_rows():
    rng = np.random.default_rng(5)
    Ut = rng.normal(size=(6, 5)).astype("float32")
    It = rng.normal(size=(9, 7)).astype("float32")
    m = models.build("two_tower", 5, 7, dim=4, hidden=(8,))
    _randomise(m, seed=6)
    by_id = models.with_lookup(m, Ut, It)
    u = np.array([0, 5, 2, 2, 3], dtype=np.int32)
    i = np.array([8, 0, 1, 4, 4], dtype=np.int32)
    np.testing.assert_allclose(np.asarray(by_id([u, i])), np.asarray(m([Ut[u], It[i]])), atol=1e-6)
    # the tables are frozen: only the wrapped model's weights train
    assert len(by_id.trainable_weights) == len(m.trainable_weights)
    np.testing.assert_array_equal(by_id.get_layer("user_lookup").get_weights()[0], Ut)
