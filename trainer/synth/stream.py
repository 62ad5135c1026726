"""What a generated data set's users do next: interaction events drawn from the generator's own world.

A day of events for the existing users, for the retrain loop (RecordInteractions → `train --events` →
`promote`; benchmarks/retrain_loop.py): each user makes Poisson(``rate``) events in the day, each on an
item drawn with probability proportional to the world's true p(u, i) (generator.py) among the items
they have not interacted with yet (the data set's positives and ``seen``), without replacement, at a
uniform time in the day. So the events follow the preferences that made the data set: a model that
learned them predicts the next day, and one that learns the day too should predict the day after a
little better.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from towerserve.server.core.csr import CSR

from .generator import true_probabilities

DAY_SECONDS = 86_400.0


def next_day(
    root: Path | str,
    positives: CSR,
    rate: float,
    start: float,
    seed: int,
    seen: CSR | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One day of events for every user of the data set generated at ``root``.

    Args:
        positives: the data set's positives [users x items] (drawn items are never among them).
        rate: mean events per user in the day.
        start: the day's first second (Unix time); events fall in [start, start + DAY_SECONDS).
        seen: more items per user to leave out (an earlier simulated day).

    Returns:
        (user rows, item rows, times), sorted by time.
    """
    rng = np.random.default_rng([seed, 17])
    users, items = [], []
    for block, probs in true_probabilities(root):
        probs = np.array(probs, dtype=np.float64)  # a copy: the file may be memory-mapped
        for j, u in enumerate(block):
            probs[j, positives.row(int(u))] = 0.0
            if seen is not None:
                probs[j, seen.row(int(u))] = 0.0
        counts = np.minimum(rng.poisson(rate, size=len(block)), (probs > 0).sum(axis=1))
        if not counts.any():
            continue
        # Weighted draws without replacement, one vectorised step per block: the k largest of
        # log p + Gumbel noise are a draw of k items in proportion to p (the Gumbel-top-k trick).
        with np.errstate(divide="ignore"):
            keys = np.log(probs) + rng.gumbel(size=probs.shape)
        k = int(counts.max())
        top = (
            np.argpartition(-keys, k - 1, axis=1)[:, :k] if k < probs.shape[1] else np.argsort(-keys, axis=1)
        )
        order = np.take_along_axis(keys, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        for j in np.flatnonzero(counts):
            users.append(np.full(counts[j], block[j], dtype=np.int64))
            items.append(top[j, : counts[j]].astype(np.int64))
    u = np.concatenate(users) if users else np.empty(0, np.int64)
    i = np.concatenate(items) if items else np.empty(0, np.int64)
    at = start + rng.uniform(0.0, DAY_SECONDS, size=len(u))
    order = np.argsort(at, kind="stable")
    return u[order], i[order], at[order]
