"""The hybrid's part of `towerserve train`: recipe choice and refit per split, its metrics and manifest entries."""

from __future__ import annotations

import logging

import numpy as np

from .. import splits
from . import fit as hybrid_fit
from . import scoring
from . import search as hybrid_search
from .config import MAX_HISTORY
from .rows import FeatureRows, as_rows

_LOGGER = logging.getLogger(__name__)


def _test_ndcg(model, U: FeatureRows, I: FeatureRows, split: splits.Split, users: np.ndarray | None) -> float:
    """Test NDCG@10 of ``users`` (None: every user with a test positive): their vectors and the
    catalogue's, ranked in blocks (trainer/hybrid/scoring.py)."""
    judged = np.flatnonzero(split.test.row_lengths() > 0) if users is None else np.unique(users)
    ivec = hybrid_fit.catalogue_vectors(model, I, split.train)
    uvec = hybrid_fit.users_vectors(model, U, split.train, judged)
    return scoring.ndcg(lambda pos, lo, hi: [uvec[pos] @ ivec[lo:hi].T], judged, split.train, split.test)[0]


def fit_hybrid(
    U: np.ndarray | FeatureRows,
    I: np.ndarray | FeatureRows,
    split: splits.Split,
    cfg,
    choice: hybrid_search.Choice | None,
    desc: str,
    uspec=None,
    users: np.ndarray | None = None,
):
    """Chooses the recipe on validation (unless ``choice`` is given: the cold split reuses the holdout's,
    since its validation users are warm and could not judge the cold path) and refits it on every
    training positive. ``cfg`` is the TrainConfig (hybrid, hybrid_search, seed); ``uspec`` the user
    features' field specs (for the attribute ridge part, trainer/hybrid/attributes.py); ``U``/``I``
    the feature matrices or, at scale, FeatureRows (a batch's rows built when needed); ``users`` the
    run's evaluation sample, which the candidates' test NDCG@10 is measured on (None: every user).

    Returns:
        (model, history, seconds, user vectors, item vectors, the choice, extra) where extra holds
        "metrics" (the chosen recipe and every candidate, for metrics.json) and "entry" (what export
        needs to feed the user tower ids and histories, for the training manifest). Each candidate's
        test NDCG@10 is recorded for the report's loss comparison only: the choice was made before, on
        validation, and never sees it.
    """
    searched = choice is None
    U, I = as_rows(U), as_rows(I)
    final, choice, secs = hybrid_search.train_split(
        U,
        I,
        split.train,
        (split.negatives.users, split.negatives.items),
        cfg.hybrid,
        cfg.seed,
        choice,
        cfg.hybrid_search or hybrid_search.SEARCH,
        desc,
        uspec,
    )
    uvec, ivec = hybrid_fit.all_vectors(final.model, U, I, split.train)
    record = choice.to_json()
    history = dict(final.history)
    if searched:
        for j, (cand, row) in enumerate(zip(choice.candidates, record["candidates"])):
            row["test_ndcg@10"] = _test_ndcg(cand.model, U, I, split, users)
            for key, values in cand.history.items():
                history[f"search{j + 1}_{key}"] = values
    else:
        record["candidates"] = []  # chosen on another split; its candidates are reported there
        record["reused_from"] = "holdout"
    entry = {
        "ids_and_history": True,
        "n_users": U.n,
        "n_items": I.n,
        "history_split": split.name,
        "history_pooling": choice.config.pooling,
        "max_history": MAX_HISTORY,
        "hybrid": record["chosen"],
    }
    return final.model, history, secs, uvec, ivec, choice, {"metrics": {"recipe": record}, "entry": entry}
