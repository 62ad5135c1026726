"""Train/holdout splits with notebook parity, negative sampling, and a cold-start split.

Parity: the notebook melts the matrix (item-major order), shuffles positives with
``sample(frac=1, random_state=42)``, splits with ``train_test_split(test_size=0.2,
random_state=42)`` and picks one holdout positive per user with
``groupby('user_id').sample(n=1, random_state=42)``. Those calls consume numpy's legacy
``RandomState`` in a documented way, replayed here in numpy so a run at 10^7 pairs takes a second;
``tests/test_splits.py`` checks the result against pandas and scikit-learn themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from towerserve.server.core.csr import CSR
from towerserve.server.core.splits import RecordedSplit

# The notebook's negative sampling enumerates every zero cell; past this many cells that is too big,
# and negatives are sampled per user instead (same distribution, different draw).
PARITY_MAX_CELLS = 60_000_000
# From this many items on, negatives are drawn per negative (sparse_negatives), not per user x item:
# at 100,000 items and 100,000 users the key path draws 10¹⁰ keys, at 1,000,000 x 1,000,000 10¹².
SPARSE_NEGATIVES_ITEMS = 50_000


@dataclass(frozen=True)
class Pairs:
    """Parallel arrays of user and item ids (int64)."""

    users: np.ndarray
    items: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Split:
    """What a model trains on and is judged against.

    Attributes:
        name: "holdout" or "cold".
        train: positives the model may see.
        train_pairs: the same positives in the order the notebook feeds them to training.
        test: positives it is judged on.
        negatives: sampled non-positives for training (label 0).
        notebook_pairs: one test positive per user, for the notebook's mean-score metric.
        cold_users / cold_items: ids held out entirely (cold split only; empty otherwise).
    """

    name: str
    train: CSR
    train_pairs: Pairs
    test: CSR
    negatives: Pairs
    notebook_pairs: Pairs
    cold_users: np.ndarray
    cold_items: np.ndarray

    def recorded(self) -> RecordedSplit:
        """What the artifacts keep of this split (``server.splits.save_recorded_split`` writes it)."""
        return RecordedSplit(
            name=self.name,
            train=self.train,
            test=self.test,
            notebook_users=self.notebook_pairs.users,
            notebook_items=self.notebook_pairs.items,
            cold_users=self.cold_users,
            cold_items=self.cold_items,
        )


def _melt_order(positives: CSR) -> Pairs:
    """Positives in the order ``DataFrame.melt`` yields them: item-major, then user."""
    u, i = positives.pairs()
    order = np.lexsort((u, i))
    return Pairs(u[order].astype(np.int64), i[order].astype(np.int64))


def _legacy_permutation(n: int, seed: int) -> np.ndarray:
    # pandas' sample(frac=1) and sklearn's ShuffleSplit both reduce to RandomState(seed).permutation(n).
    return np.random.RandomState(seed).permutation(n)


def holdout_pairs(positives: CSR, test_size: float = 0.2, seed: int = 42) -> tuple[Pairs, Pairs]:
    """Returns (train, test) positive pairs exactly as the notebook's shuffle + train_test_split."""
    melted = _melt_order(positives)
    n = len(melted)
    p1 = _legacy_permutation(n, seed)
    shuffled = Pairs(melted.users[p1], melted.items[p1])
    n_test = math.ceil(test_size * n)
    p2 = _legacy_permutation(n, seed)
    test, train = p2[:n_test], p2[n_test:]
    return Pairs(shuffled.users[train], shuffled.items[train]), Pairs(
        shuffled.users[test], shuffled.items[test]
    )


def one_per_user(pairs: Pairs, user_ids: np.ndarray, seed: int = 42) -> Pairs:
    """One random pair per user, as ``df.groupby('user_id').sample(n=1, random_state=seed)``.

    pandas visits groups in sorted user_id order (string order) and draws
    ``permutation(group_size)[0]`` from one shared RandomState; rows keep their frame order.
    """
    rs = np.random.RandomState(seed)
    order = np.argsort(pairs.users, kind="stable")
    users_sorted = pairs.users[order]
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
    ends = np.r_[starts[1:], len(users_sorted)]
    present = users_sorted[starts]
    by_name = np.argsort(np.asarray(user_ids)[present], kind="stable")
    out_u, out_i = [], []
    for g in by_name:
        rows = order[starts[g] : ends[g]]  # this user's rows, in frame order
        pick = rows[rs.permutation(len(rows))[0]]
        out_u.append(pairs.users[pick])
        out_i.append(pairs.items[pick])
    return Pairs(np.array(out_u, dtype=np.int64), np.array(out_i, dtype=np.int64))


