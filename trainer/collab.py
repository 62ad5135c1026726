"""Collaborative baselines fitted on the training matrix alone: ItemKNN (cosine, top-k) and EASE.

Both score a user from the items in their training row, so a user with none (every user of the cold
split) gets no signal from them: such users fall back to popularity (training positives per item),
i.e. ItemKNN and EASE equal MostPopular for them, never less. Items nobody trained on score 0.

EASE (Steck 2019) inverts a dense items x items float64 Gram matrix: n² x 8 bytes per matrix, about
three alive at once (G, P, B), and O(n³) time. Measured on this project's 2-core machine: one fit
(inverse and B) takes 0.25 s of CPU at 1,000 items and 12.5 s at 5,000 (0.8 s and 39 s of wall time
while the machine was shared, load 9), and choosing λ costs one fit per grid value plus the final one
(8 in all). Above ``EASE_MAX_ITEMS`` = 5,000 (200 MB a matrix, about 100 s of CPU in all) EASE is
skipped with a note: at 20,000 items one matrix is 3.2 GB and one fit 64 x as long (~13 CPU-minutes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from towerserve.server.core.csr import CSR
from towerserve.server.core.ranking_metrics import full_ranking_metrics

_LOGGER = logging.getLogger(__name__)

KNN_K = 100
# Above DENSE_MAX_ITEMS, ItemKNN's fit works on co-occurring pairs only (Σ row length² triples, not
# items²): 10⁸ triples at 100,000 users x 100,000 items with 38 training positives a user. Its
# neighbour lists hold k x items entries (10⁸ at 1,000,000 items, ~2 GB while sorted): above this
# catalogue size it is skipped with a note, as EASE is.
KNN_MAX_ITEMS = 1_000_000
# At the seed scale (77 training positives a user, ~770 per item) the best λ is 1,000: 2,000 is in
# the grid so that the choice is not pinned to its edge.
EASE_LAMBDAS = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
EASE_MAX_ITEMS = 5_000
VALIDATION_SHARE = 0.2  # of each user's training positives, held out to choose λ
VALIDATION_MAX_USERS = 10_000  # users judged per λ: enough to rank six λ values, bounded at any scale
# Dense blocks (co-occurrence rows, bincounted scores) never hold more than this many cells.
BLOCK_CELLS = 4_000_000
# Up to this many items the Gram matrix (128 MB float64) and ItemKNN's weights (64 MB float32) are
# dense and built and applied with BLAS: at 1,000 items that is several times faster than bincounts.
DENSE_MAX_ITEMS = 4_096


def popularity(train: CSR) -> np.ndarray:
    """Training positives per item, float32 [n_items]."""
    return np.bincount(train.indices, minlength=train.n_cols).astype(np.float32)


def transpose(m: CSR) -> CSR:
    """The item x user view of a user x item set."""
    rows, cols = m.pairs()
    return CSR.from_pairs(cols, rows, m.n_cols, m.n_rows)


def cooccurrence(train: CSR, items: np.ndarray, by_item: CSR | None = None) -> np.ndarray:
    """C[a, j] = how many users have both ``items[a]`` and item j (C[a, items[a]] = its count).

    Sparse-friendly: the work is the number of (item, user, other item) triples, never users x items.

    Returns:
        float64 [len(items), n_items].
    """
    by_item = transpose(train) if by_item is None else by_item
    items = np.asarray(items, dtype=np.int64)
    n = train.n_cols
    users = by_item.gather(items).astype(np.int64)
    local = np.repeat(np.arange(len(items)), by_item.indptr[items + 1] - by_item.indptr[items])
    lengths = train.row_lengths()[users]
    keys = np.repeat(local * n, lengths) + train.gather(users)
    return np.bincount(keys, minlength=len(items) * n).reshape(len(items), n).astype(np.float64)


def _item_blocks(train: CSR, by_item: CSR, dense: bool = True):
    """Consecutive item ranges whose co-occurrence fits ``BLOCK_CELLS`` as triples (and, when
    ``dense``, as a dense block of rows too)."""
    n = train.n_cols
    rows, cols = by_item.pairs()  # rows are items here, cols users
    triples = np.bincount(rows, weights=train.row_lengths()[cols], minlength=n)
    width = n if dense else 0
    start = 0
    while start < n:
        stop = start + 1
        budget = triples[start]
        while (
            stop < n and (stop - start + 1) * width <= BLOCK_CELLS and budget + triples[stop] <= BLOCK_CELLS
        ):
            budget += triples[stop]
            stop += 1
        yield np.arange(start, stop)
        start = stop


def _with_fallback(users: np.ndarray, train: CSR, fallback: np.ndarray, scores: np.ndarray) -> np.ndarray:
    empty = train.row_lengths()[users] == 0
    if empty.any():
        scores[empty] = fallback
    return scores


@dataclass(frozen=True)
class ItemKNN:
    """Item-item cosine neighbours: score(u, i) = Σ sim(i, j) over u's training items j in i's top k.

    Attributes:
        train: the training positives (a user's row is its profile).
        by_source: for each item j, the items i that have j among their top-k neighbours (CSR rows = j).
        weights: float32 [nnz of by_source]: sim(i, j) for each entry of ``by_source``.
        k: neighbours kept per item.
    """

    train: CSR
    by_source: CSR
    weights: np.ndarray
    fallback: np.ndarray
    k: int
    dense: np.ndarray | None = None  # W[j, i] = the same weights, float32, up to DENSE_MAX_ITEMS

    @classmethod
    def fit(cls, train: CSR, k: int = KNN_K, g: np.ndarray | None = None) -> ItemKNN:
        """Keeps each item's k most cosine-similar items; ``g`` is XᵀX when the caller has it."""
        if k < 1:
            raise ValueError(f"k must be >= 1 (got {k})")
        n = train.n_cols
        by_item = transpose(train)
        norms = np.sqrt(by_item.row_lengths().astype(np.float64))
        if g is None and n <= DENSE_MAX_ITEMS:
            g = gram(train)
        if g is None:
            tgt, src, val = _sparse_neighbours(train, by_item, norms, k)
            return cls._from_triples(train, tgt, src, val, k)
        targets, sources, sims = [], [], []
        for block in _item_blocks(train, by_item):
            sim = g[block] / np.maximum(norms[block][:, None] * norms[None, :], 1e-12)
            sim[np.arange(len(block)), block] = 0.0  # an item is not its own neighbour
            kk = min(k, n)
            # argpartition: O(n) per row; ties at the k-th neighbour are broken arbitrarily (but
            # deterministically for the same data).
            top = (
                np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
                if kk < n
                else np.tile(np.arange(n), (len(block), 1))
            )
            s = np.take_along_axis(sim, top, axis=1)
            keep = s > 0
            targets.append(np.repeat(block, kk)[keep.ravel()])
            sources.append(top[keep])
            sims.append(s[keep])
        tgt = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
        src = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64)
        val = np.concatenate(sims) if sims else np.zeros(0)
        return cls._from_triples(train, tgt, src, val, k)

    @classmethod
    def _from_triples(cls, train: CSR, tgt: np.ndarray, src: np.ndarray, val: np.ndarray, k: int) -> ItemKNN:
        n = train.n_cols
        # Row-major by source, then target: the order CSR.from_pairs stores, so weights line up.
        order = np.lexsort((tgt, src))
        # Built directly, not by CSR.from_pairs: (source, target) pairs are distinct (k distinct
        # sources per target) and now sorted, and from_pairs' int64 keys, sort and divmod would
        # hold ~5 GB more at 10⁸ entries (k x 1,000,000 items).
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
        by_source = CSR(indptr=indptr, indices=tgt[order].astype(np.int32), n_cols=int(n))
        weights = val[order].astype(np.float32)
        dense = None
        if n <= DENSE_MAX_ITEMS:
            dense = np.zeros((n, n), dtype=np.float32)
            dense[src[order], tgt[order]] = weights
        return cls(train, by_source, weights, popularity(train), int(k), dense)

    def __call__(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        if self.dense is not None:
            x = self.train.dense_rows(users).astype(np.float32)
            return _with_fallback(users, self.train, self.fallback, x @ self.dense)
        n = self.train.n_cols
        out = np.zeros((len(users), n), dtype=np.float32)
        step = max(1, BLOCK_CELLS // max(1, n))
        for start in range(0, len(users), step):
            u = users[start : start + step]
            items = self.train.gather(u).astype(np.int64)
            local = np.repeat(np.arange(len(u)), self.train.row_lengths()[u])
            fan = self.by_source.indptr[items + 1] - self.by_source.indptr[items]
            entries = np.repeat(self.by_source.indptr[items], fan) + (
                np.arange(fan.sum()) - np.repeat(np.cumsum(fan) - fan, fan)
            )
            keys = np.repeat(local * n, fan) + self.by_source.indices[entries]
            w = self.weights[entries].astype(np.float64)
            out[start : start + len(u)] = np.bincount(keys, weights=w, minlength=len(u) * n).reshape(
                len(u), n
            )
        return _with_fallback(users, self.train, self.fallback, out)


def _sparse_neighbours(
    train: CSR, by_item: CSR, norms: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ItemKNN's (target, source, cosine) for each target's top k sources, from co-occurring pairs only.

    Work and memory follow the (item, user, other item) triples (Σ over users of their row length²),
    never items x items: what lets ItemKNN fit at 10⁵-10⁶ items. Ties at the k-th neighbour go to
    the smaller source id (the dense path's argpartition breaks them arbitrarily).
    """
    n = train.n_cols
    targets, sources, sims = [], [], []
    for block in _item_blocks(train, by_item, dense=False):
        users = by_item.gather(block).astype(np.int64)
        local = np.repeat(np.arange(len(block)), by_item.indptr[block + 1] - by_item.indptr[block])
        keys = np.sort(np.repeat(local * n, train.row_lengths()[users]) + train.gather(users))
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        counts = np.diff(np.r_[starts, len(keys)])
        a, j = np.divmod(keys[starts], n)
        t = block[a]
        other = j != t  # an item is not its own neighbour
        a, j, t, c = a[other], j[other], t[other], counts[other]
        sim = c / np.maximum(norms[t] * norms[j], 1e-12)
        # Per target, most similar first; lexsort is stable and (a, j) arrive sorted, so ties keep j order.
        order = np.lexsort((-sim, a))
        a, j, t, sim = a[order], j[order], t[order], sim[order]
        first = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
        rank = np.arange(len(a)) - np.repeat(first, np.diff(np.r_[first, len(a)]))
        keep = rank < k
        # Kept compact (int32 ids, float32 cosines: the weights' final type) until the end: up to
        # k x items entries, 1.2 GB at 10⁸ instead of 2.4 GB, and once more while concatenated.
        targets.append(t[keep].astype(np.int32))
        sources.append(j[keep].astype(np.int32))
        sims.append(sim[keep].astype(np.float32))
    empty = np.zeros(0, dtype=np.int32)
    return (
        np.concatenate(targets) if targets else empty,
        np.concatenate(sources) if sources else empty,
        np.concatenate(sims) if sims else np.zeros(0, dtype=np.float32),
    )


def gram(train: CSR) -> np.ndarray:
    """G = XᵀX, float64 [n_items, n_items]: dense chunks of X through BLAS up to ``DENSE_MAX_ITEMS``
    items, co-occurrence blocks above (never a dense X of every user)."""
    n = train.n_cols
    g = np.zeros((n, n))
    if n <= DENSE_MAX_ITEMS:
        step = max(1, BLOCK_CELLS // max(1, n))
        for start in range(0, train.n_rows, step):
            # float32 counts are exact below 2^24, far above a chunk's user count.
            x = train.dense_rows(np.arange(start, min(train.n_rows, start + step))).astype(np.float32)
            g += x.T @ x
        return g
    by_item = transpose(train)
    for block in _item_blocks(train, by_item):
        g[block] = cooccurrence(train, block, by_item)
    return g


def ease_weights(g: np.ndarray, lam: float) -> np.ndarray:
    """Steck's closed form: P = (G + λI)⁻¹, B = -P / diag(P) column by column, diag(B) = 0."""
    p = np.linalg.inv(g + lam * np.eye(len(g)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@dataclass(frozen=True)
class EASE:
    """Scores X_u · B with B from :func:`ease_weights` (float32 for scoring)."""

    train: CSR
    weights: np.ndarray
    fallback: np.ndarray
    lam: float
    validation: dict[float, float] | None = None  # λ -> validation NDCG@10, when λ was chosen

    @classmethod
    def fit(cls, train: CSR, lam: float, g: np.ndarray | None = None) -> EASE:
        g = gram(train) if g is None else g
        return cls(train, ease_weights(g, lam).astype(np.float32), popularity(train), float(lam))

    def __call__(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        x = self.train.dense_rows(users).astype(np.float32)
        return _with_fallback(users, self.train, self.fallback, x @ self.weights)


def validation_split(train: CSR, share: float = VALIDATION_SHARE, seed: int = 0) -> tuple[CSR, CSR]:
    """Carves a validation set out of the TRAINING positives: each pair moves with probability ``share``.

    Returns:
        (fit, validation): disjoint, and their union is ``train``.
    """
    rows, cols = train.pairs()
    held = np.random.default_rng([seed, 10]).random(len(rows)) < share
    fit = CSR.from_pairs(rows[~held], cols[~held], train.n_rows, train.n_cols)
    val = CSR.from_pairs(rows[held], cols[held], train.n_rows, train.n_cols)
    return fit, val


def choose_lambda(
    train: CSR, lambdas=EASE_LAMBDAS, seed: int = 0, max_users: int = VALIDATION_MAX_USERS
) -> tuple[float, dict[float, float]]:
    """Picks EASE's λ by NDCG@10 on a validation split of the training positives (never the test set).

    Returns:
        (best λ, {λ: validation NDCG@10}); ties go to the smaller λ.
    """
    if not lambdas:
        raise ValueError("lambdas must name at least one value")
    fit, val = validation_split(train, seed=seed)
    judged = np.flatnonzero((val.row_lengths() > 0) & (fit.row_lengths() > 0))
    if len(judged) > max_users:
        judged = np.sort(np.random.default_rng([seed, 11]).choice(judged, size=max_users, replace=False))
    g = gram(fit)
    scores: dict[float, float] = {}
    for lam in sorted(float(x) for x in lambdas):
        model = EASE.fit(fit, lam, g)
        scores[lam] = full_ranking_metrics(model, val, fit, ks=(10,), users=judged)["ndcg@10"]
    best = max(scores, key=lambda lam: (scores[lam], -lam))
    _LOGGER.info("EASE λ by validation NDCG@10: %s -> %g", scores, best)
    return best, scores


def ease_skip_reason(n_items: int, max_items: int = EASE_MAX_ITEMS) -> str | None:
    """Why EASE is not fitted for this catalogue, or None when it is."""
    if n_items <= max_items:
        return None
    gb = n_items**2 * 8 / 1e9
    return (
        f"EASE skipped: {n_items} items is above its limit of {max_items} "
        f"(one dense items x items float64 matrix is {gb:.1f} GB, and inverting it is O(n³))"
    )


def knn_skip_reason(n_items: int, max_items: int = KNN_MAX_ITEMS) -> str | None:
    """Why ItemKNN is not fitted for this catalogue, or None when it is."""
    if n_items <= max_items:
        return None
    return (
        f"ItemKNN skipped: {n_items} items is above its limit of {max_items} "
        f"(its fit computes every item's dense cosine row: {n_items:.1e}² cells)"
    )


def fit_ease(train: CSR, lambdas=EASE_LAMBDAS, seed: int = 0, g: np.ndarray | None = None) -> EASE:
    """λ chosen on validation (:func:`choose_lambda`), then refitted on every training positive.

    ``g`` is the training set's XᵀX when the caller has it already."""
    lam, scores = choose_lambda(train, lambdas, seed)
    model = EASE.fit(train, lam, g)
    return EASE(model.train, model.weights, model.fallback, model.lam, scores)
