"""The catalogue: an immutable snapshot of the items, its per-user candidate lists, and ranking over it.

Readers never lock: UpsertItems builds a whole new snapshot (copy on write) and publishes it with one
reference assignment, so a request that took the old snapshot finishes on it consistently.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .csr import CSR
from .manifest import ArtifactError
from .numerics import sigmoid
from .types import NewItemData
from .wire import item_wire

# Candidate lists are built only while users x items stays below this (a few seconds of work, at
# load and per upsert); larger deployments serve every request through the exact path.
CANDIDATE_MAX_CELLS = 200_000_000


@dataclass(frozen=True)
class Catalog:
    """An immutable snapshot of the items; replaced whole by UpsertItems."""

    ids: list[str]
    index: dict[str, int]
    price: np.ndarray  # float64 [n]
    category: list[str]
    category_code: np.ndarray  # int32 [n], into categories
    categories: list[str]
    description: list[str]
    features: list[str]
    vectors: np.ndarray  # float32 [n, d] of the served model
    vectors64: np.ndarray  # the same in float64, for logits()
    order: np.ndarray | None  # best-first item order when the ranking is user-independent
    nan_rows: np.ndarray  # rows whose vector is not finite (never recommended)
    category_set: frozenset[str]
    order_list: list[int]  # ``order`` as Python ints (walked per request without numpy)
    wire: list[tuple[bytes, bytes]]  # per item: serialized Item fields before and after ``score``
    price_list: list[float]  # price and category code as Python values, for the candidate walk
    code_list: list[int]
    cand_rows: np.ndarray | None = None  # int32 [n_users, M]: each known user's best unseen items, -1 pads
    cand_probs: np.ndarray | None = None  # float32 [n_users, M]: their probabilities

    def __len__(self) -> int:
        return len(self.ids)


# The items.csv columns a snapshot is built from (item_columns).
ITEM_COLUMNS = ("item_id", "price", "category", "description", "features")


def read_csv(path: Path, columns: Sequence[str] = (), numeric: Sequence[str] = ()) -> list[dict[str, str]]:
    """The rows of a catalogue CSV (items.csv, users.csv).

    Args:
        columns, numeric: columns that must be present; ``numeric`` ones must also parse as floats.

    Raises:
        ArtifactError: the file cannot be read or parsed, lacks a column or has a non-number in a numeric one.
    """
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ArtifactError(path, f"unreadable ({err})") from err
    missing = [c for c in (*columns, *numeric) if c not in (reader.fieldnames or ())]
    if missing:
        raise ArtifactError(path, f"lacks columns {missing} (has {reader.fieldnames})")
    for c in numeric:
        for j, r in enumerate(rows):
            try:
                float(r[c])
            except (TypeError, ValueError):
                raise ArtifactError(path, f"row {j + 1}: {c} {r[c]!r} is not a number") from None
    return rows


def item_columns(rows: Sequence[dict[str, str]]) -> dict:
    """items.csv rows as build_catalog's item columns (everything but the vectors)."""
    return {
        "ids": [r["item_id"] for r in rows],
        "price": np.array([float(r["price"]) for r in rows]),
        "category": [r["category"] for r in rows],
        "description": [r["description"] for r in rows],
        "features": [r["features"] for r in rows],
    }


