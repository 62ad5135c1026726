"""Fits the hybrid two-tower: ID dropout, target exclusion, in-batch softmax with logQ or BCE, early stopping.

Every choice (epochs, and the recipe in trainer/hybrid/search.py) is made on NDCG@10 over a validation
split carved out of the TRAINING positives; the test split is never read here.

Memory does not grow with users x features, items x features or users x history: a step builds its
batch's feature rows (trainer/hybrid/rows.py) and padded histories (trainer/hybrid/histories.py), the
vectors are computed a block of entities at a time, and validation ranks the catalogue in blocks
(trainer/hybrid/scoring.py). What stays is O(users + items + positives) and the model's own ID tables.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from towerserve.server.core.csr import CSR

from . import histories as hybrid_histories
from . import model as hybrid
from . import scoring
from .config import FULL_SOFTMAX_MAX_ITEMS, HybridConfig
from .rows import FeatureRows, as_rows

_LOGGER = logging.getLogger(__name__)

VALIDATION_MAX_USERS = 5_000  # users judged per epoch: enough to rank epochs and recipes, bounded
# ...and at most this many users x items cells an evaluation, never under VALIDATION_MIN_USERS: a
# judged user is scored against every item, so at 10⁶ items 5,000 users cost 5 x 10⁹ cells an epoch
# (minutes); the cap leaves every catalogue up to 200,000 items at 5,000 (the seed scale untouched).
VALIDATION_CELLS = 1_000_000_000
VALIDATION_MIN_USERS = 1_000
# Items per tower pass over the catalogue: a block's feature rows (~40 MB at 1,153 features, and as
# much again in the tensor TensorFlow makes of them) and hidden activations, never the whole items x
# features matrix. The seed scale's 1,000 items are one pass, as before.
TOWER_BLOCK = 8_192
USER_BATCH = 1024  # users a user-tower pass outside training, each batch padded to its longest history
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


def users_vectors(
    model,
    U: np.ndarray | FeatureRows,
    train: CSR,
    users: np.ndarray,
    ids: bool = True,
    history: bool = True,
) -> np.ndarray:
    """float32 [len(users), width]: ``users``' vectors as served (their ids where they have training
    positives, their training histories; ``ids``/``history`` False: as if they had none), USER_BATCH
    users a tower pass, each batch's feature rows and histories (padded to its longest) built for it
    alone."""
    U, users, batch = as_rows(U), np.asarray(users, dtype=np.int64), USER_BATCH
    tower = model.get_layer("user_tower")
    known = known_users(train) & ids
    out = [np.zeros((0, tower.output.shape[-1]), dtype=np.float32)]
    for s in range(0, len(users), batch):
        u = users[s : s + batch]
        idx = np.where(known[u], u + 1, 0).astype(np.int32)
        hist = hybrid_histories.padded(train, u) if history else np.zeros((len(u), 1), np.int32)
        out.append(np.asarray(tower([U.take(u), idx, hist], training=False), dtype=np.float32))
    return np.concatenate(out)


def catalogue_vectors(model, I: np.ndarray | FeatureRows, train: CSR) -> np.ndarray:
    """float32 [n_items, width]: every item's vector as served (content path plus its ID row where it
    has training positives), TOWER_BLOCK items a tower pass."""
    I = as_rows(I)
    iidx = hybrid.known_index(I.n, known_items(train))
    parts = [hybrid.item_vectors(model, rows, iidx[ids]) for ids, rows in I.blocks(TOWER_BLOCK)]
    return np.concatenate(parts) if parts else np.zeros((0, model.get_layer("item_id_embedding").dim))


def all_vectors(model, U, I, train: CSR) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors, item vectors) as served: known ids and training histories, unknown ids as 0.
    ``U``/``I``: feature matrices or FeatureRows."""
    U = as_rows(U)
    return users_vectors(model, U, train, np.arange(U.n)), catalogue_vectors(model, I, train)


def validation_ndcg(model, U, I, fit: CSR, val: CSR, users: np.ndarray) -> float:
    """NDCG@10 of ``users`` (sorted) on ``val``, ``fit``'s positives masked: their vectors alone, the
    catalogue's in blocks, ranked in blocks (trainer/hybrid/scoring.py)."""
    ivec = catalogue_vectors(model, I, fit)
    uvec = users_vectors(model, U, fit, users)
    return scoring.ndcg(lambda pos, lo, hi: [uvec[pos] @ ivec[lo:hi].T], users, fit, val)[0]


