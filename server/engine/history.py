"""Interaction histories for a user tower that reads one: request ids to exported item rows, padded inputs.

A hybrid model's user tower takes ``history`` int32 [batch, L]: 1 + a row of the EXPORTED catalogue's
items.csv per item, 0 for padding (pooled with a mask inside the graph, so the padding width changes
nothing). Only exported items have a history embedding: an id the export did not have (a typo, or an
item UpsertItems added later) is ignored and counted; an upsert that replaces an exported id keeps
its row, since the learned embedding belongs to the id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.csr import CSR
from .errors import InvalidArgument
from .validation import check_ids

# The request limit when a manifest names a history input but records no max_history.
DEFAULT_MAX_HISTORY = 200


@dataclass(frozen=True)
class History:
    """A request's history resolved against the exported catalogue.

    Attributes:
        rows: distinct exported item rows (0-based) the tower will read, in request order.
        sent: ids the request carried (duplicates and unknown ids included).
    """

    rows: tuple[int, ...] = ()
    sent: int = 0

    @property
    def used(self) -> int:
        """Distinct items the model reads (the response's history_used)."""
        return len(self.rows)


NO_HISTORY = History()


class HistoryIndex:
    """Item id -> exported row, and the request limit; ``max_history`` 0: the model reads no history."""

    def __init__(self, exported_ids: Sequence[str], max_history: int):
        self.index = {x: j for j, x in enumerate(exported_ids)}
        self.max_history = max_history

    def resolve(self, ids: Sequence[str], name: str = "history") -> History:
        """The rows of ``ids`` the tower reads.

        Raises:
            InvalidArgument: more than ``max_history`` ids (for a model that reads them), or an id
                empty or over 200 characters (``name`` and the offending position are named).
        """
        if not ids:
            return NO_HISTORY
        if self.max_history and len(ids) > self.max_history:
            raise InvalidArgument(
                f"{name} holds {len(ids)} items; the limit is {self.max_history} (GetModelInfo.max_history)"
            )
        check_ids(name, ids)
        if not all(ids):  # an id is 1..200 characters: an empty one is a client's bug, not an item
            raise InvalidArgument(f"{name}[{next(j for j, x in enumerate(ids) if not x)}] is empty")
        if not self.max_history:  # the served model reads no history: ignored, nothing used
            return History((), len(ids))
        rows = dict.fromkeys(map(self.index.get, ids))  # distinct, order kept
        rows.pop(None, None)  # unknown ids
        return History(tuple(rows), len(ids))


def joined(history: History, rows: Sequence[int], max_history: int) -> History:
    """``history``'s rows followed by those of ``rows`` it lacks (a user's recorded interactions after
    a request's items), at most ``max_history``: what the tower pools."""
    return History(tuple(dict.fromkeys((*history.rows, *rows)))[:max_history], history.sent)


def known_ids(train: CSR | None, rows: np.ndarray) -> np.ndarray:
    """int64 [len(rows)]: the id input of known users ``rows``: 1 + row, or 0 (unknown) for a user with
    no training positives in the split (a cold user, whose ID row never trained), as training scores."""
    if train is None:
        return np.asarray(rows, dtype=np.int64) + 1
    if len(rows) <= 8:  # a request's few users: Python ints beat three numpy calls
        ptr = train.indptr
        return np.array([r + 1 if ptr[r + 1] > ptr[r] else 0 for r in rows], dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    return np.where(train.indptr[rows + 1] > train.indptr[rows], rows + 1, 0)


def with_training(train: np.ndarray, rows: Sequence[int]) -> list[int]:
    """A known user's training positives followed by the request's rows they lack (each item once)."""
    have = train.tolist()
    if not rows:
        return have
    known = set(have)
    return have + [r for r in rows if r not in known]


def padded(histories: Sequence[Sequence[int]]) -> np.ndarray:
    """int32 [n, max(1, longest)]: 1 + each exported item row, 0-padded at the end."""
    width = max(1, max((len(h) for h in histories), default=0))
    out = np.zeros((len(histories), width), dtype=np.int32)
    for r, h in enumerate(histories):
        if len(h):
            out[r, : len(h)] = np.asarray(h, dtype=np.int64) + 1
    return out


def padded_rows(train: CSR, rows: np.ndarray) -> np.ndarray:
    """:func:`padded` of CSR rows ``rows`` (known users' training positives), without a Python loop."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = train.indptr[rows + 1] - train.indptr[rows]
    out = np.zeros((len(rows), max(1, int(lengths.max(initial=0)))), dtype=np.int32)
    if lengths.sum():
        local = np.repeat(np.arange(len(rows)), lengths)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[local, np.arange(len(local)) - starts] = train.gather(rows) + 1
    return out
