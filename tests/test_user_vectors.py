"""Known users' vectors stored by export and memory-mapped at load (export/users.py).

The reference is the server's own computation at load (a bundle copy without the stored files, as
bundles from before them are): the stored vectors must equal it, load must not redo it, and a file
that does not belong to its graph must be refused, not served.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pipeline import copy_serving, rehash

from towerserve.server.core.manifest import ArtifactError
from towerserve.server.engine.engine import Engine, EngineConfig
from towerserve.server.engine.towers import STORED_CHECK_USERS, Tower


def _without_stored(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose manifest names no stored user vectors (and whose files are gone)."""
    copy = copy_serving(src, dst)
    manifest = json.loads((copy / "manifest.json").read_text())
    for model in manifest["models"].values():
        for split in model["splits"].values():
            stored = split.pop("user_vectors")
            for key in ("file", "base_file", "sums_file", "table_file"):
                if stored.get(key):
                    (copy / stored[key]).unlink()
                    del manifest["files"][stored[key]]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture
def tower_rows(monkeypatch) -> list[int]:
    """Rows each user-tower run got, in order (the real tower runs: this only counts)."""
    runs: list[int] = []
    users = Tower.users

    def counted(self, features, *args, **kwargs):
        runs.append(len(features))
        return users(self, features, *args, **kwargs)

    monkeypatch.setattr(Tower, "users", counted)
    return runs


@pytest.mark.parametrize("model", ["two_tower", "hybrid"])
def test_stored_vectors_are_what_the_server_computes_and_load_does_not_recompute_them(
    model, serving, request, tmp_path, tower_rows
):
    root = request.getfixturevalue("hybrid") if model == "hybrid" else serving
    tower_rows.clear()  # the fixture may have just exported (and so computed) them
    stored = Engine(root, EngineConfig(model=model))
    vectors = stored.known_user_vectors()
    n_users = len(stored.user_ids)
    assert isinstance(vectors, np.memmap) and not vectors.flags.writeable
    # Load ran the tower on samples only: the stored vectors' check, a hybrid's history check.
    assert sum(tower_rows) <= STORED_CHECK_USERS + 64 < n_users, (tower_rows, n_users)

    tower_rows.clear()
    computed = Engine(_without_stored(root, tmp_path / "old"), EngineConfig(model=model))
    assert sum(tower_rows) >= n_users  # the reference really computed every user
    np.testing.assert_allclose(vectors, computed.known_user_vectors(), rtol=1e-5, atol=1e-6)
    if model == "hybrid":
        a, b = stored.serving.mean_history, computed.serving.mean_history
        assert a is not None and b is not None
        for name in ("base", "sums", "table"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a.counts, b.counts)
    # What requests get is the same either way.
    users = list(range(0, n_users, max(1, n_users // 20)))
    np.testing.assert_allclose(stored.user_vectors(users), computed.user_vectors(users), atol=1e-6)


def test_the_cold_split_is_stored_too(serving):
    engine = Engine(serving, EngineConfig(model="two_tower"))
    cold = engine.towers["cold"]
    assert cold.stored is not None
    assert isinstance(engine.known_user_vectors(cold), np.memmap)


@pytest.mark.parametrize("damage", ["permuted rows", "every vector off by 1e-3"])
def test_vectors_that_are_not_their_graphs_are_refused(serving, tmp_path, damage):
    copy = copy_serving(serving, tmp_path / "copy")
    rel = "models/two_tower/holdout/user_vectors.npy"
    v = np.load(copy / rel)
    if damage == "permuted rows":
        v = v[np.random.default_rng(0).permutation(len(v))]
    else:  # ten times export's parity tolerance: another training run's vectors, say
        v += 1e-3
    np.save(copy / rel, v)
    rehash(copy, rel)  # past the hash check: only the content is wrong
    with pytest.raises(ArtifactError, match="not from one export") as err:
        Engine(copy, EngineConfig(model="two_tower")).known_user_vectors()
    assert rel in str(err.value)


def test_a_stored_file_of_the_wrong_shape_is_named(serving, tmp_path):
    copy = copy_serving(serving, tmp_path / "copy")
    rel = "models/two_tower/holdout/user_vectors.npy"
    np.save(copy / rel, np.load(copy / rel)[:-1])
    rehash(copy, rel)
    with pytest.raises(ArtifactError, match="rows") as err:
        Engine(copy, EngineConfig(model="two_tower"))
    assert rel in str(err.value)


def test_a_missing_stored_file_is_refused_before_anything_loads(serving, tmp_path):
    copy = copy_serving(serving, tmp_path / "copy")
    (copy / "models/two_tower/holdout/user_vectors.npy").unlink()
    with pytest.raises(ArtifactError, match="user_vectors.npy"):
        Engine(copy, EngineConfig(model="two_tower"))
    shutil.rmtree(copy)
