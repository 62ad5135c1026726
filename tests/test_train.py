"""trainer.train: the artifacts folder, scalers fitted on training entities, determinism, notebook rows, atomic_dir."""

import os

os.environ["USE_TF"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pipeline  # noqa: E402
import pytest  # noqa: E402

from towerserve.server.core.features import MINMAX, TEXT, load_tables  # noqa: E402
from towerserve.server.core.splits import load_recorded_split  # noqa: E402
from towerserve.trainer import splits  # noqa: E402
from towerserve.trainer.artifacts import atomic_dir  # noqa: E402
from towerserve.trainer.data import load_dataset  # noqa: E402
from towerserve.trainer.train import (  # noqa: E402
    FEATURE_SETS,
    NOTEBOOK_FIT,
    PRESETS,
    TRAIN_FORMAT,
    TrainConfig,
    field_specs,
    training_rows,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODELS = ("seed", "two_tower")
BASELINES = ("random", "mostpop", "oracle")
# Per-run facts, not metrics: they may differ between identical runs.
NOT_METRICS = ("train_seconds",)


@pytest.fixture(scope="module")
def art(built) -> Path:
    return built["artifacts"]


@pytest.fixture(scope="module")
def manifest(art) -> dict:
    return json.loads((art / "manifest.json").read_text())


@pytest.fixture(scope="module")
def metrics(art) -> dict:
    return json.loads((art / "metrics.json").read_text())


@pytest.fixture(scope="module")
def edited(built, tmp_path_factory):
    """The pipeline's data with one cold user aged 120 and one cold item priced 5000, trained twice.

    Which users and items the cold split holds out depends only on the seed and the table sizes, so
    the edits put the extremes where only a cold-split scaler fitted on warm entities can miss them.
    """
    root = tmp_path_factory.mktemp("edited")
    data = root / "data"
    shutil.copytree(built["data"], data)
    ds = load_dataset(data)
    cold = splits.cold_split(ds.positives, ds.users["user_id"].to_numpy(), seed=42)
    users = pd.read_csv(data / "users.csv", dtype=str)
    users.loc[int(cold.cold_users[0]), "age"] = "120"
    users.to_csv(data / "users.csv", index=False)
    items = pd.read_csv(data / "items.csv", dtype=str)
    items.loc[int(cold.cold_items[0]), "price"] = "5000"
    items.to_csv(data / "items.csv", index=False)
    runs = [
        pipeline.tiny_train(root / f"run_{j}", data, built["bert"], models=("two_tower",)) for j in (1, 2)
    ]
    return {
        "data": data,
        "runs": runs,
        "cold_user": int(cold.cold_users[0]),
        "cold_item": int(cold.cold_items[0]),
    }


# --- the artifacts folder ----------------------------------------------------------------------------


def test_artifacts_layout(art, manifest):
    assert manifest["format"] == TRAIN_FORMAT == "towerserve-train"
    assert manifest["format_version"] == 1
    for rel in (
        "metrics.json",
        "embeddings.npz",
        "users.csv",
        "items.csv",
        "splits/holdout.npz",
        "splits/cold.npz",
        "report/report.md",
    ):
        assert (art / rel).is_file(), rel
    for kind in MODELS:
        for split in ("holdout", "cold"):
            entry = manifest["models"][kind]["splits"][split]
            assert (art / entry["model"]).is_file()
            assert (art / "models" / kind / split / "history.json").is_file()
    assert manifest["splits"] == {"holdout": "splits/holdout.npz", "cold": "splits/cold.npz"}
    assert not list(art.parent.glob(f".{art.name}.tmp-*"))


def test_metrics_have_every_model_and_baseline(metrics):
    assert set(metrics) == {"holdout", "cold"}
    for split, table in metrics.items():
        for name in (*MODELS, *BASELINES):
            for key in ("ndcg@10", "recall@10", "auc", "mrr"):
                assert 0.0 <= table[name][key] <= 1.0, (split, name, key)
        for name in MODELS:
            assert 0.0 < table[name]["notebook_score"] < 1.0
            assert table[name]["epochs"] == 3  # tiny_train: 3 epochs, no early stopping
        # the oracle knows the generator's probabilities: nothing trained here beats it
        assert table["oracle"]["ndcg@10"] > max(table[m]["ndcg@10"] for m in MODELS)


def test_report_and_plots(art, manifest):
    report = (art / "report" / "report.md").read_text()
    assert "## holdout split" in report and "## cold split" in report
    assert f"**{manifest['default_model']}**" in report
    for name in ("training_curves.png", "metrics_holdout.png", "metrics_cold.png"):
        data = (art / "report" / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert name in report


def test_embeddings_cover_every_text_field(art, manifest):
    tables = load_tables(art / "embeddings.npz")
    assert set(tables) == {"profession", "personality", "description", "features", "category"}
    users = pd.read_csv(art / "users.csv", dtype={"user_id": str})
    for name, t in tables.items():
        frame = users if name in users.columns else pd.read_csv(art / "items.csv", dtype={"item_id": str})
        assert t.vectors.shape == (len(t.texts), manifest["encoder"]["dim"])
        assert len(t.index) == len(frame)
        # each entity's row points at its own text
        np.testing.assert_array_equal(t.texts[t.index], frame[name].astype(str).to_numpy())


def test_splits_saved(art, manifest):
    hold = load_recorded_split(art / "splits" / "holdout.npz")
    cold = load_recorded_split(art / "splits" / "cold.npz")
    assert hold.name == "holdout" and cold.name == "cold"
    # holdout: 80/20 of every positive, nothing held out whole
    assert hold.train.nnz + hold.test.nnz == manifest["data"]["positives"]
    assert len(hold.cold_users) == 0 and len(hold.cold_items) == 0
    # cold: round(0.1 * 240) = 24 users, round(0.1 * 48) = 5 items; cold users have no training positives
    assert len(cold.cold_users) == 24 and len(cold.cold_items) == 5
    assert (cold.train.row_lengths()[cold.cold_users] == 0).all()


def test_default_model_is_best_holdout_ndcg(manifest, metrics):
    best = max(MODELS, key=lambda k: metrics["holdout"][k]["ndcg@10"])
    assert manifest["default_model"] == best


# --- scalers ------------------------------------------------------------------------------------------


def _minmax(manifest, kind, split, side, name):
    (spec,) = [s for s in manifest["models"][kind]["splits"][split]["features"][side] if s["name"] == name]
    assert spec["kind"] == MINMAX
    return spec["lo"], spec["hi"]


def test_holdout_scalers_fitted_on_all_users_and_items(art, manifest):
    ages = pd.read_csv(art / "users.csv")["age"].to_numpy(float)
    prices = pd.read_csv(art / "items.csv")["price"].to_numpy(float)
    for kind in MODELS:
        assert _minmax(manifest, kind, "holdout", "user", "age") == (ages.min(), ages.max())
        assert _minmax(manifest, kind, "holdout", "item", "price") == (prices.min(), prices.max())


def test_cold_scalers_fitted_on_warm_entities_only(art, manifest):
    ages = pd.read_csv(art / "users.csv")["age"].to_numpy(float)
    prices = pd.read_csv(art / "items.csv")["price"].to_numpy(float)
    with np.load(art / "splits" / "cold.npz") as z:
        warm_u = np.setdiff1d(np.arange(len(ages)), z["cold_users"])
        warm_i = np.setdiff1d(np.arange(len(prices)), z["cold_items"])
    for kind in MODELS:
        assert _minmax(manifest, kind, "cold", "user", "age") == (ages[warm_u].min(), ages[warm_u].max())
        assert _minmax(manifest, kind, "cold", "item", "price") == (
            prices[warm_i].min(),
            prices[warm_i].max(),
        )


def test_cold_scalers_ignore_a_cold_extreme(edited):
    m = json.loads((edited["runs"][0] / "manifest.json").read_text())
    ages = pd.read_csv(edited["data"] / "users.csv")["age"].to_numpy(float)
    prices = pd.read_csv(edited["data"] / "items.csv")["price"].to_numpy(float)
    assert ages.max() == 120.0 and prices.max() == 5000.0
    # holdout sees every user and item: the edited extremes are the max
    assert _minmax(m, "two_tower", "holdout", "user", "age")[1] == 120.0
    assert _minmax(m, "two_tower", "holdout", "item", "price")[1] == 5000.0
    # the cold split's scalers never see the cold user or item
    assert (
        _minmax(m, "two_tower", "cold", "user", "age")[1]
        == np.delete(ages, edited["cold_user"]).max()
        < 120.0
    )
    assert (
        _minmax(m, "two_tower", "cold", "item", "price")[1]
        == np.delete(prices, edited["cold_item"]).max()
        < 5000.0
    )


def test_field_specs_fit_on_given_rows_only():
    raw = {"age": np.array([10.0, 20.0, 30.0, 40.0])}
    (spec,) = field_specs(("age",), {}, raw, np.array([1, 2]))
    assert (spec.kind, spec.dim, spec.lo, spec.hi) == (MINMAX, 1, 20.0, 30.0)
    # (40 - 20) / (30 - 20) = 2.0: a value outside the training range scales outside [0, 1]
    np.testing.assert_allclose(spec.scale(raw["age"]), [-1.0, 0.0, 1.0, 2.0])


def test_text_specs_carry_dim_and_max_length(manifest):
    specs = manifest["models"]["two_tower"]["splits"]["holdout"]["features"]["item"]
    assert [(s["name"], s["kind"], s["dim"], s["max_length"]) for s in specs] == [
        ("description", TEXT, 32, 200),
        ("features", TEXT, 32, 100),
        ("category", TEXT, 32, 50),
        ("price", MINMAX, 1, 0),
    ]
    # 32 + 32 + 32 + 1 = 97
    assert manifest["models"]["two_tower"]["splits"]["holdout"]["item_dim"] == 97


# --- determinism -------------------------------------------------------------------------------------


def test_same_seed_same_metrics(edited):
    a, b = (json.loads((r / "metrics.json").read_text()) for r in edited["runs"])
    assert set(a) == set(b) == {"holdout", "cold"}
    for split in a:
        assert set(a[split]) == set(b[split])
        for name, row in a[split].items():
            for key, value in row.items():
                if key in NOT_METRICS:
                    continue
                assert round(value, 3) == round(b[split][name][key], 3), (split, name, key)
    # the trained weights themselves, not only rounded metrics
    import keras

    wa, wb = (
        keras.saving.load_model(r / "models/two_tower/holdout/model.keras").get_weights()
        for r in edited["runs"]
    )
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


# --- training rows -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def holdout(built):
    ds = load_dataset(built["data"])
    return splits.holdout_split(ds.positives, ds.users["user_id"].to_numpy(), seed=42)


def _notebook_frame(split) -> pd.DataFrame:
    """The notebook: train positives (label 1) then negatives (label 0), shuffled by pandas."""
    pos = pd.DataFrame({"user": split.train_pairs.users, "item": split.train_pairs.items, "label": 1})
    neg = pd.DataFrame({"user": split.negatives.users, "item": split.negatives.items, "label": 0})
    return pd.concat([pos, neg]).sample(frac=1, random_state=42)


@pytest.mark.parametrize("sample", [NOTEBOOK_FIT.sample, 100])
def test_notebook_rows_match_pandas(holdout, sample):
    recipe = replace(NOTEBOOK_FIT, sample=sample)
    u, i, y = training_rows(holdout, recipe, seed=42)
    want = _notebook_frame(holdout).head(sample)
    n_rows = len(holdout.train_pairs) + len(holdout.negatives)
    assert len(u) == min(sample, n_rows)  # 200,000 > n_rows here: every row; 100: the first 100
    np.testing.assert_array_equal(u, want["user"].to_numpy())
    np.testing.assert_array_equal(i, want["item"].to_numpy())
    np.testing.assert_array_equal(y, want["label"].to_numpy())


def test_default_rows_are_all_rows_shuffled(holdout):
    u, i, y = training_rows(holdout, PRESETS["default"], seed=42)
    want = _notebook_frame(holdout)
    got = sorted(zip(u.tolist(), i.tolist(), y.tolist()))
    assert got == sorted(
        zip(want["user"].tolist(), want["item"].tolist(), want["label"].astype(float).tolist())
    )
    assert y.dtype == np.float32 and u.dtype == i.dtype == np.int32
    assert y.sum() == len(holdout.train_pairs)  # every positive once


# --- configuration -----------------------------------------------------------------------------------


def test_unknown_preset_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"preset must be one of \['default', 'notebook'\] \(got 'fast'\)"):
        TrainConfig(preset="fast")
    assert TrainConfig(preset="notebook").recipe() == NOTEBOOK_FIT


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"models": ("mlp",)}, rf"model must be one of {re.escape(str(sorted(FEATURE_SETS)))} \(got 'mlp'\)"),
        ({"models": ()}, rf"model must be one of {re.escape(str(sorted(FEATURE_SETS)))} \(got ''\)"),
        ({"preset": "fast"}, r"preset must be one of \['default', 'notebook'\] \(got 'fast'\)"),
        ({"embedding_dim": 0}, r"embedding_dim and hidden widths must be >= 1"),
    ],
)
def test_bad_config_is_refused_before_touching_anything(tmp_path, kwargs, message):
    # The config refuses itself at construction, so train() never starts and nothing is written.
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


