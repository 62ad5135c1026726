"""Ranking metrics on a fixed, seeded sample of users at scale, with a 95 % confidence interval.

Full-ranking evaluation scores and sorts every item for every judged user: its cost is users x
items cells per model and split. At the seed scale (10,000 x 1,000 = 10⁷ cells) that is a second
and every user is judged, as before. Above ``AUTO_SAMPLE_CELLS`` (10⁹ cells: 20,000 x 100,000 is
2 x 10⁹, and the Oracle alone replayed 2 x 10⁹ logits there for over 20 minutes) a sample is judged
instead, sized by a cell budget: ``SAMPLE_CELLS`` / items users, between ``MIN_SAMPLE`` and
``MAX_SAMPLE`` (2,000 users at 100,000 items, 1,000 at 1,000,000). Measured on 2 shared cores, full
ranking costs ~15 ms a user at 100,000 items and ~200 ms at 1,000,000, so one model on one split
takes ~30 s and ~200 s. The interval is recorded, not assumed; measured: on the latent seed set
(10,000 x 1,000) 500 users put EASE at 0.4006 ± 0.019 (every user: 0.3916); at 100,000 x 100,000,
2,000 users put the Oracle at 0.115 ± 0.007 and ItemKNN at 0.015 ± 0.003.

Every model and baseline of a run is judged on the same sample: :func:`sample_users` draws it once
per split from the split's test set and a seed, and it is passed to each of them. When the data came
from ``generate --long`` (no dense truth file), the Oracle replays whole generator blocks of users;
the sample is then drawn as whole blocks, so it replays as few blocks as possible. The generator draws
users independently of their index, so a sample of whole blocks is a uniform sample of users.
"""

from __future__ import annotations

import math

import numpy as np

from towerserve.server.core.csr import CSR
from towerserve.server.core.numerics import sigmoid
from towerserve.server.core.ranking_metrics import (
    DEFAULT_KS,
    ScoreFn,
    full_ranking_metrics,
    notebook_metric,
    topk_indices,
)

from .splits import Split

AUTO_SAMPLE_CELLS = 1_000_000_000
SAMPLE_CELLS = 200_000_000
MIN_SAMPLE = 1_000
MAX_SAMPLE = 10_000
# Score rows held at once: full_ranking_metrics keeps ~20 bytes a cell alive (scores, their sorted
# copy, int64 sort keys, two masks), so 2 x 10⁷ cells is ~400 MB; at the seed scale this is its
# default of 2,048 users, so full evaluation there is unchanged.
CHUNK_CELLS = 20_000_000
CI_METRIC = "ndcg@10"
Z95 = 1.959963984540054


