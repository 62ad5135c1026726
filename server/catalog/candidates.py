"""Per-user candidate lists: each known user's exact top-M unseen items, built at load, patched per upsert.

A list is ordered as the exact path orders (float32 logits of float64 sums, ties by row). Its tail
says what lies beyond it: ``NONE`` (-1) pads a list that holds every unseen item; ``TRUNCATED`` (-2)
ends one that lost an entry to an upsert (the replaced item's next-best successor is unknown), so a
walk that reaches it falls back to the exact path. An upsert costs one users x d product per item
and touches only the users whose lists change; it never rebuilds the lists.
"""

from __future__ import annotations

import numpy as np

from ..core.csr import CSR
from ..core.numerics import probabilities
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


def _shifted(a: np.ndarray, users: np.ndarray, at: np.ndarray, step: int) -> np.ndarray:
    """Rows ``users`` of ``a`` with the entries from ``at`` on moved ``step`` places towards the end
    (+1: a slot opens at ``at``, the last entry falls off) or the front (-1: the entry at ``at``
    goes, the last slot repeats the old last entry), one gather for all of them."""
    cols = np.arange(a.shape[1])
    src = np.where(cols[None, :] < at[:, None], cols[None, :], cols[None, :] - step)
    return np.take_along_axis(a[users], np.clip(src, 0, a.shape[1] - 1), axis=1)


def update(
    cand: dict[str, np.ndarray],
    users64: np.ndarray,
    vectors64: np.ndarray,
    rows: np.ndarray,
    seen: CSR,
    dead: np.ndarray = NO_ROWS,
    n_before: int | None = None,
) -> dict[str, np.ndarray]:
    """The lists after ``rows`` got (new or replaced) vectors, or were deleted (``dead``: they leave
    the lists and never come back): copies, patched; ``cand`` is untouched (requests in flight keep
    walking it). ``n_before``: rows the catalogue had before (rows past it are new: in no list yet).
    Vectorised over users: one users x d product and a few gathers per item."""
    if not cand:
        return cand
    R, S, P = cand["cand_rows"].copy(), cand["cand_scores"].copy(), cand["cand_probs"].copy()
    changed = np.zeros(len(R), dtype=bool)
    gone = set(dead.tolist())
    for j in np.unique(rows).tolist():
        # A replaced item leaves every list it was in: the rest shift up, the tail becomes TRUNCATED
        # (unless the list held every unseen item, when NONE stays true). A new row is in no list.
        hit_u, hit_p = np.nonzero(j == R) if n_before is None or j < n_before else (NO_ROWS, NO_ROWS)
        if hit_u.size:
            complete = R[hit_u, -1] == NONE
            R[hit_u], S[hit_u] = _shifted(R, hit_u, hit_p, -1), _shifted(S, hit_u, hit_p, -1)
            R[hit_u, -1] = np.where(complete, NONE, TRUNCATED)
            changed[hit_u] = True
        if j in gone or not np.isfinite(vectors64[j]).all():
            continue
        s = (users64 @ vectors64[j]).astype(np.float32)
        # Lists are sorted (score, then row) with their valid entries first, so j enters a list when it
        # beats the list's last valid entry or the list has a free (NONE) slot: O(users) to find them.
        last = np.maximum((R >= 0).sum(axis=1) - 1, 0)
        u_all = np.arange(len(R))
        r_last, s_last = R[u_all, last], S[u_all, last]
        enter = (R[:, -1] == NONE) | ((r_last >= 0) & ((s > s_last) | ((s == s_last) & (j < r_last))))
        enter = np.flatnonzero(enter)
        enter = enter[~seen.contains(enter, j)]
        if not enter.size:
            continue
        # Where j goes in those lists: before the first entry it beats, or the first NONE slot.
        Re, Se, se = R[enter], S[enter], s[enter, None]
        slot = ((Re >= 0) & ((se > Se) | ((se == Se) & (j < Re)))) | (Re == NONE)
        at = np.argmax(slot, axis=1)
        R[enter], S[enter] = _shifted(R, enter, at, 1), _shifted(S, enter, at, 1)
        R[enter, at], S[enter, at] = j, s[enter]
        changed[enter] = True
    if changed.any():  # probabilities only where a list changed (a full pass costs ~60 ms at 10k users)
        P[changed] = probabilities(S[changed])
    return {"cand_rows": R, "cand_scores": S, "cand_probs": P}
