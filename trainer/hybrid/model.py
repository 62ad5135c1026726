"""The hybrid two-tower: content MLPs plus learned user/item ID embeddings and the user's pooled history.

Still ``score = sigmoid(user_vec . item_vec)``, so serving stays one user-tower pass and one product:

* item: ``item_vec = content_mlp(x_i) + id_emb[1 + i]`` (both [d + r + 2]: columns d .. d + r - 1
  are the item's factor of EASE's item-item weights (r = 0 while training, see trainer/hybrid/ease.py;
  the content path gives 0 there), the second last column is the item bias, the last the item's
  popularity ``p_i``, see trainer/hybrid/blend.py; the content path gives every item the popularity of
  an item with no positives, the ID row adds the difference). Row 0 of every ID table is the
  unknown/padding id and always outputs zeros, so an item
  nobody trained on (or one added later through UpsertItems) is exactly its content vector. The
  exported item tower is the content path; catalogue vectors (content + ID) are precomputed.
* user: ``user_vec = [attr_mlp(x_u) + id_emb[1 + u] + pool(hist_emb[history]),
  mean(ease_emb[history]), w · codes(x_u), 1, beta]`` (the EASE part, r wide, and the attribute ridge's
  part, k wide, with w = 0 for users with an id: trainer/hybrid/attributes.py; both only in the served
  model; the item ID table holds their item sides, the content path 0 there), where
  ``beta`` weighs the item popularity column per segment (known user, unseen user with a history,
  unseen user with attributes only): 0 while training, chosen on validation afterwards. ``history`` is
  ``1 + item row`` of the items the user interacted with in training, 0-padded; pooling is a masked
  mean (or attention with the attribute vector as query). An unknown user (index 0) with an empty
  history is exactly the content-only user vector: the cold path.

Training (trainer/hybrid/fit.py) replaces ids by 0 with probability ``id_dropout`` (and empties a
dropped user's history) so the content paths are good on their own, and removes the target item from
the user's history, otherwise the model learns to find the answer in its input.
"""

from __future__ import annotations

import logging

import keras  # the package __init__ has set KERAS_BACKEND
import numpy as np
from keras import layers, ops

from .config import POOLINGS, HybridConfig

__all__ = [
    "AttributeCodes",
    "HybridConfig",
    "HistoryPooling",
    "IdEmbedding",
    "PopularityWeight",
    "build_hybrid",
    "ease_rank",
    "towers",
    "coding_width",
    "with_served_parts",
]

_LOGGER = logging.getLogger(__name__)

USER_INPUT, ITEM_INPUT = "user_features", "item_features"
# Two texts' vectors closer than this (squared distance) are the same value (AttributeCodes). Distinct
# texts' sentence embeddings are ~0.1-2 apart; the same text's are equal up to float32 rounding (~1e-7).
SAME_TEXT = 1e-3
USER_INDEX, HISTORY, ITEM_INDEX = "user_index", "history", "item_index"


@keras.saving.register_keras_serializable(package="towerserve")
class IdEmbedding(layers.Layer):
    """An ID table whose row 0 (unknown id, or padding) always outputs zeros and never learns.

    Rows start small and random, not zero: an ID-times-ID interaction that starts at zero has zero
    gradient and stays there. Training zeroes the rows of ids it never saw (hybrid_fit.fit), so an
    id without training data is the content-only vector whatever index it is fed with.
    """

    def __init__(self, rows: int, dim: int, init_std: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.dim, self.init_std = int(rows), int(dim), float(init_std)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.rows, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=self.init_std),
            name="embeddings",
        )

    def zero_rows(self, ids: np.ndarray) -> None:
        """Sets the rows of ``ids`` (and row 0) to zero: ids that had no training data."""
        table = np.array(self.embeddings.numpy())
        table[np.r_[0, np.asarray(ids, dtype=np.int64)]] = 0.0
        self.embeddings.assign(table)

    def call(self, ids):
        ids = ops.cast(ids, "int32")
        known = ops.expand_dims(ops.cast(ops.greater(ids, 0), self.compute_dtype), -1)
        return ops.take(self.embeddings, ids, axis=0) * known

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "dim": self.dim, "init_std": self.init_std}


