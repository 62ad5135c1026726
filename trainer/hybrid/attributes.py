"""A ridge regression from an unseen user's attributes to items, folded into the hybrid: one dot product.

Users without an id (a new user known by a few attributes) are where the hybrid is weakest: its
attribute MLP is trained jointly with ids that outweigh it, and on MovieLens-100K's cold split it
barely beats the most-popular list. A closed-form model does better there: code each attribute as
one-hot (a text attribute's distinct values among training users, the most frequent MAX_VALUES with
at least MIN_USERS users; a number's quantile bins) plus a constant, and regress the users' training
positives on the codes: ``W = (CᵀC + λI)⁻¹ CᵀY``. The scores ``c_u W`` are a linear model of the
attributes, so they fold into the towers as k more columns (trainer/hybrid/model.py): the user tower
computes the codes in its graph (hybrid.AttributeCodes: a text value is matched against the known
values' vectors, a number against its bin edges) and multiplies them by a weight that is 0 for users
with an id, the item ID table holds W's columns. Export, the index and the server need nothing new.

Why: on MovieLens-100K, choosing λ and the weight on validation (out-of-user folds, below), the ridge
part lifted the cold split from 1.01x to about 1.05x the most-popular list (docs/models.md). The
weight is chosen on validation with the popularity blend (trainer/hybrid/blend.py); 0 is among the
choices, so a data set whose attributes say little is served the hybrid alone.

Validation never lets a user's own positives into the W that scores them: judged users are split
into FOLDS folds and each fold is scored by a W fitted on every other user.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from towerserve.server.core.csr import CSR
from towerserve.server.core.features import MINMAX, TEXT, FieldSpec
from towerserve.server.core.ranking_metrics import full_ranking_metrics

from .model import SAME_TEXT

_LOGGER = logging.getLogger(__name__)

MAX_VALUES = 32  # codes per text attribute: its most frequent values among training users
MIN_USERS = 3  # users a value needs for a code of its own (rarer ones share the constant's)
BINS = 8  # quantile bins per numeric attribute
LAMBDAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
FOLDS = 5


@dataclass(frozen=True)
class Coding:
    """How a user's tower input becomes attribute codes.

    Attributes:
        text: per text attribute, (first column in the input, width, the known values' vectors
            [n_values, width]).
        bins: per numeric attribute, (its column in the input, the inner edges of its bins, ascending).
    """

    text: tuple[tuple[int, int, np.ndarray], ...]
    bins: tuple[tuple[int, np.ndarray], ...]

    @property
    def width(self) -> int:
        """k: the codes' width, the constant's included."""
        return sum(len(v) for _, _, v in self.text) + sum(len(e) + 1 for _, e in self.bins) + 1

    def codes(self, U: np.ndarray) -> np.ndarray:
        """float32 [n, k] for tower inputs ``U``, exactly as the graph's hybrid.AttributeCodes does."""
        U = np.asarray(U, dtype=np.float32)
        parts = []
        for start, dim, values in self.text:
            x = U[:, start : start + dim]
            d2 = (
                (x * x).sum(axis=1, keepdims=True)
                - 2.0 * (x @ values.T)
                + (values * values).sum(axis=1)[None, :]
            )
            parts.append((d2 < SAME_TEXT).astype(np.float32))
        for col, edges in self.bins:
            ge = (U[:, col : col + 1] >= edges[None, :]).astype(np.float32)
            g = np.concatenate(
                [np.ones((len(U), 1), np.float32), ge, np.zeros((len(U), 1), np.float32)], axis=1
            )
            parts.append(g[:, :-1] - g[:, 1:])
        parts.append(np.ones((len(U), 1), np.float32))
        return np.concatenate(parts, axis=1)

    def shape(self) -> dict:
        """What hybrid.AttributeCodes needs to be built (its weights are set by :func:`install`)."""
        return {
            "text": [[int(s), int(d), len(v)] for s, d, v in self.text],
            "bins": [[int(c), len(e)] for c, e in self.bins],
        }


def coding(specs: Sequence[FieldSpec], U: np.ndarray, users: np.ndarray) -> Coding | None:
    """The coding of ``specs``' attributes from training ``users``' inputs (None: nothing to code).

    A text attribute's values are its distinct vectors among those users (the most frequent
    MAX_VALUES with at least MIN_USERS users); a numeric attribute's bins are its quantiles there.
    """
    text, bins, col = [], [], 0
    rows = np.asarray(U, dtype=np.float32)[np.asarray(users, dtype=np.int64)]
    for s in specs:
        if s.kind == TEXT:
            values, counts = np.unique(rows[:, col : col + s.dim], axis=0, return_counts=True)
            keep = np.argsort(-counts, kind="stable")[:MAX_VALUES]
            keep = keep[counts[keep] >= MIN_USERS]
            if len(keep) > 1:
                text.append((col, s.dim, values[keep].astype(np.float32)))
        elif s.kind == MINMAX:
            edges = np.unique(np.quantile(rows[:, col], np.linspace(0, 1, BINS + 1)[1:-1]).astype(np.float32))
            if len(edges):
                bins.append((col, edges))
        col += s.dim
    return Coding(tuple(text), tuple(bins)) if text or bins else None


