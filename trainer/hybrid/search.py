"""Chooses the hybrid's recipe on a validation split of the TRAINING positives, then refits on all of them.

The candidates (SEARCH) differ in the loss, its negatives and the history pooling; each trains on 80 %
of every user's training positives with early stopping on NDCG@10 over the other 20 %, and the best
one is refitted on every training positive for its best epoch count, with the popularity blend and the
EASE part chosen for it on the same split (hybrid_blend, hybrid_ease). The test split is never read here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from towerserve.server.core.csr import CSR

from .. import collab
from ..collab import validation_split
from . import attributes as hybrid_attributes
from . import blend as hybrid_blend
from . import ease as hybrid_ease
from . import fit as hybrid_fit
from .config import HybridConfig
from .rows import FeatureRows

_LOGGER = logging.getLogger(__name__)

# Of each user's training positives: the test split holds out 20 % of the positives, and a validation
# split that looks like it (as many held out per user, relative to what is left) ranks recipes and
# epochs as the test split would.
VALIDATION_SHARE = 0.2
# Full softmax (over the catalogue where it fits, HybridConfig.negatives) with mean pooling, the
# in-batch softmax at its own temperature, BCE, and attention pooling; the rest is the base recipe
# (HybridConfig's defaults). No loss and no pooling won on every data set measured (docs/models.md,
# "Results"), so validation chooses per data set. Small on purpose: every candidate is a full fit.
SEARCH: tuple[dict, ...] = (
    {"loss": "softmax"},
    {"loss": "softmax", "negatives": "in_batch", "temperature": 0.5},
    {"loss": "bce"},
    {"loss": "softmax", "pooling": "attention"},
)


@dataclass(frozen=True)
class Candidate:
    """One recipe tried on the validation split."""

    config: HybridConfig
    val_ndcg: float
    epochs: int
    seconds: float
    history: dict
    model: object = None  # trained on the fit part; kept for the report's comparison, never saved

    def to_json(self) -> dict:
        return {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()},
            "val_ndcg@10": self.val_ndcg,
            "epochs": self.epochs,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Choice:
    """The chosen recipe, its epoch count, its popularity blend and every candidate (for the report)."""

    config: HybridConfig
    epochs: int
    candidates: tuple[Candidate, ...]
    share: float = VALIDATION_SHARE
    blend: hybrid_blend.Blend = hybrid_blend.NONE

    def to_json(self) -> dict:
        best = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}
        return {
            "chosen": {**best, "epochs": self.epochs},
            "validation_share": self.share,
            "popularity_blend": self.blend.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
        }


def choose(
    U: np.ndarray | FeatureRows,
    I: np.ndarray | FeatureRows,
    train: CSR,
    negatives: tuple[np.ndarray, np.ndarray],
    base: HybridConfig,
    seed: int,
    search: tuple[dict, ...] = SEARCH,
    share: float = VALIDATION_SHARE,
    desc: str = "hybrid",
    uspec=None,
) -> Choice:
    """Fits every candidate on the fit part and keeps the best validation NDCG@10 (ties: the first);
    ``uspec`` (the user features' field specs) lets the blend weigh an attribute ridge part."""
    if not search:
        raise ValueError("search must hold at least one candidate recipe (got none)")
    fit_part, val = validation_split(train, share, seed)
    # Sampled negatives are non-positives of every positive, so they serve the fit part unchanged.
    candidates = []
    for j, overrides in enumerate(search):
        cfg = replace(base, **overrides)
        f = hybrid_fit.fit(
            U,
            I,
            fit_part,
            cfg,
            seed,
            negatives=negatives,
            val=val,
            desc=f"{desc} search {j + 1}/{len(search)}",
        )
        candidates.append(Candidate(cfg, float(f.val_ndcg), f.epochs, f.seconds, f.history, f.model))
        _LOGGER.info("%s: %s -> validation ndcg@10 %.4f at epoch %d", desc, overrides, f.val_ndcg, f.epochs)
    best = max(range(len(candidates)), key=lambda j: (candidates[j].val_ndcg, -j))
    config = candidates[best].config
    skipped, ease = hybrid_ease.skip_reason(train.n_cols, config.ease_rank), None
    if skipped is None:
        g = collab.gram(fit_part)  # one XᵀX for the λ search and the factors
        lam, _ = hybrid_ease.choose_lambda(fit_part, val, hybrid_fit.judged_users(fit_part, val, seed), g)
        ease = hybrid_ease.factors(fit_part, lam, config.ease_rank, g)
    else:
        _LOGGER.info("%s: no EASE part: %s", desc, skipped)
    coding = (
        None
        if uspec is None
        else hybrid_attributes.coding(uspec, U, np.flatnonzero(fit_part.row_lengths() > 0))
    )
    blend = hybrid_blend.choose(candidates[best].model, U, I, fit_part, val, seed, ease, skipped, coding)
    return Choice(config, max(1, candidates[best].epochs), tuple(candidates), share, blend)


def train_split(
    U: np.ndarray | FeatureRows,
    I: np.ndarray | FeatureRows,
    train: CSR,
    negatives: tuple[np.ndarray, np.ndarray],
    base: HybridConfig,
    seed: int,
    choice: Choice | None = None,
    search: tuple[dict, ...] = SEARCH,
    desc: str = "hybrid",
    uspec=None,
) -> tuple[hybrid_fit.Fitted, Choice, float]:
    """Chooses a recipe (unless ``choice`` is given: the cold split reuses the holdout's) and refits it
    on every training positive.

    Returns:
        (the refitted model, the choice, seconds spent in all, search included).
    """
    t0 = time.perf_counter()
    if choice is None:
        choice = choose(U, I, train, negatives, base, seed, search, desc=desc, uspec=uspec)
    final = hybrid_fit.fit(
        U, I, train, choice.config, seed, negatives=negatives, epochs=choice.epochs, desc=f"{desc} refit"
    )
    coding = (
        None if uspec is None else hybrid_attributes.coding(uspec, U, np.flatnonzero(train.row_lengths() > 0))
    )
    model, applied = hybrid_blend.apply(final.model, U, I, train, choice.blend, seed, choice.config, coding)
    return replace(final, model=model), replace(choice, blend=applied), time.perf_counter() - t0
