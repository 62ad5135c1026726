"""EASE's item-item weights folded into the hybrid's towers: still one dot product at serving.

EASE (trainer/collab.py) scores ``x_u · B``: a sum of the rows of B over the user's history. Its
truncated SVD ``B ≈ (U_r √S_r)(V_r √S_r)ᵀ = P Qᵀ`` makes that a two-tower: the user part pools the
history's rows of P, the item part is the item's row of Q. The served hybrid carries both as r more
columns (trainer/hybrid/model.py, :func:`hybrid.with_ease`): the user tower mean-pools ``w · P`` over the
history, the item ID table holds Q, so ``u · v = hybrid(u, i) + w · mean_{j ∈ h} (P Qᵀ)_{j i}`` and
export, the index and the server need nothing new.

Why: on MovieLens-100K's validation split (20 % of each user's training positives) the hybrid alone
and EASE score about the same NDCG@10, and their sum, EASE at a quarter of the hybrid's score
spread, scores 5-7 % above either (docs/models.md, "Results"): the learnt towers and the
closed-form item-item model make different mistakes. The weight w is chosen on validation with the
popularity blend (trainer/hybrid/blend.py); w = 0 is among the choices, so a data set where EASE
does not help is served the hybrid alone.

Limits: the Gram matrix is inverted (O(n³), collab.EASE_MAX_ITEMS), so above that catalogue size the
hybrid is served without the EASE part; the rank is at most HybridConfig.ease_rank (at 1,682 items
rank 512 scored within 0.0005 of the exact B on validation). Items added after training (UpsertItems) have no
row of Q: 0, as for every item without training positives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from towerserve.server.core.csr import CSR
from towerserve.server.core.ranking_metrics import full_ranking_metrics

from .. import collab
from . import fit as hybrid_fit
from . import model as hybrid

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Factors:
    """EASE's B ≈ P Qᵀ for one training set.

    Attributes:
        lam: EASE's λ.
        history: float32 [n_items, r]: P, the rows a user's history pools.
        items: float32 [n_items, r]: Q, the item part.
    """

    lam: float
    history: np.ndarray
    items: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.history.shape[1])

    def user_part(self, train: CSR, users: np.ndarray) -> np.ndarray:
        """float32 [len(users), r]: the mean of each user's training rows of P (0 without any)."""
        # Dense users x items rows: EASE exists only up to collab.EASE_MAX_ITEMS items (5,000).
        x = train.dense_rows(np.asarray(users, dtype=np.int64)).astype(np.float32)
        return (x @ self.history) / np.maximum(x.sum(axis=1, keepdims=True), 1.0)


def skip_reason(n_items: int, rank: int) -> str | None:
    """Why the served hybrid has no EASE part, or None when it has one."""
    if rank <= 0:
        return "the recipe's ease_rank is 0"
    return collab.ease_skip_reason(n_items)


def choose_lambda(
    fit: CSR, val: CSR, users: np.ndarray, g: np.ndarray | None = None
) -> tuple[float, dict[float, float]]:
    """EASE's λ by NDCG@10 on the hybrid's own validation split (ties: the smaller λ); ``g``: fit's XᵀX
    when the caller has it."""
    g = collab.gram(fit) if g is None else g
    scores = {
        lam: float(
            full_ranking_metrics(collab.EASE.fit(fit, lam, g), val, fit, ks=(10,), users=users)["ndcg@10"]
        )
        for lam in sorted(collab.EASE_LAMBDAS)
    }
    best = max(scores, key=lambda lam: (scores[lam], -lam))
    _LOGGER.info("hybrid's EASE part: λ by validation ndcg@10 %s -> %g", scores, best)
    return best, scores


def factors(train: CSR, lam: float, rank: int, g: np.ndarray | None = None) -> Factors:
    """P and Q of rank ``min(rank, n_items)`` from EASE fitted on ``train`` (``g``: its XᵀX, if known)."""
    b = collab.ease_weights(collab.gram(train) if g is None else g, lam)
    u, s, vt = np.linalg.svd(b, full_matrices=False)
    r = min(int(rank), len(s))
    root = np.sqrt(s[:r])
    return Factors(float(lam), (u[:, :r] * root).astype(np.float32), (vt[:r].T * root).astype(np.float32))


def install(model, f: Factors, weight: float, train: CSR) -> None:
    """Writes ``weight · P`` into the user tower's EASE history table and Q into the item ID table's
    EASE columns, for items with training positives (the others keep 0: no EASE row)."""
    d = int(model.get_layer("user_tower").get_layer("user_id_embedding").dim)
    r = hybrid.ease_rank(model)
    if r != f.rank:
        raise ValueError(f"the model's EASE part is {r} wide, the factors {f.rank}")
    table = model.get_layer("user_tower").get_layer("ease_history")
    rows = np.zeros((f.history.shape[0] + 1, r), dtype=np.float32)
    rows[1:] = weight * f.history
    table.embeddings.assign(rows)
    ids = model.get_layer("item_id_embedding")
    values = np.array(ids.embeddings.numpy())
    known = hybrid_fit.known_items(train)
    values[:, d : d + r] = 0.0
    values[1:][known, d : d + r] = f.items[known]
    ids.embeddings.assign(values)
