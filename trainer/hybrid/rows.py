"""Entity feature rows built when a step needs them: the hybrid never holds an entities x features matrix.

At 1,000,000 users with two 384-d text fields the user matrix alone is ~3 GB (float32), the items'
as much again, and a TensorFlow constant of either is one more copy. Training, the vectors and the
validation search only ever need some rows at a time (a batch's users, a batch's distinct items, a
block of the catalogue), so they ask a :class:`FeatureRows` for those rows, as seed and two_tower
gather theirs (trainer/models.PartsLookup). Built from the field tables, a row is
``server.core.features.feature_matrix(specs, tables, raw, rows)``: the same values, column for
column, as the matrix the hybrid used to hold. Built from a matrix (tests, small data sets) it is that
matrix's rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from towerserve.server.core.features import TEXT, FieldSpec, FieldTable, feature_matrix, input_dim


class FeatureRows:
    """The feature rows of ``n`` entities, ``dim`` columns each, built on demand.

    Attributes:
        n: entities (users or items).
        dim: the width of a row (the tower's input).
    """

    def __init__(
        self,
        matrix: np.ndarray | None = None,
        specs: Sequence[FieldSpec] | None = None,
        tables: Mapping[str, FieldTable] | None = None,
        raw: Mapping[str, np.ndarray] | None = None,
    ):
        if (matrix is None) == (specs is None):
            raise ValueError("FeatureRows takes either a matrix or (specs, tables, raw)")
        self._matrix = None if matrix is None else np.asarray(matrix)
        self._specs, self._tables, self._raw = specs, tables or {}, raw or {}
        if self._matrix is not None:
            self.n, self.dim = int(self._matrix.shape[0]), int(self._matrix.shape[1])
        else:
            self.dim = input_dim(specs)
            self.n = self._entities()

    @classmethod
    def of_tables(
        cls, specs: Sequence[FieldSpec], tables: Mapping[str, FieldTable], raw: Mapping[str, np.ndarray]
    ) -> FeatureRows:
        return cls(specs=specs, tables=tables, raw=raw)

    def _entities(self) -> int:
        for s in self._specs:
            source = self._tables[s.name].index if s.kind == TEXT else self._raw[s.name]
            return len(source)
        raise ValueError("FeatureRows needs at least one field spec")

    def take(self, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids), dim]: the rows of ``ids``, in their order."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._matrix is not None:
            return np.asarray(self._matrix[ids], dtype=np.float32)
        return feature_matrix(self._specs, self._tables, self._raw, ids)

    def blocks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, their rows) for consecutive blocks of at most ``size`` entities, in order."""
        for start in range(0, self.n, size):
            ids = np.arange(start, min(self.n, start + size))
            yield ids, self.take(ids)

    def _spec_at(self, col: int) -> FieldSpec | None:
        """The text field whose columns start at ``col`` (None: built from a matrix, or no such field)."""
        start = 0
        for s in self._specs or ():
            if start == col and s.kind == TEXT:
                return s
            start += s.dim
        return None

    def distinct_values(self, col: int, width: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct values of columns ``col .. col + width - 1`` among ``ids``' rows and how many of
        them hold each: ``np.unique(rows[:, col:col + width], axis=0, return_counts=True)``.

        A text field's values are its table's vectors, so they are counted by table row and never
        gathered per entity (10⁶ users x 384 floats is 1.5 GB); the answer is the same, values in the
        same (lexicographic) order.
        """
        ids = np.asarray(ids, dtype=np.int64)
        spec = self._spec_at(col)
        if spec is None or spec.dim != width:
            rows = np.concatenate(
                [self.take(ids[s : s + 65_536])[:, col : col + width] for s in range(0, len(ids), 65_536)]
                or [np.zeros((0, width), np.float32)]
            )
            return np.unique(rows, axis=0, return_counts=True)
        table = self._tables[spec.name]
        used, per_entity = np.unique(table.index[ids], return_inverse=True)
        values, of_used = np.unique(
            np.asarray(table.vectors[used], dtype=np.float32), axis=0, return_inverse=True
        )
        counts = np.bincount(of_used.reshape(-1)[per_entity.reshape(-1)], minlength=len(values))
        return values, counts

    def column(self, col: int, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids)]: column ``col`` of ``ids``' rows."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._matrix is not None:
            return np.asarray(self._matrix[ids, col], dtype=np.float32)
        start = 0
        for s in self._specs:
            if start <= col < start + s.dim:
                return feature_matrix([s], self._tables, self._raw, ids)[:, col - start]
            start += s.dim
        raise IndexError(f"column {col} is outside the {self.dim} columns")


def as_rows(x: np.ndarray | FeatureRows) -> FeatureRows:
    """``x`` as FeatureRows (a matrix is wrapped, not copied)."""
    return x if isinstance(x, FeatureRows) else FeatureRows(matrix=x)
