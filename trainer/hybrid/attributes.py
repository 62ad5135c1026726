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

Memory: the codes are computed a block of users at a time from their feature rows (never users x
features), CᵀY is summed from the sparse positives (never a users x items block), W is solved a block
of items at a time, and the folds' scores are ranked in blocks (trainer/hybrid/scoring.py), one
fold's W held at a time. What grows with the catalogue is k x items (CᵀY, one W): the served item
table holds W's k columns anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from towerserve.server.core.csr import CSR
from towerserve.server.core.features import MINMAX, TEXT, FieldSpec

from . import scoring
from .model import SAME_TEXT
from .rows import FeatureRows, as_rows

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


def coding(specs: Sequence[FieldSpec], U: np.ndarray | FeatureRows, users: np.ndarray) -> Coding | None:
    """The coding of ``specs``' attributes from training ``users``' inputs (None: nothing to code).

    A text attribute's values are its distinct vectors among those users (the most frequent
    MAX_VALUES with at least MIN_USERS users); a numeric attribute's bins are its quantiles there.
    ``U``: the users' feature matrix or FeatureRows (counted by table row, never gathered per user).
    """
    text, bins, col = [], [], 0
    U, users = as_rows(U), np.asarray(users, dtype=np.int64)
    for s in specs:
        if s.kind == TEXT:
            values, counts = U.distinct_values(col, s.dim, users)
            keep = np.argsort(-counts, kind="stable")[:MAX_VALUES]
            keep = keep[counts[keep] >= MIN_USERS]
            if len(keep) > 1:
                text.append((col, s.dim, values[keep].astype(np.float32)))
        elif s.kind == MINMAX:
            quantiles = np.quantile(U.column(col, users), np.linspace(0, 1, BINS + 1)[1:-1])
            edges = np.unique(quantiles.astype(np.float32))
            if len(edges):
                bins.append((col, edges))
        col += s.dim
    return Coding(tuple(text), tuple(bins)) if text or bins else None


# Users whose codes are built at once when summing the normal equations: bounded memory.
GRAM_BLOCK = 4096
# Items whose columns of W are solved at once (k x this many float64 right-hand sides).
SOLVE_BLOCK = 65_536

# A users' codes: a [n_users, k] matrix, or ids -> their codes [len(ids), k] (built from feature rows).
Codes = np.ndarray | Callable[[np.ndarray], np.ndarray]


def codes_of(codes: Codes) -> Callable[[np.ndarray], np.ndarray]:
    """``codes`` as a function of user ids."""
    return codes if callable(codes) else (lambda ids, c=np.asarray(codes): c[ids])


def codes_in_blocks(codes: Codes, users: np.ndarray) -> np.ndarray:
    """float32 [len(users), k]: ``users``' codes, built GRAM_BLOCK users at a time."""
    users, of = np.asarray(users, dtype=np.int64), codes_of(codes)
    parts = [of(users[s : s + GRAM_BLOCK]) for s in range(0, len(users), GRAM_BLOCK)]
    return np.asarray(np.concatenate(parts) if parts else of(users[:0]), dtype=np.float32)


def _normal_equations(codes: Codes, train: CSR, users: np.ndarray, sparse: bool = False):
    """(CᵀC, CᵀY) over ``users``' codes and positives, summed a block of users at a time: CᵀC dense
    float64 [k, k], CᵀY float64 [k, n_items], dense, or a scipy sparse matrix (``sparse``: a fold's
    few users touch few items). The positives stay sparse: CᵀY = (Cᵀ)(Y), a sparse product."""
    users, of = np.asarray(users, dtype=np.int64), codes_of(codes)
    k = of(users[:0]).shape[1]
    ctc = np.zeros((k, k))
    cty = sp.csr_matrix((k, train.n_cols)) if sparse else np.zeros((k, train.n_cols))
    for start in range(0, len(users), GRAM_BLOCK):
        block = users[start : start + GRAM_BLOCK]
        c = of(block).astype(np.float64)
        ctc += c.T @ c
        lengths = train.indptr[block + 1] - train.indptr[block]
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        y = sp.csr_matrix(
            (np.ones(indptr[-1]), train.gather(block), indptr), shape=(len(block), train.n_cols)
        )
        part = sp.csr_matrix(c.T) @ y
        if sparse:
            cty = cty + part
        else:
            part = part.tocoo()
            cty[part.row, part.col] += part.data  # a product's entries are distinct cells
    return ctc, cty


