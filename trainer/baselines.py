"""Reference rankers every model is compared with: Random, MostPopular, ItemKNN, EASE and the Oracle."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np

from towerserve.server.core.csr import CSR
from towerserve.server.core.ranking_metrics import DEFAULT_KS

from .collab import (
    DENSE_MAX_ITEMS,
    EASE_LAMBDAS,
    EASE_MAX_ITEMS,
    KNN_K,
    KNN_MAX_ITEMS,
    ItemKNN,
    ease_skip_reason,
    fit_ease,
    gram,
    knn_skip_reason,
    popularity,
)
from .data import GENERATOR_FILE, TRUTH_FILE
from .evalsample import ranking_metrics
from .synth import generator as synth

__all__ = ["OracleScores", "evaluate_baselines", "popularity", "random_scores", "skipped_notes"]

_LOGGER = logging.getLogger(__name__)


def random_scores(seed: int = 0):
    """Uniform random scores; each call draws from a stream keyed by its first user (reproducible)."""

    def score(users: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([seed, int(users[0]) if len(users) else 0])
        return rng.random((len(users), score.n_items), dtype=np.float32)

    return score


class OracleScores:
    """The generator's true probabilities as a score function (reads the .npy or replays blocks).

    For pooled data (trainer/synth/pooled.py) the scores are the noiseless logits instead: P(positive)
    is an increasing function of them, so they rank exactly as the true probabilities do, and any
    user is scored directly, without replaying a block.
    """

    def __init__(self, root: Path | str):
        root = Path(root)
        self._dense = np.load(root / TRUTH_FILE, mmap_mode="r") if (root / TRUTH_FILE).is_file() else None
        self._world = None if self._dense is not None else _world(str(root.resolve()), _stamp(root))
        self._pooled = self._dense is None and _is_pooled(root)
        self._cache: tuple[int, np.ndarray] | None = None

    @staticmethod
    def available(root: Path | str) -> bool:
        root = Path(root)
        return (root / TRUTH_FILE).is_file() or (root / GENERATOR_FILE).is_file()

    @staticmethod
    def replay_block(root: Path | str | None) -> int:
        """Users per replayed generator block when the Oracle replays (``--long`` data), else 1: an
        evaluation sample of whole blocks replays the fewest (see evalsample.sample_users)."""
        if root is None or (Path(root) / TRUTH_FILE).is_file() or not (Path(root) / GENERATOR_FILE).is_file():
            return 1
        meta = json.loads((Path(root) / GENERATOR_FILE).read_text())
        if meta.get("sampling") == "pooled":  # scored user by user: any sample costs the same
            return 1
        return int(meta.get("block_users") or synth.block_size(int(meta["items"])))

    def __call__(self, users: np.ndarray) -> np.ndarray:
        if self._dense is not None:
            return np.asarray(self._dense[np.asarray(users)])
        users = np.asarray(users)
        if self._pooled:
            return self._world.logits(users, None)
        # Replay only the generator blocks that hold these users; keep the last one for the next call.
        size = synth.block_size(len(self._world.items["item_id"]))
        out = np.empty((len(users), len(self._world.items["item_id"])), dtype=np.float32)
        for b in np.unique(users // size):
            if self._cache is None or self._cache[0] != b:
                self._cache = (int(b), self._world.block(int(b))[1])
            sel = users // size == b
            out[sel] = self._cache[1][users[sel] - b * size]
        return out


@functools.lru_cache(maxsize=1)
def _world(root: str, stamp: tuple[int, int]) -> synth.World:
    # Rebuilding a dense world draws every item's texts in a Python loop (minutes at 1,000,000 items);
    # train builds an OracleScores per split, so the last one is kept. ``stamp`` (generator.json's
    # mtime and size) makes a regenerated folder a new key.
    return synth.load_world(root)


def _is_pooled(root: Path) -> bool:
    return json.loads((root / GENERATOR_FILE).read_text()).get("sampling") == "pooled"


def _stamp(root: Path) -> tuple[int, int]:
    st = (root / GENERATOR_FILE).stat()
    return (st.st_mtime_ns, st.st_size)


def _evaluated(test: CSR, users: np.ndarray | None) -> np.ndarray:
    """The users full_ranking_metrics judges (at least one test positive), before train masking."""
    candidates = np.arange(test.n_rows) if users is None else np.unique(np.asarray(users, dtype=np.int64))
    return candidates[test.row_lengths()[candidates] > 0]


def evaluate_baselines(
    train: CSR,
    test: CSR,
    data_root: Path | str | None = None,
    ks=DEFAULT_KS,
    users: np.ndarray | None = None,
    seed: int = 0,
    collaborative: bool = True,
    knn_k: int = KNN_K,
    ease_lambdas=EASE_LAMBDAS,
    ease_max_items: int = EASE_MAX_ITEMS,
    knn_max_items: int = KNN_MAX_ITEMS,
) -> dict[str, dict[str, float] | None]:
    """Full-ranking metrics of Random, MostPopular, ItemKNN, EASE and (when the data has one) the Oracle.

    ItemKNN and EASE are fitted on ``train`` only; EASE's λ is chosen on a validation split carved
    out of ``train`` (recorded as its "lambda" entry). Users without training positives get the
    popularity ranking from both; when every judged user is such a user (the cold split), neither
    is fitted and both rows equal MostPopular's.

    Args:
        collaborative: False leaves the itemknn and ease rows out (the three-row result of before).
        knn_k: neighbours per item for ItemKNN.
        ease_lambdas: λ grid for EASE.
        ease_max_items: above this catalogue size EASE is skipped (its row is None).
        users: judge only these users (an evaluation sample, evalsample.sample_users): every row
            then records the sample's size and NDCG@10's 95 % interval. None judges everyone.
        knn_max_items: above this catalogue size ItemKNN is skipped (its row is None).

    Returns:
        ``{"random": {...}, "mostpop": {...}, "itemknn": {...}, "ease": {...} or None,
        "oracle": {...} or None}``; :func:`skipped_notes` says why a row is None.
    """
    rnd = random_scores(seed)
    rnd.n_items = test.n_cols
    pop = popularity(train)
    out: dict[str, dict[str, float] | None] = {
        "random": ranking_metrics(rnd, test, train, ks, users=users),
        "mostpop": ranking_metrics(
            lambda u: np.broadcast_to(pop, (len(u), len(pop))), test, train, ks, users=users
        ),
    }
    if collaborative:
        limits = (ease_max_items, knn_max_items)
        out.update(_collaborative(train, test, ks, users, seed, knn_k, ease_lambdas, limits, out))
    out["oracle"] = None
    if data_root is not None and OracleScores.available(data_root):
        out["oracle"] = ranking_metrics(OracleScores(data_root), test, train, ks, users=users)
    else:
        _LOGGER.warning("no generator probabilities beside the data: the oracle row is skipped")
    return out


def _collaborative(train, test, ks, users, seed, knn_k, ease_lambdas, limits, done) -> dict:
    ease_max_items, knn_max_items = limits
    skip = ease_skip_reason(train.n_cols, ease_max_items)
    skip_knn = knn_skip_reason(train.n_cols, knn_max_items)
    for reason in (skip_knn, skip):
        if reason:
            _LOGGER.warning("%s", reason)
    if not (train.row_lengths()[_evaluated(test, users)] > 0).any():
        # Every judged user is cold: both models would return exactly the popularity scores.
        _LOGGER.info("no judged user has training positives: ItemKNN and EASE are MostPopular here")
        return {
            "itemknn": None if skip_knn else dict(done["mostpop"]),
            "ease": None if skip else dict(done["mostpop"]),
        }
    # One XᵀX for both models when it is affordable (EASE needs it anyway; ItemKNN's dense path too).
    g = gram(train) if not skip or train.n_cols <= DENSE_MAX_ITEMS else None
    res: dict[str, dict[str, float] | None] = {"itemknn": None, "ease": None}
    if not skip_knn:
        knn = ItemKNN.fit(train, knn_k, g)
        res["itemknn"] = {**ranking_metrics(knn, test, train, ks, users=users), "k": float(knn.k)}
    if not skip:
        ease = fit_ease(train, ease_lambdas, seed, g)
        res["ease"] = {**ranking_metrics(ease, test, train, ks, users=users), "lambda": ease.lam}
    return res


def skipped_notes(
    results: dict[str, dict[str, float] | None],
    n_items: int,
    ease_max_items: int = EASE_MAX_ITEMS,
    knn_max_items: int = KNN_MAX_ITEMS,
) -> list[str]:
    """One line per row of :func:`evaluate_baselines` that is None, saying why."""
    notes = []
    if "itemknn" in results and results["itemknn"] is None:
        notes.append(knn_skip_reason(n_items, knn_max_items) or "itemknn: skipped")
    if "ease" in results and results["ease"] is None:
        notes.append(ease_skip_reason(n_items, ease_max_items) or "ease: skipped")
    if results.get("oracle") is None:
        notes.append("oracle: skipped (no true_probabilities.npy or generator.json beside the data)")
    return notes
