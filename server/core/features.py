"""How raw user/item attributes become model input vectors; one spec shared by trainer and server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

TEXT, MINMAX = "text", "minmax"


@dataclass(frozen=True)
class FieldSpec:
    """One slice of a model's input vector.

    Attributes:
        name: the attribute (column) it comes from, e.g. "profession" or "age".
        kind: "text" (a sentence embedding of ``dim`` floats) or "minmax" (one scaled float).
        dim: its width in the input vector.
        max_length: tokens kept when embedding (text only).
        lo, hi: min-max scaler fitted on training data (minmax only); x -> (x - lo) / (hi - lo).
    """

    name: str
    kind: str
    dim: int
    max_length: int = 0
    lo: float = 0.0
    hi: float = 1.0

    def scale(self, values: np.ndarray) -> np.ndarray:
        span = self.hi - self.lo
        # A constant training column carries no signal; map it to 0 rather than dividing by zero.
        return (
            np.zeros_like(values, dtype=np.float32)
            if span == 0
            else ((values - self.lo) / span).astype(np.float32)
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> FieldSpec:
        return cls(**{k: d[k] for k in ("name", "kind", "dim", "max_length", "lo", "hi") if k in d})


def input_dim(specs: Sequence[FieldSpec]) -> int:
    return int(sum(s.dim for s in specs))


def assemble(specs: Sequence[FieldSpec], parts: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenates the fields in spec order.

    Args:
        specs: the model's field specs for one side (user or item).
        parts: per field, text -> float [n, dim] embeddings, minmax -> raw values [n].

    Returns:
        float32 [n, input_dim(specs)].
    """
    cols = []
    for s in specs:
        v = np.asarray(parts[s.name])
        if s.kind == TEXT:
            if v.ndim != 2 or v.shape[1] != s.dim:
                raise ValueError(f"field {s.name!r}: expected embeddings [n, {s.dim}] (got {v.shape})")
            cols.append(v.astype(np.float32, copy=False))
        elif s.kind == MINMAX:
            cols.append(s.scale(v.astype(np.float64)).reshape(-1, 1))
        else:
            raise ValueError(f"field {s.name!r}: unknown kind {s.kind!r}")
    return np.concatenate(cols, axis=1)


def feature_matrix(
    specs: Sequence[FieldSpec],
    tables: Mapping[str, FieldTable],
    raw: Mapping[str, np.ndarray],
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Model inputs for catalogue entities: text fields from their tables, numbers from ``raw``.

    The one builder shared by training, export, the server and the tests, so every side feeds a
    tower the same columns in the same order.

    Args:
        specs: the model's field specs for one side (user or item).
        tables: text field -> its FieldTable (``index`` maps entity -> row).
        raw: numeric field -> raw values for every entity [n_entities].
        rows: the entities to build (default: all of them, in order).

    Returns:
        float32 [len(rows), input_dim(specs)].
    """
    parts = {}
    for s in specs:
        if s.kind == MINMAX:
            values = np.asarray(raw[s.name])
            parts[s.name] = values if rows is None else values[rows]
        else:
            parts[s.name] = tables[s.name].per_entity(rows)
    return assemble(specs, parts)


def feature_parts(
    specs: Sequence[FieldSpec], tables: Mapping[str, FieldTable], raw: Mapping[str, np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The columns of :func:`feature_matrix` without building it: per field, in spec order, a float32
    table and the entity -> table row index (None: one row per entity).

    Row e of feature_matrix is the concatenation of ``table[index[e]]`` over the parts, value for
    value. At 1,000,000 items the matrix is ~4.6 GB while the parts are the distinct texts' vectors
    plus 4 bytes an entity a field: training gathers a batch's rows from them instead.
    """
    parts: list[tuple[np.ndarray, np.ndarray | None]] = []
    for s in specs:
        if s.kind == MINMAX:
            scaled = assemble([s], {s.name: np.asarray(raw[s.name])})  # the same cast and scaling
            parts.append((scaled, None))
        elif s.kind == TEXT:
            t = tables[s.name]
            if t.vectors.ndim != 2 or t.vectors.shape[1] != s.dim:
                raise ValueError(
                    f"field {s.name!r}: expected embeddings [n, {s.dim}] (got {t.vectors.shape})"
                )
            parts.append((t.vectors.astype(np.float32, copy=False), t.index))
        else:
            raise ValueError(f"field {s.name!r}: unknown kind {s.kind!r}")
    return parts


@dataclass(frozen=True)
class FieldTable:
    """A text field of a catalogue: its distinct strings, their vectors and each entity's row."""

    texts: np.ndarray  # str [n_unique]
    vectors: np.ndarray  # float32 [n_unique, dim]
    index: np.ndarray  # int32 [n_entities] -> row in texts/vectors

    def per_entity(self, rows: np.ndarray | None = None) -> np.ndarray:
        idx = self.index if rows is None else self.index[rows]
        return self.vectors[idx]


def save_tables(path: Path | str, tables: Mapping[str, FieldTable]) -> None:
    arrays = {}
    for name, t in tables.items():
        arrays[f"{name}.texts"] = t.texts.astype(str)
        arrays[f"{name}.vectors"] = t.vectors.astype(np.float32)
        arrays[f"{name}.index"] = t.index.astype(np.int32)
    np.savez(path, **arrays)


def load_tables(path: Path | str) -> dict[str, FieldTable]:
    with np.load(path) as z:
        names = sorted({k.rsplit(".", 1)[0] for k in z.files})
        return {n: FieldTable(z[f"{n}.texts"], z[f"{n}.vectors"], z[f"{n}.index"]) for n in names}
