"""trainer/splits.py: exact parity with the notebook's pandas/scikit-learn split, cold split, negatives, save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from towerserve.server.core.csr import CSR
from towerserve.server.core.splits import load_recorded_split, save_recorded_split
from towerserve.trainer import splits

N_USERS, N_ITEMS = 40, 25
PER_USER = 5  # below every user's count of zeros, so head(per_user) really cuts


@pytest.fixture(scope="module")
def notebook_world():
    """A random 0/1 matrix with shuffled string user ids (file order is not sorted order), as the notebook reads it."""
    rng = np.random.default_rng(11)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.3).astype(np.int64)
    user_ids = np.array([f"u_{i:03d}" for i in rng.permutation(N_USERS) + 1])
    item_ids = [f"item_{i:02d}" for i in range(1, N_ITEMS + 1)]
    matrix = pd.DataFrame(dense, columns=item_ids)
    matrix.insert(0, "user_id", user_ids)
    assert list(user_ids) != sorted(user_ids)
    assert ((1 - dense).sum(axis=1) > PER_USER).all()
    return dense, user_ids, item_ids, matrix


def notebook(matrix: pd.DataFrame, per_user: int):
    """The notebook's code, literally (its spelling of interactions_positve included)."""
    interactions_df = matrix.melt(id_vars="user_id", var_name="item_id", value_name="label")
    interactions_positve = interactions_df[interactions_df["label"] == 1]
    interactions_positve = interactions_positve.sample(frac=1, random_state=42).reset_index(drop=True)
    train_df, test_df = train_test_split(interactions_positve, test_size=0.2, random_state=42)
    negatives = (
        interactions_df[interactions_df["label"] == 0]
        .sample(frac=1, random_state=42)
        .reset_index(drop=True)
        .groupby("user_id", group_keys=False)
        .head(per_user)
    )
    holdout = test_df.groupby("user_id").sample(n=1, random_state=42)
    return train_df, test_df, negatives, holdout


def as_index_pairs(df: pd.DataFrame, user_ids, item_ids) -> list[tuple[int, int]]:
    uidx = {u: i for i, u in enumerate(user_ids)}
    iidx = {u: i for i, u in enumerate(item_ids)}
    return [(uidx[u], iidx[i]) for u, i in zip(df["user_id"], df["item_id"])]


def as_list(p: splits.Pairs) -> list[tuple[int, int]]:
    return list(zip(p.users.tolist(), p.items.tolist()))


def test_holdout_pairs_match_shuffle_and_train_test_split(notebook_world):
    dense, user_ids, item_ids, matrix = notebook_world
    train_df, test_df, _, _ = notebook(matrix, PER_USER)
    train, test = splits.holdout_pairs(CSR.from_dense(dense), test_size=0.2, seed=42)
    assert as_list(train) == as_index_pairs(train_df, user_ids, item_ids)
    assert as_list(test) == as_index_pairs(test_df, user_ids, item_ids)
    assert len(test) == int(np.ceil(0.2 * dense.sum()))


def test_negatives_match_the_notebook(notebook_world):
    dense, user_ids, item_ids, matrix = notebook_world
    _, _, negatives_df, _ = notebook(matrix, PER_USER)
    negatives = splits.notebook_negatives(CSR.from_dense(dense), per_user=PER_USER, seed=42)
    assert as_list(negatives) == as_index_pairs(negatives_df, user_ids, item_ids)
    assert np.bincount(negatives.users, minlength=N_USERS).tolist() == [PER_USER] * N_USERS
    assert not dense[negatives.users, negatives.items].any()


def test_one_per_user_matches_groupby_sample(notebook_world):
    dense, user_ids, item_ids, matrix = notebook_world
    _, _, _, holdout_df = notebook(matrix, PER_USER)
    _, test = splits.holdout_pairs(CSR.from_dense(dense), test_size=0.2, seed=42)
    picked = splits.one_per_user(test, user_ids, seed=42)
    # Same pairs in the same order: groups in sorted user_id (string) order, not index order.
    assert as_list(picked) == as_index_pairs(holdout_df, user_ids, item_ids)
    assert list(user_ids[picked.users]) == sorted(user_ids[picked.users])


def test_holdout_split_assembles_the_parity_pieces(notebook_world):
    dense, user_ids, item_ids, matrix = notebook_world
    train_df, test_df, negatives_df, holdout_df = notebook(matrix, PER_USER)
    split = splits.holdout_split(CSR.from_dense(dense), user_ids, negatives_per_user=PER_USER)
    assert split.name == "holdout"
    assert as_list(split.train_pairs) == as_index_pairs(train_df, user_ids, item_ids)
    assert sorted(as_list(split.notebook_pairs)) == sorted(as_index_pairs(holdout_df, user_ids, item_ids))
    assert as_list(split.negatives) == as_index_pairs(negatives_df, user_ids, item_ids)
    # train and test partition the positives.
    both = split.train.union(split.test)
    assert split.train.nnz + split.test.nnz == dense.sum() == both.nnz
    np.testing.assert_array_equal(both.dense_rows(np.arange(N_USERS)), dense.astype(bool))
    assert split.cold_users.size == 0 and split.cold_items.size == 0


