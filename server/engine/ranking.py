"""Ranking over a catalogue snapshot: the candidate-list walk, the exact path and the approximate-index path.

Every path returns the best top_n admissible items best first, ties by catalogue row, with float32
probabilities computed the same way (float64 sums, then float32), so they agree wherever their
candidates agree. :func:`inline` is the part cheap enough for the event loop (a walk in plain
Python); everything that scores the catalogue runs in the worker pool (server/api/servicer.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ..catalog.candidates import NONE
from ..catalog.snapshot import Catalog
from ..catalog.topk import top_k
from ..core.numerics import logits, probabilities

# Without a filter the approximate index is searched for (top_n + blocked items) times this margin,
# and widened 4x (k and the index's own knob) while too few unblocked items come back. A filter is
# searched inside the index, or scored exactly when narrow (catalog/index.py: FilterSearch).
ANN_MARGIN, ANN_EXTRA, ANN_WIDEN = 1.5, 32, 4


class Query(NamedTuple):
    """One Recommend, resolved against one snapshot (validation done; ids turned into rows).

    A NamedTuple: built once per request on the event loop, where a frozen dataclass's __init__
    costs several times more."""

    cat: Catalog
    top_n: int
    excluded: set[int]
    price_min: float | None
    price_max: float | None
    codes: set[int] | None  # category codes (None: every category)
    user: int | None  # a known user's row (None: the vector comes from a tower pass)
    seen: np.ndarray | None  # rows to leave out (a known user's interactions), when exclude_seen


def inline(q: Query, vector: Callable[[], np.ndarray]) -> tuple[list[int], list[float]] | None:
    """The answer when it needs no scoring over the catalogue, else None, for a known user whose
    vector was computed at load (``vector()`` returns it): their precomputed candidate list holds
    enough admissible items, or the model is user-independent (a walk down its precomputed order)."""
    cat = q.cat
    if cat.order is not None:
        u = vector()
        return rank(cat, u, q.top_n, q.excluded, admissible(cat, q.price_min, q.price_max, q.codes), q.seen)
    if q.seen is not None and cat.cand_rows is not None and q.top_n <= cat.cand_rows.shape[1]:
        return walk_candidates(cat, q.user, q.top_n, q.excluded, q.price_min, q.price_max, q.codes)
    return None


def full(q: Query, u: np.ndarray, first: np.ndarray | None = None) -> tuple[list[int], list[float]]:
    """The answer for user vector ``u`` [d] by the snapshot's index: exact, or approximate candidates
    scored exactly (a filter searched inside the index, or its admissible items scored exactly).
    ``first``: the index's first search for this query, made with others (:func:`first_searches`)."""
    allowed = admissible(q.cat, q.price_min, q.price_max, q.codes)
    if q.cat.ann is None or q.cat.order is not None:
        return rank(q.cat, u, q.top_n, q.excluded, allowed, q.seen)
    return ann_rank(q.cat, u, q.top_n, q.excluded, allowed, q.seen, first)


def _blocked(q: Query) -> set[int]:
    # A set: the index returns a few dozen rows, where set lookups beat np.isin's sort.
    return q.excluded | set(q.seen.tolist()) if q.seen is not None and q.seen.size else q.excluded


def _first_k(top_n: int, blocked: set[int]) -> int:
    return int((top_n + len(blocked)) * ANN_MARGIN) + ANN_EXTRA


