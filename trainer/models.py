"""Keras models: the notebook's `seed`, the personalized `two_tower`, the `hybrid`, and their serving towers.

Every model here scores a pair as ``sigmoid(user_vec . item_vec)`` once decomposed, so the server needs
one user-tower pass and one matrix-vector product per request:

* ``two_tower``: user MLP -> [u, 1], item MLP -> [v, b]; logit = u.v + b (b: a learned item bias).
* ``seed``: logit = w_u . relu(W_u x_u) + w_i . relu(W_i x_i) + c, i.e. [s_u, 1] . [1, c_i]. The
  ranking is ``c_i`` for everybody: the notebook's architecture cannot personalise.
* ``hybrid`` (trainer/hybrid/model.py): two_tower's content MLPs plus user/item ID embeddings and the
  user's pooled interaction history; its user tower also takes ``user_index`` and ``history``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras  # the package __init__ has set KERAS_BACKEND and TF_CPP_MIN_LOG_LEVEL
import numpy as np
from keras import layers

from .hybrid import model as hybrid

USER_INPUT, ITEM_INPUT = "user_features", "item_features"


def _ones_column(name: str) -> layers.Dense:
    """A frozen Dense(1) that outputs 1.0 for any input: a constant column built from stock layers,
    so the model saves, loads and converts to ONNX without custom code."""
    return layers.Dense(1, kernel_initializer="zeros", bias_initializer="ones", trainable=False, name=name)


def build_seed(user_dim: int, item_dim: int) -> keras.Model:
    """The notebook's model exactly: Dense(64, relu) per side, Concatenate, Dense(1, sigmoid)."""
    user_in = keras.Input((user_dim,), name=USER_INPUT)
    item_in = keras.Input((item_dim,), name=ITEM_INPUT)
    hu = layers.Dense(64, activation="relu", name="user_dense")(user_in)
    hi = layers.Dense(64, activation="relu", name="item_dense")(item_in)
    out = layers.Dense(1, activation="sigmoid", name="head")(layers.Concatenate(name="concat")([hu, hi]))
    return keras.Model([user_in, item_in], out, name="seed")


def _tower(in_dim: int, hidden: tuple[int, ...], dim: int, side: str) -> keras.Model:
    x = keras.Input((in_dim,), name=USER_INPUT if side == "user" else ITEM_INPUT)
    h = x
    for j, width in enumerate(hidden):
        h = layers.Dense(width, activation="relu", name=f"{side}_hidden{j}")(h)
    emb = layers.Dense(dim, name=f"{side}_embedding")(h)
    # The extra column turns "dot + item bias" into a plain dot product for serving.
    extra = _ones_column(f"{side}_one")(h) if side == "user" else layers.Dense(1, name="item_bias")(h)
    return keras.Model(x, layers.Concatenate(name=f"{side}_vector")([emb, extra]), name=f"{side}_tower")


def build_two_tower(
    user_dim: int, item_dim: int, dim: int = 32, hidden: tuple[int, ...] = (128,)
) -> keras.Model:
    """User and item MLPs to ``dim``-d embeddings (+ item bias); score = sigmoid(dot)."""
    user_in = keras.Input((user_dim,), name=USER_INPUT)
    item_in = keras.Input((item_dim,), name=ITEM_INPUT)
    u = _tower(user_dim, hidden, dim, "user")(user_in)
    v = _tower(item_dim, hidden, dim, "item")(item_in)
    logit = layers.Dot(axes=1, name="dot")([u, v])
    return keras.Model(
        [user_in, item_in], layers.Activation("sigmoid", name="score")(logit), name="two_tower"
    )


