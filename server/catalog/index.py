"""The approximate item index at serving time: a FAISS index (HNSW or IVF) shared by catalogue snapshots.

An index only proposes candidates; the engine scores them exactly (float64 sums, as the exact path)
and orders them best first with ties by catalogue row, so an approximate answer differs from the
exact one only by items the index did not propose. export/index.py builds it and measures its recall,
unfiltered and under filters, through the same :meth:`AnnIndex.search_within` a filtered Recommend uses.

A filter is searched inside the index: a FAISS IDSelector admits only the filter's live entries, and
the search widens for it (IVF probes lists until they hold the admitted items an unfiltered search
would scan, so a filter whose items sit in a far cluster is still reached; HNSW divides efSearch by
the admitted fraction). A narrow filter, or one the index finds too few items for, is answered by
exact scoring of its admitted rows instead (:class:`FilterSearch`).

Replacing an item never edits the graph: its old entry becomes a tombstone (its label maps to no
row) and the new vector is added under a new label, so a replaced vector can never come back. Once
tombstones pass COMPACT_FRACTION of the entries, a background thread copies the live entries into a
new index off to the side and swaps it in (:meth:`AnnIndex.compact`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_LOGGER = logging.getLogger(__name__)

# Tombstones past this fraction of the entries start a compaction. They cost what live entries cost
# (memory; an IVF scans them: 20 % dead is 25 % more scanning per probe) and propose nothing. At 20 %
# a compaction runs once per 0.25·n replacements; an IVF's costs 1.5 s of one background core at
# 1,000,000 items (0.16 s at 100,000), against 0.2·n upserts (benchmarks/bench_filtered.py).
COMPACT_FRACTION = 0.2
# Compaction copies the live entries under the read lock in slices this small, so that a writer
# waiting behind a slice (and the searches queued behind that writer) waits about one search: at
# 1,000,000 items a slice held the lock p99 4.2 ms, a search p99 5.3 ms, in the same run (both
# stretched by GIL hand-offs on two busy cores; the copying itself is tens of microseconds).
_COPY_LISTS, _COPY_VECTORS = 4, 2048
# Writes that arrive during a compaction are replayed onto the copy outside the write lock, round
# after round (each round replays what arrived during the previous one, so the backlog shrinks while
# writes leave the CPU any time free), until none is left; then, under the write lock, whatever
# slipped in since (usually nothing) is replayed and the copy swapped in: 0.01 ms at 1,000,000 items.
# Past the last round the rest is replayed under the lock anyway, with a warning.
_SWAP_WRITES, _CATCH_UP_ROUNDS = 0, 32


@dataclass(frozen=True)
class FilterSearch:
    """How a filtered search uses the index; export's recall gate measures the same rules.

    Attributes:
        exact_items, exact_fraction: a filter admitting at most this many items, or this fraction of
            the catalogue, is scored exactly over its admitted rows: ~1.6 ms for 20,000 items at
            d = 32, no more than preparing an index search for it, and exact.
        share: IVF probes lists, best first, until they hold ``share`` times nprobe / nlist of the
            admitted items (the share of the catalogue an unfiltered search scans), and never fewer
            than nprobe lists. Measured on 60,000 items in two clusters with a filter admitting
            25,000 in the cluster far from the users: recall@10 0.975 at 2, 0.868 at 1
            (benchmarks/bench_filtered.py).
        hnsw_cost: HNSW searches with efSearch divided by the admitted fraction, unless efSearch
            times this reaches the admitted count: a search costs ~2.5 µs per unit of efSearch and
            exact scoring ~80 ns per item, so there exact is the cheaper of the two.
    """

    exact_items: int = 20_000
    exact_fraction: float = 0.02
    share: float = 2.0
    hnsw_cost: int = 32


def search_params(kind: str, knob: int, k: int, sel=None):
    """FAISS search parameters for ``kind``'s knob (HNSW efSearch >= k; IVF nprobe, which FAISS caps
    at nlist; none for a flat index), admitting only the labels ``sel`` (an IDSelector) holds."""
    import faiss

    admit = {} if sel is None else {"sel": sel}
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(knob, k), **admit)
    if kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=knob, **admit)
    return faiss.SearchParameters(**admit) if admit else None


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


class _Entries:
    """One FAISS index and its maps: label -> row (-1: a tombstone), row -> live label and, for IVF,
    label -> inverted list (what a filter's per-list counts read). Labels are 0..ntotal-1; the maps
    keep spare capacity (doubling). Compaction builds a second one and swaps it in whole."""

    def __init__(self, index, row_of: np.ndarray, label_of: np.ndarray, lists: np.ndarray | None, live: int):
        self.index, self.row_of, self.label_of, self.lists, self.live = index, row_of, label_of, lists, live

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Points ``rows`` at ``vectors`` [len(rows), d] (one FAISS add); their old entries become
        tombstones, and so does a non-finite vector (added as zeros: labels must stay positions)."""
        finite = np.isfinite(vectors).all(axis=1)
        x = np.ascontiguousarray(np.where(finite[:, None], vectors, 0.0), dtype=np.float32)
        start = int(self.index.ntotal)
        self.index.add(x)
        end = start + len(rows)
        self.row_of = _fit(self.row_of, end, -1)
        self.label_of = _fit(self.label_of, int(rows.max()) + 1, -1)
        if self.lists is not None:
            self.lists = _fit(self.lists, end, -1)
            self.lists[start:end] = self.index.quantizer.assign(x, 1)[:, 0]  # what add() chose
        self.drop(rows)
        self.row_of[start:end] = np.where(finite, rows, -1)
        self.label_of[rows] = np.where(finite, np.arange(start, end), -1)
        self.live += int(finite.sum())

    def drop(self, rows: np.ndarray) -> None:
        """Tombstones the live entries of ``rows``."""
        rows = rows[rows < len(self.label_of)]
        old = self.label_of[rows]
        old = old[old >= 0]
        self.row_of[old] = -1
        self.label_of[rows] = -1
        self.live -= len(old)

    def replay(self, writes: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        """Applies logged writes in order: (rows, vectors) an upsert, (rows, None) a remove."""
        for rows, vectors in writes:
            if vectors is None:
                self.drop(rows)
            else:
                self.add(rows, vectors)


class AnnIndex:
    """The serving side: a loaded FAISS index shared by every catalogue snapshot, updated in place.

    Args:
        index: the FAISS index (labels 0..ntotal-1).
        kind, knob, recall: what export built and measured (GetModelInfo reports kind and recall).
        n_rows: catalogue rows the labels stand for (label j = row j at load).
        bad_rows: rows whose vector is not finite (never proposed).
        filtering: the rules of filtered searches (the defaults are what export's gate measured).
        compact_fraction: tombstones past this fraction of the entries start a compaction.
    """

    def __init__(
        self,
        index,
        kind: str,
        knob: int,
        recall: float,
        n_rows: int,
        bad_rows: np.ndarray,
        filtering: FilterSearch = FilterSearch(),
        compact_fraction: float = COMPACT_FRACTION,
    ):
        self.kind, self.knob, self.recall = kind, knob, float(recall)
        self.filtering, self.compact_fraction = filtering, compact_fraction
        self._lock = _ReadWriteLock()
        row_of = np.arange(index.ntotal, dtype=np.int64)
        row_of[bad_rows] = -1
        label_of = np.arange(n_rows, dtype=np.int64)
        label_of[bad_rows] = -1
        lists = _ivf_lists(index) if kind == "ivf" else None
        self._e = _Entries(index, row_of, label_of, lists, int(n_rows - len(bad_rows)))
        # Writes made while a compaction copies the entries, replayed onto the copy (None: none runs).
        self._log: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        self._compactor: threading.Thread | None = None
        self.compactions = 0

    @classmethod
    def load(cls, path: Path, kind: str, knob: int, recall: float, n_rows: int, bad_rows: np.ndarray):
        import faiss

        # One thread per search: parallelism comes from the worker pool (OpenMP per query only adds overhead).
        faiss.omp_set_num_threads(1)
        return cls(faiss.read_index(str(path)), kind, knob, recall, n_rows, bad_rows)

    @property
    def index(self):
        """The FAISS index searched now (a compaction replaces it)."""
        return self._e.index

    def __len__(self) -> int:
        return int(self._e.index.ntotal)

    @property
    def tombstones(self) -> int:
        """Entries that map to no row: replaced or deleted items, non-finite vectors."""
        return len(self) - self._e.live

    def search(self, u: np.ndarray, k: int, widen: int = 1) -> np.ndarray:
        """Up to k distinct catalogue rows the index proposes for user vector ``u`` [d] (unordered).

        ``widen`` multiplies the search knob (IVF nprobe, HNSW efSearch): a caller that asks again
        for more rows widens both, since a larger k alone never reaches an IVF list nprobe left out.
        """
        with self._lock.read():
            e = self._e
            k = min(k, int(e.index.ntotal))
            _, labels = e.index.search(
                np.ascontiguousarray(u, dtype=np.float32)[None, :],
                k,
                params=search_params(self.kind, self.knob * widen, k),
            )
            labels = labels[0]
            rows = e.row_of[labels[labels >= 0]]
        return rows[rows >= 0]

    def search_many(self, users: np.ndarray, ks: Sequence[int]) -> list[np.ndarray]:
        """:meth:`search` (``widen`` 1) for many user vectors [q, d] in one FAISS call: each gets the
        first ``ks[j]`` labels of a search for the largest, best first. The same rows as a search of
        its own for an IVF index (nprobe does not depend on k; ties aside), not for HNSW."""
        with self._lock.read():
            e = self._e
            k = min(max(ks), int(e.index.ntotal))
            _, labels = e.index.search(
                np.ascontiguousarray(users, dtype=np.float32),
                k,
                params=search_params(self.kind, self.knob, k),
            )
            out = []
            for j, want in enumerate(ks):
                got = labels[j, : min(want, k)]
                rows = e.row_of[got[got >= 0]]
                out.append(rows[rows >= 0])
        return out

    def search_within(self, users: np.ndarray, k: int, allowed: np.ndarray) -> list[np.ndarray | None]:
        """Per user vector (``users`` [q, d]), up to k rows among ``allowed`` the index proposes, or
        None where the admitted rows are to be scored exactly instead.

        Args:
            allowed: bool [n]: the snapshot's rows a filter admits (blocked ones already cleared).

        Returns:
            per user, int64 rows (unordered), or None: a narrow filter (:class:`FilterSearch`), an
            HNSW search that would cost more than exact scoring, or fewer than min(k, admitted)
            found (an index can miss a filter's items; exact scoring never does).
        """
        f = self.filtering
        n_allowed = int(np.count_nonzero(allowed))
        if n_allowed <= f.exact_items or n_allowed <= f.exact_fraction * len(allowed):
            return [None] * len(users)
        import faiss

        queries = np.ascontiguousarray(users, dtype=np.float32)
        out: list[np.ndarray | None] = []
        with self._lock.read():
            e = self._e
            m = min(len(allowed), len(e.label_of))
            labels = e.label_of[:m][allowed[:m]]
            labels = labels[labels >= 0]
            want = min(k, len(labels))
            member = np.zeros(int(e.index.ntotal), dtype=bool)
            member[labels] = True
            # One bit per label: FAISS tests it before scoring an entry, so a filtered-out one costs a bit test.
            sel = faiss.IDSelectorBitmap(np.packbits(member, bitorder="little"))
            for q, knob in zip(queries, self._filtered_knobs(e, queries, labels, k)):
                if knob is None or not want:
                    out.append(None)
                    continue
                _, got = e.index.search(q[None, :], k, params=search_params(self.kind, knob, k, sel))
                got = got[0][got[0] >= 0]
                out.append(e.row_of[got] if len(got) >= want else None)
        return out

    def _filtered_knobs(
        self, e: _Entries, queries: np.ndarray, labels: np.ndarray, k: int
    ) -> list[int | None]:
        """Each query's search knob under a filter admitting ``labels`` (None: score exactly).

        IVF: the fewest lists, best first by the query's centroid scores (FAISS's own order), that
        hold ``share`` x nprobe / nlist of the admitted entries, and at least nprobe. HNSW:
        efSearch / admitted fraction, or None when exact scoring costs less.
        """
        f = self.filtering
        if self.kind == "ivf":
            nlist = int(e.index.nlist)
            counts = np.bincount(e.lists[labels], minlength=nlist)
            target = max(k, f.share * self.knob / nlist * len(labels))
            _, order = e.index.quantizer.search(queries, nlist)
            held = np.cumsum(counts[order], axis=1)
            need = (held < target).sum(axis=1) + 1  # lists until the target is held
            return [min(nlist, max(self.knob, int(p))) for p in need]
        if self.kind == "hnsw":
            ef = math.ceil(max(self.knob, k) * max(e.live, 1) / max(len(labels), 1))
            return [None if ef * f.hnsw_cost >= len(labels) else ef] * len(queries)
        return [self.knob] * len(queries)

    def upsert(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Points ``rows`` (existing ones replaced, new ones appended) at ``vectors`` [len(rows), d]:
        one FAISS add; the replaced entries become tombstones."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        vectors = np.array(vectors, dtype=np.float32)  # a copy: a running compaction replays it later
        with self._lock.write():
            self._e.add(rows, vectors)
            self._written(rows, vectors)

    def remove(self, rows: np.ndarray) -> None:
        """Tombstones ``rows`` (deleted items): never proposed again, until an upsert points a row at
        a new vector (a reused row gets a new label)."""
        rows = np.array(rows, dtype=np.int64)
        with self._lock.write():
            self._e.drop(rows)
            self._written(rows, None)

    def _written(self, rows: np.ndarray, vectors: np.ndarray | None) -> None:
        """After a write, under the write lock: log it for a running compaction, or start one."""
        if self._log is not None:
            self._log.append((rows, vectors))
        elif self.tombstones > self.compact_fraction * len(self):
            self._log = []
            self._compactor = threading.Thread(
                target=self._compact, args=(len(self), False), name="faiss-compaction", daemon=True
            )
            self._compactor.start()

    def compact(self) -> bool:
        """Rebuilds the index from its live entries now, in this thread (False: one is running).

        Searches go on meanwhile: the live entries are copied off to the side in slices (each under
        the read lock for about as long as one search), writes made meanwhile are logged and replayed
        onto the copy, and the copy is swapped in under the write lock (a reference assignment).
        IVF copies its lists' codes as they are (no k-means, no re-assignment); HNSW and flat
        indexes re-add the live vectors (HNSW: about as slow as building it, in the background).
        Peak memory: the live entries twice, until the swap.

        Why not FAISS's ``remove_ids`` in place: it holds the index for its whole run, 109 ms for
        300,000 dead entries of an IVF over 1,000,000 items (6 ms at 100,000), 200 times one search
        (0.53 ms), and HNSW has none (benchmarks/bench_filtered.py).
        """
        with self._lock.write():
            if self._log is not None:
                return False
            self._log = []
            cut = len(self)
        self._compact(cut, True)
        return True

    def wait_for_compaction(self, timeout: float | None = None) -> bool:
        """Waits for a background compaction to finish; False if one is still running."""
        thread = self._compactor
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _compact(self, cut: int, raise_errors: bool) -> None:
        """Copies the live entries below label ``cut``, replays the log, swaps (see :meth:`compact`)."""
        import faiss

        # OpenMP's thread count is per thread: this one takes one core, as every search does.
        faiss.omp_set_num_threads(1)
        try:
            copy = self._copy_ivf(cut) if self.kind == "ivf" else self._copy_vectors(cut)
            for _ in range(_CATCH_UP_ROUNDS):
                with self._lock.read():  # writers append under the write lock: the log is ours here
                    if len(self._log) <= _SWAP_WRITES:
                        break
                    writes, self._log = self._log, []
                copy.replay(writes)
            with self._lock.write():
                if len(self._log) > _SWAP_WRITES:
                    _LOGGER.warning("index compaction replays %d writes under the lock", len(self._log))
                copy.replay(self._log)
                before = len(self)
                self._e, self._log = copy, None
                self.compactions += 1
            _LOGGER.info("index compacted: %d entries -> %d (%d live)", before, len(self), copy.live)
        except Exception:
            with self._lock.write():
                self._log = None
            _LOGGER.exception("index compaction failed; the index is served as it was")
            if raise_errors:
                raise

    def _copy_ivf(self, cut: int) -> _Entries:
        """A new IVF (the same trained quantizer) holding the live entries below ``cut``, relabelled
        0..m-1 in list order; their codes are copied, not recomputed."""
        import faiss

        old = self._e.index
        new = faiss.IndexIVFFlat(faiss.clone_index(old.quantizer), old.d, old.nlist, old.metric_type)
        rows, lists = [], []
        for lo in range(0, old.nlist, _COPY_LISTS):
            with self._lock.read():
                row_of = self._e.row_of
                chunk = [
                    (j, *_list_entries(old.invlists, j)) for j in range(lo, min(lo + _COPY_LISTS, old.nlist))
                ]
                chunk = [(j, ids, codes, row_of[ids]) for j, ids, codes in chunk]
            for j, ids, codes, row in chunk:
                keep = (ids < cut) & (row >= 0)
                labels = np.arange(new.ntotal, new.ntotal + int(keep.sum()), dtype=np.int64)
                kept = np.ascontiguousarray(codes[keep])
                new.invlists.add_entries(j, len(labels), faiss.swig_ptr(labels), faiss.swig_ptr(kept))
                new.ntotal += len(labels)
                rows.append(row[keep])
                lists.append(np.full(len(labels), j, dtype=np.int32))
        return self._entries(new, rows, np.concatenate(lists) if lists else np.empty(0, np.int32))

    def _copy_vectors(self, cut: int) -> _Entries:
        """A new HNSW or flat index (the same construction parameters) re-adding the live vectors
        below ``cut``, read back from the index in slices."""
        old = self._e.index
        new = _empty_like(old, self.kind)
        rows = []
        for lo in range(0, cut, _COPY_VECTORS):
            hi = min(lo + _COPY_VECTORS, cut)
            with self._lock.read():
                x = old.reconstruct_n(lo, hi - lo)
                row = self._e.row_of[lo:hi].copy()
            keep = row >= 0
            new.add(np.ascontiguousarray(x[keep]))
            rows.append(row[keep])
        return self._entries(new, rows, None)

    def _entries(self, index, rows: list[np.ndarray], lists: np.ndarray | None) -> _Entries:
        """The maps of a compacted ``index`` whose label j holds row ``concatenate(rows)[j]``."""
        row_of = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        with self._lock.read():
            label_of = np.full(len(self._e.label_of), -1, dtype=np.int64)
        label_of[row_of] = np.arange(len(row_of))
        return _Entries(index, row_of.astype(np.int64), label_of, lists, len(row_of))


def _ivf_lists(index) -> np.ndarray:
    """int32 [ntotal]: each label's inverted list, read from the index's lists (no re-assignment)."""
    lists = np.full(int(index.ntotal), -1, dtype=np.int32)
    for j in range(index.nlist):
        lists[_list_entries(index.invlists, j, codes=False)[0]] = j
    return lists


def _list_entries(invlists, j: int, codes: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Copies of inverted list j's labels (int64 [size]) and codes (uint8 [size, code_size])."""
    import faiss

    size = invlists.list_size(j)
    if not size:
        return np.empty(0, dtype=np.int64), np.empty((0, invlists.code_size), dtype=np.uint8)
    ids = faiss.rev_swig_ptr(invlists.get_ids(j), size).copy()
    if not codes:
        return ids, None
    raw = faiss.rev_swig_ptr(invlists.get_codes(j), size * invlists.code_size).copy()
    return ids, raw.reshape(size, invlists.code_size)


def _empty_like(index, kind: str):
    """An empty index built as ``index`` was (HNSW: same M and efConstruction; flat: same metric)."""
    import faiss

    if kind == "hnsw":
        new = faiss.IndexHNSWFlat(index.d, index.hnsw.nb_neighbors(1), index.metric_type)
        new.hnsw.efConstruction = index.hnsw.efConstruction
        return new
    return faiss.IndexFlat(index.d, index.metric_type)


def _fit(a: np.ndarray, n: int, fill: int) -> np.ndarray:
    """``a`` with room for n entries: itself, or a copy twice as large padded with ``fill``."""
    if n <= len(a):
        return a
    out = np.full(max(n, 2 * len(a), 16), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out
