"""Fits the hybrid two-tower: ID dropout, target exclusion, in-batch softmax with logQ or BCE, early stopping.

Every choice (epochs, and the recipe in trainer/hybrid/search.py) is made on NDCG@10 over a validation
split carved out of the TRAINING positives; the test split is never read here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from towerserve.server.core.csr import CSR
from towerserve.server.core.ranking_metrics import full_ranking_metrics

from ..evalsample import chunk_users
from . import model as hybrid
from .config import HybridConfig

_LOGGER = logging.getLogger(__name__)

VALIDATION_MAX_USERS = 5_000  # users judged per epoch: enough to rank epochs and recipes, bounded
# A small data set (the real one: ~50,000 positives) still gets this many steps an epoch: the batch
# shrinks (not below MIN_BATCH) instead of the recipe being tuned per data set.
MIN_STEPS, MIN_BATCH = 100, 256


@dataclass(frozen=True)
class Fitted:
    """One trained hybrid.

    Attributes:
        model: the Keras model (hybrid.build_hybrid).
        history: per epoch: "loss", and "val_ndcg@10" when a validation set was given.
        epochs: epochs whose weights were kept (the best validation epoch, or all that ran).
        seconds: training wall time, validation included.
        val_ndcg: best validation NDCG@10 (None without validation).
    """

    model: object
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: int = 0
    seconds: float = 0.0
    val_ndcg: float | None = None


def step_batch(rows: int, batch: int) -> int:
    """Rows per step: ``batch``, or fewer so that an epoch has at least MIN_STEPS steps."""
    return int(min(batch, max(MIN_BATCH, rows // MIN_STEPS)))


def known_users(train: CSR) -> np.ndarray:
    """Users with at least one training positive: the ones whose id rows and histories were learnt."""
    return train.row_lengths() > 0


def known_items(train: CSR) -> np.ndarray:
    return np.bincount(train.indices, minlength=train.n_cols) > 0


def histories(train: CSR) -> list[np.ndarray]:
    """Each user's training items (rows), the history the user tower pools at evaluation and serving."""
    return [train.row(u) for u in range(train.n_rows)]


def inclusion_log_q(train: CSR, batch: int) -> np.ndarray:
    """log P(item appears among a batch's positives): the logQ correction for de-duplicated in-batch
    negatives (Yi et al. 2019 subtract log q; with each item counted once per batch its expected count
    is 1 - (1 - q)^B). Items never seen get the smallest observed value (they never appear anyway)."""
    q = np.bincount(train.indices, minlength=train.n_cols) / max(1, train.nnz)
    p = -np.expm1(batch * np.log1p(-np.minimum(q, 1 - 1e-12)))
    floor = p[p > 0].min() if (p > 0).any() else 1.0
    return np.log(np.maximum(p, floor)).astype(np.float32)


def full_softmax_loss(uvec, vall, targets, inv_t: float):
    """Mean over rows of ``-log softmax(u_r · V / T)[target_r]``: every catalogue item is a negative of
    every row, so nothing is sampled and nothing needs a logQ correction (popularity is learnt as it
    is, which the popularity-biased test sets reward). ``vall`` [n_items, d + 2], ``targets`` [R]."""
    import tensorflow as tf

    logits = tf.matmul(uvec, vall, transpose_b=True) * inv_t
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))


def all_vectors(model, U: np.ndarray, I: np.ndarray, train: CSR) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors, item vectors) as served: known ids and training histories, unknown ids as 0."""
    uidx = hybrid.known_index(U.shape[0], known_users(train))
    iidx = hybrid.known_index(I.shape[0], known_items(train))
    return hybrid.user_vectors(model, U, uidx, histories(train)), hybrid.item_vectors(model, I, iidx)


def validation_ndcg(model, U, I, fit: CSR, val: CSR, users: np.ndarray) -> float:
    uvec, ivec = all_vectors(model, U, I, fit)
    chunk = chunk_users(val.n_cols)  # 2,048 users up to ~10,000 items; fewer above, bounding memory
    row = full_ranking_metrics(lambda u: uvec[u] @ ivec.T, val, fit, ks=(10,), users=users, chunk_users=chunk)
    return float(row["ndcg@10"])


def judged_users(fit: CSR, val: CSR, seed: int, max_users: int = VALIDATION_MAX_USERS) -> np.ndarray:
    judged = np.flatnonzero((val.row_lengths() > 0) & (fit.row_lengths() > 0))
    if len(judged) > max_users:
        judged = np.sort(np.random.default_rng([seed, 21]).choice(judged, size=max_users, replace=False))
    return judged


def forget_unseen(model, train: CSR) -> None:
    """Zeroes the ID and history rows of users and items without training positives: they never
    learnt, and fed with their index they must give the content-only vector, as index 0 does."""
    user = model.get_layer("user_tower")
    unseen_users = 1 + np.flatnonzero(~known_users(train))
    unseen_items = 1 + np.flatnonzero(~known_items(train))
    user.get_layer("user_id_embedding").zero_rows(unseen_users)
    user.get_layer("history_embedding").zero_rows(unseen_items)
    model.get_layer("item_id_embedding").zero_rows(unseen_items)


def _padded(train: CSR) -> np.ndarray:
    return hybrid.pad_histories(histories(train))


def _sampled(padded: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``cap`` random history items per user (all of them when the user has fewer)."""
    if padded.shape[1] <= cap:
        return padded
    keys = rng.random(padded.shape, dtype=np.float32)
    keys[padded == 0] = 2.0  # padding sorts last
    pick = np.argpartition(keys, cap - 1, axis=1)[:, :cap]
    return np.take_along_axis(padded, pick, axis=1)


