"""Batch jobs on Ray (`towerserve batch embed|recommend`): the same answers as the server, on a real local Ray.

One local Ray (2 CPUs) serves the whole module: starting it costs 10-20 s on this machine, and each
job's actors another few seconds to load the model. The jobs run through the real command line in
this process, which finds the Ray already running and uses it.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from pipeline import running_server  # noqa: E402

from towerserve.clients.cli import main  # noqa: E402
from towerserve.clients.client import RecommenderClient  # noqa: E402
from towerserve.server.batch.jobs import (  # noqa: E402
    RECS_SCHEMA,
    VECTORS_SCHEMA,
    Bundle,
    ItemEmbedder,
    apply_local,
    read_items,
)
from towerserve.server.core.types import NewItemData  # noqa: E402
from towerserve.server.engine.engine import Engine  # noqa: E402

FIELDS = ("item_id", "description", "features", "price", "category")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def engine(serving) -> Engine:
    return Engine(serving)


def _write_items(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: r[k] for k in FIELDS} for r in rows)
    return path


def _read(path: Path) -> pa.Table:
    assert path.is_dir(), "the output is a folder of Parquet files"
    assert not list(path.parent.glob(f".{path.name}.tmp-*")), "the temporary folder was left behind"
    return pq.read_table(path)


def test_embed_gives_exported_vectors_and_upsert_vectors(local_ray, serving, engine, items, tmp_path):
    exported = list(items.values())
    twins = [dict(r, item_id=f"twin_{r['item_id']}") for r in exported[:8]]  # exported texts, new ids
    new = [
        {
            "item_id": "new_1",
            "description": "A folding kayak for two",
            "features": "light, red",
            "price": 899.0,
            "category": "Sports",
        },
        {
            "item_id": "new_2",
            "description": "Noise-cancelling headphones",
            "features": "bluetooth",
            "price": 199.5,
            "category": "Electronics",
        },
    ]
    changed = [dict(exported[9], description="The same id, a new description")]
    src = _write_items(tmp_path / "items.csv", exported[10:] + twins + new + changed + exported[:9])
    out = tmp_path / "vectors.parquet"
    assert main(["batch", "embed", "--artifacts", str(serving), "--items", str(src), "--out", str(out)]) == 0

    table = _read(out)
    assert table.schema == VECTORS_SCHEMA
    assert table.num_rows == len(exported) + len(twins) + len(new)  # changed replaces exported[9]
    assert set(table.column("model_version").to_pylist()) == {engine.model_version}
    got = dict(zip(table.column("item_id").to_pylist(), np.array(table.column("vector").to_pylist())))

    # The bundle's item vectors file for the served model, read as export wrote it.
    m = json.loads((serving / "manifest.json").read_text())
    vectors_file = m["models"][engine.kind]["splits"]["holdout"]["item_vectors_file"]
    bundle_vectors = np.load(serving / vectors_file)
    row = {r["item_id"]: j for j, r in enumerate(exported)}
    for r in exported[:9] + exported[10:]:
        np.testing.assert_array_equal(got[r["item_id"]], bundle_vectors[row[r["item_id"]]])
    # Exported texts through the encoder tables and the item tower: the exported vectors, within float error.
    for r in twins:
        np.testing.assert_allclose(got[r["item_id"]], bundle_vectors[row[r["item_id"][5:]]], atol=1e-5)

    # New and changed items: what UpsertItems stores for them.
    fresh = Engine(serving)
    upserts = [NewItemData(*(float(r[f]) if f == "price" else r[f] for f in FIELDS)) for r in new + changed]
    fresh.upsert_items(upserts)
    for it in upserts:
        want = fresh.catalog.vectors[fresh.catalog.row(it.item_id)]
        np.testing.assert_allclose(got[it.item_id], want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[changed[0]["item_id"]], bundle_vectors[row[changed[0]["item_id"]]], atol=1e-5)


def test_recommend_table_equals_the_servers_recommend(local_ray, serving, engine, tmp_path):
    out = tmp_path / "recs.parquet"
    argv = ["batch", "recommend", "--artifacts", str(serving), "--out", str(out), "--top-n", "20"]
    assert main([*argv, "--batch-size", "64"]) == 0
    table = _read(out)
    assert table.schema == RECS_SCHEMA
    rows = {r["user_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(engine.user_ids), "one row per known user"
    assert {r["model_version"] for r in rows.values()} == {engine.model_version}

    for user_id in engine.user_ids:  # every user against the engine the server runs
        cat, item_rows, probs = engine.recommend(user_id, 20)
        assert rows[user_id]["item_ids"] == [cat.ids[j] for j in item_rows], user_id
        assert rows[user_id]["scores"] == list(np.float32(probs)), user_id
    with running_server(serving) as running, RecommenderClient(f"127.0.0.1:{running.port}") as client:
        for user_id in random.Random(5).sample(engine.user_ids, 8):  # and real RPCs
            rec = client.recommend(user_id, top_n=20)
            assert rows[user_id]["item_ids"] == [i.item_id for i in rec.items], user_id
            assert rows[user_id]["scores"] == [i.score for i in rec.items], user_id
            assert rec.model_version == engine.model_version

    # The output is replaced only when asked, and then whole.
    assert main(argv) == 2
    assert main([*argv, "--top-n", "3", "--overwrite"]) == 0
    assert {len(r) for r in _read(out).column("item_ids").to_pylist()} <= {3}


def test_the_jobs_run_without_ray_too(serving, engine, items):
    # The same callable classes in a plain loop: the benchmark's baseline, and a check of the batching.
    table = read_items(serving / "catalog" / "items.csv")
    job = ItemEmbedder(Bundle(str(serving)), recompute=True)
    out = apply_local(job, table, batch_size=7)
    assert out.column("item_id").to_pylist() == list(items)
    np.testing.assert_allclose(
        np.array(out.column("vector").to_pylist()), engine.serving.item_vectors, atol=1e-5
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"price": "-3"}, "line 3: item.price must be in [0, 1e+09] (got -3.0)"),
        ({"description": " "}, "line 3: item.description must not be empty"),
        ({"item_id": "a"}, "line 3: item_id 'a' repeats line 2"),
        ({"price": "cheap"}, "price 'cheap' is not a number"),
    ],
)
def test_a_bad_items_file_is_refused_naming_the_line(tmp_path, row, message):
    good = {"item_id": "a", "description": "d", "features": "f", "price": "1", "category": "c"}
    src = _write_items(tmp_path / "items.csv", [good, {**good, "item_id": "b", **row}])
    with pytest.raises(ValueError, match="items.csv") as err:
        read_items(src)
    assert message in str(err.value)


def test_without_the_ray_extra_the_command_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from towerserve.server.core import cli_args

    real = importlib.util.find_spec
    monkeypatch.setattr(
        cli_args.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    assert main(["batch", "recommend", "--artifacts", "A", "--out", "o"]) == 2
    assert capsys.readouterr().err.strip() == (
        "towerserve batch needs the 'ray' extra: pip install 'towerserve[ray]'"
    )
    with pytest.raises(SystemExit) as done:  # --help never checks extras
        main(["batch", "embed", "--help"])
    assert done.value.code == 0
    assert "shared storage" in capsys.readouterr().out