def notebook_negatives(positives: CSR, per_user: int = 100, seed: int = 42) -> Pairs:
    """Up to ``per_user`` non-positives per user, exactly as the notebook draws them.

    ``negatives.sample(frac=1, random_state=42)`` over every zero cell in melt order, then
    ``groupby('user_id').head(per_user)``. Like the notebook, holdout positives are never negatives.
    """
    n_users, n_items = positives.n_rows, positives.n_cols
    is_pos = np.zeros(n_users * n_items, dtype=bool)
    u, i = positives.pairs()
    is_pos[i.astype(np.int64) * n_users + u] = True  # melt order: index = item * n_users + user
    zero_cells = np.flatnonzero(~is_pos)
    del is_pos
    shuffled = zero_cells[_legacy_permutation(len(zero_cells), seed)]
    users = shuffled % n_users
    # head(per_user) keeps each user's first rows in shuffled order: stable sort by user, then rank.
    order = np.argsort(users, kind="stable")
    su = users[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    rank = np.arange(len(su)) - np.repeat(starts, np.diff(np.r_[starts, len(su)]))
    keep = np.sort(order[rank < per_user])  # back to shuffled order, as pandas returns it
    cells = shuffled[keep]
    return Pairs(cells % n_users, cells // n_users)


def uniform_negatives(
    exclude: CSR,
    per_user: int,
    seed: int,
    users: np.ndarray | None = None,
    allowed_items: np.ndarray | None = None,
    chunk_cells: int = 4_000_000,
) -> Pairs:
    """Up to ``per_user`` items per user, uniformly without replacement, outside ``exclude``.

    Works block by block (random keys, excluded items pushed to +inf, smallest keys win), so it
    never holds more than ``chunk_cells`` floats. That costs a key per user and item: from
    ``SPARSE_NEGATIVES_ITEMS`` items on, :func:`sparse_negatives` draws the same distribution at a
    cost per negative instead (a different draw).
    """
    users = np.arange(exclude.n_rows) if users is None else np.asarray(users, dtype=np.int64)
    if exclude.n_cols >= SPARSE_NEGATIVES_ITEMS:
        return sparse_negatives(exclude, per_user, seed, users, allowed_items)
    return _key_negatives(exclude, per_user, seed, users, allowed_items, chunk_cells)


def _key_negatives(
    exclude: CSR,
    per_user: int,
    seed: int,
    users: np.ndarray,
    allowed_items: np.ndarray | None,
    chunk_cells: int = 4_000_000,
) -> Pairs:
    n_items = exclude.n_cols
    banned_cols = None
    if allowed_items is not None:
        banned_cols = np.ones(n_items, dtype=bool)
        banned_cols[allowed_items] = False
    k = min(per_user, n_items)
    if len(users) == 0 or k == 0:
        return Pairs(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    step = max(1, chunk_cells // n_items)
    out_u, out_i = [], []
    for b, start in enumerate(range(0, len(users), step)):
        block = users[start : start + step]
        rng = np.random.default_rng([seed, 5, b])
        keys = rng.random((len(block), n_items), dtype=np.float32)
        keys[exclude.dense_rows(block)] = np.inf
        if banned_cols is not None:
            keys[:, banned_cols] = np.inf
        pick = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < n_items else np.argsort(keys, axis=1)
        ok = np.isfinite(np.take_along_axis(keys, pick, axis=1))
        out_u.append(np.repeat(block, k).reshape(len(block), k)[ok])
        out_i.append(pick[ok])
    return Pairs(np.concatenate(out_u).astype(np.int64), np.concatenate(out_i).astype(np.int64))


def sparse_negatives(
    exclude: CSR,
    per_user: int,
    seed: int,
    users: np.ndarray,
    allowed_items: np.ndarray | None = None,
    chunk_draws: int = 4_000_000,
) -> Pairs:
    """:func:`uniform_negatives` for large catalogues: per user, the first ``per_user`` distinct
    allowed items among uniform draws (with replacement) that are not in ``exclude``.

    The first k distinct valid items of an i.i.d. uniform stream are a uniform k-subset of the valid
    items, so the distribution is uniform_negatives'. Each user gets 1.5 x per_user + 16 draws; the
    rare user left short (a large ``exclude`` row) is completed by uniform_negatives' exact path.
    """
    n_items = exclude.n_cols
    pool = np.arange(n_items) if allowed_items is None else np.sort(np.asarray(allowed_items, dtype=np.int64))
    k = min(per_user, len(pool))
    if len(users) == 0 or k == 0:
        return Pairs(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    # Sorted (user, item) keys of every excluded pair (CSR rows are sorted, so row-major is sorted).
    banned = exclude.pairs()[0].astype(np.int64) * n_items + exclude.indices
    m = k + k // 2 + 16
    step = max(1, chunk_draws // m)
    out_u, out_i, short = [], [], []
    for b, start in enumerate(range(0, len(users), step)):
        block = users[start : start + step]
        rng = np.random.default_rng([seed, 5, 1, b])
        draws = pool[rng.integers(0, len(pool), size=(len(block), m))]
        keys = block[:, None] * n_items + draws
        at = np.minimum(np.searchsorted(banned, keys), max(0, len(banned) - 1))
        ok = banned[at] != keys if len(banned) else np.ones(keys.shape, dtype=bool)
        first = np.zeros(keys.size, dtype=bool)  # the first draw of each (user, item)
        first[np.unique(keys.ravel(), return_index=True)[1]] = True
        ok &= first.reshape(keys.shape)
        ok &= np.cumsum(ok, axis=1) <= k
        got = ok.sum(axis=1)
        full = got == k
        out_u.append(np.repeat(block[full], k))
        out_i.append(draws[full][ok[full]])
        short.append(block[~full])
    left = np.concatenate(short)
    if len(left):  # uniform_negatives' key path below SPARSE_NEGATIVES_ITEMS: exact for any row
        rest = _key_negatives(exclude, per_user, seed, left, allowed_items)
        out_u.append(rest.users)
        out_i.append(rest.items)
    return Pairs(np.concatenate(out_u).astype(np.int64), np.concatenate(out_i).astype(np.int64))


def holdout_split(
    positives: CSR,
    user_ids: np.ndarray,
    test_size: float = 0.2,
    negatives_per_user: int = 100,
    seed: int = 42,
) -> Split:
    """The notebook's split: 80/20 of positives, 100 negatives per user, one holdout pair per user."""
    train, test = holdout_pairs(positives, test_size, seed)
    n_users, n_items = positives.n_rows, positives.n_cols
    if n_users * n_items <= PARITY_MAX_CELLS:
        negatives = notebook_negatives(positives, negatives_per_user, seed)
    else:
        negatives = uniform_negatives(positives, negatives_per_user, seed)
    return Split(
        name="holdout",
        train=CSR.from_pairs(train.users, train.items, n_users, n_items),
        train_pairs=train,
        test=CSR.from_pairs(test.users, test.items, n_users, n_items),
        negatives=negatives,
        notebook_pairs=one_per_user(test, user_ids, seed),
        cold_users=np.zeros(0, dtype=np.int64),
        cold_items=np.zeros(0, dtype=np.int64),
    )


def cold_split(
    positives: CSR,
    user_ids: np.ndarray,
    user_frac: float = 0.1,
    item_frac: float = 0.1,
    negatives_per_user: int = 100,
    seed: int = 42,
) -> Split:
    """Holds out whole users and whole items.

    Training sees warm users on warm items only; the test set is every positive of the cold users,
    ranked over the whole catalogue (warm and cold items), with nothing masked.
    """
    n_users, n_items = positives.n_rows, positives.n_cols
    rng = np.random.default_rng([seed, 6])
    cold_users = np.sort(rng.choice(n_users, size=max(1, round(user_frac * n_users)), replace=False))
    cold_items = np.sort(rng.choice(n_items, size=round(item_frac * n_items), replace=False))
    u, i = positives.pairs()
    u = u.astype(np.int64)
    i = i.astype(np.int64)
    user_cold = np.isin(u, cold_users)
    item_cold = np.isin(i, cold_items)
    warm = ~user_cold & ~item_cold
    train = CSR.from_pairs(u[warm], i[warm], n_users, n_items)
    test_pairs = Pairs(u[user_cold], i[user_cold])
    warm_users = np.setdiff1d(np.arange(n_users), cold_users)
    warm_items = np.setdiff1d(np.arange(n_items), cold_items)
    return Split(
        name="cold",
        train=train,
        train_pairs=Pairs(u[warm], i[warm]),
        test=CSR.from_pairs(test_pairs.users, test_pairs.items, n_users, n_items),
        negatives=uniform_negatives(
            positives, negatives_per_user, seed, users=warm_users, allowed_items=warm_items
        ),
        notebook_pairs=one_per_user(test_pairs, user_ids, seed),
        cold_users=cold_users,
        cold_items=cold_items,
    )
