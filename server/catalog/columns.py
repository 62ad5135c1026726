"""The catalogue's columns, grown in place so that an upsert costs what it upserts, not the catalogue.

Arrays keep spare capacity (growing by a quarter, so appends are amortised O(1)); a snapshot (catalog.py) holds
views ``[:n]`` and the shared lists, and only ever reads rows below its ``n``. New rows are written
past every published snapshot; a replaced row is written in place, so a request already running
may see the new values of an item it was ranking (never a row it does not hold). When an append
outgrows the arrays, new ones are allocated and filled; older snapshots keep the old ones.
Only one writer at a time (the engine's write lock).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from ..core.types import NewItemData
from ..core.wire import item_wire

# A deleted item's row is reused by a new item only this long after the delete: a request that took
# its snapshot before the delete (and so does not mask the row) has long finished by then.
REUSE_AFTER = 30.0


class WireRows:
    """Each row's pre-serialised wire bytes (core/wire.py's ``item_wire``), built on first use.

    Building them all at load took 4.8 s of a 10⁶-item server's start, for items most of which no
    answer names soon. A row is built from the columns the first time an answer reads it, under a
    lock; a write sets a row's bytes before it changes that row's columns, so a build never mixes an
    item's old and new fields (a build that started before the write is overwritten by it).
    """

    def __init__(self, columns: ItemColumns, n: int):
        self._columns = columns
        self._rows: list[tuple[bytes, bytes] | None] = [None] * n
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, j: int) -> tuple[bytes, bytes]:
        w = self._rows[j]
        if w is None:
            with self._lock:
                w = self._rows[j]
                if w is None:
                    c = self._columns
                    w = item_wire(c.ids[j], c.price_list[j], c.description[j], c.features[j], c.category[j])
                    self._rows[j] = w
        return w

    def __setitem__(self, j: int, wire: tuple[bytes, bytes]) -> None:
        with self._lock:
            self._rows[j] = wire

    def append(self, wire: tuple[bytes, bytes]) -> None:
        with self._lock:
            self._rows.append(wire)


class ItemColumns:
    """Ids, attributes, pre-serialised wire bytes and vectors of every catalogue row.

    Attributes:
        n: rows written so far (a snapshot taken now holds them all).
        deleted: rows among them whose item was deleted (out of ``index``; snapshots mask them).
        ids, category, description, features, price_list, code_list: per-row lists (shared).
        wire: each row's pre-serialised bytes, built on first use (:class:`WireRows`, shared).
        index: item id -> row (shared; a snapshot checks ``row < its n``).
        categories, category_index: category names by code (first appearance) and name -> code.
        price, code, vectors, vectors64: arrays with capacity >= n (snapshots take ``[:n]`` views).
    """

    def __init__(
        self,
        ids: Sequence[str],
        price: Sequence[float] | np.ndarray,
        category: Sequence[str],
        description: Sequence[str],
        features: Sequence[str],
        vectors: np.ndarray,
    ):
        n, d = vectors.shape
        self.n = n
        self.deleted = 0  # rows whose item was deleted (masked until a new item reuses them)
        self._free: deque[tuple[float, int]] = deque()  # (reusable from, row), oldest first
        # Rows of the exported catalogue are never reused: the recorded interactions (seen items,
        # splits) name them by row, so a new item there would inherit another item's history.
        self.exported = n
        self.ids, self.category = list(ids), list(category)
        self.description, self.features = list(description), list(features)
        self.index = {x: j for j, x in enumerate(self.ids)}
        self.categories: list[str] = []
        self.category_index: dict[str, int] = {}
        for name in dict.fromkeys(self.category):  # codes in order of first appearance, C-level loops
            self._code(name)
        codes = list(map(self.category_index.__getitem__, self.category))
        self.price = np.asarray(price, dtype=np.float64).copy()
        self.code = np.array(codes, dtype=np.int32)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.vectors64 = self.vectors.astype(np.float64)
        self.price_list, self.code_list = self.price.tolist(), codes
        self.wire = WireRows(self, n)

    def _code(self, name: str) -> int:
        code = self.category_index.get(name)
        if code is None:
            code = self.category_index[name] = len(self.categories)
            self.categories.append(name)
        return code

    def _reserve(self, n: int) -> None:
        """Capacity for ``n`` rows: new arrays, a quarter larger, when the current ones are full (still
        amortised O(1) per row; doubling would add ~0.4 GB to a million-item catalogue at its first
        upsert)."""
        if n <= len(self.price):
            return
        cap = max(n, len(self.price) + len(self.price) // 4, 16)

        def grown(a: np.ndarray) -> np.ndarray:
            out = np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
            out[: self.n] = a[: self.n]
            return out

        self.price, self.code = grown(self.price), grown(self.code)
        self.vectors, self.vectors64 = grown(self.vectors), grown(self.vectors64)

    def write(self, items: Sequence[NewItemData], vectors: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Adds or replaces ``items`` with their ``vectors`` [len(items), d].

        Returns:
            (their rows, inserted, updated).
        """
        new = sum(1 for it in items if it.item_id not in self.index)
        now = time.monotonic()
        reusable = [self._free.popleft()[1] for _ in range(new) if self._free and self._free[0][0] <= now]
        self._reserve(self.n + new - len(reusable))
        rows = np.empty(len(items), dtype=np.int64)
        inserted = appended = 0
        for k, (it, v) in enumerate(zip(items, vectors)):
            j = self.index.get(it.item_id)
            code = self._code(it.category)
            wire = item_wire(it.item_id, it.price, it.description, it.features, it.category)
            reused = j is None and bool(reusable)
            if reused:  # a deleted item's row, free long enough: written in place
                j = reusable.pop()
                inserted += 1
                self.deleted -= 1
            if j is None:
                j = self.n + appended
                inserted += 1
                appended += 1
                self.ids.append(it.item_id)
                self.category.append(it.category)
                self.description.append(it.description)
                self.features.append(it.features)
                self.wire.append(wire)
                self.price_list.append(it.price)
                self.code_list.append(code)
            else:
                self.wire[j] = wire  # before the columns it is built from (WireRows)
                if reused:
                    self.ids[j] = it.item_id
                self.category[j], self.description[j], self.features[j] = (
                    it.category,
                    it.description,
                    it.features,
                )
                self.price_list[j], self.code_list[j] = it.price, code
            self.price[j], self.code[j] = it.price, code
            self.vectors[j], self.vectors64[j] = v, v
            rows[k] = j
        # Appended rows become visible only now, and only to snapshots taken from here on.
        for it, j in zip(items, rows.tolist()):
            self.index.setdefault(it.item_id, j)
        self.n += appended
        return rows, inserted, len(items) - inserted

    def delete(self, item_ids: Sequence[str]) -> np.ndarray:
        """Forgets ``item_ids`` (unknown ones are ignored); returns their rows. They keep their values
        (requests already running may still rank them) until a new item takes them over, no sooner
        than REUSE_AFTER seconds later, so delete-and-upsert churn does not grow the catalogue. Rows of
        the exported catalogue stay masked for good.
        """
        rows = [j for j in (self.index.pop(x, None) for x in dict.fromkeys(item_ids)) if j is not None]
        self.deleted += len(rows)
        ready = time.monotonic() + REUSE_AFTER
        self._free.extend((ready, j) for j in rows if j >= self.exported)
        return np.array(rows, dtype=np.int64)
