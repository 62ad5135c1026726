"""The generator's files written block by block: the CSV tables, and the interactions as matrix or long form."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..data import LONG_FILE, MATRIX_FILE, TRUTH_FILE


def write_csv(path: Path, header: list[str], columns: list[np.ndarray]) -> None:
    import pandas as pd

    pd.DataFrame(dict(zip(header, columns))).to_csv(path, index=False, lineterminator="\n")


def write_interactions(
    out: Path,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    blocks: Iterable[tuple[np.ndarray, np.ndarray, np.random.Generator]],
    long_form: bool,
    progress: bool,
    n_blocks: int = 0,
) -> int:
    """Draws each block's pairs from its probabilities and stream, and appends them to the file.

    Matrix form writes user_product_rating_matrix.csv and true_probabilities.npy (a memory map, so
    the dense truth is never held in memory); long form writes interactions.csv only.

    Args:
        blocks: (user ids, true probabilities [b, n_items], the block's stream), in user order.

    Returns:
        The number of positives drawn.
    """
    from ..progress import steps

    n_users, n_items = len(user_ids), len(item_ids)
    truth = None
    if not long_form:
        truth = np.lib.format.open_memmap(
            out / TRUTH_FILE, mode="w+", dtype=np.float32, shape=(n_users, n_items)
        )
    positives = 0
    # Python strings made once: indexing numpy string arrays per pair costs ~1 µs (see write_pairs).
    items = [f"{i}\n" for i in item_ids.tolist()] if long_form else []
    target = out / (LONG_FILE if long_form else MATRIX_FILE)
    with open(target, "wb") as fh:
        fh.write((("user_id,item_id" if long_form else "user_id," + ",".join(item_ids)) + "\n").encode())
        # A bar on a terminal; piped, a plain log line every 30 s and one at the end (trainer/progress.py).
        for users, probs, rng in steps(blocks, n_blocks, "generate", "blocks", bars=progress):
            hit = rng.random(probs.shape, dtype=np.float32) < probs
            positives += int(hit.sum())
            ids = user_ids[users]
            if long_form:
                r, c = np.nonzero(hit)
                us = [f"{u}," for u in ids.tolist()]
                fh.write("".join([us[a] + items[b] for a, b in zip(r.tolist(), c.tolist())]).encode())
            else:
                truth[users] = probs
                # Each row is "0,1,0,...\n": build the bytes in numpy rather than formatting 10^7 ints.
                cells = np.empty((len(users), 2 * n_items), dtype=np.uint8)
                cells[:, 0::2] = np.where(hit, ord("1"), ord("0"))
                cells[:, 1::2] = ord(",")
                cells[:, -1] = ord("\n")
                for uid, row in zip(ids, cells):
                    fh.write(uid.encode() + b"," + row.tobytes())
    if truth is not None:
        truth.flush()
        del truth
    return positives


def write_pairs(
    out: Path,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    progress: bool,
    n_blocks: int = 0,
) -> int:
    """Writes long-form interactions.csv from blocks of drawn positives (the pooled generator's).

    Args:
        blocks: (user ids of the block, block-local row, item index) of each positive, in user order.

    Returns:
        The number of positives written.
    """
    from ..progress import steps

    # Lines are joined from Python strings made once ("uid," and "item\n"): indexing numpy string
    # arrays per row costs ~1 µs, ~20 s for the 2 x 10⁷ rows of a 10⁶ x 10⁶ data set.
    items = [f"{i}\n" for i in item_ids.tolist()]
    positives = 0
    with open(out / LONG_FILE, "wb") as fh:
        fh.write(b"user_id,item_id\n")
        for users, rows, cols in steps(blocks, n_blocks, "generate", "blocks", bars=progress):
            ids = [f"{u}," for u in user_ids[users].tolist()]
            fh.write("".join([ids[r] + items[c] for r, c in zip(rows.tolist(), cols.tolist())]).encode())
            positives += len(rows)
    return positives