@keras.saving.register_keras_serializable(package="towerserve")
class HistoryPooling(layers.Layer):
    """Pools history embeddings [B, L, d] over the non-padding positions (ids > 0) to [B, d].

    ``mean``: their mean (zeros for an empty or all-padding history). ``attention``: softmax weights
    from (W q) . e_j / sqrt(d) with the user's attribute vector q as query, over the same positions.
    """

    def __init__(self, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (got {mode!r})")
        self.mode = mode

    def build(self, input_shape):
        if self.mode == "attention":
            dim = int(input_shape[0][-1])
            self.query = self.add_weight(shape=(dim, dim), initializer="glorot_uniform", name="query")

    def position_weights(self, emb, ids, q):
        """[B, L] weights that sum to 1 over a row's real positions (all 0 for an empty history).

        Removing one position and renormalising the rest gives the pooling of the history without
        it, for both modes: training uses that to leave the target out (trainer/hybrid/fit.py).
        """
        mask = ops.cast(ops.greater(ops.cast(ids, "int32"), 0), emb.dtype)  # [B, L]
        if self.mode == "mean":
            return mask / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
        key = ops.matmul(q, self.query)  # [B, d]
        logits = ops.sum(emb * ops.expand_dims(key, 1), axis=-1) / float(np.sqrt(emb.shape[-1]))
        logits = logits - ops.max(logits, axis=1, keepdims=True)  # stable; padding removed below
        weights = ops.exp(logits) * mask
        return weights / ops.maximum(ops.sum(weights, axis=1, keepdims=True), 1e-12)

    def call(self, inputs):
        emb, ids, q = inputs
        return ops.sum(emb * ops.expand_dims(self.position_weights(emb, ids, q), -1), axis=1)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="towerserve")
class PopularityWeight(layers.Layer):
    """(user_index [B], history [B, L]) -> [B, 1]: the weight of the items' popularity column for the
    user's segment: ``known`` (an id), ``history`` (no id, a non-empty history), ``attributes``
    (neither). The weights are not trained: training runs with all three at 0 (the loss never sees
    popularity twice) and trainer/hybrid/blend.py sets them from validation; they are saved with the
    model and exported in the graph, so the server applies them without knowing they exist.
    """

    def build(self, input_shape):
        self.weights_by_segment = self.add_weight(
            shape=(3,), initializer="zeros", trainable=False, name="segment_weights"
        )

    def call(self, inputs):
        uid, hist = inputs
        known = ops.greater(ops.cast(uid, "int32"), 0)
        has_history = ops.any(ops.greater(ops.cast(hist, "int32"), 0), axis=1)
        w = self.weights_by_segment
        out = ops.where(known, w[0], ops.where(has_history, w[1], w[2]))
        return ops.expand_dims(ops.cast(out, self.compute_dtype), -1)


