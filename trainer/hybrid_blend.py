"""Popularity kept at serving, per segment, with the weight chosen on validation.

A softmax-trained two-tower ranks by ``u · v``; the test sets of real data are popularity-biased, and
a segment whose personal signal is weak (an unseen user known only by a few attributes) can rank
below the plain most-popular list. The hybrid's vectors carry one more column for that
(trainer/hybrid.py): each item's popularity ``p_i = log(1 + n_i) / log(1 + max n)`` over the training
positives (0 for an item nobody trained on: new items, and the item tower's value), and each user
the weight ``beta`` of their segment. The served score is ``u · v + b_i + beta · p_i``: still one dot
product, so export, the index and the server need nothing new.

Each segment's weight is ``multiplier x spread``: ``spread`` is the mean, over users, of the
standard deviation of their scores over the catalogue, so a multiplier means the same on any data
set and the same multiplier carries from the model chosen on validation to the refitted one. The
largest multiplier ranks by popularity (ties broken by the model): a segment where validation finds
the model worse than the popularity list is served that list, never less.

Segments (hybrid.PopularityWeight): ``known`` users (an id), ``history`` (no id, a request history:
judged as the validation users with their fit-part histories and no id), ``attributes`` (neither:
the validation users with neither). Targets are the validation positives, fit positives masked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from towerserve.server.csr import CSR
from towerserve.server.metrics import full_ranking_metrics

from . import hybrid, hybrid_fit

_LOGGER = logging.getLogger(__name__)

SEGMENTS = ("known", "history", "attributes")
# Of the segment's spread. 1,000 spreads put popularity first whatever the model says.
MULTIPLIERS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 1000.0)
SPREAD_USERS = 2_000  # users whose score spread is averaged: enough for a stable mean, bounded


@dataclass(frozen=True)
class Blend:
    """Each segment's popularity multiplier, and the validation NDCG@10 of every one tried.

    Attributes:
        multipliers: segment -> the chosen multiplier of its spread.
        validation: segment -> {multiplier: validation NDCG@10} (empty when not chosen on validation).
        weights: segment -> beta as applied to a model (``apply`` fills it).
    """

    multipliers: dict[str, float]
    validation: dict[str, dict[float, float]]
    weights: dict[str, float] | None = None

    def to_json(self) -> dict:
        return {
            "multipliers": dict(self.multipliers),
            "weights": dict(self.weights or {}),
            "validation_ndcg@10": {s: {str(m): v for m, v in t.items()} for s, t in self.validation.items()},
        }


NONE = Blend({s: 0.0 for s in SEGMENTS}, {})


def popularity(train: CSR) -> np.ndarray:
    """float32 [n_items]: ``log(1 + n_i) / log(1 + max n)``, 0 for items without training positives."""
    counts = np.bincount(train.indices, minlength=train.n_cols).astype(np.float64)
    top = np.log1p(max(1.0, counts.max(initial=0.0)))
    return (np.log1p(counts) / top).astype(np.float32)


def set_popularity(model, train: CSR) -> None:
    """Writes ``train``'s item popularity into the popularity column of the item ID table (the content
    path's column is 0: an item without positives)."""
    table = model.get_layer("item_id_embedding")
    values = np.array(table.embeddings.numpy())
    values[0, -1] = 0.0
    values[1:, -1] = popularity(train)
    table.embeddings.assign(values)


def set_weights(model, weights: dict[str, float]) -> None:
    layer = model.get_layer("user_tower").get_layer("popularity_weight")
    layer.weights_by_segment.assign(np.array([weights[s] for s in SEGMENTS], dtype=np.float32))


def _segment_users(model, U: np.ndarray, train: CSR, segment: str, users: np.ndarray) -> np.ndarray:
    """``users``' vectors as the segment sees them (popularity weights as the model has them)."""
    n = len(users)
    if segment == "known":
        idx = hybrid.known_index(U.shape[0], hybrid_fit.known_users(train))[users]
        hist = [train.row(int(u)) for u in users]
    elif segment == "history":
        idx, hist = np.zeros(n, np.int32), [train.row(int(u)) for u in users]
    else:
        idx, hist = np.zeros(n, np.int32), [np.zeros(0, np.int64)] * n
    return hybrid.user_vectors(model, U[users], idx, hist)


def _spread(uvec: np.ndarray, ivec: np.ndarray) -> float:
    scores = uvec[:, :-1] @ ivec[:, :-1].T  # the popularity column left out
    return float(np.mean(np.std(scores, axis=1))) or 1.0


def _sample(users: np.ndarray, seed: int) -> np.ndarray:
    if len(users) <= SPREAD_USERS:
        return users
    return np.sort(np.random.default_rng([seed, 41]).choice(users, SPREAD_USERS, replace=False))


def choose(model, U: np.ndarray, I: np.ndarray, fit: CSR, val: CSR, seed: int) -> Blend:
    """Each segment's multiplier by validation NDCG@10 (ties: the smaller one), for a model trained on
    ``fit``; leaves the model's weights at 0."""
    set_popularity(model, fit)
    set_weights(model, {s: 0.0 for s in SEGMENTS})
    judged = hybrid_fit.judged_users(fit, val, seed)
    ivec = hybrid.item_vectors(model, I, hybrid.known_index(I.shape[0], hybrid_fit.known_items(fit)))
    pop = ivec[:, -1]
    row_of = {int(u): r for r, u in enumerate(judged)}
    chosen, table = {}, {}
    for segment in SEGMENTS:
        uvec = _segment_users(model, U, fit, segment, judged)
        spread = _spread(uvec[:SPREAD_USERS], ivec)
        base = uvec @ ivec.T
        table[segment] = {}
        for m in MULTIPLIERS:
            scores = base + (m * spread) * pop[None, :]
            fn = lambda us, s=scores, r=row_of: s[[r[int(u)] for u in us]]  # noqa: E731
            table[segment][m] = float(full_ranking_metrics(fn, val, fit, ks=(10,), users=judged)["ndcg@10"])
        chosen[segment] = max(table[segment], key=lambda m, t=table[segment]: (t[m], -m))
        _LOGGER.info(
            "popularity blend, %s users: multiplier %g (validation ndcg@10 %s)",
            segment,
            chosen[segment],
            ", ".join(f"{m:g}: {v:.4f}" for m, v in table[segment].items()),
        )
    return Blend(chosen, table)


def apply(model, U: np.ndarray, I: np.ndarray, train: CSR, blend: Blend, seed: int) -> Blend:
    """Sets ``train``'s popularity and each segment's weight (multiplier x this model's spread over
    ``train``'s users) in ``model``; returns ``blend`` with the weights."""
    set_popularity(model, train)
    users = _sample(np.flatnonzero(hybrid_fit.known_users(train)), seed)
    ivec = hybrid.item_vectors(model, I, hybrid.known_index(I.shape[0], hybrid_fit.known_items(train)))
    weights = {}
    for segment in SEGMENTS:
        spread = _spread(_segment_users(model, U, train, segment, users), ivec) if len(users) else 1.0
        weights[segment] = float(blend.multipliers[segment] * spread)
    set_weights(model, weights)
    _LOGGER.info("popularity weights: %s", {s: round(w, 4) for s, w in weights.items()})
    return Blend(blend.multipliers, blend.validation, weights)
