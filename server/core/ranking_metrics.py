"""Full-ranking recommendation metrics in pure numpy, vectorised over users (definitions: docs/data.md, "Splits and metrics")."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .csr import CSR

DEFAULT_KS = (5, 10, 20)
TOPK_METRICS = ("hitrate", "precision", "recall", "ndcg", "map", "coverage")
ScoreFn = Callable[[np.ndarray], np.ndarray]


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Returns the column ids of the k highest scores in each row, best first.

    Args:
        scores: float [n_rows, n_cols]; -inf marks columns that must not be returned.
        k: how many per row (capped at n_cols).

    Returns:
        int64 [n_rows, min(k, n_cols)].
    """
    n_cols = scores.shape[1]
    k = min(k, n_cols)
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    # argpartition is O(n) per row; only the k survivors are sorted.
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n_cols else np.argsort(-scores, axis=1)
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _sortable_keys(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Maps (row, float32 value) to int64 keys whose order is (row, value) order, exactly.

    Flipping the float's bits makes its unsigned pattern monotone in the value; putting the row in
    the high 32 bits lets one ``searchsorted`` over all rows replace a Python loop per user.
    """
    # Adding +0.0 turns -0.0 into +0.0: equal floats must get equal keys.
    u = (np.ascontiguousarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    flip = np.where(u >> 31, np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    return (rows.astype(np.int64) << 32) | (u ^ flip).astype(np.int64)


def full_ranking_metrics(
    score_fn: ScoreFn,
    test: CSR,
    train: CSR | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    users: np.ndarray | None = None,
    chunk_users: int = 2048,
    on_chunk: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Ranks every item for every evaluated user and scores the ranking against held-out positives.

    A user is evaluated when it has at least one test positive that is not also a training positive.
    Training positives are removed from the candidates (neither relevant nor irrelevant).

    Args:
        score_fn: maps int64 user ids [b] to float scores [b, n_items]; higher ranks first.
        test: held-out positives (users x items).
        train: positives seen in training, masked out of the ranking; None masks nothing.
        ks: cut-offs for the top-K metrics.
        users: restrict evaluation to these user ids (default: every user).
        chunk_users: users scored at once; bounds memory at chunk_users x n_items floats.
        on_chunk: called before each chunk; may raise to abandon the evaluation (e.g. a deadline).

    Returns:
        ``{"hitrate@10": ..., "precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10",
        "mrr", "auc", "users"}`` with one set of top-K keys per k.

    Long because every metric is accumulated in one pass over each chunk's score block (its mask, top-K and sort keys are shared by all of them): split, that state would travel between the pieces or be computed twice.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers (got {ks})")
    n_items = test.n_cols
    if train is not None and (train.n_rows, train.n_cols) != (test.n_rows, test.n_cols):
        raise ValueError(f"train {train.n_rows}x{train.n_cols} and test {test.n_rows}x{test.n_cols} differ")
    candidates = np.arange(test.n_rows) if users is None else np.unique(np.asarray(users, dtype=np.int64))
    candidates = candidates[test.row_lengths()[candidates] > 0]

    kmax = min(ks[-1], n_items)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])  # ideal[m]: DCG of m relevant items on top
    sums = {f"{name}@{k}": 0.0 for k in ks for name in TOPK_METRICS if name != "coverage"}
    covered = {k: np.zeros(n_items, dtype=bool) for k in ks}
    mrr_sum = auc_sum = 0.0
    n_users = n_auc = 0

    for start in range(0, len(candidates), chunk_users):
        if on_chunk is not None:
            on_chunk()
        u = candidates[start : start + chunk_users]
        scores = np.array(score_fn(u), dtype=np.float32)  # a copy: masking writes into it
        if scores.shape != (len(u), n_items):
            raise ValueError(f"score_fn returned {scores.shape}, expected {(len(u), n_items)}")
        if np.isnan(scores).any():
            raise ValueError("score_fn returned NaN scores")
        # -inf is how masked items are marked below; a model's own -inf becomes the lowest finite
        # score, so it still ranks last among candidates but above the masked items.
        scores[np.isneginf(scores)] = np.finfo(np.float32).min
        seen = train.dense_rows(u) if train is not None else np.zeros_like(scores, dtype=bool)
        rel = test.dense_rows(u) & ~seen
        n_rel = rel.sum(axis=1)
        keep = n_rel > 0
        if not keep.all():
            u, scores, seen, rel, n_rel = u[keep], scores[keep], seen[keep], rel[keep], n_rel[keep]
        if len(u) == 0:
            continue
        scores[seen] = -np.inf
        n_seen = seen.sum(axis=1)
        n_users += len(u)

        # Top-K metrics from one partial sort.
        top = topk_indices(scores, kmax)
        valid = np.isfinite(np.take_along_axis(scores, top, axis=1))
        hits = np.take_along_axis(rel, top, axis=1)
        cum_hits = np.cumsum(hits, axis=1)
        dcg = np.cumsum(hits * discount, axis=1)
        ap = np.cumsum(hits * cum_hits / np.arange(1, kmax + 1), axis=1)
        for k in ks:
            j = min(k, n_items) - 1
            h = cum_hits[:, j]
            denom = np.minimum(n_rel, j + 1)
            sums[f"hitrate@{k}"] += float((h > 0).sum())
            sums[f"precision@{k}"] += float((h / k).sum())
            sums[f"recall@{k}"] += float((h / n_rel).sum())
            sums[f"ndcg@{k}"] += float((dcg[:, j] / ideal[denom]).sum())
            sums[f"map@{k}"] += float((ap[:, j] / denom).sum())
            covered[k][top[:, : j + 1][valid[:, : j + 1]]] = True

        # MRR and AUC need every item's rank: one row sort, then exact searchsorted on int keys.
        local = np.arange(len(u))
        flat = _sortable_keys(np.sort(scores, axis=1).ravel(), np.repeat(local, n_items))
        pr, pc = np.nonzero(rel)  # row-major, so each user's positives are contiguous
        ps = scores[pr, pc]
        pkeys = _sortable_keys(ps, pr)
        base = pr.astype(np.int64) * n_items
        left = np.searchsorted(flat, pkeys, side="left") - base
        right = np.searchsorted(flat, pkeys, side="right") - base
        less = left - n_seen[pr]  # masked items sit at -inf below every candidate
        # Mann-Whitney with ties counted half; pairs among positives are removed afterwards.
        rank_sum = np.bincount(pr, weights=less + 0.5 * (right - left - 1), minlength=len(u))
        n_neg = (n_items - n_seen) - n_rel
        ok = n_neg > 0
        auc = (rank_sum - n_rel * (n_rel - 1) / 2.0)[ok] / (n_rel[ok] * n_neg[ok])
        auc_sum += float(auc.sum())
        n_auc += int(ok.sum())

        # First relevant item: its expected rank when ties are broken uniformly at random.
        first = np.concatenate([[0], np.cumsum(n_rel)[:-1]])
        best = np.maximum.reduceat(ps, first)
        bkeys = _sortable_keys(best, local)
        bbase = local.astype(np.int64) * n_items
        b_left = np.searchsorted(flat, bkeys, side="left") - bbase
        b_right = np.searchsorted(flat, bkeys, side="right") - bbase
        greater = n_items - b_right
        tied = b_right - b_left
        tied_rel = np.bincount(pr, weights=(ps == best[pr]), minlength=len(u))
        rank = greater + 1 + (tied - tied_rel) / (tied_rel + 1)
        mrr_sum += float((1.0 / rank).sum())

    out: dict[str, float] = {}
    for k in ks:
        for name in TOPK_METRICS:
            key = f"{name}@{k}"
            out[key] = (
                float(covered[k].mean()) if name == "coverage" else (sums[key] / n_users if n_users else 0.0)
            )
    out["mrr"] = mrr_sum / n_users if n_users else 0.0
    out["auc"] = auc_sum / n_auc if n_auc else 0.0
    out["users"] = float(n_users)
    return out


def dense_score_fn(scores: np.ndarray) -> ScoreFn:
    """Wraps a precomputed score matrix [n_users, n_items] as a score function."""
    return lambda u: scores[u]


def notebook_metric(pair_scores: np.ndarray) -> float:
    """The notebook's number: mean predicted score over one held-out positive per user.

    It is not a ranking metric: a model that scores every pair 0.99 wins it.
    """
    pair_scores = np.asarray(pair_scores, dtype=np.float64)
    if pair_scores.size == 0:
        raise ValueError("no pairs to score")
    return float(pair_scores.mean())