def default_eval_users(n_users: int, n_items: int) -> int | None:
    """The automatic sample size: None (every user) up to ``AUTO_SAMPLE_CELLS`` cells, else the budget's."""
    if n_users * n_items <= AUTO_SAMPLE_CELLS:
        return None
    return int(min(n_users, max(MIN_SAMPLE, min(MAX_SAMPLE, SAMPLE_CELLS // max(1, n_items)))))


def chunk_users(n_items: int) -> int:
    """Users scored at once so a chunk stays near ``CHUNK_CELLS`` cells (2,048 at most)."""
    return int(max(1, min(2048, CHUNK_CELLS // max(1, n_items))))


def sample_users(test: CSR, n: int | None, seed: int, block: int = 1) -> np.ndarray | None:
    """A fixed, seeded sample of ``n`` users among those with test positives.

    Args:
        test: the split's test positives; only users with at least one are drawn.
        n: sample size; None, or at least the eligible count, means every user (returns None).
        seed: the same seed gives the same sample.
        block: draw whole runs of ``block`` consecutive user ids (in random order) until ``n``
            eligible users are in, the last run cut short; 1 is a simple random sample.

    Returns:
        sorted int64 user ids [n], or None for the whole population.
    """
    eligible = np.flatnonzero(test.row_lengths() > 0)
    if n is None or n >= len(eligible):
        return None
    if n < 1:
        raise ValueError(f"the evaluation sample needs at least 1 user (got {n})")
    rng = np.random.default_rng([seed, 12])
    if block <= 1:
        return np.sort(rng.choice(eligible, size=n, replace=False)).astype(np.int64)
    # Runs in a random order; users by (their run's draw position, id); the first n are the sample.
    runs = np.unique(eligible // block)
    draw = np.empty(len(runs), dtype=np.int64)
    draw[rng.permutation(len(runs))] = np.arange(len(runs))
    by_draw = np.lexsort((eligible, draw[np.searchsorted(runs, eligible // block)]))
    return np.sort(eligible[by_draw[:n]]).astype(np.int64)


def per_user_ndcg(
    scores: np.ndarray, users: np.ndarray, test: CSR, train: CSR | None, k: int, kmax: int
) -> np.ndarray:
    """NDCG@k of each judged user in ``users``, exactly as full_ranking_metrics counts it.

    Same candidates (a test positive that is not a training positive), same masking, and the same
    ``topk_indices(scores, kmax)`` call, so ties at the cut-off break the same way and the mean of
    these values is its ndcg@k.

    Returns:
        float64 [judged users], in ``users`` order.
    """
    scores = np.array(scores, dtype=np.float32)
    scores[np.isneginf(scores)] = np.finfo(np.float32).min
    seen = train.dense_rows(users) if train is not None else np.zeros(scores.shape, dtype=bool)
    rel = test.dense_rows(users) & ~seen
    n_rel = rel.sum(axis=1)
    keep = n_rel > 0
    scores, seen, rel, n_rel = scores[keep], seen[keep], rel[keep], n_rel[keep]
    scores[seen] = -np.inf
    top = topk_indices(scores, kmax)
    j = min(k, scores.shape[1])
    hits = np.take_along_axis(rel, top[:, :j], axis=1)
    discount = 1.0 / np.log2(np.arange(2, j + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    return (hits * discount).sum(axis=1) / ideal[np.minimum(n_rel, j)]


def confidence_interval(values: np.ndarray) -> tuple[float, float]:
    """95 % normal-approximation interval of the mean: mean ± 1.96 · sd / √n (sd with ddof 1), clipped
    to [0, 1], where NDCG lives (near 0, e.g. Random at 100,000 items, the normal bound dips below)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return (float("nan"), float("nan"))
    half = Z95 * float(values.std(ddof=1)) / math.sqrt(len(values))
    mean = float(values.mean())
    return (max(0.0, mean - half), min(1.0, mean + half))


def ranking_metrics(
    score_fn: ScoreFn, test: CSR, train: CSR | None, ks=DEFAULT_KS, users: np.ndarray | None = None
) -> dict[str, float]:
    """full_ranking_metrics over ``users`` (None: everyone), in chunks sized for the catalogue.

    With a sample, the row also holds ``eval_sample`` (the sample's size) and the 95 % interval of
    NDCG@10 over its judged users (``ndcg@10_ci95_low``, ``ndcg@10_ci95_high``); a full evaluation
    returns exactly full_ranking_metrics' row.
    """
    chunk = chunk_users(test.n_cols)
    if users is None:
        return full_ranking_metrics(score_fn, test, train, ks, chunk_users=chunk)
    ks = sorted({int(k) for k in ks})
    k = int(CI_METRIC.split("@")[1])
    kmax = min(ks[-1], test.n_cols) if ks else k
    values: list[np.ndarray] = []

    def recording(u: np.ndarray) -> np.ndarray:
        scores = score_fn(u)
        if k in ks:
            values.append(per_user_ndcg(scores, u, test, train, k, kmax))
        return scores

    row = full_ranking_metrics(recording, test, train, ks, users=users, chunk_users=chunk)
    row["eval_sample"] = float(len(np.unique(users)))
    if values:
        lo, hi = confidence_interval(np.concatenate(values))
        row[f"{CI_METRIC}_ci95_low"], row[f"{CI_METRIC}_ci95_high"] = lo, hi
    return row


def evaluate_towers(
    uvec: np.ndarray, ivec: np.ndarray, split: Split, ks, users: np.ndarray | None = None
) -> dict[str, float]:
    """A two-tower model's ranking metrics (logits = uvec @ ivec.T), the notebook's mean holdout score
    (over every user's holdout pair: one dot product each, cheap at any scale) and, on a split with
    held-out items, the new-items segment's NDCG@10 (NEW_ITEMS_KEY)."""
    metrics = ranking_metrics(lambda u: uvec[u] @ ivec.T, split.test, split.train, ks, users)
    nb = split.notebook_pairs
    logits = np.einsum("nd,nd->n", uvec[nb.users], ivec[nb.items])
    metrics["notebook_score"] = notebook_metric(sigmoid(logits))
    new_items = new_item_ndcg(lambda u: uvec[u] @ ivec.T, split, users)
    if new_items is not None:
        metrics[NEW_ITEMS_KEY] = new_items
    return metrics


NEW_ITEMS_KEY = "new_items_ndcg@10"


def new_item_ndcg(score: ScoreFn, split: Split, users: np.ndarray | None = None) -> float | None:
    """NDCG@10 of the new-items segment: the cold split's items nobody trained on, each judged user's
    test positives among them ranked among them alone (the warm items pushed below). None where the
    split holds out no items or none of the judged users has a positive among them.

    MostPopular has nothing to say here (every new item has zero training positives), so its figure is
    a tie-broken ranking: the floor any content model must clear.
    """
    if not len(split.cold_items):
        return None
    cold = np.zeros(split.test.n_cols, dtype=bool)
    cold[split.cold_items] = True
    u, i = split.test.pairs()
    keep = cold[i]
    test = CSR.from_pairs(u[keep], i[keep], split.test.n_rows, split.test.n_cols)
    judged = np.flatnonzero(test.row_lengths() > 0)
    if users is not None:
        judged = np.intersect1d(judged, users)
    if not judged.size:
        return None

    def among_new(rows: np.ndarray) -> np.ndarray:
        s = np.array(score(rows), dtype=np.float64)
        s[:, ~cold] = s.min(axis=1, keepdims=True) - 1.0
        return s

    return float(full_ranking_metrics(among_new, test, split.train, ks=(10,), users=judged)["ndcg@10"])
