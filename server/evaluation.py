"""Evaluate: the served model's metrics on a recorded split or on inline held-out interactions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .csr import CSR
from .errors import InvalidArgument, NotFound
from .metrics import DEFAULT_KS, full_ranking_metrics, notebook_metric
from .numerics import sigmoid
from .validation import check_id, show, validate_evaluate

if TYPE_CHECKING:
    from .engine import Engine


def evaluate(
    engine: Engine,
    split: str = "holdout",
    ks: Sequence[int] = DEFAULT_KS,
    protocol: str = "full",
    inline: Sequence[tuple[str, str]] | None = None,
    check: Callable[[], None] | None = None,
) -> tuple[dict[str, float], int]:
    """Metrics of the served model (the cold split uses the model trained without those users/items).

    Returns:
        (metrics, users evaluated).
    """
    ks = list(ks) or list(DEFAULT_KS)
    validate_evaluate(ks, protocol, None if inline is None else len(inline), engine.limits)
    if inline is not None:
        split = "holdout"
    if split not in engine.splits or split not in engine.towers:
        raise InvalidArgument(
            f"split must be one of {sorted(set(engine.splits) & set(engine.towers))} (got {split!r})"
        )
    rec = engine.splits[split]
    tower = engine.towers[split]
    n_items = rec.train.n_cols
    vectors = tower.item_vectors[:n_items]  # recorded splits rank the exported catalogue
    if check:
        check()
    users_vec = engine.known_user_vectors(tower)
    if inline is not None:
        test, nb_users, nb_items = _inline_split(engine, inline, n_items)
    else:
        test = rec.test
        nb_users, nb_items = rec.notebook_users, rec.notebook_items
    logits = np.einsum("nd,nd->n", users_vec[nb_users], vectors[nb_items])
    metrics = {"notebook_score": notebook_metric(sigmoid(logits))}
    n_users = len(nb_users)
    if protocol == "full":
        full = full_ranking_metrics(lambda uu: users_vec[uu] @ vectors.T, test, rec.train, ks, on_chunk=check)
        n_users = int(full.pop("users"))
        metrics.update(full)
    return metrics, n_users


def _inline_split(
    engine: Engine, inline: Sequence[tuple[str, str]], n_items: int
) -> tuple[CSR, np.ndarray, np.ndarray]:
    """(held-out positives, notebook users, one positive each) from inline (user id, item id) pairs."""
    cat = engine.catalog
    u = np.empty(len(inline), dtype=np.int64)
    i = np.empty(len(inline), dtype=np.int64)
    for j, (uid, iid) in enumerate(inline):
        u[j] = engine.user_index_of(uid)
        ii = cat.row(iid)
        if ii is None or ii >= n_items:
            check_id(f"interactions[{j}].item_id", iid)
            raise NotFound(f"unknown item_id {show(iid)} (interaction {j})")
        i[j] = ii
    test = CSR.from_pairs(u, i, len(engine.user_ids), n_items)
    rng = np.random.default_rng(42)
    lengths = test.row_lengths()
    nb_users = np.flatnonzero(lengths)
    nb_items = test.indices[test.indptr[nb_users] + rng.integers(0, lengths[nb_users])]
    return test, nb_users, nb_items