def _two_tower_towers(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    return model.get_layer("user_tower"), model.get_layer("item_tower")


def _seed_towers(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """[s_u, 1] . [1, c_i]: the head's user half on one side, its item half plus bias on the other."""
    kernel, bias = model.get_layer("head").get_weights()  # kernel [128, 1]: user half, then item half
    width = model.get_layer("user_dense").units

    def side(name: str, dense: str, w: np.ndarray, b: np.ndarray, ones_first: bool) -> keras.Model:
        x = keras.Input(
            (model.get_layer(dense).kernel.shape[0],), name=USER_INPUT if name == "user" else ITEM_INPUT
        )
        h = model.get_layer(dense)(x)
        part = layers.Dense(1, name=f"{name}_head_part")
        s = part(h)
        part.set_weights([w, b])
        one = _ones_column(f"{name}_one")(h)
        out = layers.Concatenate(name=f"{name}_vector")([one, s] if ones_first else [s, one])
        return keras.Model(x, out, name=f"{name}_tower")

    user = side("user", "user_dense", kernel[:width], np.zeros(1, dtype=kernel.dtype), ones_first=False)
    item = side("item", "item_dense", kernel[width:], bias, ones_first=True)
    return user, item


@dataclass(frozen=True)
class ModelKind:
    """One architecture and what training, export and serving need to know about it.

    Attributes:
        name: the kind's name in configs, artifacts and manifests.
        build: (user_dim, item_dim, dim, hidden, n_users, n_items) -> an untrained Keras model.
        towers: trained model -> (user tower, item tower) with logit = user_vec . item_vec.
        user_independent: every user gets the same ranking (the served vectors are [s_u, 1] . [1, c_i]).
        ids_and_history: the user tower also takes ``user_index`` and ``history`` (hybrid.py), and the
            catalogue's item vectors add learned ID rows to the item tower's content vectors.
    """

    name: str
    build: Callable[[int, int, int, tuple[int, ...], int, int], keras.Model]
    towers: Callable[[keras.Model], tuple[keras.Model, keras.Model]]
    user_independent: bool
    ids_and_history: bool = False


def _build_hybrid(user_dim, item_dim, dim, hidden, n_users, n_items) -> keras.Model:
    return hybrid.build_hybrid(
        user_dim, item_dim, n_users, n_items, hybrid.HybridConfig(dim=dim, hidden=tuple(hidden))
    )


# The one table of model kinds: everything that differs per kind is read from here.
KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind(
            "seed", lambda u, i, dim, hidden, *_: build_seed(u, i), _seed_towers, user_independent=True
        ),
        ModelKind(
            "two_tower",
            lambda u, i, dim, hidden, *_: build_two_tower(u, i, dim, hidden),
            _two_tower_towers,
            False,
        ),
        ModelKind("hybrid", _build_hybrid, hybrid.towers, user_independent=False, ids_and_history=True),
    )
}
MODEL_KINDS = tuple(KINDS)


def model_kind(kind: str) -> ModelKind:
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {MODEL_KINDS} (got {kind!r})")
    return KINDS[kind]


def build(
    kind: str,
    user_dim: int,
    item_dim: int,
    dim: int = 32,
    hidden: tuple[int, ...] = (128,),
    n_users: int = 0,
    n_items: int = 0,
) -> keras.Model:
    """An untrained model; ``n_users``/``n_items`` size the hybrid's ID tables (others ignore them)."""
    return model_kind(kind).build(user_dim, item_dim, dim, hidden, n_users, n_items)


def serving_towers(model: keras.Model, kind: str) -> tuple[keras.Model, keras.Model]:
    """Splits a trained model into (user tower, item tower) with logit = user_vec . item_vec.

    The towers share the trained layers (no copies), so they stay exact.
    """
    return model_kind(kind).towers(model)


def user_independent(kind: str) -> bool:
    """True when every user gets the same ranking (the seed model's concat-linear head)."""
    return model_kind(kind).user_independent


def ids_and_history(kind: str) -> bool:
    """True when the kind's user tower also takes user ids and histories (the hybrid)."""
    return model_kind(kind).ids_and_history


Parts = list[tuple[np.ndarray, np.ndarray | None]]  # server.features.feature_parts: (table, index)


class PartsLookup(layers.Layer):
    """Entity ids -> feature rows gathered field by field from (table, index) parts, frozen.

    Holds the distinct texts' vectors and one int32 index per field instead of an entities x features
    matrix (~4.6 GB at 1,000,000 items), and yields the same rows value for value.
    """

    def __init__(self, parts: Parts, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self._parts = []
        for j, (table, index) in enumerate(parts):
            t = self.add_weight(shape=table.shape, initializer="zeros", trainable=False, name=f"table{j}")
            t.assign(np.asarray(table, dtype=np.float32))
            ix = None
            if index is not None:
                ix = self.add_weight(
                    shape=index.shape, initializer="zeros", dtype="int32", trainable=False, name=f"index{j}"
                )
                ix.assign(np.asarray(index, dtype=np.int32))
            self._parts.append((t, ix))

    def call(self, ids):
        cols = []
        for t, ix in self._parts:
            rows = ids if ix is None else keras.ops.take(ix, ids, axis=0)
            cols.append(keras.ops.take(t, rows, axis=0))
        return cols[0] if len(cols) == 1 else keras.ops.concatenate(cols, axis=1)


def with_lookup(
    model: keras.Model, user_table: np.ndarray | Parts, item_table: np.ndarray | Parts
) -> keras.Model:
    """Wraps a feature-level model so it takes (user id, item id) and looks the features up itself.

    A table is a dense feature matrix or its parts (server.features.feature_parts); parts keep
    training's memory at the distinct texts, not entities x features.
    """
    u = keras.Input((), dtype="int32", name="user_idx")
    i = keras.Input((), dtype="int32", name="item_idx")
    lookups = [
        PartsLookup([(t, None)] if isinstance(t, np.ndarray) else t, name=name)
        for t, name in ((user_table, "user_lookup"), (item_table, "item_lookup"))
    ]
    out = model([lookups[0](u), lookups[1](i)])
    return keras.Model([u, i], out, name=f"{model.name}_by_id")
