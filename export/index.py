"""Building the item index at export: kind by catalogue size, the search knob tuned to a recall floor.

FAISS proposes candidates that the server then scores exactly (server/catalog/index.py, server/engine/ranking.py);
here the index is built over the served split's item vectors and its recall@10 against exact search
is measured on the users sampled for the parity checks: unfiltered, and under filters admitting 1 %
and 10 % of the catalogue, answered as a filtered Recommend is (AnnIndex.search_within, exact
scoring where the server would score exactly). Below the floor on any of them the export fails,
like a parity check, and nothing is written; `auto` keeps only kinds that meet it on all three.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from towerserve.server.catalog.index import AnnIndex, FilterSearch, search_params
from towerserve.server.catalog.topk import top_k, top_k_rows
from towerserve.server.core.manifest import ItemIndex
from towerserve.server.core.numerics import logits

_LOGGER = logging.getLogger(__name__)

INDEX_FILE = "item_index.faiss"
KINDS = ("exact", "hnsw", "ivf")
# Exact scoring of 10,000 items costs ~0.3 ms here and grows linearly (100,000: ~7 ms), while the
# index path costs ~0.5 ms at any size: below this, exact is both exact and fast enough
# (benchmarks/bench_scale.py).
AUTO_EXACT_MAX_ITEMS = 50_000
DEFAULT_MIN_RECALL = 0.95
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 80
# export tunes the search-time knob upward until the recall floor holds (cheapest value that does).
# Steps of about 1.5x: the search cost follows the knob, so a finer grid lands closer to the floor
# (at 1M items nprobe went 32 -> 64 in one step, doubling the cost for the last 0.03 of recall).
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# The gate's filters admit these fractions of the catalogue: the items furthest along one random
# direction, a region of the space as a category of similar items tends to be. At 1 % the server
# scores exactly up to 2M items (FilterSearch), so that one guards larger catalogues; 10 % goes
# through the index from 200,000 items on.
FILTER_FRACTIONS = (0.01, 0.10)


def resolve_kind(kind: str, n_items: int) -> list[str]:
    """The kinds to try: ``auto`` -> exact up to AUTO_EXACT_MAX_ITEMS items, else IVF and HNSW (both
    built and tuned; the faster one at the recall floor is kept; docs/benchmarks.md, "Item index at scale")."""
    if kind == "auto":
        return ["exact"] if n_items <= AUTO_EXACT_MAX_ITEMS else ["ivf", "hnsw"]
    if kind not in KINDS:
        raise ValueError(f"index must be one of {('auto', *KINDS)} (got {kind!r})")
    return [kind]


def build(vectors: np.ndarray, kind: str, seed: int = 0):
    """A FAISS inner-product index over float32 ``vectors`` [n, d] (labels = rows; non-finite rows left out)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    elif kind == "ivf":
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        # 40 points per list: above faiss's minimum of 39, and k-means time grows with the sample.
        sample = np.random.default_rng(seed).choice(n, size=min(n, nlist * 40), replace=False)
        index.train(vectors[np.sort(sample)])
    else:
        raise ValueError(f"no FAISS index for kind {kind!r}")
    finite = np.isfinite(vectors).all(axis=1)
    # Labels must stay rows: a non-finite row is added as zeros and tombstoned by the serving side.
    index.add(np.where(finite[:, None], vectors, 0.0).astype(np.float32))
    return index


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query's exact top-10 rows (ties by row), 64 queries at a time: 1,000 queries x 1M items
    at once would be 8 GB of float64."""
    k = min(10, len(vectors))
    v64 = vectors.astype(np.float64).T
    blocks = [top_k_rows(queries[i : i + 64].astype(np.float64) @ v64, k) for i in range(0, len(queries), 64)]
    return np.concatenate(blocks) if blocks else np.empty((0, k), dtype=np.int64)


def recall_at_10(index, kind: str, knob: int, queries: np.ndarray, exact: np.ndarray) -> float:
    """Mean |index top-10 ∩ exact top-10| / 10 over ``queries`` [q, d] (``exact``: exact_top10's)."""
    if not len(queries):
        return 1.0
    k = exact.shape[1]
    q32 = np.ascontiguousarray(queries, dtype=np.float32)
    _, got = index.search(q32, k, params=search_params(kind, knob, k))
    hits = [len(set(g.tolist()) & set(e.tolist())) for g, e in zip(got, exact)]
    return float(np.mean(hits)) / k


def gate_filters(
    vectors: np.ndarray, queries: np.ndarray, fractions=FILTER_FRACTIONS, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The gate's filters by name ("1%", "10%"): each a bool [n] of the items furthest along one
    seeded random direction (finite vectors only), with each query's exact top-10 admitted rows.

    A region rather than a random subset: a random subset has items in every IVF list near any user,
    while a region far from a user is what an index probing near the user misses."""
    finite = np.isfinite(vectors).all(axis=1)
    direction = np.random.default_rng(seed).standard_normal(vectors.shape[1])
    along = np.where(finite, np.where(finite[:, None], vectors, 0.0).astype(np.float64) @ direction, -np.inf)
    order = np.argsort(-along, kind="stable")
    filters = {}
    for fraction in fractions:
        allowed = np.zeros(len(vectors), dtype=bool)
        allowed[order[: max(1, round(fraction * int(finite.sum())))]] = True
        rows = np.flatnonzero(allowed)
        filters[f"{fraction:.0%}"] = (allowed, rows[exact_top10(vectors[rows], queries)])
    return filters


def filtered_recall_at_10(ann: AnnIndex, vectors: np.ndarray, queries: np.ndarray, allowed, exact) -> float:
    """Mean recall@10 of filtered answers against ``exact`` (each query's exact top-10 admitted rows):
    ``ann.search_within``'s candidates scored exactly as the server scores them, or full marks where
    the server would score the admitted rows exactly."""
    if not len(queries):
        return 1.0
    k = exact.shape[1]
    hits = 0
    for q, proposed, want in zip(queries, ann.search_within(queries, k, allowed), exact):
        if proposed is None:
            hits += k
            continue
        proposed = np.sort(proposed)
        got = proposed[top_k(logits(vectors[proposed].astype(np.float64), q), k)]
        hits += len(set(got.tolist()) & set(want.tolist()))
    return hits / (k * len(queries))


@dataclass(frozen=True)
class Tuned:
    """What export measured: the knob (efSearch or nprobe), the recall@10 it reached, and the
    recall@10 under each gate filter (measured once the unfiltered floor holds, and at the last knob)."""

    knob: int
    recall: float
    build_seconds: float
    filtered: dict[str, float] = field(default_factory=dict)

    def meets(self, floor: float) -> bool:
        return self.recall >= floor and all(r >= floor for r in self.filtered.values())

    def describe(self) -> str:
        under = ", ".join(f"{name} filter {r:.4f}" for name, r in self.filtered.items())
        return f"recall@10 {self.recall:.4f}" + (f" ({under})" if under else "")


def build_and_tune(
    vectors: np.ndarray,
    kind: str,
    queries: np.ndarray,
    min_recall: float,
    exact: np.ndarray | None = None,
    filters: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    filtering: FilterSearch = FilterSearch(),
):
    """Builds the index, then raises the search knob until recall@10 >= ``min_recall``, unfiltered
    and under every gate filter.

    ``exact``, ``filters``: :func:`exact_top10` of ``queries`` and :func:`gate_filters` (computed here
    when not given; a caller trying several kinds passes them, since they cost more than a search at
    every knob). ``filtering``: the rules the server searches filters by (its defaults).

    Returns:
        (index, Tuned): the cheapest knob meeting the floor, or the best one tried when none does
        (the caller refuses the bundle unless told otherwise).
    """
    t0 = time.perf_counter()
    index = build(vectors, kind)
    seconds = time.perf_counter() - t0
    best = None
    if exact is None:
        exact = exact_top10(vectors, queries)
    if filters is None:
        filters = gate_filters(vectors, queries)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    ann = AnnIndex(index, kind, 0, 0.0, len(vectors), bad, filtering, compact_fraction=1.0)
    knobs = EF_SEARCH if kind == "hnsw" else NPROBE
    knob_name = "efSearch" if kind == "hnsw" else "nprobe"
    for knob in knobs:
        r = recall_at_10(index, kind, knob, queries, exact)
        filtered = {}
        if r >= min_recall or knob == knobs[-1]:  # below the floor anyway: skip the filtered searches
            ann.knob = knob
            filtered = {
                name: filtered_recall_at_10(ann, vectors, queries, allowed, want)
                for name, (allowed, want) in filters.items()
            }
        best = Tuned(knob, r, seconds, filtered)
        _LOGGER.info("%s over %d items: %s %d -> %s", kind, len(vectors), knob_name, knob, best.describe())
        if best.meets(min_recall):
            break
    return index, best


def search_ms(index, kind: str, knob: int, queries: np.ndarray, k: int = 10, most: int = 200) -> float:
    """Median ms of one-query searches at ``knob``, the way the server searches (one thread, one
    user per call): what `auto` chooses between kinds by, at equal recall."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        params = search_params(kind, knob, k)
        times = []
        for q in np.ascontiguousarray(queries[:most], dtype=np.float32):
            t0 = time.perf_counter()
            index.search(q[None, :], k, params=params)
            times.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.median(times)) * 1e3 if times else 0.0


class RecallError(ValueError):
    """The index misses the recall floor at every search setting tried."""


def export_index(
    tmp: Path,
    rel: Path,
    kind: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    min_recall: float,
    filtering: FilterSearch = FilterSearch(),
) -> ItemIndex:
    """Builds, tunes and writes ``rel``/item_index.faiss under ``tmp`` (nothing for exact).

    ``filtering``: the rules the server searches filters by; the gate measures with the same ones.

    Raises:
        RecallError: recall@10, unfiltered or under a gate filter, stays below ``min_recall`` (0
            accepts any) for every kind tried.
    """
    kinds = resolve_kind(kind, len(vectors))
    if kinds == ["exact"]:
        return ItemIndex(kind="exact", recall_at_10=1.0, queries=0)
    import faiss

    misses, passed = [], []
    exact = exact_top10(vectors, queries)  # once for every kind tried
    filters = gate_filters(vectors, queries)
    for kind in kinds:
        index, tuned = build_and_tune(vectors, kind, queries, min_recall, exact, filters, filtering)
        if not tuned.meets(min_recall):
            misses.append(f"{kind} reaches {tuned.describe()} at best")
            _LOGGER.warning("%s index misses the recall floor %s: %s", kind, min_recall, misses[-1])
            continue
        # Kinds that meet the floor differ in search cost by several times, depending on how the
        # vectors cluster (IVF scans whole lists; HNSW walks a graph): the faster one is kept.
        ms = search_ms(index, kind, tuned.knob, queries) if len(kinds) > 1 else 0.0
        passed.append((ms, kind, index, tuned))
        if len(kinds) > 1:
            _LOGGER.info(
                "%s at the floor: %.3f ms per one-user search (built in %.1f s)",
                kind,
                ms,
                tuned.build_seconds,
            )
    if not passed:
        raise RecallError(
            f"over {len(vectors)} items: {'; '.join(misses)}; below the floor {min_recall} "
            "(--min-recall; or --index exact)"
        )
    _, kind, index, tuned = min(passed, key=lambda p: p[0])
    faiss.write_index(index, str(tmp / rel / INDEX_FILE))
    return ItemIndex(
        kind=kind,
        recall_at_10=round(tuned.recall, 4),
        queries=len(queries),
        file=str(rel / INDEX_FILE),
        search=tuned.knob,
        build_seconds=round(tuned.build_seconds, 2),
        filtered_recall_at_10={name: round(r, 4) for name, r in tuned.filtered.items()},
    )