def _solve(ctc: np.ndarray, cty, lam: float, minus=None) -> np.ndarray:
    """float32 W = (CᵀC + λI)⁻¹ (CᵀY - ``minus``), SOLVE_BLOCK items at a time (``minus``: a fold's
    sparse CᵀY, or None); the constant's column (the last) is not penalised."""
    penalty = np.full(ctc.shape[0], float(lam))
    penalty[-1] = 0.0
    a = ctc + np.diag(penalty)
    n = cty.shape[1]
    w = np.empty((ctc.shape[0], n), dtype=np.float32)
    minus = None if minus is None else sp.csc_matrix(minus)
    for lo in range(0, n, SOLVE_BLOCK):
        hi = min(n, lo + SOLVE_BLOCK)
        rhs = cty[:, lo:hi] if minus is None else cty[:, lo:hi] - minus[:, lo:hi].toarray()
        w[:, lo:hi] = np.linalg.solve(a, rhs)
    return w


def fit_ridge(codes: Codes, train: CSR, users: np.ndarray, lam: float) -> np.ndarray:
    """float32 [k, n_items]: W of the ridge from ``users``' codes (``codes``: rows, or a function of
    user ids) to their positives in ``train``. The constant's column is not penalised."""
    return _solve(*_normal_equations(codes, train, users), lam)


@dataclass
class OutOfFold:
    """The ridge's scores of the judged users, each by a W fitted without the user's fold, built a
    block at a time for trainer/hybrid/scoring.py (one fold's W held at a time: its ``groups``).

    Attributes:
        codes: float32 [len(judged), k], the judged users' codes.
        fold: each judged user's fold.
        ctc, cty: the normal equations of every user with positives.
        parts: each fold's own (CᵀC, sparse CᵀY).
        lam: λ.
    """

    codes: np.ndarray
    fold: np.ndarray
    ctc: np.ndarray
    cty: np.ndarray
    parts: list
    lam: float
    _held: tuple = field(default=(None, None), repr=False)

    @property
    def groups(self) -> list[np.ndarray]:
        return [g for g in (np.flatnonzero(self.fold == f) for f in range(FOLDS)) if len(g)]

    def _weights(self, f: int) -> np.ndarray:
        if self._held[0] != f:
            self._held = (None, None)  # the previous fold's W goes before the next one is built
            fctc, fcty = self.parts[f]
            self._held = (f, _solve(self.ctc - fctc, self.cty, self.lam, fcty))
        return self._held[1]

    def rows(self, pos: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """float32 [len(pos), hi - lo]: scores of judged users ``pos`` (one fold's) on items lo..hi-1."""
        f = int(self.fold[pos[0]])
        if np.any(self.fold[pos] != f):
            raise ValueError("a block of out-of-fold scores must hold one fold's users")
        return self.codes[pos] @ self._weights(f)[:, lo:hi]

    def blocks(self, pos: np.ndarray, lo: int, hi: int) -> list[np.ndarray]:
        return [self.rows(pos, lo, hi)]


def choose_lambda(codes: Codes, fit: CSR, val: CSR, judged: np.ndarray, seed: int) -> tuple[float, OutOfFold]:
    """λ by the ridge's own validation NDCG@10 (ties: the smaller λ), and its out-of-fold scores for
    ``judged`` (sorted) at that λ.

    Out-of-user: the judged users (all with positives in ``fit``) are split into FOLDS folds and each
    fold is scored by a W fitted on every other user with positives. The normal equations of all of
    them are summed once, each fold's own once, and each fold's W is the difference solved for every
    λ: one pass over the positives, not one per fold and λ.
    """
    with_positives = np.flatnonzero(fit.row_lengths() > 0)
    ctc, cty = _normal_equations(codes, fit, with_positives)
    fold = np.random.default_rng([seed, 61]).permutation(len(judged)) % FOLDS
    parts = [_normal_equations(codes, fit, judged[fold == f], sparse=True) for f in range(FOLDS)]
    judged_codes = codes_in_blocks(codes, judged)
    table = {}
    for lam in LAMBDAS:
        oof = OutOfFold(judged_codes, fold, ctc, cty, parts, lam)
        table[lam] = float(scoring.ndcg(oof.blocks, judged, fit, val, groups=oof.groups)[0])
    best = max(table, key=lambda lam: (table[lam], -lam))
    _LOGGER.info("attribute ridge: λ by validation ndcg@10 %s -> %g", table, best)
    return best, OutOfFold(judged_codes, fold, ctc, cty, parts, best)


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