# --- atomic_dir --------------------------------------------------------------------------------------


def _leftovers(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*"))


def test_atomic_dir_failure_leaves_target_untouched(tmp_path):
    target = tmp_path / "artifacts"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert _leftovers(target) == []


def test_atomic_dir_failure_without_target_creates_nothing(tmp_path):
    target = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "part.txt").write_text("half")
        raise KeyboardInterrupt
    assert not target.exists()
    assert _leftovers(target) == []


def test_atomic_dir_success_replaces_target(tmp_path):
    target = tmp_path / "artifacts"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".artifacts.tmp-")
        assert list(tmp.iterdir()) == []
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # replaced, not merged
    assert _leftovers(target) == []
    assert (target.stat().st_mode & 0o777) == 0o755


# --- logs when piped ---------------------------------------------------------------------------------


def test_piped_train_logs_one_plain_line_per_epoch(built, tmp_path):
    """`towerserve train` with stdout and stderr in a file: no carriage-return frames, and one log
    line per epoch of each model/split (bars only on a terminal or with --progress)."""
    import re
    import subprocess
    import sys

    out = tmp_path / "art"
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "towerserve.clients.cli", "train", "--data", str(built["data"])]
    cmd += ["--out", str(out), "--encoder", str(built["bert"]), "--no-cache", "--epochs", "2"]
    cmd += ["--batch-size", "256", "--embedding-dim", "8", "--model", "two_tower", "--no-cold"]
    with open(log, "wb") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_bytes().decode()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text
    epochs = json.loads((out / "metrics.json").read_text())["holdout"]["two_tower"]["epochs"]
    lines = re.findall(
        r"two_tower/holdout epoch (\d+)/2: loss [0-9.]+, val_loss [0-9.]+, auc [0-9.]+, val_auc [0-9.]+ \(",
        text,
    )
    assert lines == [str(e) for e in range(1, epochs + 1)], text[-3000:]
    for field in ("profession", "personality", "description", "features", "category"):
        assert len(re.findall(rf"embed {field}: \d+ batch in ", text)) == 1, field
