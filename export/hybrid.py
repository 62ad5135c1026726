"""The hybrid model's split at export: user-tower parity with ids and histories, catalogue item vectors.

The user tower takes ``user_index`` (1 + users.csv row, 0 unknown) and ``history`` (1 + items.csv
row, 0 padding, any width >= 1); parity is checked on the recorded training histories and on the
shapes a server will send: unknown users, empty (all-padding) rows of several widths, and
histories cut to random lengths. Catalogue item vectors are the item tower's content vectors plus
each known item's ID row; the exported item tower is the content path alone (items added later).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from towerserve.server.core.manifest import FullGraph
from towerserve.server.core.numerics import sigmoid
from towerserve.server.core.splits import RecordedSplit

from .parity import ParityReport
from .towers import SCORE_OUTPUT, USER_OUTPUT

_LOGGER = logging.getLogger(__name__)

ID_INPUT, HISTORY_INPUT, ITEM_INDEX = "user_index", "history", "item_index"
FULL_INPUTS = ("user_features", ID_INPUT, HISTORY_INPUT, "item_features", ITEM_INDEX)


def _batches(recorded: RecordedSplit, users: np.ndarray, rng: np.random.Generator) -> dict[str, tuple]:
    """Named (user_index, history) cases for the sampled users, each an input a server may send."""
    from towerserve.trainer.hybrid import fit as hybrid_fit
    from towerserve.trainer.hybrid import model as hybrid

    n = recorded.train.n_rows
    known = hybrid.known_index(n, hybrid_fit.known_users(recorded.train))[users]
    full = [recorded.train.row(int(u)) for u in users]
    cut = [h[: rng.integers(0, len(h) + 1)] for h in full]
    zeros = np.zeros(len(users), np.int32)
    return {
        "training histories": (known, hybrid.pad_histories(full)),
        "histories cut to random lengths": (known, hybrid.pad_histories(cut)),
        "unknown users, all-padding history (L=1)": (zeros, np.zeros((len(users), 1), np.int32)),
        "known users, empty history (L=5 of padding)": (known, np.zeros((len(users), 5), np.int32)),
    }


def check_split(
    name: str,
    model,
    sessions: dict,
    user_rows: np.ndarray,
    item_rows: Callable[[np.ndarray], np.ndarray],
    n_items: int,
    recorded: RecordedSplit,
    users: np.ndarray,
    content: np.ndarray,
    atol: float,
    report: ParityReport,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Checks the user tower on every case and the full graph; returns (user vectors of the sampled
    users with their training histories, catalogue item vectors: ``content`` + ID rows).

    ``user_rows`` are the feature rows of the sampled ``users``; ``item_rows(rows)`` builds those of
    the given items: no users x features or items x features matrix is built (7.7 GB at 10⁶ x 10⁶).
    """
    from towerserve.trainer.hybrid import fit as hybrid_fit
    from towerserve.trainer.hybrid import model as hybrid

    user_k = model.get_layer("user_tower")
    first = None
    cases = _batches(recorded, users, rng)
    for case, (idx, hist) in cases.items():
        ref = np.asarray(user_k([user_rows, idx, hist], training=False))
        got = sessions["user_tower"].run(
            [USER_OUTPUT], {"user_features": user_rows, ID_INPUT: idx, HISTORY_INPUT: hist}
        )[0]
        report.allclose(f"{name} user_tower, {case} ({len(users)} users)", ref, got, atol)
        first = got if first is None else first
    item_idx = hybrid.known_index(n_items, hybrid_fit.known_items(recorded.train))
    ids = np.asarray(model.get_layer("item_id_embedding")(item_idx), dtype=np.float32)
    vectors = (content + ids).astype(np.float32)
    idx, hist = cases["training histories"]
    pairs_i = rng.integers(0, n_items, size=len(users))
    feeds = {
        "user_features": user_rows,
        ID_INPUT: idx,
        HISTORY_INPUT: hist,
        "item_features": item_rows(pairs_i),
        ITEM_INDEX: item_idx[pairs_i],
    }
    ref = np.asarray(model([feeds[k] for k in FULL_INPUTS], training=False)).reshape(-1)
    full = sessions["full"].run([SCORE_OUTPUT], feeds)[0].reshape(-1)
    report.allclose(f"{name} full model ({len(users)} pairs, ids and histories)", ref, full, atol)
    dot = sigmoid(np.einsum("nd,nd->n", first, vectors[pairs_i]))
    report.allclose(f"{name} sigmoid(user . item vector with ID rows) vs Keras model", ref, dot, atol)
    return first, vectors


def full_graph(rel: Path) -> FullGraph:
    return FullGraph(file=str(rel / "full.onnx"), inputs=FULL_INPUTS, output=SCORE_OUTPUT)
