"""Users scored against the whole catalogue in bounded memory: a running top-k, NDCG@k and score spread.

Validation (every epoch, every recipe, the popularity blend's grid, the attribute ridge's λ) ranks
the catalogue for a few thousand users. One users x items score matrix is 5,000 x 10⁶ floats (20 GB)
at a million items, and full_ranking_metrics, which also sorts every row for MRR and AUC, a multiple
of it. Here the scores come a block at a time (a block of users against a block of items, at most
``BLOCK_CELLS`` cells), each user's best ``k`` so far are kept (server/catalog/topk.top_k_rows, ties
by catalogue row), and NDCG@k is counted from them: only the metric validation reads, in memory that
does not grow with the catalogue.

NDCG@k is full_ranking_metrics' figure: the same candidates (a validation positive not among the
training positives, which are masked), the same discounts, the per-user values summed in the same
chunks of users. Only a tie at the cut can make them differ: there full_ranking_metrics keeps
whichever twin argpartition left, this keeps the lower catalogue row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from towerserve.server.catalog.topk import top_k_rows
from towerserve.server.core.csr import CSR

# Cells of one score block (8 MB of float32: with its masks, top-k indices and argpartition's copy
# a block holds ~50 MB); items per block. At the seed scale (1,000 items) a block is every item, so
# nothing is merged.
BLOCK_CELLS = 2_097_152
ITEM_BLOCK = 65_536
# Users per partial sum of the NDCG values, as full_ranking_metrics chunks them: the same float sums.
SUM_CHUNK = 2048

# (positions into the scored users, first item, end item) -> score blocks [len(positions), end - first],
# one per scoring (a grid of blends is scored in one pass over the catalogue). Each block must be a
# fresh array: the search masks it in place.
ScoreBlocks = Callable[[np.ndarray, int, int], Iterable[np.ndarray]]
# (positions) -> whole score rows [len(positions), n_items].
ScoreRows = Callable[[np.ndarray], np.ndarray]


def blocks_of(n_users: int, n_items: int, groups: Sequence[np.ndarray] | None = None):
    """(positions, [(first, end) item ranges]) for user blocks of at most BLOCK_CELLS cells a block,
    never straddling two ``groups`` (a scorer may hold one group's state at a time)."""
    width = max(1, min(n_items, ITEM_BLOCK))
    step = max(1, BLOCK_CELLS // width)
    ranges = [(lo, min(n_items, lo + width)) for lo in range(0, n_items, width)]
    for group in [np.arange(n_users)] if groups is None else groups:
        group = np.asarray(group, dtype=np.int64)
        for start in range(0, len(group), step):
            yield group[start : start + step], ranges


def _merge(best: tuple | None, scores: np.ndarray, lo: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The running top-k (scores, items) with a new block's: earlier blocks hold lower rows, and each
    part lists ties by ascending row, so a tie keeps the lower catalogue row as one top_k_rows would."""
    top = top_k_rows(scores, k)
    vals, items = np.take_along_axis(scores, top, axis=1), top + lo
    if best is not None:
        vals, items = np.concatenate([best[0], vals], axis=1), np.concatenate([best[1], items], axis=1)
        pick = top_k_rows(vals, k)
        vals, items = np.take_along_axis(vals, pick, axis=1), np.take_along_axis(items, pick, axis=1)
    return vals, items


def top_k(
    scores: ScoreBlocks,
    users: np.ndarray,
    n_items: int,
    k: int,
    exclude: CSR | None = None,
    n_scorings: int = 1,
    groups: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Each user's ``k`` best items (int64 [len(users), min(k, n_items)], best first, ties by row),
    one array per scoring, with ``exclude``'s items (a user's training positives) scored -inf.

    ``scores`` gets positions into ``users``; ``groups`` (positions) keep blocks inside a group.
    """
    users = np.asarray(users, dtype=np.int64)
    k = min(k, n_items)
    out = [np.zeros((len(users), k), dtype=np.int64) for _ in range(n_scorings)]
    for pos, ranges in blocks_of(len(users), n_items, groups):
        best: list = [None] * n_scorings
        seen_rows, seen_cols = _pairs(exclude, users[pos])
        for lo, hi in ranges:
            inside = (seen_cols >= lo) & (seen_cols < hi)
            r, c = seen_rows[inside], seen_cols[inside] - lo
            for j, s in enumerate(scores(pos, lo, hi)):
                s = np.asarray(s, dtype=np.float32)
                if not np.isfinite(s).all():
                    if np.isnan(s).any():
                        raise ValueError("the scores hold NaN")
                    # A model's own -inf ranks below every finite score but above the masked items.
                    s[np.isneginf(s)] = np.finfo(np.float32).min
                s[r, c] = -np.inf
                best[j] = _merge(best[j], s, lo, k)
        for j in range(n_scorings):
            out[j][pos] = best[j][1]
    return out


def _pairs(exclude: CSR | None, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``users``, item) of every excluded pair."""
    if exclude is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = exclude.indptr[users + 1] - exclude.indptr[users]
    return np.repeat(np.arange(len(users)), lengths), exclude.gather(users).astype(np.int64)


def ndcg(
    scores: ScoreBlocks,
    users: np.ndarray,
    fit: CSR,
    val: CSR,
    k: int = 10,
    n_scorings: int = 1,
    groups: Sequence[np.ndarray] | None = None,
) -> list[float]:
    """Validation NDCG@k of each scoring over ``users`` (sorted, distinct), ``fit``'s positives masked.

    ``scores`` gets positions into ``users``. Users without a validation positive outside ``fit``
    are not counted (full_ranking_metrics' candidates).
    """
    users = np.asarray(users, dtype=np.int64)
    if len(users) > 1 and np.any(np.diff(users) <= 0):
        raise ValueError("ndcg needs sorted, distinct users")
    n_items = val.n_cols
    tops = top_k(scores, users, n_items, k, fit, n_scorings, groups)
    kmax = min(k, n_items)
    j = kmax - 1
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    rel_u, rel_i = val.pairs()
    relevant = ~fit.contains_pairs(rel_u, rel_i)
    n_rel = np.bincount(rel_u[relevant], minlength=val.n_rows)[users]
    # full_ranking_metrics' chunks run over the users with a validation positive; a chunk's sum is
    # over those of them with one outside ``fit``.
    chunks = np.flatnonzero(val.row_lengths()[users] > 0)
    flat_users = np.repeat(users, kmax)
    out = []
    for top in tops:
        items = top.ravel()
        hits = val.contains_pairs(flat_users, items) & ~fit.contains_pairs(flat_users, items)
        dcg = np.cumsum(hits.reshape(top.shape) * discount, axis=1)
        values = dcg[:, j] / ideal[np.minimum(n_rel, j + 1)]
        total, counted = 0.0, 0
        for start in range(0, len(chunks), SUM_CHUNK):
            part = chunks[start : start + SUM_CHUNK]
            part = part[n_rel[part] > 0]
            total += float(values[part].sum())
            counted += len(part)
        out.append(total / counted if counted else 0.0)
    return out


def mean_row_std(
    rows: ScoreRows, n_users: int, n_items: int, groups: Sequence[np.ndarray] | None = None
) -> float:
    """The mean over users of the standard deviation of their scores over the catalogue (1 when all are
    flat): ``np.mean(np.std(scores, axis=1))`` of the whole matrix, a block of whole rows at a time."""
    std = np.zeros(n_users, dtype=np.float32)
    step = max(1, BLOCK_CELLS // max(1, n_items))
    for group in [np.arange(n_users)] if groups is None else groups:
        group = np.asarray(group, dtype=np.int64)
        for start in range(0, len(group), step):
            pos = group[start : start + step]
            std[pos] = np.std(rows(pos), axis=1)
    return float(np.mean(std)) or 1.0