def user_batches(row_users: np.ndarray, batch: int, rng: np.random.Generator, chunk: int = 16):
    """Shuffled batches of user chunks: yields (chunk users [nb], row ids, each row's chunk position).

    Each user's rows are shuffled and cut into chunks of at most ``chunk`` rows; the user tower (MLP,
    history pooling) then runs once per chunk instead of once per row, most of a step's work, while a
    user still takes part in several steps an epoch (its ID row learns at every one of them).
    """
    n = len(row_users)
    if n == 0:
        return
    order = np.lexsort((rng.random(n), row_users))  # by user, randomly within a user
    users = row_users[order]
    first = np.r_[True, users[1:] != users[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    group_start = first | ((np.arange(n) - start) % chunk == 0)
    gid = np.cumsum(group_start) - 1  # chunk id of each (ordered) row
    n_groups = int(gid[-1]) + 1
    perm = rng.permutation(n_groups)
    rank = np.empty(n_groups, dtype=np.int64)
    rank[perm] = np.arange(n_groups)
    shuffled = np.argsort(rank[gid], kind="stable")  # rows grouped by chunk, chunks shuffled
    rows, chunks = order[shuffled], rank[gid][shuffled]
    counts = np.bincount(chunks, minlength=n_groups)
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(batch, n, batch), side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts[cuts < n_groups], [n_groups]]))
    chunk_users = np.empty(n_groups, dtype=np.int32)
    chunk_users[chunks] = row_users[rows]
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo, hi = (ends[a - 1] if a else 0), ends[b - 1]
        yield chunk_users[a:b], rows[lo:hi], (chunks[lo:hi] - a).astype(np.int32)


def grouped_user_vectors(model, x, uid, hist, local, items, training: bool = True):
    """User vectors [R, d + 2] for R rows of nb users, each without its row's target in the history.

    ``x``, ``uid``, ``hist``: the batch users' features, indices and histories ([nb, ...]); ``local``
    [R]: each row's user position; ``items`` [R]: each row's item (a row). Equal to the user tower on
    the history with the target set to padding: the pooling weights are renormalised without it, so
    a model that could find the answer in its input never sees it (and at serving it is never there).
    """
    import tensorflow as tf

    user = model.get_layer("user_tower")
    q = _content_model(user)(x, training=training)
    table, pooling = user.get_layer("history_embedding"), user.get_layer("history_pooling")
    emb = table(hist)  # [nb, L, d]
    w = pooling.position_weights(emb, hist, q)  # [nb, L]
    pooled = tf.reduce_sum(emb * w[:, :, None], axis=1)  # [nb, d]
    base = q + user.get_layer("user_id_embedding")(uid)
    is_target = tf.cast(tf.equal(tf.gather(hist, local), tf.expand_dims(items + 1, 1)), w.dtype)
    wt = tf.reduce_sum(tf.gather(w, local) * is_target, axis=1, keepdims=True)  # [R, 1]
    rest = 1.0 - wt
    # A history that held only the target is empty without it: pooled 0, as the tower gives.
    without = (tf.gather(pooled, local) - wt * table(items + 1)) / tf.maximum(rest, 1e-6)
    u = tf.gather(base, local) + tf.where(rest > 1e-6, without, 0.0)
    beta = user.get_layer("popularity_weight")([tf.gather(uid, local), tf.gather(hist, local)])
    return tf.concat([u, tf.ones_like(u[:, :1]), beta], axis=1)