def random_positives(seed: int = 0, n_users: int = 200, n_items: int = 50, density: float = 0.2) -> CSR:
    rng = np.random.default_rng(seed)
    return CSR.from_dense(rng.random((n_users, n_items)) < density)


def test_cold_split_keeps_cold_users_and_items_out_of_training():
    positives = random_positives()
    ids = np.array([f"user_{i:03d}" for i in range(positives.n_rows)])
    split = splits.cold_split(positives, ids, user_frac=0.1, item_frac=0.1, negatives_per_user=10, seed=42)
    assert split.name == "cold"
    assert len(split.cold_users) == 20 and len(split.cold_items) == 5  # round(0.1 x 200), round(0.1 x 50)
    assert len(np.unique(split.cold_users)) == 20 and len(np.unique(split.cold_items)) == 5

    pos = positives.dense_rows(np.arange(positives.n_rows))
    train = split.train.dense_rows(np.arange(positives.n_rows))
    test = split.test.dense_rows(np.arange(positives.n_rows))
    cold_u = np.isin(np.arange(positives.n_rows), split.cold_users)
    cold_i = np.isin(np.arange(positives.n_cols), split.cold_items)
    # Training: every warm-user, warm-item positive, and nothing else.
    np.testing.assert_array_equal(train, pos & ~cold_u[:, None] & ~cold_i[None, :])
    np.testing.assert_array_equal(
        split.train.dense_rows(np.arange(positives.n_rows)),
        CSR.from_pairs(
            split.train_pairs.users, split.train_pairs.items, positives.n_rows, positives.n_cols
        ).dense_rows(np.arange(positives.n_rows)),
    )
    # Test: all positives of the cold users, on warm and cold items alike.
    np.testing.assert_array_equal(test, pos & cold_u[:, None])
    # Negatives: warm users, warm items, never a positive, at most 10 per user.
    n = split.negatives
    assert len(n) > 0
    assert not cold_u[n.users].any() and not cold_i[n.items].any()
    assert not pos[n.users, n.items].any()
    assert np.bincount(n.users, minlength=positives.n_rows).max() <= 10
    assert len(set(as_list(n))) == len(n)  # without replacement
    # One notebook pair per cold user that has a positive, each a real test positive.
    nb = split.notebook_pairs
    assert test[nb.users, nb.items].all()
    assert (
        nb.users.tolist() == np.flatnonzero(cold_u & pos.any(axis=1)).tolist()
    )  # ids sort like indices here


def test_cold_split_is_reproducible_and_seeded():
    positives = random_positives(1)
    ids = np.array([f"u{i}" for i in range(positives.n_rows)])
    a = splits.cold_split(positives, ids, negatives_per_user=5, seed=1)
    b = splits.cold_split(positives, ids, negatives_per_user=5, seed=1)
    c = splits.cold_split(positives, ids, negatives_per_user=5, seed=2)
    np.testing.assert_array_equal(a.cold_users, b.cold_users)
    np.testing.assert_array_equal(a.negatives.items, b.negatives.items)
    assert not np.array_equal(a.cold_users, c.cold_users)


def test_uniform_negatives_respect_exclusion_and_cap():
    rng = np.random.default_rng(3)
    dense = rng.random((30, 12)) < 0.5
    dense[0] = True  # nothing left to draw
    dense[1] = False
    dense[1, :10] = True  # two items left, cap 4 -> two
    exclude = CSR.from_dense(dense)
    # chunk_cells=40 -> blocks of 3 users, so the block loop runs ten times.
    neg = splits.uniform_negatives(exclude, per_user=4, seed=9, chunk_cells=40)
    counts = np.bincount(neg.users, minlength=30)
    np.testing.assert_array_equal(counts, np.minimum(4, (~dense).sum(axis=1)))
    assert not dense[neg.users, neg.items].any()
    assert len(set(as_list(neg))) == len(neg)
    assert sorted(neg.items[neg.users == 1].tolist()) == [10, 11]
    again = splits.uniform_negatives(exclude, per_user=4, seed=9, chunk_cells=40)
    assert as_list(again) == as_list(neg)


def test_uniform_negatives_users_and_allowed_items():
    exclude = CSR.from_dense(np.zeros((10, 20), dtype=bool))
    allowed = np.array([2, 3, 5, 7, 11, 13])
    neg = splits.uniform_negatives(
        exclude, per_user=100, seed=0, users=np.array([4, 8]), allowed_items=allowed
    )
    assert sorted(set(neg.users.tolist())) == [4, 8]
    for u in (4, 8):  # cap above what is allowed: every allowed item once
        assert sorted(neg.items[neg.users == u].tolist()) == allowed.tolist()


