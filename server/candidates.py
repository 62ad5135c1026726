"""Per-user candidate lists: each known user's exact top-M unseen items, built at load, patched per upsert.

A list is ordered as the exact path orders (float32 logits of float64 sums, ties by row). Its tail
says what lies beyond it: ``NONE`` (-1) pads a list that holds every unseen item; ``TRUNCATED`` (-2)
ends one that lost an entry to an upsert (the replaced item's next-best successor is unknown), so a
walk that reaches it falls back to the exact path. An upsert costs one users x d product per item
and touches only the users whose lists change; it never rebuilds the lists.
"""

from __future__ import annotations

import numpy as np

from .csr import CSR
from .numerics import probabilities
from .topk import top_k_rows

NONE, TRUNCATED = -1, -2
NO_ROWS = np.zeros(0, dtype=np.int64)
# Lists are kept only while users x items stays below this (a few seconds of work at load) and
# their bytes (12 per entry) fit the budget (EngineConfig.candidate_budget_mb).
MAX_CELLS = 200_000_000
BLOCK = 2048


def build(
    users: np.ndarray, vectors64: np.ndarray, seen: CSR, nan_rows: np.ndarray, m: int, budget_bytes: int
) -> dict[str, np.ndarray]:
    """{"cand_rows": int32, "cand_scores": float32 logits, "cand_probs": float32}, each [n_users, M],
    or {} when off (m = 0) or over MAX_CELLS or the byte budget."""
    n_users, n_items = len(users), len(vectors64)
    m = min(m, n_items)
    if m <= 0 or n_users * n_items > MAX_CELLS or n_users * m * 12 > budget_bytes:
        return {}
    users = users.astype(np.float64)
    rows = np.full((n_users, m), NONE, dtype=np.int32)
    scores = np.zeros((n_users, m), dtype=np.float32)
    for start in range(0, n_users, BLOCK):
        block = np.arange(start, min(n_users, start + BLOCK))
        s = (users[block] @ vectors64.T).astype(np.float32)  # as numerics.logits: float64 sums, float32
        mask = seen.dense_rows(block)  # upserted items (beyond the recorded columns) are never seen
        s[:, : mask.shape[1]][mask] = -np.inf
        if nan_rows.size:
            s[:, nan_rows] = -np.inf
        top = top_k_rows(s, m)
        best = np.take_along_axis(s, top, axis=1)
        finite = np.isfinite(best)
        rows[block] = np.where(finite, top, NONE)
        scores[block] = np.where(finite, best, 0.0)
    return {"cand_rows": rows, "cand_scores": scores, "cand_probs": probabilities(scores)}


def _has_seen(seen: CSR, user: int, row: int) -> bool:
    return row < seen.n_cols and bool(np.isin(row, seen.row(user)))


def update(
    cand: dict[str, np.ndarray],
    users64: np.ndarray,
    vectors64: np.ndarray,
    rows: np.ndarray,
    seen: CSR,
    dead: np.ndarray = NO_ROWS,
) -> dict[str, np.ndarray]:
    """The lists after ``rows`` got (new or replaced) vectors, or were deleted (``dead``: they leave
    the lists and never come back): copies, patched; ``cand`` is untouched (requests in flight keep
    walking it)."""
    if not cand:
        return cand
    R, S = cand["cand_rows"].copy(), cand["cand_scores"].copy()
    gone = set(dead.tolist())
    for j in np.unique(rows).tolist():
        # A replaced item leaves every list it was in: the rest shift up, the tail becomes TRUNCATED
        # (unless the list held every unseen item, when NONE stays true).
        hit_u, hit_p = np.nonzero(j == R)
        for u, p in zip(hit_u.tolist(), hit_p.tolist()):
            complete = R[u, -1] == NONE
            R[u, p:-1], S[u, p:-1] = R[u, p + 1 :], S[u, p + 1 :]
            R[u, -1] = NONE if complete else TRUNCATED
        if j in gone or not np.isfinite(vectors64[j]).all():
            continue
        s = (users64 @ vectors64[j]).astype(np.float32)
        # Where j goes: before the first entry it beats (score, then row), or the first NONE slot.
        beats = (R >= 0) & ((s[:, None] > S) | ((s[:, None] == S) & (j < R)))
        slot = beats | (R == NONE)
        for u in np.flatnonzero(slot.any(axis=1)).tolist():
            if _has_seen(seen, u, j):
                continue
            p = int(np.argmax(slot[u]))
            R[u, p + 1 :], S[u, p + 1 :] = R[u, p:-1].copy(), S[u, p:-1].copy()
            R[u, p], S[u, p] = j, s[u]
    return {"cand_rows": R, "cand_scores": S, "cand_probs": probabilities(S)}
