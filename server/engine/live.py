"""Users' recorded interactions (RecordInteractions), as served: their live histories.

Each user with recorded interactions has a :class:`LiveHistory`: the item ids, most recent first, that
their results leave out (like training positives), and, for a model that reads a history, the
exported item rows it pools, most recent first and at most ``max_history`` of them.

With a mean-pooling tower (server/engine/mean_history.py) the user's vector is kept up to date as
events arrive, not recomputed: ``(sum of training rows + sum of recorded rows not in training) /
(their count) + base`` needs one running sum per user, so an event costs O(d) (an add, and a
subtract when the oldest row leaves the window). Any other tower (attention pooling) pools the rows
with a user-tower pass per request, as a request history does.

Memory is bounded twice: per user (``max_history`` rows and MAX_SEEN_IDS ids, plus a d-vector of
sums), and in total (``budget_events`` rows and ids over every user). Past the budget the least
recently recorded users are evicted; the journal still holds their events, and ``loader`` (set by
the server, which owns the journal) brings a user's back when they are next served.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.types import Interaction
from .mean_history import MeanHistory

MAX_SEEN_IDS = 1000  # recorded item ids a user's results leave out (the most recent ones)


@dataclass
class LiveHistory:
    """One user's recorded interactions as served.

    Attributes:
        ids: recorded item ids, most recent first, distinct (at most MAX_SEEN_IDS).
        rows: exported item rows the tower pools, most recent first, distinct (at most max_history).
        extra_sum: for the mean-pooling shortcut, the sum of the history-table rows of ``rows`` that
            are not in the user's training history, and ``extra`` their count.
    """

    ids: deque = field(default_factory=deque)
    rows: deque = field(default_factory=deque)
    extra_sum: np.ndarray | None = None
    extra: int = 0
    latest: float = 0.0
    version: int = 0  # bumped by every event: what a cached candidate list was built for
    cached: tuple | None = None  # (version, catalogue snapshot, rows, probabilities): see Engine.plan
    left_out: tuple | None = None  # (version, catalogue snapshot, the ids' rows): LiveView.left_out_rows
    view: LiveView | None = None  # what get() returned for this version: built once per event

    @property
    def size(self) -> int:
        return len(self.ids) + len(self.rows)


@dataclass(frozen=True)
class LiveView:
    """A user's live history as one request sees it, copied under the lock (events may arrive while
    the request runs): the ids to leave out, the rows to pool, the vector when the mean-pooling
    shortcut gives it, and the history object its candidate list is cached on."""

    ids: tuple[str, ...]
    rows: tuple[int, ...]
    version: int
    vector: np.ndarray | None
    history: LiveHistory

    def left_out_rows(self, cat) -> tuple[int, ...]:
        """The catalogue rows of ``ids`` in snapshot ``cat`` (cached on the history until the next
        event or snapshot: up to MAX_SEEN_IDS dict lookups otherwise, per request)."""
        cached = self.history.left_out
        if cached is not None and cached[0] == self.version and cached[1] is cat:
            return cached[2]
        rows = tuple(j for j in map(cat.row, self.ids) if j is not None)
        self.history.left_out = (self.version, cat, rows)
        return rows


class LiveHistories:
    """Every user's :class:`LiveHistory` (users by their row in users.csv, or a created user's key).

    Args:
        max_history: rows pooled per user (the model's; 0: the model reads no history).
        budget_events: rows and ids held over every user before the least recent users are evicted.
        mean: the served tower's mean-pooling decomposition (None: no O(d) vectors).
        row_of: an item id's exported row (None: the export lacks it, and no tower pools it).
    """

    def __init__(
        self,
        max_history: int,
        budget_events: int,
        mean: MeanHistory | None,
        row_of: Callable[[str], int | None],
    ):
        self.max_history, self.budget, self.mean, self.row_of = max_history, budget_events, mean, row_of
        self._users: OrderedDict[int | str, LiveHistory] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self.evicted: set[int | str] = set()  # users whose events only the journal holds now
        # A user's events read back from the journal; None when it cannot answer now (the user stays
        # evicted, and is served without them until it can).
        self.loader: Callable[[int | str], Sequence[Interaction] | None] | None = None
        self.recorded = 0  # events applied since load

    def __len__(self) -> int:
        return len(self._users)

    @property
    def held(self) -> int:
        return self._held

    def record(self, user: int | str, item_id: str, row: int | None, at: float) -> None:
        """Applies one event: ``item_id`` joins the user's left-out ids, ``row`` (its exported row, None
        for an item the export lacks) their pooled history."""
        with self._lock:
            self._record(user, item_id, row, at)
            self.recorded += 1
            self._evict()

    def _record(self, user: int | str, item_id: str, row: int | None, at: float) -> None:
        h = self._users.pop(user, None)
        if h is None:
            h = LiveHistory()
        self._users[user] = h  # most recently recorded last (the eviction order)
        self._held -= h.size
        if at < h.latest:  # an older event (a replay, or out of order): kept, but not as the newest
            _add_old(h.ids, item_id, MAX_SEEN_IDS)
            if row is not None and self.max_history:
                self._add_row(user, h, row, newest=False)
        else:
            h.latest = at
            _add_new(h.ids, item_id, MAX_SEEN_IDS)
            if row is not None and self.max_history:
                self._add_row(user, h, row, newest=True)
        h.version += 1
        self._held += h.size

    def _add_row(self, user: int | str, h: LiveHistory, row: int, newest: bool) -> None:
        if row in h.rows:
            if newest:
                h.rows.remove(row)
                h.rows.appendleft(row)
            return
        if not newest and len(h.rows) >= self.max_history:
            return  # older than every row the window holds
        (h.rows.appendleft if newest else h.rows.append)(row)
        self._pooled(user, h, row, +1)
        if len(h.rows) > self.max_history:
            self._pooled(user, h, h.rows.pop(), -1)

    def _pooled(self, user: int | str, h: LiveHistory, row: int, sign: int) -> None:
        """Adds (sign +1) or removes a row from the running sum, unless training already pools it."""
        m = self.mean
        if m is None or not isinstance(user, int) or _in_training(m, user, row):
            return
        if h.extra_sum is None:
            h.extra_sum = np.zeros(m.table.shape[1], dtype=np.float64)
        h.extra_sum += sign * m.table[row]
        h.extra += sign

    def _evict(self) -> None:
        while self._held > self.budget and len(self._users) > 1:
            user, h = self._users.popitem(last=False)
            self._held -= h.size
            self.evicted.add(user)

    def get(self, user: int | str) -> LiveView | None:
        """The user's live history (brought back from the journal after an eviction), or None."""
        if user not in self._users:
            if user not in self.evicted or self.loader is None:
                return None
            events = self.loader(user)  # outside the lock: a journal read
            if events is None:
                return None
            with self._lock:
                self.evicted.discard(user)
                if user not in self._users:
                    for e in sorted(events, key=lambda e: e.at):
                        self._record(user, e.item_id, self.row_of(e.item_id), e.at)
                    self._evict()
        with self._lock:
            h = self._users.get(user)
            if h is None:
                return None
            # Built once per event, not per request: copying a long history and pooling its vector
            # cost more than the rest of a candidate-list Recommend.
            if h.view is None or h.view.version != h.version:
                h.view = LiveView(tuple(h.ids), tuple(h.rows), h.version, self._vector(user, h), h)
            return h.view

    def _vector(self, user: int | str, h: LiveHistory) -> np.ndarray | None:
        """A known user's vector with their recorded rows pooled, in O(d); None for a created user, or
        without the mean-pooling shortcut (the caller then runs the tower on the rows)."""
        m = self.mean
        if m is None or not isinstance(user, int):
            return None
        if not h.rows:
            return m.loaded[user]
        total = m.sums[user] + (h.extra_sum if h.extra_sum is not None else 0.0)
        return (total / (m.counts[user] + h.extra) + m.base[user]).astype(np.float32)


def _in_training(m: MeanHistory, user: int, row: int) -> bool:
    have = m.train.row(user)
    j = np.searchsorted(have, row)
    return bool(j < have.size and have[j] == row)


def _add_new(q: deque, x, cap: int) -> None:
    if x in q:
        q.remove(x)
    q.appendleft(x)
    if len(q) > cap:
        q.pop()


def _add_old(q: deque, x, cap: int) -> None:
    if x not in q and len(q) < cap:
        q.append(x)