def judged_users(fit: CSR, val: CSR, seed: int, max_users: int = VALIDATION_MAX_USERS) -> np.ndarray:
    """Sorted users with fit and validation positives: at most ``max_users``, fewer on a catalogue
    too big for that many (VALIDATION_CELLS), a seeded sample when there are more."""
    max_users = min(max_users, max(VALIDATION_MIN_USERS, VALIDATION_CELLS // max(1, fit.n_cols)))
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


def unique_in_order(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tf.unique's answer in numpy: (the distinct values in order of first appearance, each value's
    position among them), both int32. The step gets a batch's distinct items with their feature rows."""
    distinct, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return distinct[order].astype(np.int32), rank[inverse.reshape(-1)]


def user_batches(row_users: np.ndarray, batch: int, rng: np.random.Generator, chunk: int = 16):
    """Shuffled batches of user chunks: yields (chunk users [nb], row ids, each row's chunk position).

    Each user's rows are shuffled and cut into chunks of at most ``chunk`` rows; the user tower (MLP,
    history pooling) then runs once per chunk instead of once per row, most of a step's work, while a
    user still takes part in several steps an epoch (its ID row learns at every one of them).
    """
    n = len(row_users)
    if n == 0:
        return
    # Every array here has one entry a row (10^8 rows an epoch for bce at 10^6 users, with their
    # 100 negatives each): int32 where it fits, each freed once used, chunks laid out from each
    # user's run of rows rather than sorted, so an epoch's start peaks near 24 bytes a row, not ~80.
    idx = np.int32 if n < 2**31 else np.int64
    order = np.lexsort((rng.random(n), row_users)).astype(idx)  # by user, randomly within a user
    users = row_users[order]
    first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])  # where each user's run starts
    lengths = np.diff(np.r_[first, n])
    per_user = -(-lengths // chunk)  # a run is cut into chunks of ``chunk`` rows, the last shorter
    n_groups = int(per_user.sum())
    nth = np.arange(n_groups) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    gstart = np.repeat(first, per_user) + chunk * nth
    size = np.minimum(chunk, np.repeat(first + lengths, per_user) - gstart)
    perm = rng.permutation(n_groups)  # chunk perm[r] goes r-th
    starts, counts = gstart[perm].astype(idx), size[perm].astype(idx)
    ends = np.cumsum(counts, dtype=np.int64)
    chunk_users = users[starts].astype(np.int32)
    del users, gstart, size, nth
    rows = order[np.arange(n, dtype=idx) + np.repeat(starts - (ends - counts).astype(idx), counts)]
    del order
    chunks = np.repeat(np.arange(n_groups, dtype=idx), counts)
    cuts = np.searchsorted(ends, np.arange(batch, n, batch), side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts[cuts < n_groups], [n_groups]]))
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
    U: np.ndarray | FeatureRows,
    I: np.ndarray | FeatureRows,
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
        U, I: the users' and items' feature matrices, or FeatureRows: a step builds the rows of its
            batch's users and distinct items alone.
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
    U, I = as_rows(U), as_rows(I)
    n_users, n_items = train.n_rows, train.n_cols
    model = hybrid.build_hybrid(U.dim, I.dim, n_users, n_items, cfg)
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
    # Every history padded to this width, as the user tower saw them when all were held at once.
    width = min(hybrid_histories.longest(train), cfg.train_history)
    batch = step_batch(len(rows_u), cfg.batch_size)
    log_q = tf.constant(inclusion_log_q(train, batch))
    inv_t = 1.0 / cfg.temperature
    full = cfg.loss == "softmax" and cfg.full_softmax(n_items)
    every_item = tf.range(1, n_items + 1, dtype=tf.int32)
    # The full softmax runs the item tower on every item at every step, so it holds their rows: at
    # most FULL_SOFTMAX_MAX_ITEMS of them under "auto"; "full" on a bigger catalogue holds them all.
    all_items = tf.constant(I.take(np.arange(n_items))) if full else None
    if full and n_items > FULL_SOFTMAX_MAX_ITEMS:
        _LOGGER.warning(
            "%s: negatives='full' over %d items holds their %d x %d feature rows (%.1f GB) and scores "
            "every item at every step",
            desc,
            n_items,
            n_items,
            I.dim,
            n_items * I.dim * 4 / 1e9,
        )
    no_items = np.zeros((0, I.dim), np.float32)

    vec = tf.TensorSpec([None], tf.int32)
    spec = [vec, vec, vec, tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.bool)]
    spec.append(tf.TensorSpec([n_items], tf.bool))
    spec += [tf.TensorSpec([None, U.dim], tf.float32), tf.TensorSpec([None, width], tf.int32), vec, vec]
    spec.append(tf.TensorSpec([None, I.dim], tf.float32))

    @tf.function(input_signature=spec)
    def step(users, local, i, y, drop_user, drop_item, x_users, hist, cols, col_of_row, x_items):
        """``x_users``/``hist``: the batch users' feature rows and padded history samples; ``cols``
        (the batch's distinct items, in order of appearance), ``col_of_row`` (each row's position
        among them) and ``x_items`` (their feature rows): each distinct item goes through the item
        tower once, and for the softmax duplicates of a row's positive are not its negatives."""
        # A dropped user is a cold user: no id and no history.
        hist = tf.where(tf.expand_dims(drop_user, 1), tf.zeros_like(hist[:1]), hist)
        uid = tf.where(drop_user | (not cfg.user_ids), 0, users + 1)
        iid = tf.where(tf.gather(drop_item, cols), 0, cols + 1)
        with tf.GradientTape() as tape:
            uvec = grouped_user_vectors(model, x_users, uid, hist, local, i)
            if full:
                vall = item_t(all_items, training=True) + item_ids(tf.where(drop_item, 0, every_item))
                loss = full_softmax_loss(uvec, vall, i, inv_t)
            elif cfg.loss == "softmax":
                vvec = item_t(x_items, training=True) + item_ids(iid)
                logits = tf.matmul(uvec, vvec, transpose_b=True) * inv_t - tf.gather(log_q, cols)[None, :]
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=col_of_row, logits=logits)
                )
            else:
                vvec = item_t(x_items, training=True) + item_ids(iid)
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
        sample = hybrid_histories.sample(train, width, rng)
        if cfg.history_dropout:
            # Each epoch sees a random part of every history: the item-item part cannot memorise
            # co-occurrences (what EASE's λ and a denoising autoencoder's input dropout prevent).
            sample = hybrid_histories.drop(sample, width, cfg.history_dropout, rng)
        losses = []
        for users, rows, local in user_batches(rows_u, batch, rng, cfg.user_chunk):
            items = rows_i[rows]
            cols, col_of_row = unique_in_order(items)
            losses.append(
                step(
                    users,
                    local,
                    items,
                    labels[rows],
                    rng.random(len(users)) < p_drop,
                    rng.random(n_items) < p_drop,
                    U.take(users),
                    hybrid_histories.padded(sample, users, width),
                    cols,
                    col_of_row,
                    no_items if full else I.take(cols),
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
