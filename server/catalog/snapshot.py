"""The catalogue snapshot: the first n rows of the shared columns, the orders and lists derived from them.

Readers never lock: UpsertItems writes the columns (columns.py: appends past every snapshot, replaced
rows in place), patches the candidate lists (candidates.py) and publishes a new snapshot with one
reference assignment. A request keeps the snapshot it took, so it never sees a row added after it
started; a replaced item's new values may show up in a request already running.
"""

from __future__ import annotations

import contextlib
import csv
import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.csr import CSR
from ..core.manifest import ArtifactError
from ..core.types import NewItemData
from . import candidates as candidates_mod
from .columns import ItemColumns, WireRows
from .index import AnnIndex


@dataclass(frozen=True)
class Catalog:
    """A snapshot of the catalogue: its first ``n`` rows of the shared columns, the derived orders
    and candidate lists. UpsertItems publishes a new snapshot with one reference assignment."""

    n: int
    columns: ItemColumns  # the shared, growing storage (columns.py)
    price: np.ndarray  # float64 [n] (a view of the columns)
    category_code: np.ndarray  # int32 [n], into categories
    vectors: np.ndarray  # float32 [n, d] of the served model
    vectors64: np.ndarray  # the same in float64, for logits()
    order: np.ndarray | None  # best-first item order when the ranking is user-independent
    nan_rows: np.ndarray  # rows never recommended: a vector that is not finite, or a deleted item
    order_list: list[int]  # ``order`` as Python ints (walked per request without numpy)
    cand_rows: np.ndarray | None = None  # int32 [n_users, M]: each known user's best unseen items
    cand_scores: np.ndarray | None = None  # float32 [n_users, M]: their logits (candidates.py)
    cand_probs: np.ndarray | None = None  # float32 [n_users, M]: their probabilities
    ann: AnnIndex | None = None  # the approximate index (None: exact search), shared by snapshots
    deleted: int = 0  # rows below n whose item was deleted (in nan_rows)

    # Per-row lists and lookups, shared with the columns (a row past ``n`` belongs to a later snapshot).
    @property
    def ids(self) -> list[str]:
        return self.columns.ids

    @property
    def wire(self) -> WireRows:
        return self.columns.wire

    @property
    def category(self) -> list[str]:
        return self.columns.category

    @property
    def description(self) -> list[str]:
        return self.columns.description

    @property
    def features(self) -> list[str]:
        return self.columns.features

    @property
    def price_list(self) -> list[float]:
        return self.columns.price_list

    @property
    def code_list(self) -> list[int]:
        return self.columns.code_list

    @property
    def categories(self) -> list[str]:
        """Category names by code (codes in order of first appearance)."""
        return self.columns.categories

    @property
    def category_index(self) -> dict[str, int]:
        return self.columns.category_index

    def row(self, item_id: str) -> int | None:
        """The item's row in this snapshot (None: unknown here)."""
        j = self.columns.index.get(item_id)
        return j if j is not None and j < self.n else None

    @property
    def index_kind(self) -> str:
        return self.ann.kind if self.ann is not None else "exact"

    @property
    def index_recall(self) -> float:
        return self.ann.recall if self.ann is not None else 1.0

    def __len__(self) -> int:
        """Rows (deleted items' included: row numbers never move); items served: ``item_count``."""
        return self.n

    @property
    def item_count(self) -> int:
        return self.n - self.deleted


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


