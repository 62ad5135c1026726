"""The hybrid's part of `towerserve train`: recipe choice and refit per split, its metrics and manifest entries."""

from __future__ import annotations

import logging

import numpy as np

from towerserve.server.core.ranking_metrics import full_ranking_metrics

from .. import splits
from . import fit as hybrid_fit
from . import search as hybrid_search
from .config import MAX_HISTORY

_LOGGER = logging.getLogger(__name__)


def _test_ndcg(model, U: np.ndarray, I: np.ndarray, split: splits.Split) -> float:
    uvec, ivec = hybrid_fit.all_vectors(model, U, I, split.train)
    return float(full_ranking_metrics(lambda u: uvec[u] @ ivec.T, split.test, split.train, (10,))["ndcg@10"])


def fit_hybrid(
    U: np.ndarray,
    I: np.ndarray,
    split: splits.Split,
    cfg,
    choice: hybrid_search.Choice | None,
    desc: str,
    uspec=None,
):
    """Chooses the recipe on validation (unless ``choice`` is given: the cold split reuses the holdout's,
    since its validation users are warm and could not judge the cold path) and refits it on every
    training positive. ``cfg`` is the TrainConfig (hybrid, hybrid_search, seed); ``uspec`` the user
    features' field specs (for the attribute ridge part, trainer/hybrid/attributes.py).

    Returns:
        (model, history, seconds, user vectors, item vectors, the choice, extra) where extra holds
        "metrics" (the chosen recipe and every candidate, for metrics.json) and "entry" (what export
        needs to feed the user tower ids and histories, for the training manifest). Each candidate's
        test NDCG@10 is recorded for the report's loss comparison only: the choice was made before, on
        validation, and never sees it.
    """
    searched = choice is None
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
            row["test_ndcg@10"] = _test_ndcg(cand.model, U, I, split)
            for key, values in cand.history.items():
                history[f"search{j + 1}_{key}"] = values
    else:
        record["candidates"] = []  # chosen on another split; its candidates are reported there
        record["reused_from"] = "holdout"
    entry = {
        "ids_and_history": True,
        "n_users": int(U.shape[0]),
        "n_items": int(I.shape[0]),
        "history_split": split.name,
        "history_pooling": choice.config.pooling,
        "max_history": MAX_HISTORY,
        "hybrid": record["chosen"],
    }
    return final.model, history, secs, uvec, ivec, choice, {"metrics": {"recipe": record}, "entry": entry}
