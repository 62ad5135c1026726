"""Evaluate: the served model's metrics on a recorded split or on inline held-out interactions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..core.csr import CSR
from ..core.numerics import sigmoid
from ..core.ranking_metrics import DEFAULT_KS, full_ranking_metrics, notebook_metric
from .deadline import Check, never
from .errors import InvalidArgument, NotFound
from .history import History
from .validation import check_id, show, validate_evaluate

if TYPE_CHECKING:
    from .engine import Engine

# Users ranked between deadline checks, from a cost model of full_ranking_metrics measured at seed
# scale (10,000 users x 1,000 items, 2 busy cores): ~80 ns per user and item (scores, sorts,
# searches) plus ~12 ns per user and top-k slot summed over ks (per-k metrics, coverage). A block of
# CHUNK_NS nominal took up to ~0.25 s there, so a passed deadline is noticed within that: 2,048
# users at 48 items or 1,000 items with ks 5, 10, 20 (as before); ~120 users with 100 ks near 1,000
# (0.2 s blocks instead of 1.4-2.8 s; smaller blocks cost more per user than they save).
NS_PER_USER_ITEM = 80
NS_PER_USER_K = 12
CHUNK_NS = 150_000_000
MAX_CHUNK_USERS = 2048
INTERACTIONS_PER_CHECK = 8192  # inline pairs resolved (two dict lookups each) between checks


def chunk_users(n_items: int, ks: Sequence[int]) -> int:
    """Users per block of the full ranking, so that one block takes about CHUNK_NS."""
    per_user = NS_PER_USER_ITEM * n_items + NS_PER_USER_K * sum(min(k, n_items) for k in set(ks))
    return max(1, min(MAX_CHUNK_USERS, CHUNK_NS // max(per_user, 1)))


def evaluate(
    engine: Engine,
    split: str = "holdout",
    ks: Sequence[int] = DEFAULT_KS,
    protocol: str = "full",
    inline: Sequence[tuple[str, str]] | None = None,
    check: Check = never,
) -> tuple[dict[str, float], int]:
    """Metrics of the served model (the cold split uses the model trained without those users/items).

    ``inline`` pairs are judged as served (:func:`_as_served`): the users' recorded interactions, less
    the judged pairs, move their vectors and are left out of the ranking, as in Recommend.

    ``check`` (the client's deadline) runs before the work, between blocks of inline pairs and
    between blocks of users in the full ranking (:func:`chunk_users`: ~0.15 s each).

    Returns:
        (metrics, users evaluated).
    """
    # Counted before anything is copied: a request may carry millions of ks.
    validate_evaluate(ks, protocol, None if inline is None else len(inline), engine.limits)
    ks = list(ks) or list(DEFAULT_KS)
    check = check or never
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
    check()
    users_vec = engine.inputs.known_vectors(tower)
    mask = rec.train
    if inline is not None:
        test, nb_users, nb_items = _inline_split(engine, inline, n_items, check)
        if tower is engine.serving and len(engine.live):
            users_vec, mask = _as_served(engine, test, users_vec, mask, check)
    else:
        test = rec.test
        nb_users, nb_items = rec.notebook_users, rec.notebook_items
    logits = np.einsum("nd,nd->n", users_vec[nb_users], vectors[nb_items])
    metrics = {"notebook_score": notebook_metric(sigmoid(logits))}
    n_users = len(nb_users)
    if protocol == "full":
        check()
        full = full_ranking_metrics(
            lambda uu: users_vec[uu] @ vectors.T,
            test,
            mask,
            ks,
            chunk_users=chunk_users(n_items, ks),
            on_chunk=check,
        )
        n_users = int(full.pop("users"))
        metrics.update(full)
    return metrics, n_users


def _as_served(
    engine: Engine, test: CSR, users_vec: np.ndarray, train: CSR, check: Check = never
) -> tuple[np.ndarray, CSR]:
    """The judged users as Recommend serves them: each one's recorded interactions (RecordInteractions),
    less the judged ones, pooled into their vector and left out of the ranking like their training
    positives. (The judged interactions are usually recorded too: `towerserve promote` judges the
    events since a candidate's training, and the serving model must not be scored having pooled and
    left out the very items it is judged on.)

    Returns:
        (user vectors, items left out per user): copies where a judged user has a live history."""
    cat, n_items = engine.catalog, test.n_cols
    max_history = engine.history_index.max_history
    pooled, histories, extra_users, extra_items = [], [], [], []
    for j, u in enumerate(np.flatnonzero(test.row_lengths())):
        if j % INTERACTIONS_PER_CHECK == 0:
            check()
        view = engine.live.get(int(u))
        if view is None:
            continue
        judged = set(test.row(u).tolist())
        left_out = [r for r in view.left_out_rows(cat) if r < n_items and r not in judged]
        extra_users += [u] * len(left_out)
        extra_items += left_out
        rows = tuple(r for r in view.rows if r not in judged)[:max_history]
        if rows:
            pooled.append(int(u))
            histories.append(History(rows, len(rows)))
    if pooled:
        users_vec = users_vec.copy()  # known_vectors is the engine's cached array
        users_vec[pooled] = engine.inputs.user_vectors(engine.serving, pooled, histories, check)
    if extra_users:
        u0, i0 = train.pairs()
        train = CSR.from_pairs(
            np.concatenate([u0, np.asarray(extra_users, np.int64)]),
            np.concatenate([i0, np.asarray(extra_items, np.int64)]),
            train.n_rows,
            train.n_cols,
        )
    return users_vec, train


def _inline_split(
    engine: Engine, inline: Sequence[tuple[str, str]], n_items: int, check: Check = never
) -> tuple[CSR, np.ndarray, np.ndarray]:
    """(held-out positives, notebook users, one positive each) from inline (user id, item id) pairs."""
    cat = engine.catalog
    u = np.empty(len(inline), dtype=np.int64)
    i = np.empty(len(inline), dtype=np.int64)
    for j, (uid, iid) in enumerate(inline):
        if j % INTERACTIONS_PER_CHECK == 0:
            check()
        for field, value in (("user_id", uid), ("item_id", iid)):
            if not value:  # required text: an empty id is a client's bug, not an unknown user or item
                raise InvalidArgument(f"interactions[{j}].{field} must not be empty")
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
