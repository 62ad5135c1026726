"""The approximate item index at serving time: a FAISS index (HNSW or IVF) shared by catalogue snapshots.

An index only proposes candidates; the engine scores them exactly (float64 sums, as the exact path)
and orders them best first with ties by catalogue row, so an approximate answer differs from the
exact one only by items the index did not propose. export/index.py builds it and measures its recall.

Replacing an item never edits the graph: its old entry becomes a tombstone (its label maps to no
row) and the new vector is added under a new label, so a replaced vector can never come back.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


def search_params(kind: str, knob: int, k: int):
    """FAISS search parameters for ``kind``'s knob (HNSW efSearch >= k; IVF nprobe; none for a flat index)."""
    import faiss

    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(knob, k))
    if kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=knob)
    return None


class _ReadWriteLock:
    """Many concurrent searches (FAISS releases the GIL) or one writer (adds are not thread-safe).

    Writers go first: once one waits, new searches wait behind it, or overlapping searches could
    keep the count of readers above zero for ever and starve every upsert (seen: 62 s).
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    def read(self):
        return _Held(self, write=False)

    def write(self):
        return _Held(self, write=True)


class _Held:
    def __init__(self, lock: _ReadWriteLock, write: bool):
        self.lock, self.write = lock, write

    def __enter__(self):
        c = self.lock._cond
        with c:
            lock = self.lock
            if self.write:
                lock._writers_waiting += 1
                try:
                    c.wait_for(lambda: not lock._writing and lock._readers == 0)
                finally:
                    lock._writers_waiting -= 1
                lock._writing = True
            else:
                c.wait_for(lambda: not lock._writing and not lock._writers_waiting)
                lock._readers += 1

    def __exit__(self, *exc):
        c = self.lock._cond
        with c:
            if self.write:
                self.lock._writing = False
            else:
                self.lock._readers -= 1
            c.notify_all()


class AnnIndex:
    """The serving side: a loaded FAISS index shared by every catalogue snapshot, updated in place.

    Args:
        index: the FAISS index (labels 0..ntotal-1).
        kind, knob, recall: what export built and measured (GetModelInfo reports kind and recall).
        n_rows: catalogue rows the labels stand for (label j = row j at load).
        bad_rows: rows whose vector is not finite (never proposed).
    """

    def __init__(self, index, kind: str, knob: int, recall: float, n_rows: int, bad_rows: np.ndarray):
        self.index, self.kind, self.knob, self.recall = index, kind, knob, float(recall)
        self._lock = _ReadWriteLock()
        # label -> row (-1: a tombstone) and row -> its live label, with spare capacity (doubling).
        self._row_of = np.arange(index.ntotal, dtype=np.int64)
        self._row_of[bad_rows] = -1
        self._label_of = np.arange(n_rows, dtype=np.int64)
        self._label_of[bad_rows] = -1
        self.tombstones = int(len(bad_rows))

    @classmethod
    def load(cls, path: Path, kind: str, knob: int, recall: float, n_rows: int, bad_rows: np.ndarray):
        import faiss

        # One thread per search: parallelism comes from the worker pool (OpenMP per query only adds overhead).
        faiss.omp_set_num_threads(1)
        return cls(faiss.read_index(str(path)), kind, knob, recall, n_rows, bad_rows)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, u: np.ndarray, k: int) -> np.ndarray:
        """Up to k distinct catalogue rows the index proposes for user vector ``u`` [d] (unordered)."""
        with self._lock.read():
            k = min(k, len(self))
            _, labels = self.index.search(
                np.ascontiguousarray(u, dtype=np.float32)[None, :],
                k,
                params=search_params(self.kind, self.knob, k),
            )
            labels = labels[0]
            rows = self._row_of[labels[labels >= 0]]
        return rows[rows >= 0]

    def upsert(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Points ``rows`` (existing ones replaced, new ones appended) at ``vectors`` [len(rows), d]:
        one FAISS add; the replaced entries become tombstones."""
        rows = np.asarray(rows, dtype=np.int64)
        finite = np.isfinite(vectors).all(axis=1)
        with self._lock.write():
            start = len(self)
            self.index.add(np.where(finite[:, None], vectors, 0.0).astype(np.float32))
            self._row_of = _fit(self._row_of, len(self), -1)
            self._label_of = _fit(self._label_of, int(rows.max()) + 1, -1)
            old = self._label_of[rows]
            self._row_of[old[old >= 0]] = -1  # the replaced vectors: never proposed again
            self._row_of[start : start + len(rows)] = np.where(finite, rows, -1)
            self._label_of[rows] = np.arange(start, start + len(rows))
            self.tombstones += int((old >= 0).sum()) + int((~finite).sum())

    def remove(self, rows: np.ndarray) -> None:
        """Tombstones ``rows`` (deleted items): never proposed again, until an upsert points a row at
        a new vector (a reused row gets a new label)."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[rows < len(self._label_of)]
        with self._lock.write():
            old = self._label_of[rows]
            self._row_of[old[old >= 0]] = -1
            self._label_of[rows] = -1
            self.tombstones += int((old >= 0).sum())


def _fit(a: np.ndarray, n: int, fill: int) -> np.ndarray:
    """``a`` with room for n entries: itself, or a copy twice as large padded with ``fill``."""
    if n <= len(a):
        return a
    out = np.full(max(n, 2 * len(a), 16), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out