@keras.saving.register_keras_serializable(package="towerserve")
class AttributeCodes(layers.Layer):
    """user_features [B, F] -> the attribute codes [B, k] of an attributes.Coding (its ``shape()``): one
    text value matched per text attribute (0 everywhere for a value it does not know), one bin per
    numeric attribute, and a constant 1. Non-trainable: attributes.install sets the values and edges."""

    def __init__(self, shape: dict, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.shape_spec = {"text": [list(t) for t in shape["text"]], "bins": [list(b) for b in shape["bins"]]}

    def build(self, input_shape):
        self.values = [
            self.add_weight(shape=(n, dim), initializer="zeros", trainable=False, name=f"text{j}")
            for j, (_, dim, n) in enumerate(self.shape_spec["text"])
        ]
        self.edges = [
            self.add_weight(shape=(n,), initializer="zeros", trainable=False, name=f"bins{j}")
            for j, (_, n) in enumerate(self.shape_spec["bins"])
        ]

    def call(self, x):
        parts = []
        for (start, dim, _), values in zip(self.shape_spec["text"], self.values):
            xs = x[:, start : start + dim]
            d2 = (
                ops.sum(xs * xs, axis=1, keepdims=True)
                - 2.0 * ops.matmul(xs, ops.transpose(values))
                + ops.expand_dims(ops.sum(values * values, axis=1), 0)
            )
            parts.append(ops.cast(ops.less(d2, SAME_TEXT), x.dtype))
        one = ops.ones_like(x[:, :1])
        for (col, _), edges in zip(self.shape_spec["bins"], self.edges):
            ge = ops.cast(ops.greater_equal(x[:, col : col + 1], ops.expand_dims(edges, 0)), x.dtype)
            g = ops.concatenate([one, ge, ops.zeros_like(one)], axis=1)
            parts.append(g[:, :-1] - g[:, 1:])
        parts.append(one)
        return ops.concatenate(parts, axis=1)

    def get_config(self):
        return {**super().get_config(), "shape": self.shape_spec}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("trainable", None)
        return cls(**config)


@keras.saving.register_keras_serializable(package="towerserve")
class NoIdWeight(layers.Layer):
    """user_index [B] -> [B, 1]: a fixed weight for users without an id (index 0), 0 for the others:
    the attribute ridge's part serves only them (trainer/hybrid/attributes.py sets the weight)."""

    def build(self, input_shape):
        self.weight = self.add_weight(shape=(), initializer="zeros", trainable=False, name="weight")

    def call(self, uid):
        unknown = ops.cast(ops.equal(ops.cast(uid, "int32"), 0), self.compute_dtype)
        return ops.expand_dims(unknown * self.weight, -1)


def _mlp(x, hidden: tuple[int, ...], side: str):
    for j, width in enumerate(hidden):
        x = layers.Dense(width, activation="relu", name=f"{side}_hidden{j}")(x)
    return x


def build_user_tower(
    user_dim: int,
    n_users: int,
    n_items: int,
    dim: int,
    hidden: tuple[int, ...],
    pooling: str,
    id_init: float = 0.05,
    content_init: float | None = None,
    ease_rank: int = 0,
    coding: dict | None = None,
) -> keras.Model:
    """(user_features [B, F], user_index [B], history [B, L]) -> user_vector [B, d + r + k + 2]: the
    user's embedding, the mean of their history's EASE rows (``ease_rank`` r wide, frozen: set by
    trainer/hybrid/ease.py, absent when r = 0), the attribute codes times the no-id weight (k wide, a
    ``Coding.shape()``: trainer/hybrid/attributes.py; absent without ``coding``), 1 (times the item
    bias) and the segment's popularity weight."""
    x = keras.Input((user_dim,), name=USER_INPUT)
    uid = keras.Input((), dtype="int32", name=USER_INDEX)
    hist = keras.Input((None,), dtype="int32", name=HISTORY)
    content = layers.Dense(dim, kernel_initializer=_out_init(content_init), name="user_embedding")(
        _mlp(x, hidden, "user")
    )
    ids = IdEmbedding(n_users + 1, dim, id_init, name="user_id_embedding")(uid)
    pooled = HistoryPooling(pooling, name="history_pooling")(
        [IdEmbedding(n_items + 1, dim, id_init, name="history_embedding")(hist), hist, content]
    )
    u = layers.Add(name="user_sum")([content, ids, pooled])
    # A frozen Dense(1) with zero kernel and unit bias: the constant column of the bias trick.
    one = layers.Dense(
        1, kernel_initializer="zeros", bias_initializer="ones", trainable=False, name="user_one"
    )
    beta = PopularityWeight(name="popularity_weight")([uid, hist])
    parts = [u]
    if ease_rank:
        # Mean, not sum, pooled: the graph stays affine in the mean of its history rows as a whole,
        # which the server's known-user shortcut relies on (server/engine/mean_history.py).
        rows = IdEmbedding(n_items + 1, ease_rank, 0.0, name="ease_history", trainable=False)(hist)
        parts.append(HistoryPooling("mean", name="ease_pooling")([rows, hist, content]))
    if coding is not None:
        codes = AttributeCodes(coding, name="attribute_codes")(x)
        parts.append(
            layers.Multiply(name="attribute_part")([codes, NoIdWeight(name="attribute_weight")(uid)])
        )
    return keras.Model(
        [x, uid, hist], layers.Concatenate(name="user_vector")([*parts, one(u), beta]), name="user_tower"
    )


def _out_init(std: float | None):
    """The content towers' last kernels: Glorot, or N(0, std) so the content vectors start near zero
    (random content vectors of Glorot scale are noise the ID parts must first outweigh)."""
    return "glorot_uniform" if std is None else keras.initializers.RandomNormal(stddev=std)


def build_item_tower(
    item_dim: int,
    dim: int,
    hidden: tuple[int, ...],
    content_init: float | None = None,
    ease_rank: int = 0,
    attribute_width: int = 0,
) -> keras.Model:
    """The content path: item_features [B, F] -> item_vector [B, d + r + k + 2] (embedding, r + k zeros:
    an item without positives has no EASE row and no ridge column, bias, and the popularity of an item
    without positives: a constant, set by trainer/hybrid/blend.py)."""
    x = keras.Input((item_dim,), name=ITEM_INPUT)
    h = _mlp(x, hidden, "item")
    # A frozen Dense(1) with a zero kernel: its bias is the constant popularity column.
    popularity = layers.Dense(1, kernel_initializer="zeros", trainable=False, name="item_popularity")
    parts = [layers.Dense(dim, kernel_initializer=_out_init(content_init), name="item_embedding")(h)]
    if ease_rank:
        parts.append(
            layers.Dense(ease_rank, kernel_initializer="zeros", trainable=False, name="item_ease")(h)
        )
    if attribute_width:
        parts.append(
            layers.Dense(
                attribute_width, kernel_initializer="zeros", trainable=False, name="item_attributes"
            )(h)
        )
    parts.append(layers.Dense(1, kernel_initializer=_out_init(content_init), name="item_bias")(h))
    out = layers.Concatenate(name="item_vector")([*parts, popularity(h)])
    return keras.Model(x, out, name="item_tower")


def build_hybrid(
    user_dim: int,
    item_dim: int,
    n_users: int,
    n_items: int,
    cfg: HybridConfig = HybridConfig(),
    ease_rank: int = 0,
    coding: dict | None = None,
) -> keras.Model:
    """The whole model: (user_features, user_index, history, item_features, item_index) -> sigmoid(u.v).

    ``ease_rank`` > 0 and ``coding`` only for the served model (:func:`with_served_parts`): training has
    neither the EASE part nor the attribute ridge's."""
    user = build_user_tower(
        user_dim,
        n_users,
        n_items,
        cfg.dim,
        cfg.hidden,
        cfg.pooling,
        cfg.id_init,
        cfg.content_init,
        ease_rank,
        coding,
    )
    k = coding_width(coding)
    item = build_item_tower(item_dim, cfg.dim, cfg.hidden, cfg.content_init, ease_rank, k)
    item_ids = IdEmbedding(n_items + 1, cfg.dim + ease_rank + k + 2, cfg.id_init, name="item_id_embedding")
    ux = keras.Input((user_dim,), name=USER_INPUT)
    uid = keras.Input((), dtype="int32", name=USER_INDEX)
    hist = keras.Input((None,), dtype="int32", name=HISTORY)
    ix = keras.Input((item_dim,), name=ITEM_INPUT)
    iid = keras.Input((), dtype="int32", name=ITEM_INDEX)
    u = user([ux, uid, hist])
    v = layers.Add(name="item_sum")([item(ix), item_ids(iid)])
    score = layers.Activation("sigmoid", name="score")(layers.Dot(axes=1, name="dot")([u, v]))
    return keras.Model([ux, uid, hist, ix, iid], score, name="hybrid")


def towers(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(user tower with ids and history, item tower: the content path only)."""
    return model.get_layer("user_tower"), model.get_layer("item_tower")


def ease_rank(model: keras.Model) -> int:
    """The width r of the model's EASE part (0: none)."""
    user = model.get_layer("user_tower")
    names = {layer.name for layer in user.layers}
    return int(user.get_layer("ease_history").dim) if "ease_history" in names else 0


def coding_width(coding: dict | None) -> int:
    """k, the attribute ridge part's width, for a ``Coding.shape()`` (0: none)."""
    if coding is None:
        return 0
    return sum(n for _, _, n in coding["text"]) + sum(n + 1 for _, n in coding["bins"]) + 1


def with_served_parts(
    model: keras.Model, cfg: HybridConfig, rank: int, coding: dict | None = None
) -> keras.Model:
    """A copy of trained ``model`` with an EASE part ``rank`` wide and an attribute ridge part for
    ``coding`` (both zero until trainer/hybrid/ease.py and attributes.py set them): every weight copied
    by layer name, the item ID table widened by zero columns before its bias and popularity columns."""
    user, item = towers(model)
    n_users = user.get_layer("user_id_embedding").rows - 1
    n_items = user.get_layer("history_embedding").rows - 1
    user_dim, item_dim = int(user.inputs[0].shape[-1]), int(item.inputs[0].shape[-1])
    out = build_hybrid(user_dim, item_dim, n_users, n_items, cfg, rank, coding)
    extra = rank + coding_width(coding)
    old_ids = np.array(model.get_layer("item_id_embedding").embeddings.numpy())
    wide = np.zeros((old_ids.shape[0], cfg.dim + extra + 2), dtype=old_ids.dtype)
    wide[:, : cfg.dim], wide[:, cfg.dim + extra :] = old_ids[:, : cfg.dim], old_ids[:, -2:]
    out.get_layer("item_id_embedding").embeddings.assign(wide)
    for name in ("user_tower", "item_tower"):
        old, new = model.get_layer(name), out.get_layer(name)
        have = {layer.name: layer for layer in old.layers}
        for layer in new.layers:
            if layer.weights and layer.name in have:
                layer.set_weights(have[layer.name].get_weights())
    return out


def pad_histories(lists: list[np.ndarray], min_length: int = 1) -> np.ndarray:
    """int32 [len(lists), max(min_length, longest)] of ``1 + item row``, 0-padded at the end."""
    width = max([min_length] + [len(x) for x in lists])
    out = np.zeros((len(lists), width), dtype=np.int32)
    for r, items in enumerate(lists):
        out[r, : len(items)] = np.asarray(items, dtype=np.int64) + 1
    return out


def known_index(n: int, known: np.ndarray) -> np.ndarray:
    """int32 [n]: ``1 + row`` where ``known`` (a boolean mask), else 0 (the unknown id)."""
    return np.where(np.asarray(known, dtype=bool), np.arange(1, n + 1), 0).astype(np.int32)


def item_vectors(model: keras.Model, item_features: np.ndarray, item_index: np.ndarray) -> np.ndarray:
    """float32 [n, d + 2]: content path plus the item's ID row (none where the index is 0)."""
    content = np.asarray(model.get_layer("item_tower")(item_features, training=False), dtype=np.float32)
    ids = np.asarray(model.get_layer("item_id_embedding")(item_index), dtype=np.float32)
    return content + ids


def user_vectors(
    model: keras.Model,
    user_features: np.ndarray,
    user_index: np.ndarray,
    histories: list[np.ndarray],
    batch: int = 1024,
) -> np.ndarray:
    """float32 [n, d + 2] for users with their ids and histories (item rows), padded per batch."""
    user = model.get_layer("user_tower")
    out = []
    for s in range(0, len(user_features), batch):
        h = pad_histories(histories[s : s + batch])
        out.append(
            np.asarray(
                user([user_features[s : s + batch], user_index[s : s + batch], h], training=False),
                dtype=np.float32,
            )
        )
    return np.concatenate(out) if out else np.zeros((0, model.get_layer("user_tower").output.shape[-1]))
