"""Known users' history requests without a tower pass: a mean-pooling user tower is affine in its history.

The hybrid's user vector is ``content(x) + id_row + masked_mean(H[history])`` (manifest
history_pooling "mean"). For a known user with training positives T, the vector with T joined by new
items S is ``c + (sum_T H + sum_S H) / (|T| + |S|)``, where c is the user's vector with an empty
history. c, sum_T H and the table H come from batched tower passes at load; a request then costs a
small numpy sum instead of an ONNX Runtime call (the hybrid's 44-node graph is ~45 us per call on
this project's machine, against a 0.1 ms budget for the whole history). The decomposition is
checked against the graph at load on sampled users and histories; a graph that is not affine in its
history (attention pooling, or a mislabelled one) keeps the per-request tower pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.csr import CSR
from .history import known_ids, padded, with_training

_LOGGER = logging.getLogger(__name__)

CHECK_USERS = 16  # sampled (user, history) cases checked against the graph at load
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5  # export's parity gate is atol 1e-4
BATCH = 4096

# (features [n, F], ids [n], history [n, L] or None) -> user vectors [n, d]: Tower.users
RunTower = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class MeanHistory:
    """The pieces of known users' vectors under mean pooling.

    Attributes:
        loaded: float32 [n_users, d]: each known user's vector (training history), from load.
        base: float32 [n_users, d]: the same users with an empty history (for a user without training
            positives, the vector their request history is added to: see build).
        sums: float32 [n_users, d]: the sum of their training positives' history rows.
        counts: int64 [n_users]: how many training positives.
        table: float32 [n_items, d]: each exported item's history row (its part of the pooled mean).
        train: the split's training positives.
    """

    loaded: np.ndarray
    base: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    table: np.ndarray
    train: CSR

    def vector(self, user: int, rows: Sequence[int]) -> np.ndarray:
        """User ``user``'s vector with their training positives joined by exported item ``rows``."""
        # ``rows`` are distinct (history.resolve) and a training row's columns are sorted (build makes
        # sure), so one searchsorted drops those already in the training history: no Python set.
        new = np.fromiter(rows, dtype=np.int64, count=len(rows))
        have = self.train.row(user)
        if have.size and new.size:
            new = new[have[np.minimum(np.searchsorted(have, new), have.size - 1)] != new]
        if not new.size:
            return self.loaded[user]
        total = self.table[new].sum(axis=0)
        total += self.sums[user]
        total /= self.counts[user] + new.size
        total += self.base[user]
        return total

    @classmethod
    def build(
        cls, run: RunTower, features: Callable[[np.ndarray], np.ndarray], loaded: np.ndarray, train: CSR
    ) -> MeanHistory | None:
        """The decomposition from batched passes (``features(rows)``: known users' tower inputs), or
        None when the graph disagrees with it on the sampled cases."""
        n_users, n_items = len(loaded), train.n_cols
        if not _rows_sorted(train):  # vector() searches each row
            train = CSR.from_pairs(*train.pairs(), train.n_rows, train.n_cols)
        base = np.empty_like(loaded)
        for start in range(0, n_users, BATCH):
            rows = np.arange(start, min(n_users, start + BATCH))
            base[rows] = run(features(rows), known_ids(train, rows), None)
        # H[i]: an anonymous user's vector with history {i}, less the same user's with none (up to the
        # constant fixed below).
        x0 = features(np.array([0]))
        empty = run(x0, np.zeros(1, dtype=np.int64), None)[0]
        table = np.empty((n_items, loaded.shape[1]), dtype=np.float32)
        for start in range(0, n_items, BATCH):
            items = np.arange(start, min(n_items, start + BATCH))
            x = np.repeat(x0, len(items), axis=0)
            table[items] = run(x, np.zeros(len(items), dtype=np.int64), (items + 1)[:, None]) - empty
        counts = train.row_lengths().astype(np.int64)
        filled = np.flatnonzero(counts)
        # A mean is affine in its rows only up to a constant: a user without an id who gains a
        # history may move by more than the pooled rows (the hybrid's popularity weight is per
        # segment: "history" vs "attributes"). Users with an id fix the constant, since their loaded
        # vector is their empty-history vector plus the mean of their rows; users without one (no
        # training positives) take the shift into the base their request histories add to.
        sums = np.zeros_like(loaded)
        if filled.size:
            sums[filled] = np.add.reduceat(table[train.indices], train.indptr[filled], axis=0)
            shift = np.mean(sums[filled] / counts[filled, None] - (loaded[filled] - base[filled]), axis=0)
            table -= shift
            sums[filled] -= counts[filled, None] * shift
            base[counts == 0] += shift
        return cls(loaded, base, sums, counts, table, train)._checked(run, features, everyone=True)

    @classmethod
    def stored(
        cls,
        run: RunTower,
        features: Callable[[np.ndarray], np.ndarray],
        loaded: np.ndarray,
        base: np.ndarray,
        sums: np.ndarray,
        table: np.ndarray,
        train: CSR,
    ) -> MeanHistory | None:
        """The decomposition export stored (memory-mapped arrays), checked against the graph on
        sampled users only (every user would touch every page: what storing it avoids), or None."""
        if not _rows_sorted(train):
            train = CSR.from_pairs(*train.pairs(), train.n_rows, train.n_cols)
        counts = train.row_lengths().astype(np.int64)
        return cls(loaded, base, sums, counts, table, train)._checked(run, features, everyone=False)

    def _checked(self, run: RunTower, features: Callable[[np.ndarray], np.ndarray], everyone: bool):
        problem = self._check(run, features, everyone)
        if problem:
            _LOGGER.warning("history requests run the user tower per request: %s", problem)
            return None
        return self

    def _check(
        self, run: RunTower, features: Callable[[np.ndarray], np.ndarray], everyone: bool = True
    ) -> str | None:
        """None when the decomposition matches the graph on sampled users and histories, else why
        not; ``everyone``: also every user's loaded vector against its parts (else the sampled ones')."""
        rng = np.random.default_rng(0)
        n_users, n_items = len(self.loaded), self.train.n_cols
        users = rng.choice(n_users, size=min(CHECK_USERS, n_users), replace=False)
        extra = [
            rng.choice(n_items, size=min(1 + j % 6, n_items), replace=False).tolist()
            for j in range(len(users))
        ]
        want = run(
            features(users),
            known_ids(self.train, users),
            padded([with_training(self.train.row(u), e) for u, e in zip(users, extra)]),
        )
        got = np.stack([self.vector(int(u), e) for u, e in zip(users, extra)])
        # A known user's vector, as at load (with an empty extra history: the same vector).
        rows = np.arange(n_users) if everyone else np.sort(users)
        rows = rows[self.counts[rows] > 0]  # the others' base is where a history takes them (build)
        if not np.allclose(
            self.base[rows] + self.sums[rows] / self.counts[rows, None],
            self.loaded[rows],
            CHECK_RTOL,
            CHECK_ATOL,
        ):
            return "users' vectors at load are not their empty-history vectors plus the mean of their history rows"
        if not np.allclose(got, want, CHECK_RTOL, CHECK_ATOL):
            return f"the graph is not affine in its history (max |diff| {np.abs(got - want).max():.2e})"
        return None


def _rows_sorted(m: CSR) -> bool:
    """Whether every row's column indices are strictly increasing (CSR.from_pairs makes them so)."""
    step = np.diff(m.indices.astype(np.int64))
    starts = m.indptr[1:-1]
    inner = np.ones(step.size, dtype=bool)
    inner[starts[(starts > 0) & (starts <= step.size)] - 1] = False  # a row's first vs previous row's last
    return bool(np.all(step[inner] > 0))
