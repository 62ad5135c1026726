"""Score: probabilities for explicit (user, item) pairs, each distinct user through the tower once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..core.numerics import sigmoid
from ..core.types import UserAttrs
from .deadline import Check, never
from .errors import NotFound
from .history import NO_HISTORY, History, joined
from .inputs import UserRef
from .validation import check_id, show, validate_score

if TYPE_CHECKING:
    from .engine import Engine


def score(
    engine: Engine,
    pairs: Sequence[tuple[str | UserAttrs, str]],
    histories: Sequence[History] | None = None,
    check: Check = never,
) -> np.ndarray:
    """Probabilities for (user, item id) pairs, float32 [len(pairs)]; ``histories``: one per pair;
    ``check`` (the deadline) runs between encoder runs and tower blocks. A known user's recorded
    interactions (RecordInteractions) are pooled as Recommend pools them.

    Raises:
        NotFound: an unknown user_id or item_id (the first, with its pair's index).
        InvalidArgument: a limit broken (pairs, new texts, an id's length).
    """
    validate_score(len(pairs), engine.limits)
    cat = engine.catalog  # one snapshot for the whole request
    items = np.empty(len(pairs), dtype=np.int64)
    hists = histories or [NO_HISTORY] * len(pairs)
    refs: list[UserRef] = []
    per_ref: list[History] = []
    slot: dict[object, int] = {}
    which = np.empty(len(pairs), dtype=np.int64)
    live, max_history = len(engine.live) > 0, engine.history_index.max_history
    for j, (user, item_id) in enumerate(pairs):
        i = cat.row(item_id)
        if i is None:
            check_id(f"pairs[{j}].item_id", item_id)
            raise NotFound(f"unknown item_id {show(item_id)} (pair {j})")
        items[j] = i
        ref = engine.user_index_of(user) if isinstance(user, str) else user
        h = hists[j]
        if (
            not isinstance(ref, UserAttrs)
            and live
            and (view := engine.live.get(ref)) is not None
            and view.rows
        ):
            # Their recorded interactions join the history the tower pools, as in Recommend.
            h = joined(h, view.rows, max_history)
        key = (ref, h.rows)
        if key not in slot:  # each distinct (user, history) goes through the tower once
            slot[key] = len(refs)
            refs.append(ref)
            per_ref.append(h)
        which[j] = slot[key]
    uvec = engine.inputs.user_vectors(engine.serving, refs, per_ref, check, engine.limits)
    logits = np.einsum("nd,nd->n", uvec[which], cat.vectors[items])
    return sigmoid(logits).astype(np.float32)
