"""Filtered retrieval through an IVF index, and compaction of its dead entries (issue 22, L1).

Part 1, filters: 60,000 items in two clusters (d = 32), users in the first, an IVF index tuned by
export's own build_and_tune, and a filter admitting 25,000 items of the second cluster. For the
ranking before this change (k widened, nprobe never: emulated here) and after it (an IDSelector,
nprobe widened for the filter, FilterSearch.share 1 and 2): items returned, recall@10 against the
exact path, median ms; the exact path's median for scale.

Part 2, compaction (--sizes): an IVF over n items (64 clusters), 30 % of them replaced (23 % of the
entries dead), then one thread searching back to back and one upserting 64 rows every 5 ms: search
and upsert latency (p50 / p99 / max) for 2 s without compaction, then while the background
compaction runs, and its wall time; for comparison, FAISS's in-place ``remove_ids`` of the same dead
entries, one call holding the index for its whole duration.

    python benchmarks/bench_filtered.py [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NOTE, median, pct, write_result  # noqa: E402

from towerserve.export.index import build, build_and_tune  # noqa: E402
from towerserve.server.catalog.index import AnnIndex, FilterSearch  # noqa: E402
from towerserve.server.catalog.snapshot import build_catalog  # noqa: E402
from towerserve.server.core.csr import CSR  # noqa: E402
from towerserve.server.engine.ranking import admissible, ann_rank, rank  # noqa: E402

D, N_FILTER, USERS = 32, 60_000, 200


def _two_clusters(n: int, users: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal(D)
    c *= 3 / np.linalg.norm(c)
    half = n // 2
    items = np.concatenate([c + rng.standard_normal((half, D)), -c + rng.standard_normal((n - half, D))])
    return items.astype(np.float32), (c + rng.standard_normal((users, D))).astype(np.float32)


def _catalog(items, users, category, ann):
    n = len(items)
    return build_catalog(
        ids=[f"i{j}" for j in range(n)],
        price=np.ones(n),
        category=category,
        description=["d"] * n,
        features=["f"] * n,
        vectors=items,
        users=users,
        seen=CSR.from_pairs(np.array([0]), np.array([0]), len(users), n),
        candidates=0,
        user_independent=False,
        ann=ann,
    )


def _before(cat, u, top_n, allowed) -> list[int]:
    """The ranking before this change: k widened 4x up to the index size, nprobe never."""
    n, frac = len(cat), allowed.sum() / len(cat)
    k = int(top_n / frac * 1.5) + 32
    while True:
        rows = cat.ann.search(u, k)
        rows = rows[(rows < n) & allowed[np.minimum(rows, n - 1)]]
        if len(rows) >= top_n or k >= len(cat.ann):
            return rows[:top_n].tolist()
        k *= 4


def filters() -> dict:
    items, users = _two_clusters(N_FILTER, USERS)
    half = N_FILTER // 2
    index, tuned = build_and_tune(items, "ivf", users[:100], 0.95)
    category = ["far" if half <= j < half + 25_000 else "near" for j in range(N_FILTER)]
    exact = _catalog(items, users, category, None)
    allowed = admissible(exact, None, None, {exact.category_index["far"]})
    want = {i: rank(exact, users[i], 10, set(), allowed)[0] for i in range(100, USERS)}
    out = {"items": N_FILTER, "admitted": int(allowed.sum()), "nlist": index.nlist, "nprobe": tuned.knob}
    t = []
    for i in want:
        t0 = time.perf_counter()
        rank(exact, users[i], 10, set(), allowed)
        t.append((time.perf_counter() - t0) * 1e3)
    out["exact_ms"] = median(t)
    variants = {"before": None, "share 1": FilterSearch(share=1.0), "share 2": FilterSearch()}
    for name, filtering in variants.items():
        ann = AnnIndex(
            index,
            "ivf",
            tuned.knob,
            tuned.recall,
            N_FILTER,
            np.empty(0, np.int64),
            filtering or FilterSearch(),
        )
        cat = _catalog(items, users, category, ann)
        t, hits, counts = [], 0, []
        for i, best in want.items():
            t0 = time.perf_counter()
            got = (
                _before(cat, users[i], 10, allowed)
                if filtering is None
                else ann_rank(cat, users[i], 10, set(), allowed)[0]
            )
            t.append((time.perf_counter() - t0) * 1e3)
            hits += len(set(got) & set(best))
            counts.append(len(got))
        out[name] = {
            "returned_min": min(counts),
            "returned_mean": float(np.mean(counts)),
            "recall_at_10": hits / (10 * len(want)),
            "ms_p50": median(t),
        }
        print(name, out[name], flush=True)
    return out


def _load(ann: AnnIndex, queries, rows, vectors, until) -> tuple[list[float], list[float]]:
    """One thread searching back to back and one upserting 64 rows every 5 ms, until ``until()``:
    their latencies in ms."""
    searches, writes, stop = [], [], threading.Event()

    def search() -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            ann.search(queries[i % len(queries)], 50)
            searches.append((time.perf_counter() - t) * 1e3)
            i += 1

    searcher = threading.Thread(target=search)
    searcher.start()
    lo = 0
    while not until():
        t = time.perf_counter()
        ann.upsert(rows[lo : lo + 64], vectors[lo : lo + 64])
        writes.append((time.perf_counter() - t) * 1e3)
        lo = (lo + 64) % (len(rows) - 64)
        time.sleep(0.005)
    stop.set()
    searcher.join()
    return searches, writes


def _summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50": median(xs), "p99": pct(xs, 0.99), "max": max(xs)}


def compaction(n: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(1)
    centres = 3 * rng.standard_normal((64, D))
    items = (centres[rng.integers(0, 64, n)] + rng.standard_normal((n, D))).astype(np.float32)
    queries = (centres[rng.integers(0, 64, 256)] + rng.standard_normal((256, D))).astype(np.float32)
    t0 = time.perf_counter()
    index = build(items, "ivf")
    built = time.perf_counter() - t0
    # 30 % replaced with compaction held off: 23 % of the entries dead, past COMPACT_FRACTION.
    ann = AnnIndex(index, "ivf", 64, 1.0, n, np.empty(0, np.int64), compact_fraction=1.0)
    replace = rng.permutation(n)[: 3 * n // 10]
    fresh = items[replace] + 0.1 * rng.standard_normal((len(replace), D)).astype(np.float32)
    for lo in range(0, len(replace), 4096):
        ann.upsert(replace[lo : lo + 4096], fresh[lo : lo + 4096])
    entries, dead = len(ann), ann.tombstones
    end = time.perf_counter() + 2.0
    idle = _load(ann, queries, replace, fresh, lambda: time.perf_counter() > end)
    ann.compact_fraction = 0.2  # the next upsert starts a compaction
    t0 = time.perf_counter()
    during = _load(ann, queries, replace, fresh, lambda: ann.compactions > 0)
    took = time.perf_counter() - t0
    # The alternative: FAISS's own removal in place, of the same dead entries (one call, the whole
    # index held): on a fresh copy.
    other = build(items, "ivf")
    other.add(fresh)
    t = time.perf_counter()
    other.remove_ids(faiss.IDSelectorBatch(np.sort(replace).astype(np.int64)))
    remove_ms = (time.perf_counter() - t) * 1e3
    out = {
        "items": n,
        "nlist": index.nlist,
        "build_s": built,
        "entries_before": entries,
        "tombstones_before": dead,
        "search_ms_without": _summary(idle[0]),
        "search_ms_during": _summary(during[0]),
        "upsert_ms_without": _summary(idle[1]),
        "upsert_ms_during": _summary(during[1]),
        "compaction_s": took,
        "entries_after": len(ann),
        "tombstones_after": ann.tombstones,
        "remove_ids_in_place_ms": remove_ms,
    }
    print(out, flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000", help="comma-separated catalogue sizes for part 2")
    args = p.parse_args(argv)
    payload = {"filters": filters(), "compaction": [compaction(int(s)) for s in args.sizes.split(",")]}
    print(write_result("bench_filtered", payload), NOTE)


if __name__ == "__main__":
    main()
