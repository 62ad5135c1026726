"""The hybrid's training at scale, stage by stage: wall time and peak RSS of each.

`.venv/bin/python benchmarks/hybrid_scale.py --scale 10000 --scale 100000` trains the hybrid (the
served default model) on synthetic data of N users x N items, each scale in a child process of its
own (so each peak RSS is that run's alone), prints one JSON line per run and writes
benchmarks/results/hybrid_scale.json.

The data skip the text encoder, the slow step at scale (~1 h for 825k texts at 10⁶): every text field
is a FieldTable of random unit vectors (384-d, as MiniLM's), with as many distinct texts as the 10⁶
pipeline run had (descriptions ~0.39 and feature lists ~0.44 per item, 17 categories, 12 professions,
8 personalities), ages and prices drawn uniformly. Positives: ~``--per-user`` a user (1 + Poisson),
80 % from one of three categories the user's personality likes, popularity-skewed within a category.
Then what `towerserve train --model hybrid` does with them: the holdout split (its 100 negatives a
user included), the evaluation sample, and trainer/hybrid/train.fit_hybrid on FeatureRows (or, with
--dense, on the feature matrices the hybrid used to hold).

Stages (nested ones inside their parent): data, split, hybrid (search: each candidate's fit with its
validation, the EASE/ridge/popularity blend; refit; the served parts; the vectors; the candidates'
test NDCG@10). RSS is sampled every 20 ms from /proc/self/status (VmRSS); a stage's peak is the most
seen while it ran, the run's is ru_maxrss. Goal (issue 24): `--model all` at 10⁶ x 10⁶ within 16 GB.

``--steps N`` stops every epoch after N steps: a step's memory does not depend on how many came
before it, so the peaks stand while the wall times do not (at 10⁶ a full epoch is ~3,100 steps).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hybrid_scale.json"
TEXT_DIM = 384
GOAL_RSS_GB = 16.0


class Stages:
    """Wall time and peak RSS of nested stages, from a thread sampling VmRSS."""

    def __init__(self, every_s: float = 0.02):
        self.rows: list[dict] = []
        self._open: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every_s,), daemon=True)
        self._thread.start()

    @staticmethod
    def rss_gb() -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
        return float("nan")

    def _sample(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            rss = self.rss_gb()
            with self._lock:
                for row in self._open:
                    row["peak_rss_gb"] = max(row["peak_rss_gb"], rss)

    @contextmanager
    def stage(self, name: str):
        rss = self.rss_gb()
        row = {"stage": name, "depth": len(self._open), "rss_start_gb": rss, "peak_rss_gb": rss}
        with self._lock:
            self._open.append(row)
            self.rows.append(row)
        t0 = time.perf_counter()
        try:
            yield row
        finally:
            row["seconds"] = time.perf_counter() - t0
            rss = self.rss_gb()
            with self._lock:
                row["peak_rss_gb"] = max(row["peak_rss_gb"], rss)
                self._open.remove(row)
            logging.info("stage %s: %.1f s, peak RSS %.2f GB", name, row["seconds"], row["peak_rss_gb"])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def synthetic(n_users: int, n_items: int, per_user: float, seed: int):
    """(positives CSR, user ids, tables, raw user numbers, raw item numbers): see the module docstring."""
    from towerserve.server.core.csr import CSR
    from towerserve.server.core.features import FieldTable

    rng = np.random.default_rng(seed)

    def table(distinct: int, n: int, index: np.ndarray | None = None) -> FieldTable:
        vectors = rng.standard_normal((distinct, TEXT_DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = rng.integers(distinct, size=n) if index is None else index
        return FieldTable(np.arange(distinct).astype(str), vectors, index.astype(np.int32))

    n_cat = 17
    category = rng.integers(n_cat, size=n_items)
    category[: min(n_cat, n_items)] = np.arange(min(n_cat, n_items))  # no empty category
    personality = rng.integers(8, size=n_users)
    tables = {
        "profession": table(12, n_users),
        "personality": table(8, n_users, personality),
        "category": table(n_cat, n_items, category),
        "description": table(max(n_cat, int(0.39 * n_items)), n_items),
        "features": table(max(n_cat, int(0.44 * n_items)), n_items),
    }
    raw_user = {"age": rng.integers(18, 81, size=n_users).astype(np.float64)}
    raw_item = {"price": rng.uniform(5, 500, size=n_items)}
    # Positives: a category the user's personality likes (80 %) or any, then a popular item in it.
    likes = rng.integers(n_cat, size=(8, 3))
    counts = 1 + rng.poisson(max(0.0, per_user - 1), size=n_users)
    users = np.repeat(np.arange(n_users), counts)
    liked = rng.random(len(users)) < 0.8
    cat = np.where(
        liked,
        likes[personality[users], rng.integers(3, size=len(users))],
        rng.integers(n_cat, size=len(users)),
    )
    by_cat = np.argsort(category, kind="stable")
    sizes = np.bincount(category, minlength=n_cat)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.minimum(sizes[cat] - 1, (sizes[cat] * rng.random(len(users)) ** 3).astype(np.int64))
    items = by_cat[starts[cat] + rank]
    positives = CSR.from_pairs(users, items, n_users, n_items)
    ids = np.char.add("u", np.arange(n_users).astype(str))
    return positives, ids, tables, raw_user, raw_item


def _wrap(stages: Stages, module, name: str, label) -> None:
    """Times every call of ``module.name`` as a stage (``label(args, kwargs)`` names it)."""
    inner = getattr(module, name)

    def timed(*args, **kwargs):
        with stages.stage(label(args, kwargs)):
            return inner(*args, **kwargs)

    setattr(module, name, timed)


def run_one(args) -> dict:
    """One scale, in this process: the data, the split and the hybrid, each a stage."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    import tensorflow as tf

    from towerserve.server.core.features import feature_matrix
    from towerserve.trainer import splits
    from towerserve.trainer.evalsample import default_eval_users, sample_users
    from towerserve.trainer.hybrid import blend as hybrid_blend
    from towerserve.trainer.hybrid import fit as hybrid_fit
    from towerserve.trainer.hybrid import search as hybrid_search
    from towerserve.trainer.hybrid import train as hybrid_train
    from towerserve.trainer.hybrid.config import HybridConfig
    from towerserve.trainer.train import field_specs
    from towerserve.trainer.train_config import FEATURE_SETS

    tf.config.experimental.enable_op_determinism()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    stages = Stages()
    n_users = n_items = args.one
    with stages.stage("data"):
        positives, ids, tables, raw_user, raw_item = synthetic(n_users, n_items, args.per_user, args.seed)
    with stages.stage("split"):
        split = splits.holdout_split(positives, ids, seed=args.seed)
        judged = sample_users(split.test, default_eval_users(n_users, n_items), args.seed)
    uspec = field_specs(FEATURE_SETS["hybrid"]["user"], tables, raw_user, np.arange(n_users))
    ispec = field_specs(FEATURE_SETS["hybrid"]["item"], tables, raw_item, np.arange(n_items))
    cfg = argparse.Namespace(
        hybrid=HybridConfig(epochs=args.epochs, content_epochs=args.content_epochs, patience=args.epochs),
        hybrid_search=hybrid_search.SEARCH if args.search == "default" else ({},),
        seed=args.seed,
    )
    if args.steps:
        batches = hybrid_fit.user_batches
        hybrid_fit.user_batches = lambda *a, **k: itertools.islice(batches(*a, **k), args.steps)
    fits = iter(range(1, 100))
    _wrap(stages, hybrid_fit, "fit", lambda a, k: f"fit {next(fits)} ({k.get('desc', '')})")
    _wrap(stages, hybrid_blend, "choose", lambda a, k: "blend: choose on validation")
    _wrap(stages, hybrid_blend, "apply", lambda a, k: "blend: the served parts")
    _wrap(stages, hybrid_fit, "all_vectors", lambda a, k: "vectors: every user and item")
    _wrap(stages, hybrid_train, "_test_ndcg", lambda a, k: "candidate test ndcg@10")
    extra = {}
    with stages.stage("hybrid") as total:
        if args.dense:
            with stages.stage("feature matrices"):
                U, I = feature_matrix(uspec, tables, raw_user), feature_matrix(ispec, tables, raw_item)
        else:
            from towerserve.trainer.hybrid.rows import FeatureRows

            U, I = (
                FeatureRows.of_tables(uspec, tables, raw_user),
                FeatureRows.of_tables(ispec, tables, raw_item),
            )
            extra = {"users": judged}
        got = hybrid_train.fit_hybrid(U, I, split, cfg, None, "hybrid/holdout", uspec, **extra)
    model, history, secs, uvec, ivec, choice, out = got
    stages.close()
    recipe = out["metrics"]["recipe"]
    return {
        "users": n_users,
        "items": n_items,
        "positives": positives.nnz,
        "train_positives": split.train.nnz,
        "negatives": len(split.negatives),
        "eval_sample": None if judged is None else len(judged),
        "mode": "dense" if args.dense else "rows",
        "label": args.label,
        "search": args.search,
        "epochs": args.epochs,
        "content_epochs": args.content_epochs,
        "threads": args.threads,
        "steps_per_epoch_cap": args.steps,
        "hybrid_seconds": total["seconds"],
        "hybrid_rss_start_gb": total["rss_start_gb"],
        "hybrid_peak_rss_gb": total["peak_rss_gb"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "val_ndcg@10": [c["val_ndcg@10"] for c in recipe["candidates"]],
        "test_ndcg@10": [c.get("test_ndcg@10") for c in recipe["candidates"]],
        "ease_skipped": recipe["popularity_blend"].get("ease_skipped"),
        "stages": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in stages.rows
        ],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, action="append", help="users = items (repeatable; default 10⁴, 10⁵)")
    p.add_argument("--per-user", type=float, default=20.0, help="mean positives a user (10⁶ run: ~20)")
    p.add_argument("--epochs", type=int, default=1, help="joint epochs (the recipe's default: 24)")
    p.add_argument("--content-epochs", type=int, default=1, help="content epochs (the recipe's: 3)")
    p.add_argument(
        "--search", choices=("none", "default"), default="none", help="the default recipe alone, or SEARCH"
    )
    p.add_argument(
        "--dense", action="store_true", help="feed the feature matrices (how the hybrid trained before)"
    )
    p.add_argument("--threads", type=int, default=1, help="TensorFlow threads (0: its default)")
    p.add_argument("--steps", type=int, default=0, help="stop each epoch after this many steps (0: never)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--label", default="", help="recorded with the run (e.g. which revision ran)")
    p.add_argument("--no-record", action="store_true", help="print only; leave the results file alone")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child's single scale
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args), default=float), flush=True)
        return
    runs = []
    for scale in args.scale or [10_000, 100_000]:
        cmd = [sys.executable, __file__, "--one", str(scale), *(argv if argv is not None else sys.argv[1:])]
        cmd = [c for j, c in enumerate(cmd) if not (c == "--scale" or (j and cmd[j - 1] == "--scale"))]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"scale {scale} failed (exit {done.returncode})")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        runs.append(row)
    if not args.no_record:
        old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": []}
        key = lambda r: (  # noqa: E731
            r["users"],
            r["items"],
            r["mode"],
            r.get("label", ""),
            r["search"],
            r["epochs"],
            r["content_epochs"],
            r.get("steps_per_epoch_cap", 0),
        )
        fresh = {key(r) for r in runs}
        keep = [r for r in old.get("runs", []) if key(r) not in fresh]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "benchmark": "hybrid_scale",
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "goal_rss_gb": GOAL_RSS_GB,
            "note": "a shared 2-core machine: times are indicative; RSS is the process's own",
            "runs": sorted(keep + runs, key=lambda r: (r["users"], r["mode"])),
        }
        RESULTS.write_text(json.dumps(doc, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
