"""Deterministic top-k (server/catalog/topk.py) against a plain sort, on scores full of ties."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from towerserve.server.catalog.topk import top_k, top_k_rows

# Few distinct values, so ties at the cut are the common case, and -inf (masked items) among them.
_VALUES = st.sampled_from([0.0, 1.0, 2.0, 2.5, -1.0, -np.inf])


def _reference(scores: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k]


@settings(max_examples=300, deadline=None)
@given(st.lists(_VALUES, min_size=1, max_size=60), st.integers(0, 70))
def test_top_k_is_best_first_with_ties_by_row(values, k):
    scores = np.array(values, dtype=np.float32)
    assert top_k(scores, k).tolist() == _reference(scores, k)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(_VALUES, min_size=12, max_size=12), min_size=1, max_size=6), st.integers(1, 14))
def test_top_k_rows_agrees_with_top_k_on_every_row(matrix, k):
    scores = np.array(matrix, dtype=np.float32)
    got = top_k_rows(scores, k)
    for r in range(len(scores)):
        assert got[r].tolist() == _reference(scores[r], k)
