"""server/core/csr.py's set operations, and the time split's choice of each user's latest event."""

import numpy as np

from towerserve.server.core.csr import CSR


def test_pairs_membership_and_difference_against_a_python_set():
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 20, 300), rng.integers(0, 30, 300)
    a = CSR.from_pairs(rows, cols, 20, 30)
    b = CSR.from_pairs(rows[::3], cols[::3], 20, 30)
    want_a = set(zip(rows.tolist(), cols.tolist()))
    want_b = set(zip(rows[::3].tolist(), cols[::3].tolist()))
    qr, qc = rng.integers(0, 20, 500), rng.integers(0, 30, 500)
    assert a.contains_pairs(qr, qc).tolist() == [(r, c) in want_a for r, c in zip(qr.tolist(), qc.tolist())]
    diff = a.minus(b)
    assert set(zip(*(x.tolist() for x in diff.pairs()))) == want_a - want_b
    assert a.contains(np.arange(20), 5).tolist() == [(r, 5) in want_a for r in range(20)]
    assert (
        not CSR.from_pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), 2, 2).contains_pairs([0], [1]).any()
    )


def test_union_against_a_python_set():
    """The merge of two sorted key runs: row-major, no duplicates, empty rows and sets included."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        n_rows, n_cols = (int(x) for x in rng.integers(1, 25, 2))
        sets = []
        for n in rng.integers(0, 80, 2):
            rows, cols = rng.integers(0, n_rows, n), rng.integers(0, n_cols, n)
            sets.append((CSR.from_pairs(rows, cols, n_rows, n_cols), set(zip(rows.tolist(), cols.tolist()))))
        (a, want_a), (b, want_b) = sets
        both = a.union(b)
        assert list(zip(*(x.tolist() for x in both.pairs()))) == sorted(want_a | want_b)
        assert len(both.indptr) == n_rows + 1 and both.indices.dtype == np.int32


def test_the_time_split_holds_out_each_users_latest_event():
    from towerserve.trainer.events import latest_per_user

    users = np.array([0, 1, 0, 2, 1, 0])
    ats = np.array([5.0, 1.0, 9.0, 3.0, 1.0, 2.0])
    # user 0: t=9 (position 2); user 1: a tie at t=1, the later position (4); user 2: its only one
    assert sorted(latest_per_user(users, ats).tolist()) == [2, 3, 4]
    assert latest_per_user(np.zeros(0, np.int64), np.zeros(0)).size == 0
