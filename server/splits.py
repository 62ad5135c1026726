"""Recorded evaluation splits as the trainer saved them (pure numpy, so the server can read them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .csr import CSR


@dataclass(frozen=True)
class RecordedSplit:
    """A split saved by ``trainer.splits.Split.save``.

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


def load_recorded_split(path: Path | str) -> RecordedSplit:
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
