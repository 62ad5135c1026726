"""The growing catalogue columns: snapshots keep their rows, growth keeps old snapshots valid."""

from __future__ import annotations

import threading

import numpy as np

from towerserve.server.catalog.snapshot import build_catalog, upserted
from towerserve.server.core.csr import CSR
from towerserve.server.core.types import NewItemData
from towerserve.server.core.wire import item_wire
from towerserve.v1 import recommender_pb2 as pb

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


def _wire_of(cat, j: int) -> tuple[bytes, bytes]:
    return item_wire(cat.ids[j], float(cat.price[j]), cat.description[j], cat.features[j], cat.category[j])


def test_wire_bytes_are_built_on_first_use_and_replaced_by_writes():
    """Rows read before and after an upsert, and rows first read only after it: each one's bytes
    are its current item's, as protobuf would serialise it."""
    cat, users, seen = _catalog()
    assert cat.wire[1] == _wire_of(cat, 1)  # built now
    new = upserted(
        cat, [_item("i1", "z", 7.0), _item("i3", "y", 8.0)], np.ones((2, D), np.float32), users, seen, False
    )[0]
    for j in range(N):
        assert new.wire[j] == _wire_of(new, j), j
    head, tail = new.wire[3]
    item = pb.Item.FromString(head + tail)
    assert (item.item_id, item.price, item.category) == ("i3", 8.0, "y")


def test_wire_bytes_under_concurrent_reads_and_writes():
    """Readers build rows while a writer replaces the same items again and again: every row ends as
    its last write left it (a build never outlives a write, nor mixes two items' fields)."""
    n = 400
    users = np.eye(2, D, dtype=np.float32)
    seen = CSR.from_pairs(np.array([0]), np.array([1]), 2, n)
    ids = [f"i{j}" for j in range(n)]
    cat = build_catalog(
        ids,
        np.zeros(n),
        ["a"] * n,
        ["d"] * n,
        ["f"] * n,
        np.zeros((n, D), np.float32),
        users=users,
        seen=seen,
        candidates=0,
        user_independent=False,
    )
    stop, errors = threading.Event(), []

    def read():
        rng = np.random.default_rng(threading.get_ident() % 2**32)
        try:
            while not stop.is_set():
                for j in rng.integers(0, n, 64).tolist():
                    pb.Item.FromString(b"".join(cat.wire[j]))
        except Exception as err:  # recorded: the test fails on any
            errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for k in range(1, 30):
            batch = [NewItemData(x, f"d{k}", f"f{k}", float(k), f"c{k}") for x in ids[k % 7 :: 7]]
            cat = upserted(cat, batch, np.zeros((len(batch), D), np.float32), users, seen, False)[0]
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not errors, errors
    for j in range(n):
        assert cat.wire[j] == _wire_of(cat, j), j
