"""Small numeric helpers shared by every package: one sigmoid, one row-wise cosine, and the one way
the server turns vectors into logits and probabilities."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Logistic function in float64, for any finite input, with no overflow warning.

    Clamping at -700 keeps ``exp`` finite (it overflows past 709); below that the true value is
    under 1e-304, which rounds to the same float32 0.0. One clamp instead of a two-branch ``where``:
    this runs per request on the exact path, where every numpy call over ten values counts.
    Returns an array of x's shape; callers round to float32 where the ONNX head would.
    """
    x = np.asarray(x, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-np.maximum(x, -700.0)))


def cosine_rows(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Cosine similarity of each row of ``a`` [n, d] with the same row of ``b`` [n, d] -> float64 [n].

    A zero row has cosine 0 with anything (``eps`` keeps the division finite).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, eps)


def logits(vectors64: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Item logits for one user, float32 [n]: summed in float64, so the candidate lists (a batched
    product) and the exact path (a matrix-vector product) give the same numbers and orders."""
    return (vectors64 @ u.astype(np.float64)).astype(np.float32)


def probabilities(x: np.ndarray) -> np.ndarray:
    """float32 probabilities of float32 logits, as the ONNX head would round them. The candidate
    lists and the exact path both come through here, so their probabilities are bit-identical."""
    return sigmoid(x).astype(np.float32)
