"""Recorded evaluation splits: the .npz format's writer (used by training) and reader (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .csr import CSR


@dataclass(frozen=True)
class RecordedSplit:
    """A split as the artifacts record it (``trainer.splits.Split.recorded`` builds one).

    Attributes:
        name: "holdout" or "cold".
        train: positives the model trained on (masked out of rankings).
        test: held-out positives.
        notebook_users / notebook_items: one held-out positive per user (the notebook's metric).
        cold_users / cold_items: ids held out entirely (cold split).
    """

    name: str
    train: CSR
    test: CSR
    notebook_users: np.ndarray
    notebook_items: np.ndarray
    cold_users: np.ndarray
    cold_items: np.ndarray


def save_recorded_split(path: Path | str, split: RecordedSplit) -> None:
    """Writes ``split`` as one .npz; :func:`load_recorded_split` reads it back."""
    np.savez(
        path,
        name=np.array(split.name),
        train_indptr=split.train.indptr,
        train_indices=split.train.indices,
        test_indptr=split.test.indptr,
        test_indices=split.test.indices,
        n_items=np.int64(split.train.n_cols),
        notebook_users=split.notebook_users,
        notebook_items=split.notebook_items,
        cold_users=split.cold_users,
        cold_items=split.cold_items,
    )


def load_recorded_split(path: Path | str) -> RecordedSplit:
    """Reads what :func:`save_recorded_split` wrote."""
    with np.load(path) as z:
        n_items = int(z["n_items"])
        return RecordedSplit(
            name=str(z["name"]),
            train=CSR(z["train_indptr"], z["train_indices"], n_items),
            test=CSR(z["test_indptr"], z["test_indices"], n_items),
            notebook_users=z["notebook_users"].astype(np.int64),
            notebook_items=z["notebook_items"].astype(np.int64),
            cold_users=z["cold_users"].astype(np.int64),
            cold_items=z["cold_items"].astype(np.int64),
        )
