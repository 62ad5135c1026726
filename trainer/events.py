"""Recorded interactions (RecordInteractions) merged into a data set's positives: `train --events`.

The server journals every event in its catalogue journal (server/catalog/store.py), SQLite under a
--state-dir or PostgreSQL at a --catalog-url; this reads them back and adds each (user, item) the
data set knows to its positives, so the next model learns what users did since the last one. What
was merged is recorded in the training manifest (``data.events``), ``upto`` above all: the journal
sequence number of the last event the model saw, which `towerserve promote` uses to judge a
candidate only on events it never trained on.

**The time split.** Each user's most recent recorded interaction (if the data set's positives lack
it) is held out of training: every model trained on the holdout split is also judged on these
(``time_ndcg@10`` in metrics.json), the realistic protocol of a model that predicts what users do
next; the random split's numbers stay as they were. The rest of the events join the positives.

Events of users or items the data set lacks (users created by RecordInteractions, items added by
UpsertItems) are counted, not merged: the data set's users.csv and items.csv carry the attributes a
model needs, which an event does not.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from towerserve.server.catalog.journal import open_journal
from towerserve.server.core.csr import CSR

from .data import Dataset

_LOGGER = logging.getLogger(__name__)


def merge_events(ds: Dataset, source: str | Path, after: int = 0) -> tuple[Dataset, dict, CSR]:
    """``ds`` with the journal's events (sequence numbers past ``after``) added to its positives, less
    each user's most recent one (the time split's test).

    Returns:
        (the data set, the record for the manifest: source, events read, merged, new positives, held
        out, unknown users and items, ``upto`` (the last sequence number read) and the events' time
        span; the held-out positives, users x items).
    """
    store = open_journal(source)
    try:
        uidx, iidx = ds.user_index(), ds.item_index()
        users, items, ats, upto, seen, first_at, last_at = [], [], [], after, 0, None, None
        unknown_users, unknown_items = set(), set()
        for seq, e in store.events(after):
            seen += 1
            upto = max(upto, seq)
            first_at = e.at if first_at is None else min(first_at, e.at)
            last_at = e.at if last_at is None else max(last_at, e.at)
            u, i = uidx.get(e.user_id), iidx.get(e.item_id)
            if u is None:
                unknown_users.add(e.user_id)
            if i is None:
                unknown_items.add(e.item_id)
            if u is not None and i is not None:
                users.append(u)
                items.append(i)
                ats.append(e.at)
    finally:
        store.close()
    users_a, items_a = np.asarray(users, np.int64), np.asarray(items, np.int64)
    latest = latest_per_user(users_a, np.asarray(ats, np.float64))
    # Held out: a user's most recent event, unless the data set already had that pair (then it is
    # no news, and training has it anyway).
    latest = latest[~ds.positives.contains_pairs(users_a[latest], items_a[latest])] if latest.size else latest
    keep = np.ones(len(users_a), dtype=bool)
    keep[latest] = False
    held = CSR.from_pairs(users_a[latest], items_a[latest], ds.n_users, ds.n_items)
    before = ds.positives.nnz
    added = CSR.from_pairs(users_a[keep], items_a[keep], ds.n_users, ds.n_items)
    merged = ds.positives.union(added) if keep.any() else ds.positives
    merged = merged.minus(held) if held.nnz else merged  # the same pair may have been recorded twice
    record = {
        "source": getattr(store, "url", str(source)),
        "after": int(after),
        "upto": int(upto),
        "read": seen,
        "merged": len(users),
        "new_positives": int(merged.nnz - before),
        "held_out": int(held.nnz),
        "unknown_users": len(unknown_users),
        "unknown_items": len(unknown_items),
        "first_at": first_at,
        "last_at": last_at,
    }
    _LOGGER.info(
        "events from %s: %d read (up to sequence %d), %d merged, %d new positives; %d unknown users, %d unknown items",
        record["source"],
        seen,
        upto,
        len(users),
        record["new_positives"],
        len(unknown_users),
        len(unknown_items),
    )
    return replace(ds, positives=merged), record, held


def latest_per_user(users: np.ndarray, ats: np.ndarray) -> np.ndarray:
    """Positions of each user's most recent event (the later position on a tie)."""
    if not users.size:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(users)), ats, users))  # by user, then time, then position
    last = np.r_[users[order][1:] != users[order][:-1], True]
    return order[last]