def first_searches(queries: Sequence[Query], vectors: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """The first index search of each query :func:`ann_rank` would make, for a batch of requests: one
    FAISS call per index for the unfiltered queries on an IVF index (None for the others, which
    search alone). IVF only: its nprobe does not depend on k, so each query's first k rows of one
    search for the largest k are what its own search returns; HNSW's efSearch grows with k."""
    out: list[np.ndarray | None] = [None] * len(queries)
    groups: dict[int, list[int]] = {}
    for j, q in enumerate(queries):
        ann = q.cat.ann
        filtered = q.price_min is not None or q.price_max is not None or q.codes is not None
        if ann is not None and q.cat.order is None and ann.kind == "ivf" and not filtered:
            groups.setdefault(id(ann), []).append(j)
    for js in groups.values():
        if len(js) > 1:
            ks = [_first_k(queries[j].top_n, _blocked(queries[j])) for j in js]
            found = queries[js[0]].cat.ann.search_many(np.stack([vectors[j] for j in js]), ks)
            for j, rows in zip(js, found):
                out[j] = rows
    return out


def walk_candidates(
    cat: Catalog,
    user: int,
    top_n: int,
    excluded: set[int],
    price_min: float | None,
    price_max: float | None,
    codes: set[int] | None,
) -> tuple[list[int], list[float]] | None:
    """The first top_n admissible items of the user's candidate list, or None when the list (the
    user's top-M unseen items) runs out before top_n are found and more items exist beyond it."""
    return walk(cat.cand_rows[user], cat.cand_probs[user], cat, top_n, excluded, price_min, price_max, codes)


def walk(
    cand_rows: np.ndarray,
    cand_probs: np.ndarray,
    cat: Catalog,
    top_n: int,
    excluded: set[int],
    price_min: float | None,
    price_max: float | None,
    codes: set[int] | None,
) -> tuple[list[int], list[float]] | None:
    """:func:`walk_candidates` over any one list (rows and probabilities, best first, NONE/TRUNCATED
    tail): a known user's from the snapshot, or one built for a user's live vector."""
    rows, probs = [], []
    price, code = cat.price_list, cat.code_list
    # Most requests stop after about top_n entries: convert a short head first, the rest on demand.
    head = top_n + 16
    pairs = zip(cand_rows[:head].tolist(), cand_probs[:head].tolist())
    if head < len(cand_rows):
        pairs = itertools.chain(pairs, zip(cand_rows[head:].tolist(), cand_probs[head:].tolist()))
    for j, p in pairs:
        if j < 0:  # NONE: the list held every unseen item; TRUNCATED: an upsert cut it short
            return (rows, probs) if j == NONE else None
        if (
            j in excluded
            or (price_min is not None and price[j] < price_min)
            or (price_max is not None and price[j] > price_max)
            or (codes is not None and code[j] not in codes)
        ):
            continue
        rows.append(j)
        probs.append(p)
        if len(rows) == top_n:
            return rows, probs
    return None


def admissible(
    cat: Catalog, price_min: float | None, price_max: float | None, codes: set[int] | None
) -> np.ndarray | None:
    """bool [n]: items inside the price range and categories (None: no filter given)."""
    if price_min is None and price_max is None and codes is None:
        return None
    allowed = np.ones(len(cat), dtype=bool)
    if price_min is not None:
        allowed &= cat.price >= price_min
    if price_max is not None:
        allowed &= cat.price <= price_max
    if codes is not None:
        pick = np.zeros(len(cat.categories), dtype=bool)
        pick[list(codes)] = True
        allowed &= pick[cat.category_code]
    return allowed


def ann_rank(
    cat: Catalog,
    u: np.ndarray,
    top_n: int,
    excluded: set[int],
    allowed: np.ndarray | None,
    seen: np.ndarray | None = None,
    first: np.ndarray | None = None,
) -> tuple[list[int], list[float]]:
    """The approximate path: the index proposes candidates, widened until top_n unblocked ones are
    among them; they are scored exactly and ordered as :func:`rank` would. Where the index runs out
    before that (every entry proposed), the exact path answers. A filter goes to :func:`_ann_within`.
    ``first``: the first search's rows when a batch made it already (:func:`first_searches`)."""
    if allowed is not None:
        return _ann_within(cat, u, top_n, excluded, allowed, seen)
    n = len(cat)
    blocked = excluded | set(seen.tolist()) if seen is not None and seen.size else excluded
    k, widen = _first_k(top_n, blocked), 1
    while True:
        found = cat.ann.search(u, k, widen) if first is None else first
        first = None
        # Rows >= n are labels a later snapshot added.
        rows = [r for r in found.tolist() if r < n and r not in blocked]
        if len(rows) >= top_n:
            return _scored(cat, u, np.sort(np.array(rows, dtype=np.int64)), top_n)
        if k >= len(cat.ann):
            return rank(cat, u, top_n, excluded, None, seen)
        k, widen = k * ANN_WIDEN, widen * ANN_WIDEN


def _ann_within(
    cat: Catalog, u: np.ndarray, top_n: int, excluded: set[int], allowed: np.ndarray, seen: np.ndarray | None
) -> tuple[list[int], list[float]]:
    """A filtered request on the index path: the index searches only the admitted, unblocked rows
    (a FAISS IDSelector, the search widened for the filter), or, where it cannot answer for them (a
    narrow filter, too few found), those rows are scored exactly; either way top_n come back
    whenever top_n admitted items exist."""
    admitted = allowed.copy()
    if excluded:
        admitted[list(excluded)] = False
    if seen is not None and seen.size:
        admitted[seen] = False
    rows = cat.ann.search_within(u[None, :], top_n, admitted)[0]
    return _scored(cat, u, np.flatnonzero(admitted) if rows is None else np.sort(rows), top_n)


def _scored(cat: Catalog, u: np.ndarray, rows: np.ndarray, top_n: int) -> tuple[list[int], list[float]]:
    """The best top_n of ascending candidate ``rows``, scored exactly (ties by row: by position)."""
    if cat.nan_rows.size:
        rows = rows[~np.isin(rows, cat.nan_rows)]
    scores = logits(cat.vectors64[rows], u)
    best = top_k(scores, top_n)
    return rows[best].tolist(), probabilities(scores[best]).tolist()


def rank(
    cat: Catalog,
    u: np.ndarray,
    top_n: int,
    excluded: set[int],
    allowed: np.ndarray | None,
    seen: np.ndarray | None = None,
) -> tuple[list[int], list[float]]:
    """The exact path: the best top_n admissible items for user vector ``u`` [d], best first (ties by
    catalogue row, as the candidate lists), with their probabilities. ``seen``: more rows to exclude,
    as an array (a known user's training positives, without a round trip through a Python set)."""
    if cat.order is not None:
        if seen is not None and seen.size:
            excluded = excluded | set(seen.tolist())
        return _walk_order(cat, u, top_n, excluded, allowed)
    scores = logits(cat.vectors64, u)
    if excluded:
        scores[list(excluded)] = -np.inf
    if seen is not None:
        scores[seen] = -np.inf
    if cat.nan_rows.size:  # defensive: an item whose vector is not finite is never returned
        scores[cat.nan_rows] = -np.inf
    if allowed is not None:
        scores[~allowed] = -np.inf
    top = top_k(scores, top_n)
    rows, best = top.tolist(), scores[top]
    keep = [j for j, x in enumerate(best.tolist()) if x != -math.inf]
    probs = probabilities(best).tolist()
    return [rows[j] for j in keep], [probs[j] for j in keep]


def _walk_order(
    cat: Catalog, u: np.ndarray, top_n: int, excluded: set[int], allowed: np.ndarray | None
) -> tuple[list[int], list[float]]:
    """The user-independent ranking: first top_n admissible items of the precomputed order."""
    rows: list[int] = []
    for j in cat.order_list:
        if j in excluded or (allowed is not None and not allowed[j]):
            continue
        rows.append(j)
        if len(rows) == top_n:
            break
    probs = probabilities(logits(cat.vectors64[rows], u)).tolist() if rows else []
    return rows, probs
