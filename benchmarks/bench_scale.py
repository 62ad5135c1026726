"""The item index as the catalogue grows: build time, size, recall@10 and per-request search cost.

For each catalogue size, clustered item and user vectors with the spectrum of trained towers are
drawn (see SPECTRUM), then one process measures, side by side:
- the exact path (every item scored, float64 sums, then top-k) and the index path (HNSW or IVF
  candidates, widened past the user's seen items, scored exactly) through server/ranking.py,
  for the same users: median and p99 ms per request, one thread;
- index build time (export tunes the search knob to the recall floor) and the index file's size;
- recall@10 of the served answer against the exact answer;
- a single-item upsert past the towers (columns written, index add; the encoder and item tower
  add their own cost per new text).

This measures the search layer the worker pool runs per request; whole-server figures (RSS, QPS at
concurrency 32 next to health QPS) need a bundle at that scale (README, "Item index").

    python benchmarks/bench_scale.py [--sizes 10000,100000,1000000] [--kind hnsw]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NOTE, median, pct, table, write_result  # noqa: E402

from towerserve.export.index import DEFAULT_MIN_RECALL, build_and_tune  # noqa: E402
from towerserve.server.catalog import build_catalog, upserted  # noqa: E402
from towerserve.server.csr import CSR  # noqa: E402
from towerserve.server.index import AnnIndex  # noqa: E402
from towerserve.server.ranking import admissible, ann_rank, rank  # noqa: E402
from towerserve.server.types import NewItemData  # noqa: E402

DIM, USERS, SEEN, TOP_N = 32, 300, 20, 10


# Spectrum decay: 90 % of the variance in ~17 of 32 dimensions, as in the trained towers' item vectors
# at seed scale (two_tower 13-15 of 33, hybrid 22-24). Fixed centres (seeded), so users and items
# share the clusters, as a trained model's users and items share one space.
SPECTRUM = np.exp(-np.arange(DIM) / 16)
CENTRES = np.random.default_rng(12345).standard_normal((256, DIM))


def _clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    x = CENTRES[rng.integers(0, len(CENTRES), n)] + 0.5 * rng.standard_normal((n, DIM))
    return (x * SPECTRUM).astype(np.float32)


def _catalog(items: np.ndarray, users: np.ndarray, seen: CSR, ann):
    n = len(items)
    empty = [""] * n
    return build_catalog(
        ids=[str(j) for j in range(n)],
        price=np.zeros(n),
        category=["c"] * n,
        description=empty,
        features=empty,
        vectors=items,
        wire=[(b"", b"")] * n,
        users=users[:1],
        seen=seen,
        candidates=0,
        user_independent=False,
        ann=ann,
    )


def measure(n: int, kind: str, rng: np.random.Generator) -> dict:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    items, users = _clustered(n, rng), _clustered(USERS, rng)
    seen = CSR.from_pairs(np.repeat(np.arange(USERS), SEEN), rng.integers(0, n, USERS * SEEN), USERS, n)
    index, tuned = build_and_tune(items, kind, users[:200], DEFAULT_MIN_RECALL)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        faiss.write_index(index, str(path))
        size_mb = path.stat().st_size / 2**20
        ann = AnnIndex.load(path, kind, tuned.knob, tuned.recall, n, np.empty(0, dtype=np.int64))
    exact_cat, ann_cat = _catalog(items, users, seen, None), _catalog(items, users, seen, ann)
    t_exact, t_ann, hits = [], [], 0
    for u in range(USERS):
        s = seen.row(u)
        t0 = time.perf_counter()
        want = rank(exact_cat, users[u], TOP_N, set(), admissible(exact_cat, None, None, None), s)[0]
        t1 = time.perf_counter()
        got = ann_rank(ann_cat, users[u], TOP_N, set(), None, s)[0]
        t2 = time.perf_counter()
        t_exact.append((t1 - t0) * 1e3)
        t_ann.append((t2 - t1) * 1e3)
        hits += len(set(got) & set(want))
    # A single-item upsert past the towers: columns written, index add (a replace: tombstone + add).
    t_up = []
    for k in range(20):
        item = NewItemData(str(int(rng.integers(0, n))) if k % 2 else f"new{k}", "d", "f", 1.0, "c")
        vec = _clustered(1, rng)
        t0 = time.perf_counter()
        cat, rows, *_ = upserted(ann_cat, [item], vec, users[:1], seen, False)
        ann.upsert(rows, vec)
        t_up.append((time.perf_counter() - t0) * 1e3)
        ann_cat = cat
    return {
        "items": n,
        "kind": kind,
        "knob": tuned.knob,
        "build_s": tuned.build_seconds,
        "index_mb": size_mb,
        "recall_at_10": hits / (USERS * TOP_N),
        "exact_p50_ms": median(t_exact),
        "exact_p99_ms": pct(t_exact, 99),
        "ann_p50_ms": median(t_ann),
        "ann_p99_ms": pct(t_ann, 99),
        "upsert_p50_ms": median(t_up),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="catalogue sizes (default 10000,100000)")
    ap.add_argument("--kind", default="hnsw", choices=("hnsw", "ivf"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        r = measure(n, args.kind, rng)
        rows.append(r)
        print(f"{n} items: done ({r['build_s']:.1f} s build)", flush=True)
    print(
        table(
            [
                "items",
                "index",
                "build s",
                "index MB",
                "recall@10",
                "exact p50/p99 ms",
                "index p50/p99 ms",
                "speed-up",
                "1-item upsert ms",
            ],
            [
                [
                    f"{r['items']:,}",
                    f"{r['kind']} ({'efSearch' if r['kind'] == 'hnsw' else 'nprobe'} {r['knob']})",
                    f"{r['build_s']:.1f}",
                    f"{r['index_mb']:.1f}",
                    f"{r['recall_at_10']:.3f}",
                    f"{r['exact_p50_ms']:.3f} / {r['exact_p99_ms']:.3f}",
                    f"{r['ann_p50_ms']:.3f} / {r['ann_p99_ms']:.3f}",
                    f"{r['exact_p50_ms'] / r['ann_p50_ms']:.1f}x",
                    f"{r['upsert_p50_ms']:.2f}",
                ]
                for r in rows
            ],
        )
    )
    print(NOTE)
    write_result("bench_scale", {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
