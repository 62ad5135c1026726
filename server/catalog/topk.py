"""Deterministic top-k: the k best scores, best first, equal scores broken by catalogue row.

``np.argpartition`` alone keeps an arbitrary subset of the items tied at the k-th score, so two
paths (a user's precomputed candidate list and the exact path, say) could return different twins of
one item at the cut. Every ranking path selects through here, so they all agree.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best entries of float ``scores`` [n], best first, ties by ascending row.

    -inf entries are ordinary values here (callers drop them): a result always holds min(k, n) rows.
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    top = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
    kth = scores[top].min()
    # Ties straddle the cut only when more items share the k-th score than were kept: then keep the
    # lowest rows among them (flatnonzero is ascending). One extra pass, only in that case.
    if k < n and np.count_nonzero(scores == kth) > np.count_nonzero(scores[top] == kth):
        above = np.flatnonzero(scores > kth)
        tied = np.flatnonzero(scores == kth)[: k - len(above)]
        top = np.concatenate([above, tied])
    return top[np.lexsort((top, -scores[top]))]


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """:func:`top_k` for every row of ``scores`` [m, n] at once: int64 [m, min(k, n)]."""
    m, n = scores.shape
    k = min(k, n)
    if k < n:
        top = np.argpartition(scores, n - k, axis=1)[:, n - k :]
    else:
        top = np.broadcast_to(np.arange(n), scores.shape).copy()
    best = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -best), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    if k < n:
        kth = np.take_along_axis(best, order, axis=1)[:, -1:]
        straddle = np.flatnonzero((scores == kth).sum(axis=1) > (best == kth).sum(axis=1))
        for r in straddle:  # rare (exact twins at the cut): fix those rows one by one
            top[r] = top_k(scores[r], k)
    return top
