"""Reference rankers every model is compared with: Random, MostPopular and the generator's Oracle."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from towerserve.server.csr import CSR
from towerserve.server.metrics import DEFAULT_KS, full_ranking_metrics

from . import synth
from .data import GENERATOR_FILE, TRUTH_FILE

_LOGGER = logging.getLogger(__name__)


def random_scores(seed: int = 0):
    """Uniform random scores; each call draws from a stream keyed by its first user (reproducible)."""

    def score(users: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([seed, int(users[0]) if len(users) else 0])
        return rng.random((len(users), score.n_items), dtype=np.float32)

    return score


def popularity(train: CSR) -> np.ndarray:
    """Training positives per item, float32 [n_items]."""
    return np.bincount(train.indices, minlength=train.n_cols).astype(np.float32)


class OracleScores:
    """The generator's true probabilities as a score function (reads the .npy or replays blocks)."""

    def __init__(self, root: Path | str):
        root = Path(root)
        self._dense = np.load(root / TRUTH_FILE, mmap_mode="r") if (root / TRUTH_FILE).is_file() else None
        self._world = None if self._dense is not None else synth.load_world(root)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def available(root: Path | str) -> bool:
        root = Path(root)
        return (root / TRUTH_FILE).is_file() or (root / GENERATOR_FILE).is_file()

    def __call__(self, users: np.ndarray) -> np.ndarray:
        if self._dense is not None:
            return np.asarray(self._dense[np.asarray(users)])
        # Replay only the generator blocks that hold these users; keep the last one for the next call.
        size = synth.block_size(len(self._world.items["item_id"]))
        out = np.empty((len(users), len(self._world.items["item_id"])), dtype=np.float32)
        for b in np.unique(np.asarray(users) // size):
            if self._cache is None or self._cache[0] != b:
                start = b * size
                block = np.arange(start, min(len(self._world.users["user_id"]), start + size))
                rng = np.random.default_rng([self._world.seed, 3, int(b)])
                self._cache = (b, synth._sigmoid(self._world.logits(block, rng)))
            sel = np.asarray(users) // size == b
            out[sel] = self._cache[1][np.asarray(users)[sel] - b * size]
        return out


def evaluate_baselines(
    train: CSR,
    test: CSR,
    data_root: Path | str | None = None,
    ks=DEFAULT_KS,
    users: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float] | None]:
    """Full-ranking metrics of Random, MostPopular and (when the data has one) the Oracle.

    Returns:
        ``{"random": {...}, "mostpop": {...}, "oracle": {...} or None}``.
    """
    rnd = random_scores(seed)
    rnd.n_items = test.n_cols
    pop = popularity(train)
    out: dict[str, dict[str, float] | None] = {
        "random": full_ranking_metrics(rnd, test, train, ks, users=users),
        "mostpop": full_ranking_metrics(
            lambda u: np.broadcast_to(pop, (len(u), len(pop))), test, train, ks, users=users
        ),
        "oracle": None,
    }
    if data_root is not None and OracleScores.available(data_root):
        out["oracle"] = full_ranking_metrics(OracleScores(data_root), test, train, ks, users=users)
    else:
        _LOGGER.warning("no generator probabilities beside the data: the oracle row is skipped")
    return out
