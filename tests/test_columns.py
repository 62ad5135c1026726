"""The growing catalogue columns: snapshots keep their rows, growth keeps old snapshots valid."""

from __future__ import annotations

import numpy as np

from towerserve.server.catalog.snapshot import build_catalog, upserted
from towerserve.server.core.csr import CSR
from towerserve.server.core.types import NewItemData

N, D = 5, 3


def _catalog():
    users = np.eye(2, D, dtype=np.float32)
    seen = CSR.from_pairs(np.array([0]), np.array([1]), 2, N)
    cat = build_catalog(
        [f"i{j}" for j in range(N)],
        np.arange(N, dtype=float),
        ["a", "b", "a", "b", "a"],
        ["d"] * N,
        ["f"] * N,
        np.arange(N * D, dtype=np.float32).reshape(N, D),
        users=users,
        seen=seen,
        candidates=0,
        user_independent=False,
    )
    return cat, users, seen


def _item(item_id: str, category: str = "a", price: float = 1.0) -> NewItemData:
    return NewItemData(item_id, "d", "f", price, category)


def test_an_old_snapshot_never_sees_rows_added_after_it():
    cat, users, seen = _catalog()
    new, rows, inserted, updated = upserted(
        cat, [_item("x")], np.ones((1, D), np.float32), users, seen, False
    )
    assert (inserted, updated, rows.tolist()) == (1, 0, [N])
    assert len(cat) == N and cat.row("x") is None and cat.vectors.shape == (N, D)
    assert len(new) == N + 1 and new.row("x") == N and new.vectors[N].tolist() == [1.0] * D


def test_growth_reallocates_without_disturbing_older_snapshots():
    cat, users, seen = _catalog()
    before = cat.vectors.copy()
    snaps = [cat]
    for k in range(40):  # many appends: the arrays grow several times
        vec = np.full((1, D), k, np.float32)
        snaps.append(upserted(snaps[-1], [_item(f"n{k}")], vec, users, seen, False)[0])
    assert (cat.vectors == before).all()
    assert [len(s) for s in snaps] == list(range(N, N + 41))
    last = snaps[-1]
    assert last.vectors64[N + 39].tolist() == [39.0] * D and last.price.shape == (N + 40,)
    assert snaps[10].row("n9") == N + 9 and snaps[10].row("n10") is None


def test_a_replacement_is_written_in_place_and_categories_keep_their_codes():
    cat, users, seen = _catalog()
    codes = dict(cat.category_index)
    new, rows, inserted, updated = upserted(
        cat, [_item("i2", category="c", price=9.0)], np.zeros((1, D), np.float32), users, seen, False
    )
    assert (inserted, updated, rows.tolist()) == (0, 1, [2])
    assert new.category_code[2] == new.category_index["c"] and new.price[2] == 9.0
    assert {k: new.category_index[k] for k in codes} == codes  # a new category never renumbers old ones
    assert new.wire[2] != cat.wire[0] and new.category[2] == "c"
