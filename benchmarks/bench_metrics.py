"""Times full-ranking metrics at notebook scale (10,000 users x 1,000 items): `.venv/bin/python benchmarks/bench_metrics.py`.

Scores are random float32; the train mask (~7.7 % of cells) and the test set (~2 %) are disjoint, as
after the notebook's 80/20 split of a 9.66 % matrix. The headline is the median of 5 calls of
``full_ranking_metrics`` (ks 5, 10, 20); the breakdown times the building blocks it spends its time
in, over the same chunks, so a regression can be pinned on one of them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from towerserve.server.core.csr import CSR
from towerserve.server.core.ranking_metrics import (
    DEFAULT_KS,
    _sortable_keys,
    dense_score_fn,
    full_ranking_metrics,
    topk_indices,
)

TARGET_S = 1.0


def build(n_users: int, n_items: int, seed: int = 0) -> tuple[np.ndarray, CSR, CSR]:
    rng = np.random.default_rng(seed)
    scores = rng.random((n_users, n_items), dtype=np.float32)
    cells = rng.random((n_users, n_items), dtype=np.float32)
    train = CSR.from_dense(cells < 0.077)
    test = CSR.from_dense((cells >= 0.077) & (cells < 0.097))
    return scores, train, test


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def breakdown(scores: np.ndarray, train: CSR, test: CSR, chunk: int = 2048) -> dict[str, float]:
    """Seconds spent in each building block over all chunks (one pass; indicative, not additive to the total)."""
    phases = dict.fromkeys(
        (
            "score copy + NaN check",
            "masks (dense_rows)",
            "top-k (argpartition)",
            "row sort (mrr/auc)",
            "keys + searchsorted",
        ),
        0.0,
    )
    users = np.arange(scores.shape[0])
    for start in range(0, len(users), chunk):
        u = users[start : start + chunk]
        t0 = time.perf_counter()
        s = np.array(scores[u], dtype=np.float32)
        np.isnan(s).any()
        t1 = time.perf_counter()
        seen = train.dense_rows(u)
        rel = test.dense_rows(u) & ~seen
        s[seen] = -np.inf
        t2 = time.perf_counter()
        topk_indices(s, max(DEFAULT_KS))
        t3 = time.perf_counter()
        srt = np.sort(s, axis=1)
        t4 = time.perf_counter()
        local = np.arange(len(u))
        flat = _sortable_keys(srt.ravel(), np.repeat(local, s.shape[1]))
        pr, pc = np.nonzero(rel)
        pkeys = _sortable_keys(s[pr, pc], pr)
        np.searchsorted(flat, pkeys, side="left")
        np.searchsorted(flat, pkeys, side="right")
        t5 = time.perf_counter()
        for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            phases[name] += dt
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    scores, train, test = build(args.users, args.items)
    fn = dense_score_fn(scores)
    full_ranking_metrics(fn, test, train, DEFAULT_KS)  # warm-up: page in the arrays, load BLAS
    median, metrics = timed(lambda: full_ranking_metrics(fn, test, train, DEFAULT_KS), args.repeats)
    print(
        f"full-ranking metrics, {args.users} users x {args.items} items: median {median:.2f} s over "
        f"{args.repeats} runs (target < {TARGET_S:.0f} s)"
    )
    print(
        f"  train density {train.nnz / scores.size:.3f}, test density {test.nnz / scores.size:.3f}, "
        f"{int(metrics['users'])} users evaluated; random scores give ndcg@10 {metrics['ndcg@10']:.4f}, "
        f"auc {metrics['auc']:.4f}"
    )
    phases = breakdown(scores, train, test)
    for name, seconds in phases.items():
        print(f"  {name:<24} {seconds:.3f} s")
    print(
        f"  {'rest (sums, bincounts)':<24} {max(0.0, median - sum(phases.values())):.3f} s (median minus the above)"
    )


if __name__ == "__main__":
    main()
