"""Users' histories as CSR slices, padded per batch: never one users x longest-history matrix.

The user tower pools a history of ``1 + item row`` ids, 0-padded. Holding every user's padded history
is users x the longest history (10⁶ users x a few thousand items for one very active user is GBs),
and drawing an epoch's sample over it as many random keys again. Here a history sample is a CSR of
item rows (at most ``cap`` per user), and a batch's users get theirs padded when the step needs them.

The sample is the one the hybrid always drew: while ``users x longest`` is at most
``EXACT_DRAW_CELLS``, one float32 key per padded position (padding included) from the same generator,
the ``cap`` smallest keys kept, drawn a block of users at a time (a block's draw continues the stream
where the previous block left it, so the keys are the ones one big draw would give): the same seeds
give the same samples and the same models as before. Above it only the items of users over the cap
get a key, an O(positives) draw: a different stream, the same distribution (a uniform ``cap``-subset).
"""

from __future__ import annotations

import numpy as np

from towerserve.server.core.csr import CSR

# Padded cells drawn per block of users, and the most drawn in all before the O(positives) path: at
# 2 x 10⁸ cells an epoch's keys cost ~1 s; the seed scale (10,000 x 257) is ~1 % of it.
BLOCK_CELLS = 4_000_000
EXACT_DRAW_CELLS = 200_000_000


def longest(train: CSR) -> int:
    """The padded width of every history at once (at least 1, as hybrid.pad_histories pads)."""
    return max(1, int(train.row_lengths().max(initial=0)))


def padded(hist: CSR, users: np.ndarray, width: int | None = None) -> np.ndarray:
    """int32 [len(users), width] of ``1 + item row``, 0-padded at the end; ``width`` defaults to the
    longest of these histories (at least 1). A history longer than ``width`` is cut."""
    users = np.asarray(users, dtype=np.int64)
    lengths = hist.indptr[users + 1] - hist.indptr[users]
    if width is None:
        width = max(1, int(lengths.max(initial=0)))
    lengths = np.minimum(lengths, width)
    out = np.zeros((len(users), width), dtype=np.int32)
    row = np.repeat(np.arange(len(users)), lengths)
    pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row, pos] = hist.indices[np.repeat(hist.indptr[users], lengths) + pos] + 1
    return out


def _from_padded(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, item rows) of a padded block's non-zero entries, in their row order."""
    keep = block > 0
    return keep.sum(axis=1), block[keep].astype(np.int32) - 1


def _assemble(n_users: int, n_cols: int, lengths: list, items: list) -> CSR:
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else np.zeros(0, np.int64), out=indptr[1:])
    cols = np.concatenate(items) if items else np.zeros(0, np.int32)
    return CSR(indptr=indptr, indices=cols.astype(np.int32), n_cols=n_cols)


def sample(train: CSR, cap: int, rng: np.random.Generator) -> CSR:
    """Up to ``cap`` random history items per user (all of them when the user has fewer), as a CSR
    whose rows keep the sampled items in the order the pooling sees them (not sorted)."""
    width = longest(train)
    if width <= cap:
        return train  # no draw at all: every history fits
    n = train.n_rows
    if n * width > EXACT_DRAW_CELLS:
        return _sample_positions(train, cap, rng)
    lengths, items = [], []
    step = max(1, BLOCK_CELLS // width)
    for start in range(0, n, step):
        users = np.arange(start, min(n, start + step))
        block = padded(train, users, width)
        keys = rng.random(block.shape, dtype=np.float32)
        keys[block == 0] = 2.0  # padding sorts last
        pick = np.argpartition(keys, cap - 1, axis=1)[:, :cap]
        got = _from_padded(np.take_along_axis(block, pick, axis=1))
        lengths.append(got[0])
        items.append(got[1])
    return _assemble(n, train.n_cols, lengths, items)


def _sample_positions(train: CSR, cap: int, rng: np.random.Generator) -> CSR:
    """:func:`sample` drawing one key per item of the users over the cap only: O(their positives)."""
    lengths = train.row_lengths()
    over = np.flatnonzero(lengths > cap)
    keep = np.ones(train.nnz, dtype=bool)
    step = max(1, BLOCK_CELLS // cap)
    for start in range(0, len(over), step):
        users = over[start : start + step]
        size = lengths[users]
        first = train.indptr[users]
        at = np.repeat(first, size) + (np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size))
        owner = np.repeat(np.arange(len(users)), size)
        order = np.lexsort((rng.random(len(at), dtype=np.float32), owner))  # by user, then key
        rank = np.empty(len(at), dtype=np.int64)
        rank[order] = np.arange(len(at)) - np.repeat(np.cumsum(size) - size, size)
        keep[at[rank >= cap]] = False
    rows = np.repeat(np.arange(train.n_rows), lengths)[keep]
    indptr = np.zeros(train.n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=train.n_rows), out=indptr[1:])
    return CSR(indptr=indptr, indices=train.indices[keep], n_cols=train.n_cols)


def drop(hist: CSR, width: int, share: float, rng: np.random.Generator) -> CSR:
    """Each history item hidden with probability ``share``: one uniform draw per padded position of
    users x ``width`` (the padded sample's shape, as the hybrid always drew it), a block at a time."""
    lengths, items = [], []
    step = max(1, BLOCK_CELLS // width)
    for start in range(0, hist.n_rows, step):
        users = np.arange(start, min(hist.n_rows, start + step))
        block = padded(hist, users, width)
        got = _from_padded(np.where(rng.random(block.shape) < share, 0, block))
        lengths.append(got[0])
        items.append(got[1])
    return _assemble(hist.n_rows, hist.n_cols, lengths, items)
