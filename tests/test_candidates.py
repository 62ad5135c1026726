"""Candidate lists patched per upsert equal lists rebuilt from scratch (up to a truncation marker)."""

from __future__ import annotations

import numpy as np
import pytest

from towerserve.server.catalog import candidates
from towerserve.server.catalog.snapshot import build_catalog, upserted
from towerserve.server.core.csr import CSR
from towerserve.server.core.types import NewItemData

N_USERS, N_ITEMS, DIM, M = 40, 30, 4, 6


def _rebuilt(cat, users, seen):
    return candidates.build(users, cat.vectors64, seen, cat.nan_rows, M, 2**30)


@pytest.mark.parametrize("seed", range(6))
def test_patched_lists_equal_rebuilt_ones(seed):
    rng = np.random.default_rng(seed)
    # Coarse values: many exact ties, so the row tie-break is exercised at every cut.
    items = rng.integers(-2, 3, (N_ITEMS, DIM)).astype(np.float32)
    users = rng.integers(-2, 3, (N_USERS, DIM)).astype(np.float32)
    u_ids = np.repeat(np.arange(N_USERS), 8)
    seen = CSR.from_pairs(u_ids, rng.integers(0, N_ITEMS, len(u_ids)), N_USERS, N_ITEMS)
    cat = build_catalog(
        [f"i{j}" for j in range(N_ITEMS)],
        np.ones(N_ITEMS),
        ["c"] * N_ITEMS,
        ["d"] * N_ITEMS,
        ["f"] * N_ITEMS,
        items,
        users=users,
        seen=seen,
        candidates=M,
        user_independent=False,
    )
    truncated = 0
    for step in range(12):
        k = int(rng.integers(1, 4))
        ids = [f"i{int(j)}" for j in rng.choice(N_ITEMS, k, replace=False)] if step % 2 else []
        ids += [f"new{step}_{t}" for t in range(k - len(ids) // 2)]
        batch = [NewItemData(i, "d", "f", 1.0, "c") for i in ids]
        vecs = rng.integers(-2, 3, (len(batch), DIM)).astype(np.float32)
        cat, *_ = upserted(cat, batch, vecs, users, seen, False)
        want = _rebuilt(cat, users, seen)
        for u in range(N_USERS):
            got = cat.cand_rows[u].tolist()
            if candidates.TRUNCATED in got:
                truncated += 1
                cut = got.index(candidates.TRUNCATED)
                assert got[:cut] == want["cand_rows"][u][:cut].tolist(), (step, u)
                assert set(got[cut:]) == {candidates.TRUNCATED}
            else:
                assert got == want["cand_rows"][u].tolist(), (step, u)
            valid = cat.cand_rows[u] >= 0
            assert (cat.cand_scores[u][valid] == want["cand_scores"][u][: valid.sum()]).all()
    assert truncated  # replacements did cut some lists short: that branch ran
