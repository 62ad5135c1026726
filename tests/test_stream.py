"""A simulated day of interactions (trainer/synth/stream.py): drawn from the generator's own world,
never an item the user already has, at most once per user, in the day, in time order."""

from __future__ import annotations

import numpy as np
import pytest

from towerserve.server.core.csr import CSR
from towerserve.trainer.data import load_dataset
from towerserve.trainer.synth.generator import generate, true_probabilities
from towerserve.trainer.synth.stream import DAY_SECONDS, next_day


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    generate(root, n_users=300, n_items=120, seed=5, progress=False)
    return root, load_dataset(root)


def test_a_day_follows_the_world_and_never_repeats_what_users_have(world):
    root, ds = world
    u, i, at = next_day(root, ds.positives, rate=4.0, start=1000.0, seed=3)
    assert len(u) == len(i) == len(at) > 0
    assert np.all(np.diff(at) >= 0) and at.min() >= 1000.0 and at.max() < 1000.0 + DAY_SECONDS
    assert abs(len(u) / ds.n_users - 4.0) < 0.5  # Poisson(4) per user
    day = CSR.from_pairs(u, i, ds.n_users, ds.n_items)
    assert day.nnz == len(u)  # no user draws an item twice
    have = set(zip(*ds.positives.pairs()))
    assert not have & set(zip(u.tolist(), i.tolist()))
    # Preference-following: the drawn items' true probability is well above that of a uniform draw
    # among the same users' remaining items (a uniform sampler fails this).
    probs = np.concatenate([p for _, p in true_probabilities(root)])
    open_ = np.ones_like(probs, dtype=bool)
    pu, pi = ds.positives.pairs()
    open_[pu, pi] = False
    assert probs[u, i].mean() > 2 * probs[open_].mean()  # 4.5x here
    again = next_day(root, ds.positives, rate=4.0, start=1000.0, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((u, i, at), again))  # same seed, same day


def test_the_next_day_leaves_out_the_day_before(world):
    root, ds = world
    u1, i1, _ = next_day(root, ds.positives, rate=6.0, start=0.0, seed=1)
    seen = CSR.from_pairs(u1, i1, ds.n_users, ds.n_items)
    u2, i2, at2 = next_day(root, ds.positives, rate=6.0, start=DAY_SECONDS, seed=2, seen=seen)
    assert not set(zip(u1.tolist(), i1.tolist())) & set(zip(u2.tolist(), i2.tolist()))
    assert at2.min() >= DAY_SECONDS