# Users whose positives are densified at once when summing the normal equations: bounded memory.
GRAM_BLOCK = 4096


def _normal_equations(codes: np.ndarray, train: CSR, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(CᵀC, CᵀY) over ``users``' codes and positives, summed a block of users at a time."""
    users = np.asarray(users, dtype=np.int64)
    k = codes.shape[1]
    ctc, cty = np.zeros((k, k)), np.zeros((k, train.n_cols))
    for start in range(0, len(users), GRAM_BLOCK):
        block = users[start : start + GRAM_BLOCK]
        c = codes[block].astype(np.float64)
        ctc += c.T @ c
        cty += c.T @ train.dense_rows(block)
    return ctc, cty


def _solve(ctc: np.ndarray, cty: np.ndarray, lam: float) -> np.ndarray:
    """float32 W = (CᵀC + λI)⁻¹ CᵀY; the constant's column (the last) is not penalised."""
    penalty = np.full(ctc.shape[0], float(lam))
    penalty[-1] = 0.0
    return np.linalg.solve(ctc + np.diag(penalty), cty).astype(np.float32)


def fit_ridge(codes: np.ndarray, train: CSR, users: np.ndarray, lam: float) -> np.ndarray:
    """float32 [k, n_items]: W of the ridge from ``users``' codes (rows of ``codes``) to their
    positives in ``train``. The constant's column is not penalised."""
    return _solve(*_normal_equations(codes, train, users), lam)


def choose_lambda(
    codes: np.ndarray, fit: CSR, val: CSR, judged: np.ndarray, seed: int
) -> tuple[float, np.ndarray]:
    """λ by the ridge's own validation NDCG@10 (ties: the smaller λ), and its scores for ``judged``.

    Out-of-user: the judged users (all with positives in ``fit``) are split into FOLDS folds and each
    fold is scored by a W fitted on every other user with positives. The normal equations of all of
    them are summed once, each fold's own once, and each fold's W is the difference solved for every
    λ: one pass over the positives, not one per fold and λ.
    """
    with_positives = np.flatnonzero(fit.row_lengths() > 0)
    ctc, cty = _normal_equations(codes, fit, with_positives)
    fold = np.random.default_rng([seed, 61]).permutation(len(judged)) % FOLDS
    parts = [_normal_equations(codes, fit, judged[fold == f]) for f in range(FOLDS)]
    row_of = {int(u): r for r, u in enumerate(judged)}
    table, best_scores = {}, None
    for lam in LAMBDAS:
        s = np.zeros((len(judged), fit.n_cols), dtype=np.float32)
        for f, (fctc, fcty) in enumerate(parts):
            mine = fold == f
            if mine.any():
                s[mine] = codes[judged[mine]] @ _solve(ctc - fctc, cty - fcty, lam)
        fn = lambda us, s=s: s[[row_of[int(u)] for u in us]]  # noqa: E731
        table[lam] = float(full_ranking_metrics(fn, val, fit, ks=(10,), users=judged)["ndcg@10"])
        if best_scores is None or table[lam] > max(v for k, v in table.items() if k != lam):
            best_scores = s  # keep one λ's scores at a time, not all of them
    best = max(table, key=lambda lam: (table[lam], -lam))
    _LOGGER.info("attribute ridge: λ by validation ndcg@10 %s -> %g", table, best)
    return best, best_scores


def install(model, c: Coding, w: np.ndarray, weight: float, ease_rank: int) -> None:
    """Sets the user tower's coding (values, edges), its no-id weight, and W's columns in the item ID
    table (after the EASE part, before the bias and popularity columns)."""
    user = model.get_layer("user_tower")
    d = int(user.get_layer("user_id_embedding").dim)
    codes = user.get_layer("attribute_codes")
    for var, (_, _, values) in zip(codes.values, c.text):
        var.assign(values)
    for var, (_, edges) in zip(codes.edges, c.bins):
        var.assign(edges)
    user.get_layer("attribute_weight").weight.assign(np.array(weight, dtype=np.float32))
    ids = model.get_layer("item_id_embedding")
    table = np.array(ids.embeddings.numpy())
    lo = d + ease_rank
    table[0, lo : lo + c.width] = 0.0
    table[1:, lo : lo + c.width] = w.T
    ids.embeddings.assign(table)
