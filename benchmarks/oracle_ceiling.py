"""How much of the Oracle can a model that learns from the data reach? `.venv/bin/python
benchmarks/oracle_ceiling.py --data data/latent` (~1 min at seed scale).

The Oracle ranks by the generator's true probabilities: it knows every user's latent taste P_u and the
per-cell noise, which no learner sees. This script scores the holdout split (the one `towerserve
train` uses, same seed) three ways and prints NDCG@10 of each as a share of the Oracle's:

* noise-free: the true logits without the per-cell noise;
* items known, users learnt: every item parameter (content terms, popularity, latent Q_i) and every
  content term exactly, and each user's latent P_u estimated from their TRAINING positives alone
  (logistic regression with P's own N(0, I) prior, by Newton's method). Any real model must also learn
  the items, so this is an upper bound on what a learner can reach here;
* content only: the true logits without the latent term (the best a content-only model could do).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, table, write_result  # noqa: E402

from towerserve.server.core.ranking_metrics import full_ranking_metrics  # noqa: E402
from towerserve.trainer import splits  # noqa: E402
from towerserve.trainer.baselines import OracleScores  # noqa: E402
from towerserve.trainer.data import load_dataset  # noqa: E402
from towerserve.trainer.synth import generator as synth  # noqa: E402

NEWTON_STEPS = 12  # the MAP estimate converges to 1e-6 in under 10 here
BLOCK = 1_000  # users per Newton block: bounds the [users, items, factors] product's memory


def fit_user_factors(y: np.ndarray, offset: np.ndarray, f: np.ndarray) -> np.ndarray:
    """MAP user factors: max sum log-likelihood(y | offset + w.f_i) - |w|^2 / 2, per row of ``y``."""
    w = np.zeros((y.shape[0], f.shape[1]))
    eye = np.eye(f.shape[1])[None]
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(offset + w @ f.T)))
        grad = (y - p) @ f - w
        hess = np.einsum("ui,ij,ik->ujk", p * (1.0 - p), f, f) + eye
        w = w + np.linalg.solve(hess, grad[..., None])[..., 0]
    return w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a `towerserve generate` folder")
    parser.add_argument("--seed", type=int, default=42, help="the split seed (default 42, train's)")
    args = parser.parse_args()

    ds = load_dataset(args.data)
    n_users = ds.positives.n_rows
    split = splits.holdout_split(ds.positives, np.arange(n_users), seed=args.seed)
    world = synth.load_world(args.data)

    def ndcg(scores: np.ndarray) -> float:
        m = full_ranking_metrics(lambda u: scores[u], split.test, split.train, (10,))
        return float(m["ndcg@10"])

    users = np.arange(n_users)
    oracle = ndcg(np.concatenate([OracleScores(args.data)(b) for b in np.array_split(users, 10)]))
    results = {"oracle": oracle, "noise_free": ndcg(world.logits(users, None))}
    content = world.logits(users, None, latent=False).astype(np.float64)
    results["content_only"] = ndcg(content)
    if world.latent_weight:
        f = (world.latent_weight / math.sqrt(synth.LATENT_DIM)) * world.item_factors
        learnt = np.empty_like(content)
        for start in range(0, n_users, BLOCK):
            rows = users[start : start + BLOCK]
            y = split.train.dense_rows(rows).astype(np.float64)
            learnt[rows] = content[rows] + fit_user_factors(y, content[rows], f) @ f.T
        results["items_known_users_learnt"] = ndcg(learnt)
    names = {
        "oracle": "Oracle (true probabilities)",
        "noise_free": "noise-free true logits",
        "items_known_users_learnt": "items known, users' latent tastes learnt from training positives",
        "content_only": "content terms only (no latent term)",
    }
    print(f"{args.data}: {n_users} users x {ds.positives.n_cols} items, regime {world.regime}, holdout split")
    print(
        table(
            ["scores", "ndcg@10", "x Oracle"],
            [[names[k], f"{v:.4f}", f"{v / oracle:.3f}"] for k, v in results.items()],
        )
    )
    write_result("oracle_ceiling", {"data": str(args.data), "regime": world.regime, "ndcg@10": results})


if __name__ == "__main__":
    main()