def test_uniform_negatives_are_roughly_uniform():
    exclude = CSR.from_dense(np.zeros((2000, 10), dtype=bool))
    neg = splits.uniform_negatives(exclude, per_user=1, seed=5)
    counts = np.bincount(neg.items, minlength=10)
    # 2000 draws over 10 items: 200 each, sd ~ 13.4; 5 sd either side.
    assert counts.min() > 133 and counts.max() < 267


def test_split_save_and_load_round_trip(tmp_path, notebook_world):
    dense, user_ids, _, _ = notebook_world
    for split in (
        splits.holdout_split(CSR.from_dense(dense), user_ids, negatives_per_user=PER_USER),
        splits.cold_split(
            CSR.from_dense(dense), user_ids, user_frac=0.2, item_frac=0.2, negatives_per_user=PER_USER
        ),
    ):
        path = tmp_path / f"{split.name}.npz"
        save_recorded_split(path, split.recorded())
        back = load_recorded_split(path)
        assert back.name == split.name
        for a, b in ((back.train, split.train), (back.test, split.test)):
            np.testing.assert_array_equal(a.indptr, b.indptr)
            np.testing.assert_array_equal(a.indices, b.indices)
            assert a.n_cols == b.n_cols == N_ITEMS
        np.testing.assert_array_equal(back.notebook_users, split.notebook_pairs.users)
        np.testing.assert_array_equal(back.notebook_items, split.notebook_pairs.items)
        np.testing.assert_array_equal(back.cold_users, split.cold_users)
        np.testing.assert_array_equal(back.cold_items, split.cold_items)


def test_uniform_negatives_for_no_users_is_empty():
    exclude = CSR.from_dense(np.zeros((4, 5), dtype=bool))
    neg = splits.uniform_negatives(exclude, per_user=2, seed=0, users=np.zeros(0, dtype=np.int64))
    assert len(neg) == 0


def _large_exclude(n_users: int = 300, n_items: int = splits.SPARSE_NEGATIVES_ITEMS, seed: int = 3) -> CSR:
    rng = np.random.default_rng(seed)
    return CSR.from_pairs(
        rng.integers(0, n_users, 30_000), rng.integers(0, n_items, 30_000), n_users, n_items
    )


def test_large_catalogues_draw_negatives_sparsely():
    exclude = _large_exclude()
    neg = splits.uniform_negatives(exclude, per_user=100, seed=4)
    n = exclude.n_cols
    keys = neg.users * n + neg.items
    assert len(np.unique(keys)) == len(keys)  # without replacement
    banned = exclude.pairs()[0].astype(np.int64) * n + exclude.indices
    assert not np.isin(keys, banned).any()
    assert (np.bincount(neg.users, minlength=exclude.n_rows) == 100).all()
    again = splits.uniform_negatives(exclude, per_user=100, seed=4)
    np.testing.assert_array_equal(keys, again.users * n + again.items)
    # The key path (one key per user x item) would have given another draw: this is the sparse one.
    dense = splits._key_negatives(exclude, 100, 4, np.arange(exclude.n_rows), None)
    assert not np.array_equal(np.sort(keys), np.sort(dense.users * n + dense.items))


def test_sparse_negatives_are_uniform_and_respect_allowed_items():
    n = splits.SPARSE_NEGATIVES_ITEMS
    empty = CSR.from_pairs(np.zeros(0, int), np.zeros(0, int), 4_000, n)
    counts = np.bincount(splits.uniform_negatives(empty, per_user=100, seed=0).items, minlength=n)
    # 400,000 draws over 50,000 items: each count is ~Binomial(4e5, 2e-5), mean 8, sd ~2.83.
    assert counts.mean() == 8.0 and abs(counts.std() - np.sqrt(8.0)) < 0.1
    allowed = np.arange(0, n, 7)
    neg = splits.uniform_negatives(_large_exclude(), 50, 1, users=np.arange(0, 300, 3), allowed_items=allowed)
    assert np.isin(neg.items, allowed).all() and set(neg.users.tolist()) == set(range(0, 300, 3))


def test_sparse_negatives_complete_a_nearly_full_row_exactly():
    n = splits.SPARSE_NEGATIVES_ITEMS
    # User 0 has every item but the first 30 excluded: 46 draws almost never find 30 of them, so the
    # exact key path completes that row; user 1 (nothing excluded) stays on the sparse path.
    exclude = CSR.from_pairs(np.zeros(n - 30, int), np.arange(30, n), 2, n)
    neg = splits.uniform_negatives(exclude, per_user=30, seed=0)
    np.testing.assert_array_equal(np.sort(neg.items[neg.users == 0]), np.arange(30))
    assert np.sum(neg.users == 1) == 30