def logits(vectors64: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Item logits for one user, float32 [n]: summed in float64, so the candidate lists (a batched
    product) and the exact path (a matrix-vector product) give the same numbers and orders."""
    return (vectors64 @ u.astype(np.float64)).astype(np.float32)


def probabilities(x: np.ndarray) -> np.ndarray:
    """float32 probabilities of float32 logits, as the ONNX head would round them. The candidate
    lists and the exact path both come through here, so their probabilities are bit-identical."""
    return sigmoid(x).astype(np.float32)


def build_catalog(
    ids: Sequence[str],
    price: Sequence[float] | np.ndarray,
    category: Sequence[str],
    description: Sequence[str],
    features: Sequence[str],
    vectors: np.ndarray,
    wire: list[tuple[bytes, bytes]] | None = None,
    *,
    users: np.ndarray,
    seen: CSR,
    candidates: int,
    user_independent: bool,
) -> Catalog:
    """A snapshot with everything requests need precomputed.

    Args:
        ids, price, category, description, features: one entry per item.
        vectors: float32 [n, d] item vectors of the served model.
        wire: each item's pre-serialized fields (None: serialize them all now).
        users: float32 [n_users, d] known users' vectors (candidate lists, the user-independent order).
        seen: each known user's interacted items, never in their candidate lists.
        candidates: M, items kept per user (0: no candidate lists).
        user_independent: every user ranks items alike, so one order serves all.
    """
    categories = sorted(set(category))
    code = {c: j for j, c in enumerate(categories)}
    order = None
    if user_independent:
        # Every user ranks items the same way: sort once with any user's vector.
        order = np.argsort(-(vectors @ users[0]), kind="stable")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    vectors64 = vectors.astype(np.float64)
    category_code = np.array([code[c] for c in category], dtype=np.int32)
    price = np.asarray(price, dtype=np.float64)
    nan_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if order is not None and nan_rows.size:
        order = order[~np.isin(order, nan_rows)]
    if wire is None:
        wire = [
            item_wire(i, p, d, f, c)
            for i, p, d, f, c in zip(ids, price.tolist(), description, features, category)
        ]
    return Catalog(
        ids=list(ids),
        index={x: j for j, x in enumerate(ids)},
        price=price,
        category=list(category),
        category_code=category_code,
        categories=categories,
        description=list(description),
        features=list(features),
        vectors=vectors,
        vectors64=vectors64,
        order=order,
        nan_rows=nan_rows,
        category_set=frozenset(categories),
        order_list=order.tolist() if order is not None else [],
        wire=wire,
        price_list=price.tolist(),
        code_list=category_code.tolist(),
        **candidate_lists(users, vectors64, seen, nan_rows, candidates),
    )


def candidate_lists(
    users: np.ndarray, vectors64: np.ndarray, seen: CSR, nan_rows: np.ndarray, m: int
) -> dict[str, np.ndarray]:
    """Each known user's exact top-M unseen items (score desc, ties by row, as the exact path).

    Built block by block with a few large numpy calls, off the request path (load, upsert).

    Returns:
        {"cand_rows": int32 [n_users, M], "cand_probs": float32 [n_users, M]}, or {} when off.
    """
    n_users, n_items = len(users), len(vectors64)
    m = min(m, n_items)
    if m <= 0 or n_users * n_items > CANDIDATE_MAX_CELLS:
        return {}
    users = users.astype(np.float64)
    rows = np.full((n_users, m), -1, dtype=np.int32)
    probs = np.zeros((n_users, m), dtype=np.float32)
    for start in range(0, n_users, 2048):
        block = np.arange(start, min(n_users, start + 2048))
        scores = (users[block] @ vectors64.T).astype(np.float32)  # as logits(): float64 sums, float32
        mask = seen.dense_rows(block)  # upserted items (beyond the recorded columns) are never seen
        scores[:, : mask.shape[1]][mask] = -np.inf
        if nan_rows.size:
            scores[:, nan_rows] = -np.inf
        top = (
            np.argpartition(scores, n_items - m, axis=1)[:, n_items - m :]
            if m < n_items
            else np.broadcast_to(np.arange(n_items), scores.shape).copy()
        )
        best = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -best), axis=1)
        top, best = np.take_along_axis(top, order, axis=1), np.take_along_axis(best, order, axis=1)
        finite = np.isfinite(best)
        rows[block] = np.where(finite, top, -1)
        probs[block] = np.where(finite, probabilities(best), 0.0)
    return {"cand_rows": rows, "cand_probs": probs}


def upserted_columns(cat: Catalog, items: Sequence[NewItemData], vecs: np.ndarray) -> tuple[dict, int, int]:
    """The snapshot's columns with ``items`` added or replaced (copies: ``cat`` is left untouched).

    Returns:
        (keyword arguments for build_catalog, inserted, updated).
    """
    ids, price = list(cat.ids), cat.price.copy()
    category, description, features = list(cat.category), list(cat.description), list(cat.features)
    wire = list(cat.wire)
    vectors = cat.vectors
    new_rows = [it for it in items if it.item_id not in cat.index]
    if new_rows:
        vectors = np.concatenate([vectors, np.zeros((len(new_rows), vectors.shape[1]), dtype=np.float32)])
        price = np.concatenate([price, np.zeros(len(new_rows))])
    else:
        vectors = vectors.copy()
    index = dict(cat.index)
    inserted = updated = 0
    for it, v in zip(items, vecs):
        j = index.get(it.item_id)
        if j is None:
            j = len(ids)
            index[it.item_id] = j
            ids.append(it.item_id)
            category.append(it.category)
            description.append(it.description)
            features.append(it.features)
            wire.append(b"")
            inserted += 1
        else:
            category[j], description[j], features[j] = it.category, it.description, it.features
            updated += 1
        price[j] = it.price
        vectors[j] = v
        wire[j] = item_wire(it.item_id, it.price, it.description, it.features, it.category)
    columns = {
        "ids": ids,
        "price": price,
        "category": category,
        "description": description,
        "features": features,
        "vectors": vectors,
        "wire": wire,
    }
    return columns, inserted, updated


# ------------------------------------------------------------------------------------------ ranking


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
    rows, probs = [], []
    price, code = cat.price_list, cat.code_list
    # Most requests stop after about top_n entries: convert a short head first, the rest on demand.
    head = top_n + 16
    cand_rows, cand_probs = cat.cand_rows[user], cat.cand_probs[user]
    pairs = zip(cand_rows[:head].tolist(), cand_probs[:head].tolist())
    if head < len(cand_rows):
        pairs = itertools.chain(pairs, zip(cand_rows[head:].tolist(), cand_probs[head:].tolist()))
    for j, p in pairs:
        if j < 0:
            return rows, probs  # the list held every unseen item: nothing more exists
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
    n = len(scores)
    k = min(top_n, n)
    top = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
    best = scores[top]
    order = np.lexsort((top, -best))
    rows, best = top[order].tolist(), best[order]
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
