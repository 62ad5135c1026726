"""Known users' vectors, computed once at export so the server memory-maps them instead of computing them.

At start the server needs every known user's vector (candidate lists, Evaluate, a hybrid's history
shortcut). Computed at load that is one user-tower pass over every user, 40 s at 10⁶ users before
the server can say SERVING. Export computes them instead, with the server's own code
(server/engine/towers.py: ``Tower.all_user_vectors``, run on the graphs just written), so the
files hold exactly what the server would compute; the server checks them on sampled users at load.
A mean-pooling tower's history decomposition (server/engine/mean_history.py) is stored the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from towerserve.server.core.csr import CSR
from towerserve.server.core.features import FieldSpec, FieldTable, feature_matrix
from towerserve.server.core.manifest import ModelSplit, UserVectors

USER_VECTORS = "user_vectors.npy"
# The hybrid's mean-history pieces (MeanHistory's fields of the same names).
BASE, SUMS, TABLE = "user_base.npy", "user_history_sums.npy", "history_table.npy"


def export_user_vectors(
    root: Path,
    rel: Path,
    entry: ModelSplit,
    split: str,
    tables: Mapping[str, FieldTable],
    raw_user: Mapping[str, np.ndarray],
    n_users: int,
    train: CSR | None,
    threads: int = 2,
) -> UserVectors:
    """Writes root/rel/user_vectors.npy (and a mean-pooling tower's decomposition); returns the entry.

    Args:
        root, rel: the bundle being written and the (model, split) folder in it that ``entry`` names.
        tables, raw_user: the text tables and numeric user attributes (the server's feature inputs).
        train: the split's recorded training positives (a hybrid reads them as users' histories).
    """
    from towerserve.server.engine.towers import Tower

    tower = Tower(root, entry, ["CPUExecutionProvider"], threads, split)

    def features(specs: list[FieldSpec], rows: np.ndarray) -> np.ndarray:
        return feature_matrix(specs, tables, raw_user, rows)

    np.save(root / rel / USER_VECTORS, tower.all_user_vectors(features, n_users, train))
    mean = tower.mean_history
    if mean is None:
        return UserVectors(file=str(rel / USER_VECTORS))
    for name, array in ((BASE, mean.base), (SUMS, mean.sums), (TABLE, mean.table)):
        np.save(root / rel / name, np.ascontiguousarray(array, dtype=np.float32))
    return UserVectors(
        file=str(rel / USER_VECTORS),
        base_file=str(rel / BASE),
        sums_file=str(rel / SUMS),
        table_file=str(rel / TABLE),
    )