def read_columns(
    path: Path, columns: Sequence[str] = (), numeric: Sequence[str] = ()
) -> dict[str, list[str]]:
    """A catalogue CSV as its columns (header name -> values), as :func:`read_csv` checks it.

    Column-wise, without a dict per row: a server reads a million users and a million items at
    start (4.2 s with csv.DictReader, 3.5 s so; most of the rest is parsing the quoted texts).

    Raises:
        ArtifactError: as :func:`read_csv`, or a row whose field count is not the header's.
    """
    try:
        # The collector paused: a list per row, a million of them alive at once, kept it scanning them
        # over and over (1M users: 2.7 s with it, 0.9 s without; they hold no cycles).
        with open(path, newline="", encoding="utf-8") as fh, _collector_paused():
            reader = csv.reader(fh)
            header = next(reader, [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ArtifactError(path, f"unreadable ({err})") from err
    missing = [c for c in (*columns, *numeric) if c not in header]
    if missing:
        raise ArtifactError(path, f"lacks columns {missing} (has {header})")
    if set(map(len, rows)) - {len(header)}:
        j = next(j for j, r in enumerate(rows) if len(r) != len(header))
        raise ArtifactError(path, f"row {j + 1}: {len(rows[j])} fields, the header names {len(header)}")
    with _collector_paused():
        values = dict(zip(header, map(list, zip(*rows)))) if rows else {c: [] for c in header}
    del rows
    for c in numeric:
        try:
            np.asarray(values[c], dtype=np.float64)
        except ValueError:
            j = next(j for j, v in enumerate(values[c]) if not _is_number(v))
            raise ArtifactError(path, f"row {j + 1}: {c} {values[c][j]!r} is not a number") from None
    return values


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off for the block (as it was before, after)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def item_columns(columns: dict[str, list[str]]) -> dict:
    """items.csv's columns (:func:`read_columns`) as build_catalog's item columns (all but the vectors)."""
    return {
        "ids": columns["item_id"],
        "price": np.asarray(columns["price"], dtype=np.float64),
        "category": columns["category"],
        "description": columns["description"],
        "features": columns["features"],
    }


def build_catalog(
    ids: Sequence[str],
    price: Sequence[float] | np.ndarray,
    category: Sequence[str],
    description: Sequence[str],
    features: Sequence[str],
    vectors: np.ndarray,
    *,
    users: np.ndarray,
    seen: CSR,
    candidates: int,
    user_independent: bool,
    ann: AnnIndex | None = None,
    candidate_budget_mb: float = 1024,
) -> Catalog:
    """The first snapshot, with everything requests need precomputed.

    Args:
        ids, price, category, description, features: one entry per item.
        vectors: float32 [n, d] item vectors of the served model.
        users: float32 [n_users, d] known users' vectors (candidate lists, the user-independent order).
        seen: each known user's interacted items, never in their candidate lists.
        candidates: M, items kept per user (0: no candidate lists).
        user_independent: every user ranks items alike, so one order serves all.
        ann: the approximate index over ``vectors`` (None: exact search).
        candidate_budget_mb: the most memory candidate lists may take (else none are kept).
    """
    columns = ItemColumns(ids, price, category, description, features, vectors)
    nan_rows = np.flatnonzero(~np.isfinite(columns.vectors).all(axis=1))
    cand = candidates_mod.build(
        users, columns.vectors64, seen, nan_rows, candidates, int(candidate_budget_mb * 2**20)
    )
    return _snapshot(columns, nan_rows, cand, users, user_independent, ann)


def _snapshot(
    columns: ItemColumns,
    nan_rows: np.ndarray,
    cand: dict[str, np.ndarray],
    users: np.ndarray,
    user_independent: bool,
    ann: AnnIndex | None,
) -> Catalog:
    n = columns.n
    vectors = columns.vectors[:n]
    order = None
    if user_independent:
        # Every user ranks items the same way: sort once with any user's vector.
        order = np.argsort(-(vectors @ users[0]), kind="stable")
        if nan_rows.size:
            order = order[~np.isin(order, nan_rows)]
    return Catalog(
        n=n,
        columns=columns,
        price=columns.price[:n],
        category_code=columns.code[:n],
        vectors=vectors,
        vectors64=columns.vectors64[:n],
        order=order,
        nan_rows=nan_rows,
        order_list=order.tolist() if order is not None else [],
        ann=ann,
        deleted=columns.deleted,
        **cand,
    )


def upserted(
    cat: Catalog,
    items: Sequence[NewItemData],
    vecs: np.ndarray,
    users: np.ndarray,
    seen: CSR,
    user_independent: bool,
    patch: bool = True,
) -> tuple[Catalog, np.ndarray, int, int]:
    """Writes ``items`` into the shared columns and returns the next snapshot: cost proportional to
    the items (the candidate lists are patched, not rebuilt; a user-independent order is re-sorted).
    ``patch=False`` drops the candidate lists instead (a bulk load rebuilds them once: relisted()).

    Returns:
        (new snapshot, the items' rows, inserted, updated).
    """
    rows, inserted, updated = cat.columns.write(items, vecs)
    nan_rows = cat.nan_rows[~np.isin(cat.nan_rows, rows)] if cat.nan_rows.size else cat.nan_rows
    cand = {}
    if cat.cand_rows is not None and patch:
        old = {"cand_rows": cat.cand_rows, "cand_scores": cat.cand_scores, "cand_probs": cat.cand_probs}
        users64 = users.astype(np.float64)
        cand = candidates_mod.update(old, users64, cat.columns.vectors64, rows, seen, n_before=cat.n)
    return _snapshot(cat.columns, nan_rows, cand, users, user_independent, cat.ann), rows, inserted, updated


def relisted(
    cat: Catalog, users: np.ndarray, seen: CSR, candidates: int, user_independent: bool, budget_mb: float
) -> Catalog:
    """The snapshot with its candidate lists built afresh (after a bulk load, where patching item by
    item would cost a Python loop over users per item)."""
    cand = candidates_mod.build(users, cat.vectors64, seen, cat.nan_rows, candidates, int(budget_mb * 2**20))
    return _snapshot(cat.columns, cat.nan_rows, cand, users, user_independent, cat.ann)


def deleted(
    cat: Catalog, item_ids: Sequence[str], users: np.ndarray, seen: CSR, user_independent: bool
) -> tuple[Catalog, np.ndarray]:
    """Removes ``item_ids`` (unknown ones ignored) and returns the next snapshot and their rows: the
    rows join ``nan_rows`` (never recommended) and leave every candidate list."""
    rows = cat.columns.delete(item_ids)
    if not rows.size:
        return cat, rows
    nan_rows = np.union1d(cat.nan_rows, rows)
    cand = {}
    if cat.cand_rows is not None:
        old = {"cand_rows": cat.cand_rows, "cand_scores": cat.cand_scores, "cand_probs": cat.cand_probs}
        cand = candidates_mod.update(
            old, users.astype(np.float64), cat.columns.vectors64, rows, seen, dead=rows
        )
    return _snapshot(cat.columns, nan_rows, cand, users, user_independent, cat.ann), rows
