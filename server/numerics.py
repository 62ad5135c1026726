"""Small numeric helpers shared by every package: one sigmoid, one row-wise cosine."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Logistic function in float64, stable for any finite input (no overflow warning below -709).

    Returns an array of x's shape; callers round to float32 where the ONNX head would.
    """
    x = np.asarray(x, dtype=np.float64)
    # exp(-|x|) never overflows; the two branches are the same function written two ways.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def cosine_rows(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Cosine similarity of each row of ``a`` [n, d] with the same row of ``b`` [n, d] -> float64 [n].

    A zero row has cosine 0 with anything (``eps`` keeps the division finite).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, eps)