def _content_model(user):
    """The user tower's attribute path (features -> d), sharing its layers; built once per tower."""
    import keras

    sub = getattr(user, "_towerserve_content", None)
    if sub is None:
        sub = keras.Model(user.inputs[0], user.get_layer("user_embedding").output)
        user._towerserve_content = sub
    return sub


def fit(
    U: np.ndarray,
    I: np.ndarray,
    train: CSR,
    cfg: HybridConfig,
    seed: int,
    negatives: tuple[np.ndarray, np.ndarray] | None = None,
    val: CSR | None = None,
    epochs: int | None = None,
    desc: str = "hybrid",
) -> Fitted:
    """Trains a hybrid on ``train``'s positives.

    Args:
        negatives: (users, items) sampled non-positives; required by the bce loss.
        val: validation positives (disjoint from ``train``): epochs stop on their NDCG@10 and the best
            epoch's weights are kept. Without it the model trains ``epochs`` (default cfg.epochs) epochs.

    Long because the training step is a tf.function closing over the optimisers, tensors and flags set up before it, and the epoch loop below drives it: apart, they would pass a dozen values back and forth.
    """
    import keras
    import tensorflow as tf

    if cfg.loss == "bce" and negatives is None:
        raise ValueError("the bce loss needs sampled negatives (got none)")
    keras.utils.set_random_seed(seed)
    n_users, n_items = train.n_rows, train.n_cols
    model = hybrid.build_hybrid(U.shape[1], I.shape[1], n_users, n_items, cfg)
    item_t = model.get_layer("item_tower")
    item_ids = model.get_layer("item_id_embedding")
    # A user's ID row takes part in few steps (one per chunk): Adam's second moment, decayed between
    # them, makes each of those steps ~30 x the learning rate, so those rows learn with Adagrad, whose
    # step shrinks with the row's own accumulated gradients.
    user = model.get_layer("user_tower")
    user_ids = user.get_layer("user_id_embedding").trainable_variables
    # The attribute MLPs fit fast and, left at the embeddings' pace, fit the known users before the
    # ID parts learn (content_learning_rate slows them).
    id_tables = {
        id(v) for t in (user.get_layer("history_embedding"), item_ids) for v in t.trainable_variables
    }
    rare = {id(v) for v in user_ids}
    rest = [v for v in model.trainable_variables if id(v) not in rare]
    variables = [v for v in rest if id(v) in id_tables]
    content = [v for v in rest if id(v) not in id_tables]
    opt = keras.optimizers.Adam(cfg.learning_rate)
    opt.build(variables)
    opt_content = keras.optimizers.Adam(cfg.content_learning_rate or cfg.learning_rate)
    opt_content.build(content)
    opt_ids = keras.optimizers.Adagrad(cfg.user_id_learning_rate) if cfg.user_id_learning_rate else None
    if opt_ids is not None:
        opt_ids.build(user_ids)
    else:
        variables = variables + user_ids

    pu, pi = train.pairs()  # row-major: sorted by user
    rows_u, rows_i = pu.astype(np.int32), pi.astype(np.int32)
    labels = np.ones(len(rows_u), dtype=np.float32)
    if cfg.loss == "bce":
        nu, ni = negatives
        rows_u = np.concatenate([rows_u, np.asarray(nu, dtype=np.int32)])
        rows_i = np.concatenate([rows_i, np.asarray(ni, dtype=np.int32)])
        labels = np.concatenate([labels, np.zeros(len(nu), dtype=np.float32)])
        order = np.argsort(rows_u, kind="stable")
        rows_u, rows_i, labels = rows_u[order], rows_i[order], labels[order]
    padded = _padded(train)
    width = min(padded.shape[1], cfg.train_history)
    hist_var = tf.Variable(np.zeros((n_users, width), np.int32), trainable=False)
    user_feats, item_feats = tf.constant(U, tf.float32), tf.constant(I, tf.float32)
    batch = step_batch(len(rows_u), cfg.batch_size)
    log_q = tf.constant(inclusion_log_q(train, batch))
    inv_t = 1.0 / cfg.temperature
    full = cfg.loss == "softmax" and cfg.full_softmax(n_items)
    every_item = tf.range(1, n_items + 1, dtype=tf.int32)

    vec = tf.TensorSpec([None], tf.int32)
    spec = [vec, vec, vec, tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.bool)]
    spec.append(tf.TensorSpec([n_items], tf.bool))

    @tf.function(input_signature=spec)
    def step(users, local, i, y, drop_user, drop_item):
        # A dropped user is a cold user: no id and no history.
        hist = tf.where(tf.expand_dims(drop_user, 1), tf.zeros_like(hist_var[:1]), tf.gather(hist_var, users))
        uid = tf.where(drop_user | (not cfg.user_ids), 0, users + 1)
        # Each distinct item of the batch once: the item tower runs once per item, and for the
        # softmax duplicates of a row's positive are not its negatives.
        cols, col_of_row = tf.unique(i)
        iid = tf.where(tf.gather(drop_item, cols), 0, cols + 1)
        with tf.GradientTape() as tape:
            uvec = grouped_user_vectors(model, tf.gather(user_feats, users), uid, hist, local, i)
            if full:
                vall = item_t(item_feats, training=True) + item_ids(tf.where(drop_item, 0, every_item))
                loss = full_softmax_loss(uvec, vall, i, inv_t)
            elif cfg.loss == "softmax":
                vvec = item_t(tf.gather(item_feats, cols), training=True) + item_ids(iid)
                logits = tf.matmul(uvec, vvec, transpose_b=True) * inv_t - tf.gather(log_q, cols)[None, :]
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=col_of_row, logits=logits)
                )
            else:
                vvec = item_t(tf.gather(item_feats, cols), training=True) + item_ids(iid)
                logit = tf.reduce_sum(uvec * tf.gather(vvec, col_of_row), axis=1)
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logit))
            if cfg.l2:
                # On the ID rows each batch row used, per row, as in matrix factorisation.
                user = model.get_layer("user_tower")
                reg = tf.reduce_sum(tf.square(user.get_layer("user_id_embedding")(tf.gather(uid, local))))
                reg += tf.reduce_sum(tf.square(item_ids(tf.gather(iid, col_of_row))))
                loss = loss + cfg.l2 * reg / tf.cast(tf.shape(i)[0], reg.dtype)
        grads = tape.gradient(loss, variables + content + (user_ids if opt_ids is not None else []))
        n, m = len(variables), len(variables) + len(content)
        opt.apply(grads[:n], variables)
        opt_content.apply(grads[n:m], content)
        if opt_ids is not None:
            opt_ids.apply(grads[m:], user_ids)
        return loss

    rng = np.random.default_rng([seed, 31])
    judged = judged_users(train, val, seed) if val is not None else None
    max_epochs = cfg.epochs if epochs is None else int(epochs)
    history: dict[str, list[float]] = {"loss": []}
    best, best_epoch, best_weights, waited = -1.0, 0, None, 0
    t0 = time.perf_counter()
    content_lr = cfg.content_learning_rate or cfg.learning_rate
    # First the content paths alone (every id unknown) at the full rate: the content-only model cold
    # users and new items get, as good as two_tower's; then ids and histories learn what it misses,
    # the content paths moving at content_learning_rate (fast, they would fit the known users first).
    for epoch in range(-cfg.content_epochs, max_epochs):
        te = time.perf_counter()
        alone = epoch < 0
        opt_content.learning_rate.assign(cfg.learning_rate if alone else content_lr)
        p_drop = 1.0 if alone else cfg.id_dropout
        sample = _sampled(padded, width, rng)
        if cfg.history_dropout:
            # Each epoch sees a random part of every history: the item-item part cannot memorise
            # co-occurrences (what EASE's λ and a denoising autoencoder's input dropout prevent).
            sample = np.where(rng.random(sample.shape) < cfg.history_dropout, 0, sample).astype(np.int32)
        hist_var.assign(sample)
        losses = []
        for users, rows, local in user_batches(rows_u, batch, rng, cfg.user_chunk):
            losses.append(
                step(
                    users,
                    local,
                    rows_i[rows],
                    labels[rows],
                    rng.random(len(users)) < p_drop,
                    rng.random(n_items) < p_drop,
                )
            )
        history["loss"].append(float(np.mean([float(x) for x in losses])))
        line = f"{desc} epoch {epoch + 1}/{max_epochs}: loss {history['loss'][-1]:.4f}"
        if alone:
            line = f"{desc} content epoch {epoch + cfg.content_epochs + 1}/{cfg.content_epochs}: loss {history['loss'][-1]:.4f}"
        elif val is not None:
            score = validation_ndcg(model, U, I, train, val, judged)
            history.setdefault("val_ndcg@10", []).append(score)
            line += f", val ndcg@10 {score:.4f}"
            if score > best + 1e-4:
                best, best_epoch, best_weights, waited = score, epoch + 1, model.get_weights(), 0
            else:
                waited += 1
        _LOGGER.info("%s (%.1f s)", line, time.perf_counter() - te)
        if val is not None and not alone and waited >= cfg.patience:
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    forget_unseen(model, train)
    kept = best_epoch if val is not None else len(history["loss"]) - cfg.content_epochs  # joint epochs
    return Fitted(model, history, kept, time.perf_counter() - t0, best if val is not None else None)
